package keysync

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// The keyring's tests run on trustEnv (trustenv_test.go, with the methods
// of keyring_env_test.go): every row a ring adopts is backed by the
// tenant's log, written by the env's Admin with the pinned root key. The
// attacks on the ring from the database — forged, swapped, replayed,
// planted and rolled-back rows and logs — are in keyring_trust_test.go;
// here (and in keyring_regrant_test.go, keyring_serving_test.go and
// floor_test.go) are the ring's live behaviours and the refusal of
// malformed rows.

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

// TestKeyringGrantRotateRevoke follows a device through a tenant's life,
// live, with the Admin: a grant picked up while a cell waits for it, a
// rotation whose cells arrive before the keyset, and a revocation that
// drops the tenant from the ring while another member keeps it.
func TestKeyringGrantRotateRevoke(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newTrustEnv(t)
	ks1 := e.tenant("acme")
	alice := e.device("alice", "phone")
	bob := e.device("bob", "laptop")
	e.grant("acme", "bob")

	// Alice's reader starts before she is granted anything.
	ring, rowErrs := e.ring("alice", "phone", alice, nil)
	bobRing, bobErrs := e.ring("bob", "laptop", bob, nil)
	if ring.Tenants() != 0 {
		t.Fatalf("alice holds %d tenants before her grant", ring.Tenants())
	}
	holds(t, bobRing, "acme", ks1)
	g := &grantRing{t: t, ctx: ctx, e: e, ring: ring, bobRing: bobRing, rows: e.items(ring)}

	// A row written before the grant reaches her: opening waits for the key.
	start := time.Now()
	e.item(ks1, "before grant", "b1")
	time.Sleep(100 * time.Millisecond)
	e.grant("acme", "alice")
	v := next(t, g.rows, 5*time.Second)
	if v["title"] != "before grant" || v["body"] != "b1" {
		t.Fatalf("after grant: %v", v)
	}
	t.Logf("grant picked up in %s", time.Since(start))
	holds(t, ring, "acme", ks1)

	g.rotate(ks1)

	// Revocation: the log removes alice and names a rotated keyset, which
	// is re-wrapped for bob; her row is deleted.
	reported := len(rowErrs.all())
	ks3, err := e.admin.Revoke(ctx, "acme", "alice")
	if err != nil {
		t.Fatal(err)
	}
	waitGen(t, ring, "acme", 0)
	holds(t, waitGenRing(t, bobRing, "acme", 3), "acme", ks3)
	g.checkRevokedRead(ks3)

	// No row was refused. Alice's ring reported her revocation (the log no
	// longer lists her device), and at most, while her grant was in flight,
	// a key row that arrived before the log.
	for _, re := range rowErrs.all() {
		if re.Key != "" || re.Tenant != "acme" || !errors.Is(re, ErrNotMember) && !errors.Is(re, chain.ErrNoLog) {
			t.Errorf("alice: row error %v", re)
		}
	}
	if !slices.ContainsFunc(rowErrs.all()[reported:], func(re *KeyRowError) bool { return errors.Is(re, ErrNotMember) }) {
		t.Error("alice's ring did not report that the log no longer lists her device")
	}
	if errs := bobErrs.all(); len(errs) != 0 {
		t.Errorf("bob: row errors %v", errs)
	}
}

// grantRing is TestKeyringGrantRotateRevoke's alice's ring, the items
// she reads through it, and bob's ring.
type grantRing struct {
	t             *testing.T
	ctx           context.Context
	e             *trustEnv
	ring, bobRing *Keyring
	rows          <-chan client.Row
}

