package keysync

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// trustEnv is a database with shapeseal's schema and an items table,
// served by electrictest, a local KEK, and an Admin holding the pinned
// root key testSigner.
type trustEnv struct {
	t     *testing.T
	url   string
	db    *pgxpool.Pool
	srv   *electrictest.TestServer
	kek   KEK
	root  *chain.PrivateKey
	admin *Admin
	roots []VerifyKey

	mu       sync.Mutex
	reported []error // what the admin reported
}

func newTrustEnv(t *testing.T) *trustEnv {
	t.Helper()
	url, db := newAdminDB(t)
	pgtest.Exec(t, url, `CREATE TABLE items (id uuid PRIMARY KEY, tenant_id text NOT NULL, title text, body text)`)
	e := &trustEnv{t: t, url: url, db: db, kek: newLocalKEK(t), root: testSigner, roots: testSigners}
	e.srv = electrictest.StartTest(t, electrictest.Options{DatabaseURL: url, LongPollTimeout: 300 * time.Millisecond})
	e.admin = e.adminWith(e.root)
	return e
}

// adminWith returns an Admin of the env's database that signs with key.
func (e *trustEnv) adminWith(key chain.Signer) *Admin {
	return &Admin{DB: e.db, Roots: e.roots, Key: key, KEKs: UseKEK(e.kek), Report: func(err error) {
		e.mu.Lock()
		defer e.mu.Unlock()
		e.reported = append(e.reported, err)
	}}
}

// tenant creates tenant under the env's KEK with the root key.
func (e *trustEnv) tenant(tenant string, admins ...VerifyKey) *Keyset {
	e.t.Helper()
	ks, err := e.admin.CreateTenant(context.Background(), e.kek, tenant, admins...)
	if err != nil {
		e.t.Fatal(err)
	}
	return ks
}

// device creates a hybrid identity for user's device and certifies it
// with the root key.
func (e *trustEnv) device(user, device string) *age.HybridIdentity {
	e.t.Helper()
	id, err := GenerateIdentity()
	if err != nil {
		e.t.Fatal(err)
	}
	rcpt, _ := RecipientOf(id)
	if err := e.admin.CertifyDevice(context.Background(), user, device, rcpt); err != nil {
		e.t.Fatal(err)
	}
	return id
}

// grant grants tenant to user with the root key.
func (e *trustEnv) grant(tenant, user string) {
	e.t.Helper()
	if _, err := e.admin.Grant(context.Background(), tenant, user); err != nil {
		e.t.Fatal(err)
	}
}

// ring starts a keyring for user's device, following the key and log
// shapes from electrictest, and waits until it is ready. A nil floor is a
// fresh MemoryFloor.
func (e *trustEnv) ring(user, device string, id age.Identity, floor Floor) (*Keyring, *rowErrors) {
	e.t.Helper()
	if floor == nil {
		floor = NewMemoryFloor()
	}
	errs := &rowErrors{}
	r, err := NewKeyring(KeyringOptions{
		Stream:     KeyShapeOptions(e.srv.URL+"/v1/shape", user, device),
		Log:        LogShapeOptions(e.srv.URL + "/v1/shape"),
		Identity:   id,
		Roots:      e.roots,
		Floor:      floor,
		KeyWait:    3 * time.Second,
		OnRowError: errs.add,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	e.t.Cleanup(func() {
		r.Close()
		if err := <-done; err != nil {
			e.t.Errorf("Run: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Ready(ctx); err != nil {
		e.t.Fatal(err)
	}
	return r, errs
}

// waitGen waits until the ring holds tenant's keyset at generation gen
// (0: holds none).
func waitGen(t *testing.T, r *Keyring, tenant string, gen uint64) *Keyset {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ks, err := r.Wait(ctx, tenant, func(ks *Keyset) bool {
		if gen == 0 {
			return ks == nil
		}
		return ks != nil && ks.Generation() == gen
	})
	if err != nil {
		got := "none"
		if ks := r.Keyset(tenant); ks != nil {
			got = ks.String()
		}
		t.Fatalf("tenant %s: want generation %d, ring holds %s", tenant, gen, got)
	}
	return ks
}

type rowErrors struct {
	mu   sync.Mutex
	errs []*KeyRowError
}

func (r *rowErrors) add(e *KeyRowError) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, e)
}

func (r *rowErrors) waitFor(t *testing.T, target error) *KeyRowError {
	t.Helper()
	for range 200 {
		r.mu.Lock()
		for _, e := range r.errs {
			if errors.Is(e, target) {
				r.mu.Unlock()
				return e
			}
		}
		r.mu.Unlock()
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("no row error %v; got %v", target, r.errs)
	return nil
}

// all returns the errors reported so far.
func (r *rowErrors) all() []*KeyRowError {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*KeyRowError(nil), r.errs...)
}

// newAdminDB returns a fresh database with shapeseal's schema, and a pool on
// it that the test closes.
func newAdminDB(t *testing.T) (url string, db *pgxpool.Pool) {
	t.Helper()
	url = pgtest.NewDB(t)
	db, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if err := ApplySchema(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	return url, db
}
