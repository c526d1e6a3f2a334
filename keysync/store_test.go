package keysync

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestApplySchema(t *testing.T) {
	url := pgtest.NewDB(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	// Concurrent first runs must not race, and later runs change nothing.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() { errs <- ApplySchema(ctx, pool) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := ApplySchema(ctx, pool); err != nil {
		t.Fatal(err)
	}

	for table, pk := range map[string]string{
		"shapeseal_devices":      "user_id,device_id",
		"shapeseal_device_certs": "user_id,device_id,signer",
		"shapeseal_tenant_keys":  "tenant_id,user_id,device_id",
		"shapeseal_keysets":      "tenant_id,generation",
		"shapeseal_log":          "tenant_id,seq",
	} {
		var got string
		err := pool.QueryRow(ctx, `SELECT string_agg(a.attname, ',' ORDER BY k.i)
			FROM pg_index x
			CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, i)
			JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
			WHERE x.indrelid = $1::regclass AND x.indisprimary`, table).Scan(&got)
		if err != nil {
			t.Fatal(err)
		}
		if got != pk {
			t.Errorf("%s primary key (%s), want (%s)", table, got, pk)
		}
	}

	// The tables accept what keysync writes, and enforce what they say.
	pgtest.Exec(t, url, `INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ('alice', 'laptop', 'age1pq1xyz')`)
	pgtest.Exec(t, url, `INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped) VALUES ('acme', 'alice', 'laptop', 1, '\x00')`)
	pgtest.Exec(t, url, `INSERT INTO shapeseal_device_certs (user_id, device_id, signer, cert) VALUES ('alice', 'laptop', $1, '\x00')`, testSigner.Public().String())
	pgtest.Exec(t, url, `INSERT INTO shapeseal_log (tenant_id, seq, entry) VALUES ('acme', 1, '\x00')`)
	for name, sql := range map[string]string{
		"recipient not age":  `INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ('bob', 'phone', 'ssh-ed25519 AAAA')`,
		"unknown device":     `INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped) VALUES ('acme', 'bob', 'phone', 1, '\x00')`,
		"generation 0":       `INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped) VALUES ('globex', 'alice', 'laptop', 0, '\x00')`,
		"keyset generation0": `INSERT INTO shapeseal_keysets (tenant_id, generation, kek_uri, encrypted_keyset) VALUES ('acme', 0, 'local:///k', '\x00')`,
		"log seq 0":          `INSERT INTO shapeseal_log (tenant_id, seq, entry) VALUES ('acme', 0, '\x00')`,
		"log seq twice":      `INSERT INTO shapeseal_log (tenant_id, seq, entry) VALUES ('acme', 1, '\x01')`,
		"cert signer":        `INSERT INTO shapeseal_device_certs (user_id, device_id, signer, cert) VALUES ('alice', 'laptop', 'not a key', '\x00')`,
	} {
		if _, err := pool.Exec(ctx, sql); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Deleting a device deletes its wrapped keys.
	pgtest.Exec(t, url, `DELETE FROM shapeseal_devices WHERE user_id = 'alice'`)
	var n int
	pool.QueryRow(ctx, `SELECT count(*) FROM shapeseal_tenant_keys`).Scan(&n)
	if n != 0 {
		t.Errorf("%d wrapped keys left after deleting their device", n)
	}
	if s := Schema(); s == "" {
		t.Fatal("empty Schema()")
	}
}

// storeLog builds, by hand, the verified log of a tenant whose first entry
// (signed by the test root) names ks under kekURI; next appends an entry
// naming a later keyset.
type storeLog struct {
	t  *testing.T
	st *chain.State
}

func newStoreLog(t *testing.T, ks *Keyset, kekURI string) *storeLog {
	l := &storeLog{t: t, st: chain.NewState(ks.Tenant(), testSigners)}
	l.next(ks, kekURI)
	return l
}

func (l *storeLog) next(ks *Keyset, kekURI string) {
	l.t.Helper()
	e, err := chain.Sign(context.Background(), chain.Entry{Tenant: l.st.Tenant(), Seq: l.st.Seq() + 1, Prev: l.st.Head(),
		Ops: []chain.Op{{Type: chain.OpKeyset, Keyset: ks.Ref(kekURI)}}}, testSigner)
	if err != nil {
		l.t.Fatal(err)
	}
	if _, err := l.st.Append(e.Bytes()); err != nil {
		l.t.Fatal(err)
	}
}

// TestStoreLoadKeyset: LoadKeyset loads the generation the log names, under
// the KEK the log names, and only if it is the keyset the log commits to.
func TestStoreLoadKeyset(t *testing.T) {
	url := pgtest.NewDB(t)
	ctx := context.Background()
	conn := connect(t, url)
	if err := ApplySchema(ctx, conn); err != nil {
		t.Fatal(err)
	}
	k := newLocalKEK(t)
	keks := UseKEK(k)

	ks1 := newTestKeyset(t, "acme")
	log := newStoreLog(t, ks1, k.URI())
	// The log names generation 1, which is not stored yet.
	_, err := LoadKeyset(ctx, conn, log.st, keks)
	if se, ok := errors.AsType[*StateError](err); !ok || !errors.Is(err, ErrStateMismatch) || se.Tenant != "acme" || se.Table != "shapeseal_keysets" {
		t.Fatalf("load before store: %v", err)
	}
	if err := StoreKeyset(ctx, conn, k, ks1); err != nil {
		t.Fatal(err)
	}
	ks2, _ := ks1.Rotate()
	if err := StoreKeyset(ctx, conn, k, ks2); err != nil {
		t.Fatal(err)
	}
	// A stored generation the log does not name yet is not loaded.
	got, err := LoadKeyset(ctx, conn, log.st, keks)
	if err != nil || got.Generation() != 1 || got.Commitment() != ks1.Commitment() {
		t.Fatalf("loaded %v (%v), want %v", got, err, ks1)
	}
	log.next(ks2, k.URI())
	got, err = LoadKeyset(ctx, conn, log.st, keks)
	if err != nil {
		t.Fatal(err)
	}
	if got.Generation() != 2 || got.PrimaryKeyID() != ks2.PrimaryKeyID() || got.Commitment() != ks2.Commitment() {
		t.Fatalf("loaded %v, want %v", got, ks2)
	}
	// A nil KEKSource opens the URI the log names.
	if got, err := LoadKeyset(ctx, conn, log.st, nil); err != nil || got.Generation() != 2 {
		t.Fatalf("load with OpenKEK: %v, %v", got, err)
	}

	// A concurrent rotation from generation 1 loses.
	lost, _ := ks1.Rotate()
	if err := StoreKeyset(ctx, conn, k, lost); !errors.Is(err, ErrGenerationExists) {
		t.Fatalf("storing a second generation 2: %v", err)
	}

	// The row records the KEK's URI, and no key material is in the clear.
	var uri string
	var enc []byte
	conn.QueryRow(ctx, `SELECT kek_uri, encrypted_keyset FROM shapeseal_keysets WHERE tenant_id = 'acme' AND generation = 2`).Scan(&uri, &enc)
	if uri != k.URI() {
		t.Errorf("kek_uri = %q, want %q", uri, k.URI())
	}

	checkLoadKEKErrors(t, conn, log, k)
	checkLoadTampered(t, url, conn, log, k, lost, enc, ks2)
}

// checkLoadKEKErrors: LoadKeyset of log with a KEK other than k, named by
// the log or not, or with a KEK source that fails, says so.
func checkLoadKEKErrors(t *testing.T, conn *pgx.Conn, log *storeLog, k KEK) {
	t.Helper()
	ctx := context.Background()
	// UseKEK refuses a log that names another KEK, and says which.
	other := newLocalKEK(t)
	_, err := LoadKeyset(ctx, conn, log.st, UseKEK(other))
	if ke, ok := errors.AsType[*KEKMismatchError](err); !ok || ke.Tenant != "acme" || ke.Log != k.URI() || ke.Configured != other.URI() {
		t.Fatalf("load with another configured KEK: %v", err)
	}
	// A KEK that is not the one the keyset is stored under cannot load it,
	// and the error names the generation.
	_, err = LoadKeyset(ctx, conn, log.st, func(string) (KEK, error) { return other, nil })
	if ke, ok := errors.AsType[*KEKError](err); !ok {
		t.Fatalf("load with another KEK: %v", err)
	} else if ke.Generation != 2 || ke.Tenant != "acme" || ke.URI != other.URI() {
		t.Fatalf("KEKError %+v", ke)
	}
	// The KEK source's own error comes through.
	boom := errors.New("boom")
	if _, err := LoadKeyset(ctx, conn, log.st, func(string) (KEK, error) { return nil, boom }); !errors.Is(err, boom) {
		t.Fatalf("KEK source error: %v", err)
	}
}

// checkLoadTampered: generation 2's row (stored as enc under k) replaced
// by another keyset (lost) or by generation 1's ciphertext, or acme's row
// moved to globex, does not load; put back, acme's loads ks2 again.
func checkLoadTampered(t *testing.T, url string, conn *pgx.Conn, log *storeLog, k KEK, lost *Keyset, enc []byte, ks2 *Keyset) {
	t.Helper()
	ctx := context.Background()
	keks := UseKEK(k)
	// Generation 2 replaced by the keyset that lost the race, validly
	// encrypted under the KEK (anyone who can use the KEK can make one):
	// not the keyset the log commits to.
	lostEnc, err := EncryptKeyset(lost, k)
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, url, `UPDATE shapeseal_keysets SET encrypted_keyset = $1 WHERE tenant_id = 'acme' AND generation = 2`, lostEnc)
	if _, err := LoadKeyset(ctx, conn, log.st, keks); !errors.Is(err, ErrStateMismatch) {
		t.Fatalf("load of another keyset of generation 2: %v", err)
	}
	pgtest.Exec(t, url, `UPDATE shapeseal_keysets SET encrypted_keyset = $1 WHERE tenant_id = 'acme' AND generation = 2`, enc)
	// Generation 1's ciphertext as generation 2's does not decrypt: the
	// associated data binds the generation.
	pgtest.Exec(t, url, `UPDATE shapeseal_keysets SET encrypted_keyset = (SELECT encrypted_keyset FROM shapeseal_keysets
		WHERE tenant_id = 'acme' AND generation = 1) WHERE tenant_id = 'acme' AND generation = 2`)
	if _, err := LoadKeyset(ctx, conn, log.st, keks); !errors.As(err, new(*KEKError)) {
		t.Fatalf("load of generation 1 as 2: %v", err)
	}
	pgtest.Exec(t, url, `UPDATE shapeseal_keysets SET encrypted_keyset = $1 WHERE tenant_id = 'acme' AND generation = 2`, enc)

	// A row moved to another tenant does not decrypt.
	gks := newTestKeyset(t, "globex")
	glog := newStoreLog(t, gks, k.URI())
	pgtest.Exec(t, url, `INSERT INTO shapeseal_keysets (tenant_id, generation, kek_uri, encrypted_keyset)
		SELECT 'globex', 1, kek_uri, encrypted_keyset FROM shapeseal_keysets WHERE tenant_id = 'acme' AND generation = 1`)
	if _, err := LoadKeyset(ctx, conn, glog.st, keks); !errors.As(err, new(*KEKError)) {
		t.Fatalf("loaded acme's keyset as globex's: %v", err)
	}
	if got, err := LoadKeyset(ctx, conn, log.st, keks); err != nil || got.Commitment() != ks2.Commitment() {
		t.Fatalf("acme after the tampering was undone: %v, %v", got, err)
	}
}

