// Package exampletest builds, inside a test, the stack that
// `go run ./cmd/shapeseal dev` runs, so that the tests of the examples run
// them end to end against real parts: a fresh Postgres database (through
// internal/pgtest) with shapeseal's schema and dev's "items" table, a local
// KEK, a root signing key and a keysync.Admin that signs with it, and on
// demand electrictest behind the key-sync proxy, with HS256 tokens minted
// here as dev mints them.
//
// It is test support for the examples only; the examples themselves take
// everything from flags and the environment.
package exampletest

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/proxy"
)

// Items is dev's demo table, which the examples read and write.
const Items = `CREATE TABLE items (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	tenant_id text NOT NULL,
	title text,
	body text,
	created_at timestamptz NOT NULL DEFAULT now()
)`

// ItemsSpec says how items is encrypted, as in dev.
var ItemsSpec = keysync.TableSpec{Table: "public.items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}

// LogRule is the proxy rule that serves the tenant logs (shapeseal_log)
// that devices verify: the logs of the token's tenants, the same
// authorization as the tenants' rows, as in dev's rule of the same name.
var LogRule = proxy.ShapeRule{
	Name:    "log",
	Table:   keysync.LogTable,
	Where:   keysync.LogShapeWhere,
	Params:  []string{"$tenants"},
	Columns: []string{"tenant_id", "seq", "entry"},
	Replica: "full",
}

const issuer = "shapeseal-example"

// An Env is one test's stack.
type Env struct {
	DatabaseURL string
	KEKURI      string // local:///…/kek.json
	KEK         keysync.KEK
	Dir         string // holds the KEK, the root key and identity files

	// Root is the root's public key, ssvk1…, which readers and writers
	// pin; RootKey is the file of its signing key (0600), for examples
	// that administer tenants themselves.
	Root    string
	RootKey string
	Roots   []keysync.VerifyKey // Root, parsed

	// Admin signs with the root key: it creates tenants, certifies
	// devices and grants.
	Admin *keysync.Admin

	// ProxyURL is set by StartProxy.
	ProxyURL string
	jwtKey   []byte

	writerOnce sync.Once
	writer     *keysync.Writer
	writerErr  error
}

// New creates a database with shapeseal's schema and the items table, a
// local KEK, a root key and an Admin holding it.
func New(t testing.TB) *Env {
	t.Helper()
	e := &Env{DatabaseURL: pgtest.NewDB(t), Dir: t.TempDir()}
	pgtest.Exec(t, e.DatabaseURL, keysync.Schema())
	pgtest.Exec(t, e.DatabaseURL, Items)
	path := filepath.Join(e.Dir, "kek.json")
	kek, err := keysync.GenerateLocalKEK(path)
	if err != nil {
		t.Fatal(err)
	}
	e.KEK, e.KEKURI = kek, keysync.LocalKEKScheme+path
	e.RootKey = filepath.Join(e.Dir, "root.key")
	root, err := keysync.GenerateKeyFile(e.RootKey)
	if err != nil {
		t.Fatal(err)
	}
	e.Roots = []keysync.VerifyKey{root.Public()}
	e.Root = root.Public().String()
	pool, err := pgxpool.New(context.Background(), e.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	e.Admin = &keysync.Admin{DB: pool, Roots: e.Roots, Key: root, Floor: keysync.NewMemoryFloor()}
	return e
}

// Conn returns a connection to the database, closed when the test ends.
func (e *Env) Conn(t testing.TB) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), e.DatabaseURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// StartProxy starts electrictest on the database and, in front of it, the
// proxy with dev's three rules: "items" (rows of the token's tenant_ids),
// "keys" (the token's user's and device's wrapped tenant keys) and "log"
// (the logs of the token's tenant_ids, [LogRule]).
func (e *Env) StartProxy(t testing.TB) {
	t.Helper()
	secret := rand.Text()
	srv := electrictest.StartTest(t, electrictest.Options{DatabaseURL: e.DatabaseURL, Secret: secret})
	e.jwtKey = make([]byte, 32)
	rand.Read(e.jwtKey)
	px, err := proxy.New(proxy.Config{
		Upstream: srv.URL,
		Secret:   secret,
		Auth: proxy.AuthConfig{
			Algorithms: []string{"HS256"},
			HMACKeys:   []proxy.HMACKey{{Secret: e.jwtKey}},
			Issuer:     issuer,
		},
		Shapes: []proxy.ShapeRule{
			{Name: "items", Table: "items", Where: "tenant_id = ANY($1::text[])", Params: []string{"$tenants"}},
			{Name: "keys", Kind: proxy.KindTenantKeys},
			LogRule,
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(px)
	t.Cleanup(func() {
		hs.CloseClientConnections()
		hs.Close()
	})
	e.ProxyURL = hs.URL
}

// Token mints a token the proxy accepts for user's device, allowed to read
// the rows of tenants.
func (e *Env) Token(user, device string, tenants ...string) string {
	if e.jwtKey == nil {
		panic("exampletest: Token before StartProxy")
	}
	now := time.Now()
	claims, _ := json.Marshal(map[string]any{
		"iss": issuer, "sub": user, "device_id": device, "tenant_ids": tenants,
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(),
	})
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(claims)
	mac := hmac.New(sha256.New, e.jwtKey)
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil))
}

// Identity writes a new device identity for user to a 0600 file and returns
// its path. The device is not registered: that is the examples' business
// (or Device's).
func (e *Env) Identity(t testing.TB, user string) string {
	t.Helper()
	id, err := keysync.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(e.Dir, user+".age")
	if err := keysync.WriteIdentityFile(path, id); err != nil {
		t.Fatal(err)
	}
	return path
}

// Member gives user a device with a new identity, certified by the root,
// makes them a member of tenants (creating, with the root key and the
// local KEK, the tenants that do not exist yet) and returns the identity
// file's path.
func (e *Env) Member(t testing.TB, user, device string, tenants ...string) string {
	t.Helper()
	path := e.Identity(t, user)
	id, err := keysync.LoadIdentityFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rcpt, err := keysync.RecipientOf(id)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	if err := e.Admin.CertifyDevice(ctx, user, device, rcpt); err != nil {
		t.Fatal(err)
	}
	for _, tenant := range tenants {
		if _, err := e.Admin.CreateTenant(ctx, e.KEK, tenant); err != nil && !errors.Is(err, keysync.ErrTenantExists) {
			t.Fatal(err)
		}
		if _, err := e.Admin.Grant(ctx, tenant, user); err != nil {
			t.Fatal(err)
		}
	}
	return path
}

// WriteItem writes an encrypted item with a keysync.Writer that pins the
// root and allows only the local KEK, and returns its id.
func (e *Env) WriteItem(t testing.TB, tenant, title, body string) string {
	t.Helper()
	e.writerOnce.Do(func() {
		e.writer, e.writerErr = keysync.NewWriter(ItemsSpec, keysync.Insert, keysync.WriterOptions{
			Roots: e.Roots, KEKs: keysync.UseKEK(e.KEK), Floor: keysync.NewMemoryFloor(),
		})
	})
	if e.writerErr != nil {
		t.Fatal(e.writerErr)
	}
	id := NewID()
	if err := e.writer.Write(t.Context(), e.Admin.DB, map[string]any{"id": id, "tenant_id": tenant, "title": title, "body": body}); err != nil {
		t.Fatal(err)
	}
	return id
}

// NewID returns a random UUID in the text form Postgres prints.
func NewID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	const hexdig = "0123456789abcdef"
	out := make([]byte, 0, 36)
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			out = append(out, '-')
		}
		out = append(out, hexdig[c>>4], hexdig[c&15])
	}
	return string(out)
}
