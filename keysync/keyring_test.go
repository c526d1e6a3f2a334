package keysync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

var ringSpec = TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}

// ringEnv is a database with shapeseal's schema and an items table, served
// by electrictest.
type ringEnv struct {
	t    *testing.T
	db   *pgx.Conn
	srv  *electrictest.TestServer
	seq  int
	lock sync.Mutex
}

func newRingEnv(t *testing.T) *ringEnv {
	t.Helper()
	url := pgtest.NewDB(t)
	db := connect(t, url)
	if err := ApplySchema(t.Context(), db); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, url, `CREATE TABLE items (id uuid PRIMARY KEY, tenant_id text NOT NULL, title text, body text)`)
	srv := electrictest.StartTest(t, electrictest.Options{DatabaseURL: url, LongPollTimeout: 300 * time.Millisecond})
	return &ringEnv{t: t, db: db, srv: srv}
}

func (e *ringEnv) exec(sql string, args ...any) {
	e.t.Helper()
	e.lock.Lock()
	defer e.lock.Unlock()
	if _, err := e.db.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatal(err)
	}
}

// device registers a new hybrid identity for user's device.
func (e *ringEnv) device(user, device string) *age.HybridIdentity {
	e.t.Helper()
	id, err := GenerateIdentity()
	if err != nil {
		e.t.Fatal(err)
	}
	rcpt, _ := RecipientOf(id)
	e.exec(`INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ($1, $2, $3)`, user, device, rcpt)
	return id
}

// grant wraps ks to the device and stores it as the row of (tenant, user, device).
func (e *ringEnv) grant(ks *Keyset, tenant, user, device string, id *age.HybridIdentity) {
	e.t.Helper()
	wrapped, err := Wrap(ks, testSigner, id.Recipient().String())
	if err != nil {
		e.t.Fatal(err)
	}
	e.exec(`INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (tenant_id, user_id, device_id) DO UPDATE SET generation = excluded.generation, wrapped = excluded.wrapped`,
		tenant, user, device, int64(ks.Generation()), wrapped)
}

// item inserts a row sealed with ks and returns its id.
func (e *ringEnv) item(ks *Keyset, title, body string) string {
	e.t.Helper()
	e.seq++
	id := fmt.Sprintf("00000000-0000-4000-8000-%012x", e.seq)
	row := map[string]any{"id": id, "tenant_id": ks.Tenant(), "title": title, "body": body}
	if err := ringSpec.SealRow(ks, row); err != nil {
		e.t.Fatal(err)
	}
	e.exec(`INSERT INTO items (id, tenant_id, title, body) VALUES ($1, $2, $3, $4)`, id, ks.Tenant(), row["title"], row["body"])
	return id
}

// ring starts a keyring for the device and waits until it is ready.
func (e *ringEnv) ring(user, device string, id age.Identity, wait time.Duration) (*Keyring, *rowErrors) {
	e.t.Helper()
	return e.ringWith(user, device, id, wait, nil)
}