// TestStoreLoadState: LoadState verifies a tenant's log from the pinned roots and
// checks it against a floor.
func TestStoreLoadState(t *testing.T) {
	ctx := context.Background()
	e := newTrustEnv(t)
	if _, err := LoadState(ctx, e.db, e.roots, "acme", nil); !errors.Is(err, chain.ErrNoLog) {
		t.Fatalf("state of a tenant without a log: %v", err)
	}
	ks := e.tenant("acme")
	floor := NewMemoryFloor()
	st, err := LoadState(ctx, e.db, e.roots, "acme", floor)
	if err != nil || st.Seq() != 1 || st.Keyset().Commitment != ks.Commitment() {
		t.Fatalf("state %v, %v", st, err)
	}
	if m, _ := floor.Mark("acme"); m.Seq != 1 || m.Head != st.Head() {
		t.Fatalf("floor not raised: %+v", m)
	}
	// Other roots do not verify it.
	if _, err := LoadState(ctx, e.db, []VerifyKey{mustSigner().Public()}, "acme", nil); !errors.Is(err, chain.ErrUnauthorized) {
		t.Fatalf("state under other roots: %v", err)
	}
	// A log cut back below the floor is refused.
	for range 2 {
		if _, err := e.admin.Rotate(ctx, "acme"); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := LoadState(ctx, e.db, e.roots, "acme", floor); err != nil || st.Seq() != 3 {
		t.Fatal(st, err)
	}
	var third []byte
	e.db.QueryRow(ctx, `SELECT entry FROM shapeseal_log WHERE tenant_id = 'acme' AND seq = 3`).Scan(&third)
	pgtest.Exec(t, e.url, `DELETE FROM shapeseal_log WHERE tenant_id = 'acme' AND seq = 3`)
	if _, err := LoadState(ctx, e.db, e.roots, "acme", floor); !errors.Is(err, chain.ErrRollback) {
		t.Fatalf("log cut back: %v", err)
	}
	// A gap is refused by anyone, floor or not.
	pgtest.Exec(t, e.url, `INSERT INTO shapeseal_log (tenant_id, seq, entry) VALUES ('acme', 3, $1)`, third)
	pgtest.Exec(t, e.url, `DELETE FROM shapeseal_log WHERE tenant_id = 'acme' AND seq = 2`)
	if _, err := e.admin.State(ctx, "acme"); !errors.Is(err, chain.ErrBroken) {
		t.Fatalf("log with a gap: %v", err)
	}
}