// rotate: a cell under the new key arrives before the new keyset. The
// rotation runs in a transaction held open while the cell is written and
// delivered. Old cells still open with the new generation.
func (g *grantRing) rotate(ks1 *Keyset) {
	t, ctx, e, ring := g.t, g.ctx, g.e, g.ring
	t.Helper()
	tx, err := e.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	inTx := e.adminWith(e.root)
	inTx.DB = tx
	ks2, err := inTx.Rotate(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	e.item(ks2, "rotated", "b2")
	time.Sleep(200 * time.Millisecond) // the decrypter waits for the key
	holds(t, ring, "acme", ks1)        // the rotation is not committed yet
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if v := next(t, g.rows, 5*time.Second); v["title"] != "rotated" || v["body"] != "b2" {
		t.Fatalf("after rotation: %v", v)
	}
	e.item(ks1, "old key", "b3")
	if v := next(t, g.rows, 5*time.Second); v["title"] != "old key" {
		t.Fatalf("old key after rotation: %v", v)
	}
	holds(t, ring, "acme", ks2)
}

// checkRevokedRead: a row sealed with ks3, after alice's revocation,
// reaches her as a no_key error per cell once the wait bound passes, a
// second cell fails at once, and bob, still a member, opens it.
func (g *grantRing) checkRevokedRead(ks3 *Keyset) {
	t, ctx, e := g.t, g.ctx, g.e
	t.Helper()
	id := e.item(ks3, "after revoke", "b4")
	start := time.Now()
	v := next(t, g.rows, 10*time.Second)
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
	cc, cell := cellContext("acme", id, "title"), e.cellOf(id, "title")
	pt, err := g.bobRing.Open(ctx, cc, cell)
	if err != nil || string(pt) != "after revoke" {
		t.Fatalf("bob: %q %v", pt, err)
	}
	// A second cell under the same missing key fails at once.
	start = time.Now()
	if _, err := g.ring.Open(ctx, cc, cell); !errors.Is(err, ErrNoKey) || time.Since(start) > time.Second {
		t.Fatalf("second open: %v after %s", err, time.Since(start))
	}
}

// waitGenRing is waitGen that returns the ring, for chaining.
func waitGenRing(t *testing.T, r *Keyring, tenant string, gen uint64) *Keyring {
	t.Helper()
	waitGen(t, r, tenant, gen)
	return r
}

// TestKeyringRefusesBadRows: rows that are not what they claim — a
// keyset of one tenant in another tenant's row, a payload wrapped for
// another device, garbage, a row of a tenant without a log, an older
// generation replayed — are refused with their sentinel, and none is ever
// adopted. (Forged, cross-tenant, planted and rolled-back rows are in
// keyring_trust_test.go.)
func TestKeyringRefusesBadRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newTrustEnv(t)
	alice := e.device("alice", "phone")
	e.tenant("acme")
	evil := e.tenant("evil")
	globex := e.tenant("globex")
	for _, tenant := range []string{"acme", "evil", "globex"} {
		e.grant(tenant, "alice")
	}
	_, acme1Wrapped := e.keyRow("acme", "alice", "phone") // kept by the attacker
	acme2, err := e.admin.Rotate(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	errs := &rowErrors{}
	opts := e.ringOptions("alice", "phone", alice, nil, errs)
	opts.KeyWait = -1
	ring, _ := e.startRing(opts)
	holds(t, ring, "acme", acme2)
	holds(t, ring, "evil", evil)
	holds(t, ring, "globex", globex)

	// acme's keyset, wrapped to alice and signed by the root, stored as her
	// row of tenant evil: a swap.
	e.putRow("evil", "alice", "phone", "", 2, e.wrapTo(acme2, e.root, alice))
	errs.refusal(t, ErrTenantMismatch, "evil")
	// Garbage in the same row.
	e.putRow("evil", "alice", "phone", "", 1, []byte{0, 1, 2, 3})
	errs.refusal(t, ErrMalformedPayload, "evil")
	// A payload wrapped for another device, in her globex row.
	other, _ := GenerateIdentity()
	e.putRow("globex", "alice", "phone", "", 1, e.wrapTo(globex, e.root, other))
	errs.refusal(t, ErrWrongIdentity, "globex")
	// A row of a tenant that has no log: nothing backs it.
	junk, _ := NewKeyset("junk")
	e.putRow("junk", "alice", "phone", "", 1, e.wrapTo(junk, e.root, alice))
	re := errs.refusal(t, chain.ErrNoLog, "junk")
	if re.Key != "" {
		t.Errorf("a tenant without a log is refused as a whole: %v", re)
	}
	// An older generation replayed: the genuine generation-1 payload,
	// signed by the root for her device, in place of generation 2.
	e.putRow("acme", "alice", "phone", "", 1, acme1Wrapped)
	errs.refusal(t, ErrStaleGeneration, "acme")

	// None of them was adopted.
	for _, tenant := range []string{"evil", "globex", "acme"} {
		if ks := ring.Keyset(tenant); ks != nil && ks.Commitment() != e.current(tenant).Commitment() {
			t.Errorf("tenant %s: the ring adopted %v", tenant, ks)
		}
	}
	holds(t, ring, "junk", nil)

	// A grant puts the genuine rows back, and the ring opens the cells.
	for _, tenant := range []string{"acme", "evil", "globex"} {
		e.grant(tenant, "alice")
	}
	waitGen(t, ring, "acme", 2)
	waitGen(t, ring, "evil", 1)
	waitGen(t, ring, "globex", 1)
	holds(t, ring, "acme", acme2)
	rows := e.items(ring)
	e.item(acme2, "still fine", "x")
	if v := next(t, rows, 5*time.Second); v["title"] != "still fine" {
		t.Fatalf("%v", v)
	}
}

// TestKeyringWrongIdentity: mallory follows alice's rows and her log with
// her own identity. The log does not list mallory's recipient, and the
// payloads are not wrapped to it: she gets nothing, and cells do not open.
func TestKeyringWrongIdentity(t *testing.T) {
	t.Parallel()
	e := newTrustEnv(t)
	acme := e.tenant("acme")
	e.device("alice", "phone")
	e.grant("acme", "alice")
	mallory, _ := GenerateIdentity()
	errs := &rowErrors{}
	opts := e.ringOptions("alice", "phone", mallory, nil, errs)
	opts.KeyWait = -1
	ring, _ := e.startRing(opts)
	re := errs.refusal(t, ErrNotMember, "acme")
	if re.Key != "" {
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
	t.Helper()
	id, _ := GenerateIdentity()
	nowhere := client.Options{URL: "http://127.0.0.1:1/v1/shape"}
	r, err := NewKeyring(KeyringOptions{Stream: nowhere, Log: nowhere, Identity: id, Roots: testSigners, Floor: NewMemoryFloor(), KeyWait: -1})
	if err != nil {
		t.Fatal(err)
	}
	setKeys(r, keysets...)
	return r
}

// setKeys publishes a version of r that holds exactly keysets, as Run does
// when it has decided.
func setKeys(r *Keyring, keysets ...*Keyset) {
	keys := map[string]*Keyset{}
	for _, ks := range keysets {
		keys[ks.Tenant()] = ks
	}
	old := r.state.Load()
	r.state.Store(&ringState{keys: keys, ready: true, changed: make(chan struct{})})
	close(old.changed)
}

func TestNewKeyringOptions(t *testing.T) {
	id, _ := GenerateIdentity()
	shape := client.Options{URL: "http://127.0.0.1:1/v1/shape"}
	good := KeyringOptions{Stream: shape, Log: shape, Identity: id, Roots: testSigners, Floor: NewMemoryFloor()}
	if _, err := NewKeyring(good); err != nil {
		t.Fatal(err)
	}
	for name, change := range map[string]func(o *KeyringOptions){
		"no identity":  func(o *KeyringOptions) { o.Identity = nil },
		"no roots":     func(o *KeyringOptions) { o.Roots = nil },
		"no floor":     func(o *KeyringOptions) { o.Floor = nil },
		"no key shape": func(o *KeyringOptions) { o.Stream.URL = "" },
		"no log shape": func(o *KeyringOptions) { o.Log.URL = "" },
		"bad log URL":  func(o *KeyringOptions) { o.Log.URL = "http://[::1" },
	} {
		o := good
		change(&o)
		if _, err := NewKeyring(o); err == nil {
			t.Errorf("%s: NewKeyring succeeded", name)
		}
	}
}

func TestKeyringWait(t *testing.T) {
	acme, _ := NewKeyset("acme")
	r := staticRing(t, acme)
	ctx := context.Background()
	if err := r.Ready(ctx); err != nil {
		t.Fatalf("Ready of a published ring: %v", err)
	}
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
	setKeys(r, acme, globex) // not yet
	acme2, _ := acme.Rotate()
	setKeys(r, acme2)
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

// TestKeyringReady: Ready waits for both shapes, and fails on a ring that
// is closed, or that cannot reach its shapes, once its context ends.
func TestKeyringReady(t *testing.T) {
	id, _ := GenerateIdentity()
	nowhere := client.Options{URL: "http://127.0.0.1:1/v1/shape"}
	r, err := NewKeyring(KeyringOptions{Stream: nowhere, Log: nowhere, Identity: id, Roots: testSigners, Floor: NewMemoryFloor()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := r.Ready(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ready of a ring that never ran: %v", err)
	}
	r.Close()
	if err := r.Ready(context.Background()); !errors.Is(err, ErrKeyringClosed) {
		t.Fatalf("Ready of a closed ring: %v", err)
	}
}

func TestDecrypterPerCellErrors(t *testing.T) {
	acme, _ := NewKeyset("acme")
	globex, _ := NewKeyset("globex")
	dec, err := NewDecrypter(staticRing(t, acme, globex), ringSpec)
	if err != nil {
		t.Fatal(err)
	}
	good := sealTitle(t, acme, "1", "hello")
	tampered := []byte(good)
	i := len(tampered) - 5 // in the GCM tag, not in the last (partial) base64 character
	if tampered[i] == 'A' {
		tampered[i] = 'B'
	} else {
		tampered[i] = 'A'
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
		{"empty tenant", client.Row{"id": "1", "tenant_id": "", "title": good}, "invalid_context"},
		{"NUL in row key", client.Row{"id": "1\x00", "tenant_id": "acme", "title": good}, "invalid_context"},
		{"empty plaintext", client.Row{"id": "3", "tenant_id": "acme", "title": sealTitle(t, acme, "3", "")}, ""},
	} {
		m := itemsMsg(client.Insert, `"public"."items"/"`+tc.name+`"`, tc.row)
		if err := dec.Transform(m); err != nil {
			t.Fatal(err)
		}
		col := "title"
		if _, ok := tc.row["body"]; ok {
			col = "body"
		}
		checkCellResult(t, tc.name, m, col, tc.want)
	}

	// An update with replica=default omits the tenant column: the decrypter
	// remembers it from the insert.
	key := `"public"."items"/"1"`
	dec.Transform(itemsMsg(client.Insert, key, client.Row{"id": "1", "tenant_id": "acme", "title": good}))
	m := itemsMsg(client.Update, key, client.Row{"id": "1", "title": sealTitle(t, acme, "1", "changed")})
	dec.Transform(m)
	if m.Value["title"] != "changed" {
		t.Fatalf("update: %#v", m.Value["title"])
	}
	// After a delete it is forgotten.
	dec.Transform(itemsMsg(client.Delete, key, client.Row{"id": "1"}))
	m = itemsMsg(client.Update, key, client.Row{"id": "1", "title": good})
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

// sealTitle returns title sealed as the title cell of ringSpec's row id
// of ks's tenant.
func sealTitle(t *testing.T, ks *Keyset, id, title string) string {
	row := map[string]any{"id": id, "tenant_id": ks.Tenant(), "title": title}
	if err := ringSpec.SealRow(ks, row); err != nil {
		t.Fatal(err)
	}
	return row["title"].(string)
}

// itemsMsg is a change of public.items.
func itemsMsg(op client.Operation, key string, v client.Row) *client.Message {
	return &client.Message{Key: key, Value: v, Headers: client.Headers{Operation: op, Relation: []string{"public", "items"}}}
}

// checkCellResult checks m's column col after Transform: the plaintext or
// nil want, or a *CellError of code want, which m's JSON and CellErrors
// show.
func checkCellResult(t *testing.T, name string, m *client.Message, col string, want any) {
	t.Helper()
	got := m.Value[col]
	if ce, ok := got.(*CellError); ok {
		if ce.Code() != want {
			t.Errorf("%s: %v (%s), want %v", name, ce, ce.Code(), want)
		}
		b, _ := json.Marshal(m)
		if !strings.Contains(string(b), `"`+col+`":{"error":"`+ce.Code()+`","message":"keysync: open public.items.`+col) {
			t.Errorf("%s: JSON %s", name, b)
		}
		if len(CellErrors(m.Value)) != 1 {
			t.Errorf("%s: CellErrors", name)
		}
	} else if got != want {
		t.Errorf("%s: %#v, want %v", name, got, want)
	}
}