// ringWith is ring with a generation floor.
func (e *ringEnv) ringWith(user, device string, id age.Identity, wait time.Duration, floor GenerationFloor) (*Keyring, *rowErrors) {
	e.t.Helper()
	errs := &rowErrors{}
	r, err := NewKeyring(KeyringOptions{
		Stream:     KeyShapeOptions(e.srv.URL+"/v1/shape", user, device),
		Identity:   id,
		Signers:    testSigners,
		Floor:      floor,
		KeyWait:    wait,
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

// items follows the items shape live through a decrypter and sends every
// change message's value.
func (e *ringEnv) items(r *Keyring) <-chan client.Row {
	e.t.Helper()
	dec, err := NewDecrypter(r, ringSpec)
	if err != nil {
		e.t.Fatal(err)
	}
	s, err := client.New(client.Options{URL: e.srv.URL + "/v1/shape", Params: client.Params{Table: "items"}, Live: true, Transform: dec.Transform})
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan client.Row, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range s.Messages(ctx) {
			if err != nil {
				return
			}
			if m.IsChange() {
				out <- m.Value
			}
		}
	}()
	e.t.Cleanup(func() { cancel(); <-done; s.Close() })
	return out
}

func next(t *testing.T, ch <-chan client.Row, within time.Duration) client.Row {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(within):
		t.Fatalf("no message within %s", within)
		return nil
	}
}

func TestKeyringGrantRotateRevoke(t *testing.T) {
	t.Parallel()
	e := newRingEnv(t)
	alice := e.device("alice", "phone")
	bob := e.device("bob", "laptop")
	ks1, _ := NewKeyset("acme")
	e.grant(ks1, "acme", "bob", "laptop", bob)

	// Alice's reader starts before she is granted anything.
	ring, rowErrs := e.ring("alice", "phone", alice, 3*time.Second)
	bobRing, _ := e.ring("bob", "laptop", bob, time.Second)
	if ring.Tenants() != 0 || bobRing.Keyset("acme") == nil {
		t.Fatalf("alice holds %d tenants, bob %v", ring.Tenants(), bobRing.Keyset("acme"))
	}
	rows := e.items(ring)

	// A row written before the grant reaches her: opening waits for the key.
	start := time.Now()
	e.item(ks1, "before grant", "b1")
	time.Sleep(100 * time.Millisecond)
	e.grant(ks1, "acme", "alice", "phone", alice)
	v := next(t, rows, 5*time.Second)
	if v["title"] != "before grant" || v["body"] != "b1" {
		t.Fatalf("after grant: %v", v)
	}
	t.Logf("grant picked up in %s", time.Since(start))

	// Rotation: a cell under the new key arrives before the new keyset.
	ks2, _ := ks1.Rotate()
	e.item(ks2, "rotated", "b2")
	e.grant(ks2, "acme", "alice", "phone", alice)
	e.grant(ks2, "acme", "bob", "laptop", bob)
	if v := next(t, rows, 5*time.Second); v["title"] != "rotated" {
		t.Fatalf("after rotation: %v", v)
	}
	// Old cells still open with the new generation.
	e.item(ks1, "old key", "b3")
	if v := next(t, rows, 5*time.Second); v["title"] != "old key" {
		t.Fatalf("old key after rotation: %v", v)
	}
	if g := ring.Keyset("acme").Generation(); g != 2 {
		t.Fatalf("generation %d", g)
	}

	// Revocation: alice's row is deleted, the keyset rotated and re-wrapped
	// for bob.
	e.exec(`DELETE FROM shapeseal_tenant_keys WHERE user_id = 'alice'`)
	ks3, _ := ks2.Rotate()
	e.grant(ks3, "acme", "bob", "laptop", bob)
	wctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := ring.Wait(wctx, "acme", func(ks *Keyset) bool { return ks == nil }); err != nil {
		t.Fatalf("waiting for alice's revocation: %v", err)
	}
	if ks, err := bobRing.Wait(wctx, "acme", func(ks *Keyset) bool { return ks != nil && ks.Generation() >= 3 }); err != nil || ks.Generation() != 3 {
		t.Fatalf("waiting for bob's generation 3: %v, %v", ks, err)
	}
	c := ringSpec
	id := e.item(ks3, "after revoke", "b4")
	start = time.Now()
	v = next(t, rows, 10*time.Second)
	for _, col := range []string{"title", "body"} {
		ce, ok := v[col].(*CellError)
		if !ok || !errors.Is(ce, ErrNoKey) || ce.Code() != "no_key" {
			t.Fatalf("revoked %s: %#v", col, v[col])
		}
		if strings.Contains(ce.Error(), "after revoke") {
			t.Fatal("error holds plaintext")
		}
	}
	if d := time.Since(start); d < 2*time.Second {
		t.Errorf("gave up after %s, before the wait bound", d)
	}
	// Bob, still a member, opens it.
	row := map[string]any{"id": id, "tenant_id": "acme"}
	cell, _ := e.cellOf(id, "title")
	cc, _ := c.CellContext(row, "title")
	waitUntil(t, func() bool { k := bobRing.Keyset("acme"); return k != nil && k.Generation() == 3 })
	pt, err := bobRing.Open(t.Context(), cc, cell)
	if err != nil || string(pt) != "after revoke" {
		t.Fatalf("bob: %q %v", pt, err)
	}
	// A second cell under the same missing key fails at once.
	start = time.Now()
	if _, err := ring.Open(t.Context(), cc, cell); !errors.Is(err, ErrNoKey) || time.Since(start) > time.Second {
		t.Fatalf("second open: %v after %s", err, time.Since(start))
	}
	rowErrs.mu.Lock()
	defer rowErrs.mu.Unlock()
	if len(rowErrs.errs) != 0 {
		t.Errorf("row errors: %v", rowErrs.errs)
	}
}

func (e *ringEnv) cellOf(id, col string) (string, error) {
	e.lock.Lock()
	defer e.lock.Unlock()
	var s string
	err := e.db.QueryRow(context.Background(), `SELECT `+col+` FROM items WHERE id = $1`, id).Scan(&s)
	return s, err
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	for range 400 {
		if cond() {
			return
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatal("condition not reached within 10s")
}

func TestKeyringRefusesBadRows(t *testing.T) {
	t.Parallel()
	e := newRingEnv(t)
	alice := e.device("alice", "phone")
	acme, _ := NewKeyset("acme")
	acme2, _ := acme.Rotate()
	e.grant(acme2, "acme", "alice", "phone", alice)
	ring, rowErrs := e.ring("alice", "phone", alice, -1)

	// acme's keyset, wrapped to alice, stored as tenant evil's row: a swap.
	wrapped, _ := Wrap(acme2, testSigner, alice.Recipient().String())
	e.exec(`INSERT INTO shapeseal_tenant_keys VALUES ('evil', 'alice', 'phone', 2, $1)`, wrapped)
	re := rowErrs.waitFor(t, ErrTenantMismatch)
	if re.Tenant != "evil" {
		t.Errorf("row error %v", re)
	}
	// A payload wrapped for another device.
	other, _ := GenerateIdentity()
	globex, _ := NewKeyset("globex")
	wrapped, _ = Wrap(globex, testSigner, other.Recipient().String())
	e.exec(`INSERT INTO shapeseal_tenant_keys VALUES ('globex', 'alice', 'phone', 1, $1)`, wrapped)
	rowErrs.waitFor(t, ErrWrongIdentity)
	// A keyset of someone else's making, wrapped to alice's public
	// recipient at a higher generation, in place of her acme row: whoever
	// can write the table cannot make her adopt it.
	forger, _ := GenerateSigner()
	forged, _ := NewKeyset("acme")
	for range 5 {
		forged, _ = forged.Rotate()
	}
	wrapped, _ = Wrap(forged, forger, alice.Recipient().String())
	e.exec(`UPDATE shapeseal_tenant_keys SET generation = 6, wrapped = $1 WHERE tenant_id = 'acme' AND user_id = 'alice'`, wrapped)
	rowErrs.waitFor(t, ErrUntrustedKeyset)
	if ks := ring.Keyset("acme"); ks == nil || ks.Generation() != 2 {
		t.Fatalf("after a forged row, acme: %v", ks)
	}
	// Garbage.
	e.exec(`INSERT INTO shapeseal_tenant_keys VALUES ('junk', 'alice', 'phone', 1, '\x00010203')`)
	rowErrs.waitFor(t, ErrMalformedPayload)
	// An older generation replayed.
	e.grant(acme, "acme", "alice", "phone", alice)
	rowErrs.waitFor(t, ErrStaleGeneration)

	for _, tenant := range []string{"evil", "globex", "junk"} {
		if ring.Keyset(tenant) != nil {
			t.Errorf("ring holds %s", tenant)
		}
	}
	if ks := ring.Keyset("acme"); ks == nil || ks.Generation() != 2 {
		t.Fatalf("acme: %v", ks)
	}
	// The ring still opens acme's cells.
	rows := e.items(ring)
	e.item(acme2, "still fine", "x")
	if v := next(t, rows, 5*time.Second); v["title"] != "still fine" {
		t.Fatalf("%v", v)
	}
}

func TestKeyringWrongIdentity(t *testing.T) {
	t.Parallel()
	e := newRingEnv(t)
	alice := e.device("alice", "phone")
	acme, _ := NewKeyset("acme")
	e.grant(acme, "acme", "alice", "phone", alice)
	mallory, _ := GenerateIdentity()
	// Mallory follows alice's rows with her own identity.
	ring, rowErrs := e.ring("alice", "phone", mallory, -1)
	re := rowErrs.waitFor(t, ErrWrongIdentity)
	if re.Tenant != "acme" || re.Generation != 1 {
		t.Errorf("%v", re)
	}
	if ring.Tenants() != 0 {
		t.Fatal("ring holds a key")
	}
	rows := e.items(ring)
	e.item(acme, "secret", "s")
	v := next(t, rows, 5*time.Second)
	if ce, ok := v["title"].(*CellError); !ok || !errors.Is(ce, ErrNoKey) {
		t.Fatalf("%#v", v["title"])
	}
}

// staticRing is a keyring that holds keysets but follows nothing.
func staticRing(t *testing.T, keysets ...*Keyset) *Keyring {
	id, _ := GenerateIdentity()
	r, err := NewKeyring(KeyringOptions{Stream: client.Options{URL: "http://127.0.0.1:1/v1/shape"}, Identity: id, Signers: testSigners, KeyWait: -1})
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]ringRow{}
	for _, ks := range keysets {
		rows[ks.Tenant()] = ringRow{tenant: ks.Tenant(), ks: ks}
	}
	r.publish(rows)
	return r
}

// TestKeyringFloor is the rollback that a generation floor stops: whoever
// can write the key table puts back an older payload once genuinely signed
// for alice's device, after a rotation. A keyring that starts afresh adopts
// it; one with the floor of its earlier run refuses it.
func TestKeyringFloor(t *testing.T) {
	t.Parallel()
	e := newRingEnv(t)
	alice := e.device("alice", "phone")
	ks1, _ := NewKeyset("acme")
	ks2, _ := ks1.Rotate()
	old, err := Wrap(ks1, testSigner, alice.Recipient().String()) // kept by the attacker
	if err != nil {
		t.Fatal(err)
	}
	e.grant(ks2, "acme", "alice", "phone", alice)

	path := filepath.Join(t.TempDir(), "floor.json")
	floor, err := OpenFileFloor(path)
	if err != nil {
		t.Fatal(err)
	}
	first, _ := e.ringWith("alice", "phone", alice, -1, floor)
	if ks := first.Keyset("acme"); ks == nil || ks.Generation() != 2 {
		t.Fatalf("first run holds %v", ks)
	}
	first.Close()

	e.exec(`UPDATE shapeseal_tenant_keys SET generation = 1, wrapped = $1 WHERE user_id = 'alice'`, old)
	// A client arriving later sees only the table as it is now (as after
	// Electric compacts a shape's log), not the generation-2 row before it.
	if _, err := e.srv.Rotate("shapeseal_tenant_keys"); err != nil {
		t.Fatal(err)
	}
	if fresh, _ := e.ring("alice", "phone", alice, -1); fresh.Keyset("acme") == nil || fresh.Keyset("acme").Generation() != 1 {
		t.Fatalf("without a floor, a fresh ring holds %v (the rollback this test is about)", fresh.Keyset("acme"))
	}
	reopened, err := OpenFileFloor(path)
	if err != nil {
		t.Fatal(err)
	}
	second, errs := e.ringWith("alice", "phone", alice, -1, reopened)
	errs.waitFor(t, ErrStaleGeneration)
	if ks := second.Keyset("acme"); ks != nil {
		t.Fatalf("with the floor, the ring adopted generation %d", ks.Generation())
	}
}

func TestFileFloor(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "floor.json")
	f, err := OpenFileFloor(path)
	if err != nil {
		t.Fatal(err)
	}
	if g, _ := f.Floor("acme"); g != 0 {
		t.Fatalf("empty floor: %d", g)
	}
	if err := f.Raise("acme", 3); err != nil {
		t.Fatal(err)
	}
	if err := f.Raise("acme", 2); err != nil { // lower: no change
		t.Fatal(err)
	}
	f.Raise("globex", 1)
	g, err := OpenFileFloor(path)
	if err != nil {
		t.Fatal(err)
	}
	if a, _ := g.Floor("acme"); a != 3 {
		t.Fatalf("reopened floor: acme %d, want 3", a)
	}
	if b, _ := g.Floor("globex"); b != 1 {
		t.Fatalf("reopened floor: globex %d, want 1", b)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("floor file mode %v, %v", fi.Mode(), err)
	}
	os.Chmod(path, 0o666)
	if _, err := OpenFileFloor(path); !errors.Is(err, ErrInsecureFile) {
		t.Fatalf("a floor file others can write: %v", err)
	}
	os.WriteFile(filepath.Join(dir, "bad.json"), []byte("not json"), 0o600)
	if _, err := OpenFileFloor(filepath.Join(dir, "bad.json")); err == nil {
		t.Fatal("a malformed floor file was accepted")
	}
}

func TestKeyringWait(t *testing.T) {
	acme, _ := NewKeyset("acme")
	r := staticRing(t, acme)
	ctx := context.Background()
	if ks, err := r.Wait(ctx, "acme", func(ks *Keyset) bool { return ks != nil }); err != nil || ks != acme {
		t.Fatalf("Wait for a held keyset: %v, %v", ks, err)
	}
	// A change wakes a waiter; the condition is checked again.
	got := make(chan *Keyset, 1)
	go func() {
		ks, _ := r.Wait(ctx, "acme", func(ks *Keyset) bool { return ks != nil && ks.Generation() >= 2 })
		got <- ks
	}()
	globex, _ := NewKeyset("globex")
	r.publish(map[string]ringRow{"a": {tenant: "acme", ks: acme}, "g": {tenant: "globex", ks: globex}}) // not yet
	acme2, _ := acme.Rotate()
	r.publish(map[string]ringRow{"a": {tenant: "acme", ks: acme2}})
	if ks := <-got; ks != acme2 {
		t.Fatalf("Wait returned %v, want generation 2", ks)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := r.Wait(cctx, "globex", func(ks *Keyset) bool { return ks != nil }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait with a done context: %v", err)
	}
	r.Close()
	if _, err := r.Wait(ctx, "globex", func(ks *Keyset) bool { return ks != nil }); !errors.Is(err, ErrKeyringClosed) {
		t.Fatalf("Wait on a closed ring: %v", err)
	}
}

func TestDecrypterPerCellErrors(t *testing.T) {
	acme, _ := NewKeyset("acme")
	globex, _ := NewKeyset("globex")
	dec, err := NewDecrypter(staticRing(t, acme, globex), ringSpec)
	if err != nil {
		t.Fatal(err)
	}
	seal := func(tenant *Keyset, id, title string) string {
		row := map[string]any{"id": id, "tenant_id": tenant.Tenant(), "title": title}
		if err := ringSpec.SealRow(tenant, row); err != nil {
			t.Fatal(err)
		}
		return row["title"].(string)
	}
	good := seal(acme, "1", "hello")
	tampered := []byte(good)
	i := len(tampered) - 5 // in the GCM tag, not in the last (partial) base64 character
	if tampered[i] == 'A' {
		tampered[i] = 'B'
	} else {
		tampered[i] = 'A'
	}
	msg := func(op client.Operation, key string, v client.Row) *client.Message {
		return &client.Message{Key: key, Value: v, Headers: client.Headers{Operation: op, Relation: []string{"public", "items"}}}
	}
	for _, tc := range []struct {
		name string
		row  client.Row
		want any // plaintext, nil, or an error code
	}{
		{"ok", client.Row{"id": "1", "tenant_id": "acme", "title": good}, "hello"},
		{"null", client.Row{"id": "1", "tenant_id": "acme", "title": nil}, nil},
		{"tampered", client.Row{"id": "1", "tenant_id": "acme", "title": string(tampered)}, "auth"},
		{"moved row", client.Row{"id": "2", "tenant_id": "acme", "title": good}, "auth"},
		{"moved column", client.Row{"id": "1", "tenant_id": "acme", "body": good}, "auth"},
		{"moved tenant", client.Row{"id": "1", "tenant_id": "globex", "title": good}, "no_key"},
		{"unknown tenant", client.Row{"id": "1", "tenant_id": "initech", "title": good}, "no_key"},
		{"plaintext", client.Row{"id": "1", "tenant_id": "acme", "title": "hello"}, "not_encrypted"},
		{"garbage", client.Row{"id": "1", "tenant_id": "acme", "title": "ss1:!!"}, "malformed_cell"},
		{"no tenant", client.Row{"id": "9", "title": good}, "invalid_context"},
	} {
		m := msg(client.Insert, `"public"."items"/"`+tc.name+`"`, tc.row)
		if err := dec.Transform(m); err != nil {
			t.Fatal(err)
		}
		col := "title"
		if _, ok := tc.row["body"]; ok {
			col = "body"
		}
		got := m.Value[col]
		if ce, ok := got.(*CellError); ok {
			if ce.Code() != tc.want {
				t.Errorf("%s: %v (%s), want %v", tc.name, ce, ce.Code(), tc.want)
			}
			b, _ := json.Marshal(m)
			if !strings.Contains(string(b), `"`+col+`":{"error":"`+ce.Code()+`","message":"keysync: open public.items.`+col) {
				t.Errorf("%s: JSON %s", tc.name, b)
			}
			if len(CellErrors(m.Value)) != 1 {
				t.Errorf("%s: CellErrors", tc.name)
			}
		} else if got != tc.want {
			t.Errorf("%s: %#v, want %v", tc.name, got, tc.want)
		}
	}

	// An update with replica=default omits the tenant column: the decrypter
	// remembers it from the insert.
	key := `"public"."items"/"1"`
	dec.Transform(msg(client.Insert, key, client.Row{"id": "1", "tenant_id": "acme", "title": good}))
	m := msg(client.Update, key, client.Row{"id": "1", "title": seal(acme, "1", "changed")})
	dec.Transform(m)
	if m.Value["title"] != "changed" {
		t.Fatalf("update: %#v", m.Value["title"])
	}
	// After a delete it is forgotten.
	dec.Transform(msg(client.Delete, key, client.Row{"id": "1"}))
	m = msg(client.Update, key, client.Row{"id": "1", "title": good})
	dec.Transform(m)
	if ce, ok := m.Value["title"].(*CellError); !ok || !errors.Is(ce, ErrInvalidContext) {
		t.Fatalf("update after delete: %#v", m.Value["title"])
	}
	// Tables without a spec pass through.
	m = &client.Message{Key: "k", Value: client.Row{"title": "x"}, Headers: client.Headers{Operation: client.Insert, Relation: []string{"public", "other"}}}
	dec.Transform(m)
	if m.Value["title"] != "x" {
		t.Fatal("other table changed")
	}
}

// count409 counts the 409 responses of a transport.
type count409 struct {
	mu sync.Mutex
	n  int
}

func (c *count409) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusConflict {
		c.mu.Lock()
		c.n++
		c.mu.Unlock()
	}
	return resp, err
}

func (c *count409) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func TestKeyringMustRefetch(t *testing.T) {
	t.Parallel()
	e := newRingEnv(t)
	alice := e.device("alice", "phone")
	acme, _ := NewKeyset("acme")
	e.grant(acme, "acme", "alice", "phone", alice)

	conflicts := &count409{}
	opts := KeyShapeOptions(e.srv.URL+"/v1/shape", "alice", "phone")
	opts.HTTPClient = &http.Client{Transport: conflicts}
	ring, err := NewKeyring(KeyringOptions{Stream: opts, Identity: alice, Signers: testSigners, UserID: "alice", DeviceID: "phone"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ring.Run(t.Context()) }()
	defer func() {
		ring.Close()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	if err := ring.Ready(t.Context()); err != nil {
		t.Fatal(err)
	}
	ks := ring.Keyset("acme")
	if ks == nil {
		t.Fatal("no acme")
	}

	// Readers open cells concurrently throughout.
	cc := CellContext{Table: "public.items", Column: "title", Tenant: "acme", RowKey: []string{"1"}}
	cell, _ := Seal(acme, cc, []byte("hi"))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if pt, err := ring.Open(t.Context(), cc, cell); err != nil || string(pt) != "hi" {
					t.Errorf("concurrent open: %q %v", pt, err)
					return
				}
			}
		})
	}

	stopReaders := sync.OnceFunc(func() { close(stop); wg.Wait() })
	defer stopReaders()

	// The shape is invalidated: the ring refetches it and is rebuilt, and
	// keeps serving the old ring meanwhile.
	if n, _ := e.srv.Rotate(TenantKeysTable); n == 0 {
		t.Fatal("no shape rotated")
	}
	for deadline := time.Now().Add(10 * time.Second); conflicts.count() == 0 || ring.Keyset("acme") == ks; {
		if ring.Keyset("acme") == nil {
			t.Fatal("acme missing during the refetch")
		}
		if time.Now().After(deadline) {
			t.Fatalf("no rebuild: %d conflicts", conflicts.count())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if g := ring.Keyset("acme").Generation(); g != 1 {
		t.Fatalf("rebuilt generation %d", g)
	}
	stopReaders()

	// It still follows live: a grant, then a revocation.
	globex, _ := NewKeyset("globex")
	e.grant(globex, "globex", "alice", "phone", alice)
	waitUntil(t, func() bool { return ring.Keyset("globex") != nil })
	e.exec(`DELETE FROM shapeseal_tenant_keys WHERE tenant_id = 'acme'`)
	waitUntil(t, func() bool { return ring.Keyset("acme") == nil })
	if ring.Tenants() != 1 {
		t.Fatalf("%d tenants", ring.Tenants())
	}
}
