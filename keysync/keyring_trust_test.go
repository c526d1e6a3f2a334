package keysync

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// This file holds the keyring's "active database" tests — whoever can write
// every shapeseal table (but holds neither the root key nor an admin key)
// tries to hand a device keys the log does not give it, or to take it back
// to an older state — and the methods they and keyring_test.go add to
// trustEnv (trustenv_test.go).

// ringSpec is the items table of trustEnv, with encrypted title and body.
var ringSpec = TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}

// itemSeq numbers the items rows of every test, so ids never collide.
var itemSeq atomic.Int64

// exec runs sql on the env's database.
func (e *trustEnv) exec(sql string, args ...any) {
	e.t.Helper()
	if _, err := e.db.Exec(context.Background(), sql, args...); err != nil {
		e.t.Fatal(err)
	}
}

// item inserts an items row of ks's tenant whose title and body are sealed
// with ks, and returns its id.
func (e *trustEnv) item(ks *Keyset, title, body string) string {
	e.t.Helper()
	id := fmt.Sprintf("00000000-0000-4000-8000-%012x", itemSeq.Add(1))
	row := map[string]any{"id": id, "tenant_id": ks.Tenant(), "title": title, "body": body}
	if err := ringSpec.SealRow(ks, row); err != nil {
		e.t.Fatal(err)
	}
	e.exec(`INSERT INTO items (id, tenant_id, title, body) VALUES ($1, $2, $3, $4)`, id, ks.Tenant(), row["title"], row["body"])
	return id
}

// cellOf returns the cell in column col of items row id.
func (e *trustEnv) cellOf(id, col string) string {
	e.t.Helper()
	var s string
	if err := e.db.QueryRow(context.Background(), `SELECT `+col+` FROM items WHERE id = $1`, id).Scan(&s); err != nil {
		e.t.Fatal(err)
	}
	return s
}

// cellContext returns the place of column col of items row id.
func cellContext(tenant, id, col string) CellContext {
	return CellContext{Table: "public.items", Column: col, Tenant: tenant, RowKey: []string{id}}
}

// keyRow returns the generation and wrapped payload of a tenant-key row.
func (e *trustEnv) keyRow(tenant, user, device string) (uint64, []byte) {
	e.t.Helper()
	var gen int64
	var wrapped []byte
	err := e.db.QueryRow(context.Background(), `SELECT generation, wrapped FROM shapeseal_tenant_keys
		WHERE tenant_id = $1 AND user_id = $2 AND device_id = $3`, tenant, user, device).Scan(&gen, &wrapped)
	if err != nil {
		e.t.Fatalf("tenant-key row %s/%s/%s: %v", tenant, user, device, err)
	}
	return uint64(gen), wrapped
}

// putRow writes a tenant-key row directly, as whoever can write the table
// can: upserted, whatever the generation held. With a recipient, it first
// inserts a device row with it if there is none.
func (e *trustEnv) putRow(tenant, user, device, recipient string, gen uint64, wrapped []byte) {
	e.t.Helper()
	if recipient != "" {
		e.exec(`INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ($1, $2, $3)
			ON CONFLICT (user_id, device_id) DO NOTHING`, user, device, recipient)
	}
	e.exec(`INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (tenant_id, user_id, device_id) DO UPDATE SET generation = excluded.generation, wrapped = excluded.wrapped`,
		tenant, user, device, int64(gen), wrapped)
}

// wrapTo wraps ks to id's recipient, signed by signer.
func (e *trustEnv) wrapTo(ks *Keyset, signer chain.Signer, id *age.HybridIdentity) []byte {
	e.t.Helper()
	w, err := Wrap(context.Background(), ks, signer, id.Recipient().String())
	if err != nil {
		e.t.Fatal(err)
	}
	return w
}

// current returns tenant's current keyset, as the log names it, from
// shapeseal_keysets.
func (e *trustEnv) current(tenant string) *Keyset {
	e.t.Helper()
	ctx := context.Background()
	st, err := e.admin.State(ctx, tenant)
	if err != nil {
		e.t.Fatal(err)
	}
	ks, err := LoadKeyset(ctx, e.db, st, UseKEK(e.kek))
	if err != nil {
		e.t.Fatal(err)
	}
	return ks
}

// ringOptions returns the options e.ring uses for user's device (a nil
// floor is a fresh MemoryFloor), reporting refused rows to errs.
func (e *trustEnv) ringOptions(user, device string, id age.Identity, floor Floor, errs *rowErrors) KeyringOptions {
	if floor == nil {
		floor = NewMemoryFloor()
	}
	return KeyringOptions{
		Stream:     KeyShapeOptions(e.srv.URL+"/v1/shape", user, device),
		Log:        LogShapeOptions(e.srv.URL + "/v1/shape"),
		Identity:   id,
		Roots:      e.roots,
		Floor:      floor,
		KeyWait:    3 * time.Second,
		OnRowError: errs.add,
	}
}

// startRing runs a keyring with opts until the test ends and waits until
// it is ready. stop closes it and waits for Run to return.
func (e *trustEnv) startRing(opts KeyringOptions) (r *Keyring, stop func()) {
	e.t.Helper()
	r, err := NewKeyring(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	var stopped atomic.Bool
	stop = func() {
		if stopped.Swap(true) {
			return
		}
		r.Close()
		if err := <-done; err != nil {
			e.t.Errorf("Run: %v", err)
		}
	}
	e.t.Cleanup(stop)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := r.Ready(ctx); err != nil {
		e.t.Fatal(err)
	}
	return r, stop
}

// items follows the items shape live through a decrypter on r and sends
// the value of every change message.
func (e *trustEnv) items(r *Keyring) <-chan client.Row {
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

// published returns the ring's current published version, for
// waitPublished.
func published(r *Keyring) *ringState { return r.state.Load() }

// waitPublished waits until r has published a version after before: the
// ring has decided again, on what its shapes delivered since.
func waitPublished(t *testing.T, r *Keyring, before *ringState) {
	t.Helper()
	select {
	case <-before.changed:
	case <-time.After(10 * time.Second):
		t.Fatal("the keyring did not change within 10s")
	}
}

// refusal waits for a row error wrapping target and checks that it is
// about tenant.
func (r *rowErrors) refusal(t *testing.T, target error, tenant string) *KeyRowError {
	t.Helper()
	re := r.waitFor(t, target)
	if re.Tenant != tenant {
		t.Errorf("refusal %v: tenant %q, want %q", re, re.Tenant, tenant)
	}
	return re
}

// holds checks that r holds tenant's keyset want (same generation and
// commitment), or none if want is nil.
func holds(t *testing.T, r *Keyring, tenant string, want *Keyset) {
	t.Helper()
	got := r.Keyset(tenant)
	switch {
	case want == nil && got != nil:
		t.Fatalf("the ring holds %v for tenant %q, want none", got, tenant)
	case want == nil:
	case got == nil:
		t.Fatalf("the ring holds no keyset for tenant %q, want %v", tenant, want)
	case got.Generation() != want.Generation() || got.Commitment() != want.Commitment():
		t.Fatalf("the ring holds %v for tenant %q, want %v", got, tenant, want)
	}
}

// waitMatch waits for a row error that ok accepts.
func (r *rowErrors) waitMatch(t *testing.T, what string, ok func(*KeyRowError) bool) *KeyRowError {
	t.Helper()
	for range 400 {
		for _, e := range r.all() {
			if ok(e) {
				return e
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("no row error %s; got %v", what, r.all())
	return nil
}

// adminReports returns what the env's Admin reported so far.
func (e *trustEnv) adminReports() []error {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]error(nil), e.reported...)
}

// follow follows a shape live with opts and sends its change messages.
func (e *trustEnv) follow(opts client.Options) <-chan client.Message {
	e.t.Helper()
	opts.Live = true
	s, err := client.New(opts)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan client.Message, 100)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m, err := range s.Messages(ctx) {
			if err != nil {
				return
			}
			if m.IsChange() {
				out <- m
			}
		}
	}()
	e.t.Cleanup(func() { cancel(); <-done; s.Close() })
	return out
}

// onlyGenuine fails t if r holds a keyset for genuine's tenant other than
// genuine.
func onlyGenuine(t *testing.T, r *Keyring, genuine *Keyset) {
	t.Helper()
	if ks := r.Keyset(genuine.Tenant()); ks != nil && (ks.Generation() != genuine.Generation() || ks.Commitment() != genuine.Commitment()) {
		t.Fatalf("the ring holds %v for tenant %q, want %v or none", ks, genuine.Tenant(), genuine)
	}
}

// holdsNow reports whether r holds ks for its tenant.
func holdsNow(r *Keyring, ks *Keyset) bool {
	got := r.Keyset(ks.Tenant())
	return got != nil && got.Generation() == ks.Generation() && got.Commitment() == ks.Commitment()
}

// notAdopted fails t if r holds the keyset bad for its tenant.
func notAdopted(t *testing.T, r *Keyring, bad *Keyset) {
	t.Helper()
	if ks := r.Keyset(bad.Tenant()); ks != nil && ks.Commitment() == bad.Commitment() {
		t.Fatalf("the ring adopted the forged keyset %v", ks)
	}
}

// TestKeyringForgedPayload: whoever can write shapeseal_tenant_keys makes
// a keyset of their own, wraps it to a member device's public recipient,
// signs it with a key of their own (neither a root nor an admin of the
// tenant) and puts it in place of the device's row — at a higher generation
// than the genuine keyset, and at the same one. The ring never adopts it,
// nor the genuine keyset signed by that key; it keeps the genuine keyset.
func TestKeyringForgedPayload(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newTrustEnv(t)
	e.tenant("acme")
	alice := e.device("alice", "phone")
	e.grant("acme", "alice")
	genuine, err := e.admin.Rotate(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	ring, errs := e.ring("alice", "phone", alice, nil)
	holds(t, ring, "acme", genuine)

	forger := mustSigner()
	higher, _ := NewKeyset("acme")
	for range 5 {
		higher, _ = higher.Rotate()
	}
	before := published(ring)
	e.putRow("acme", "alice", "phone", "", higher.Generation(), e.wrapTo(higher, forger, alice))
	waitPublished(t, ring, before)
	notAdopted(t, ring, higher)
	keptHigher := holdsNow(ring, genuine)
	time.Sleep(500 * time.Millisecond) // a report would come at once
	reportedHigher := slices.ContainsFunc(errs.all(), func(re *KeyRowError) bool {
		return re.Generation == higher.Generation() && errors.Is(re, ErrUntrustedKeyset)
	})
	notAdopted(t, ring, higher)

	// At the generation the log names: not the keyset it names.
	same, _ := NewKeyset("acme")
	same, _ = same.Rotate()
	before = published(ring)
	e.putRow("acme", "alice", "phone", "", same.Generation(), e.wrapTo(same, forger, alice))
	errs.waitMatch(t, "for a keyset the log does not name", func(re *KeyRowError) bool {
		return errors.Is(re, ErrUntrustedKeyset) && re.Generation == 2 && strings.Contains(re.Error(), "not the keyset")
	})
	waitPublished(t, ring, before)
	notAdopted(t, ring, same)
	keptSame := holdsNow(ring, genuine)

	// The genuine keyset, signed by the forger: a key that may not sign
	// for the tenant vouches for nothing, not even the right keyset.
	e.putRow("acme", "alice", "phone", "", genuine.Generation(), e.wrapTo(genuine, forger, alice))
	re := errs.waitMatch(t, "for a payload signed by the forger", func(re *KeyRowError) bool {
		return errors.Is(re, ErrUntrustedKeyset) && strings.Contains(re.Error(), forger.Public().String())
	})
	if re.Tenant != "acme" || re.Key == "" {
		t.Errorf("%v", re)
	}
	onlyGenuine(t, ring, genuine)

	// A grant puts the genuine row back.
	e.grant("acme", "alice")
	holds(t, waitGenRing(t, ring, "acme", 2), "acme", genuine)

	if !keptHigher || !keptSame {
		t.Errorf("a refused row that replaced the device's row dropped the genuine keyset (kept after the "+
			"higher-generation row: %v, after the same-generation row: %v); a refused row changes nothing in the ring", keptHigher, keptSame)
	}
	if !reportedHigher {
		t.Error("a row of a generation the log has not reached, signed by a key that may not sign for the tenant, was not refused")
	}
}

// TestKeyringCrossTenantAdmin: tenant globex is delegated to adminB, whose
// payloads and entries are genuine for globex. For acme they count for
// nothing: a keyset of adminB's own making wrapped to an acme member,
// acme's genuine keyset wrapped by adminB, and a log entry by adminB that
// adds its user's device to acme are all refused.
func TestKeyringCrossTenantAdmin(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newTrustEnv(t)
	adminB := mustSigner()
	acme := e.tenant("acme")
	globex := e.tenant("globex", adminB.Public())
	alice := e.device("alice", "phone")
	carol := e.device("carol", "tablet")
	e.grant("acme", "alice")
	e.grant("acme", "carol")

	// adminB administers globex: it certifies bob's device and grants him
	// globex, and bob's ring adopts what it signed.
	b := e.adminWith(adminB)
	bob, _ := GenerateIdentity()
	if err := b.CertifyDevice(ctx, "bob", "laptop", bob.Recipient().String()); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Grant(ctx, "globex", "bob"); err != nil {
		t.Fatal(err)
	}
	bobRing, bobErrs := e.ring("bob", "laptop", bob, nil)
	holds(t, bobRing, "globex", globex)
	// But not acme: the Admin refuses to sign for it with adminB's key.
	if _, err := b.Grant(ctx, "acme", "bob"); !errors.Is(err, chain.ErrUnauthorized) {
		t.Fatalf("adminB granted acme: %v", err)
	}
	if _, err := b.Rotate(ctx, "acme"); !errors.Is(err, chain.ErrUnauthorized) {
		t.Fatalf("adminB rotated acme: %v", err)
	}

	aliceRing, aliceErrs := e.ring("alice", "phone", alice, nil)
	carolRing, carolErrs := e.ring("carol", "tablet", carol, nil)
	holds(t, aliceRing, "acme", acme)
	holds(t, carolRing, "acme", acme)

	// adminB's own keyset for acme, at the generation the log names,
	// wrapped to alice.
	own, _ := NewKeyset("acme")
	e.putRow("acme", "alice", "phone", "", own.Generation(), e.wrapTo(own, adminB, alice))
	aliceErrs.refusal(t, ErrUntrustedKeyset, "acme")
	notAdopted(t, aliceRing, own)

	// acme's genuine keyset (as if adminB had learnt it) wrapped by adminB
	// to carol: the keyset is the one the log names, its signer may not
	// sign for acme.
	e.putRow("acme", "carol", "tablet", "", acme.Generation(), e.wrapTo(acme, adminB, carol))
	re := carolErrs.refusal(t, ErrUntrustedKeyset, "acme")
	if !strings.Contains(re.Error(), adminB.Public().String()) {
		t.Errorf("refusal does not name adminB: %v", re)
	}
	onlyGenuine(t, carolRing, acme)

	// adminB appends an entry to acme's log that makes bob a member with
	// his laptop, and wraps acme's keyset to him.
	st, err := e.admin.State(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	entry, err := chain.Sign(ctx, chain.Entry{Tenant: "acme", Seq: st.Seq() + 1, Prev: st.Head(), Ops: []chain.Op{
		{Type: chain.OpMemberAdd, User: "bob"},
		{Type: chain.OpDeviceAdd, User: "bob", Device: "laptop", Recipient: bob.Recipient().String()},
	}}, adminB)
	if err != nil {
		t.Fatal(err)
	}
	e.exec(`INSERT INTO shapeseal_log (tenant_id, seq, entry) VALUES ('acme', $1, $2)`, int64(entry.Seq), entry.Bytes())
	e.putRow("acme", "bob", "laptop", "", acme.Generation(), e.wrapTo(acme, adminB, bob))
	for name, errs := range map[string]*rowErrors{"bob": bobErrs, "alice": aliceErrs} {
		re := errs.refusal(t, chain.ErrUnauthorized, "acme")
		ce, ok := errors.AsType[*chain.Error](re)
		if !ok || ce.Seq != entry.Seq || re.Key != "" {
			t.Errorf("%s: %v", name, re)
		}
	}
	// Bob's ring holds globex only; no ring holds anything adminB made for
	// acme.
	holds(t, bobRing, "acme", nil)
	holds(t, bobRing, "globex", globex)
	onlyGenuine(t, aliceRing, acme)
	onlyGenuine(t, carolRing, acme)
}

// TestKeyringPlantedDevice: a device row inserted directly into
// shapeseal_devices, and a tenant-key row for it — even one wrapping the
// genuine keyset, signed by the root — give the device nothing: the log
// does not list it. Nor does a later grant take it in.
func TestKeyringPlantedDevice(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newTrustEnv(t)
	acme := e.tenant("acme")
	e.device("alice", "phone")
	e.grant("acme", "alice")

	// A tablet planted for alice, a member.
	tablet, _ := GenerateIdentity()
	e.putRow("acme", "alice", "tablet", tablet.Recipient().String(), acme.Generation(), e.wrapTo(acme, e.root, tablet))
	ring, errs := e.ring("alice", "tablet", tablet, nil)
	if re := errs.refusal(t, ErrNotMember, "acme"); re.Key != "" {
		t.Errorf("%v", re)
	}
	holds(t, ring, "acme", nil)

	// A laptop planted for mallory, who is no member.
	mallory, _ := GenerateIdentity()
	e.putRow("acme", "mallory", "laptop", mallory.Recipient().String(), acme.Generation(), e.wrapTo(acme, e.root, mallory))
	mRing, mErrs := e.ring("mallory", "laptop", mallory, nil)
	mErrs.refusal(t, ErrNotMember, "acme")
	holds(t, mRing, "acme", nil)

	// Granting alice again does not add the tablet, which has no
	// certificate: the Admin reports it and deletes its stray row.
	before := published(ring)
	e.grant("acme", "alice")
	st, err := e.admin.State(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := st.Device("alice", "tablet"); ok {
		t.Fatal("the grant added the planted tablet to the log")
	}
	var device, stray bool
	for _, err := range e.adminReports() {
		if de, ok := errors.AsType[*DeviceError](err); ok && de.Device == "tablet" && errors.Is(err, ErrUncertifiedDevice) {
			device = true
		}
		if se, ok := errors.AsType[*StateError](err); ok && strings.Contains(se.Detail, `"tablet"`) {
			stray = true
		}
	}
	if !device || !stray {
		t.Errorf("admin reports %v: want the uncertified tablet and its stray row", e.adminReports())
	}
	waitPublished(t, ring, before)
	holds(t, ring, "acme", nil)
	holds(t, mRing, "acme", nil)
}

// TestKeyringRevokedRowPutBack: alice's row, genuinely signed for her
// device, is put back after her revocation. Neither her running ring nor a
// restarted one takes it: the log no longer lists her device.
func TestKeyringRevokedRowPutBack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newTrustEnv(t)
	e.tenant("acme")
	alice := e.device("alice", "phone")
	bob := e.device("bob", "laptop")
	e.grant("acme", "alice")
	e.grant("acme", "bob")
	ring, _ := e.ring("alice", "phone", alice, nil)
	bobRing, _ := e.ring("bob", "laptop", bob, nil)
	waitGen(t, ring, "acme", 1)
	gen, wrapped := e.keyRow("acme", "alice", "phone") // kept by the attacker

	ks2, err := e.admin.Revoke(ctx, "acme", "alice")
	if err != nil {
		t.Fatal(err)
	}
	waitGen(t, ring, "acme", 0)
	// The payload is genuine: signed by the root, for her device.
	if _, err := Unwrap(alice, wrapped, "acme", e.roots); err != nil {
		t.Fatal(err)
	}
	before := published(ring)
	e.putRow("acme", "alice", "phone", "", gen, wrapped)
	waitPublished(t, ring, before)
	holds(t, ring, "acme", nil)

	restarted, errs := e.ring("alice", "phone", alice, nil)
	if re := errs.refusal(t, ErrNotMember, "acme"); re.Key != "" {
		t.Errorf("%v", re)
	}
	holds(t, restarted, "acme", nil)
	holds(t, waitGenRing(t, bobRing, "acme", 2), "acme", ks2)
}

// TestKeyringRollback: the attacker deletes the newest entry of the log
// and puts back the older payload it superseded. A device restarted with
// its floor file refuses the shorter log; one that starts without a floor
// adopts the older state — which is what the floor is for.
func TestKeyringRollback(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newTrustEnv(t)
	e.tenant("acme")
	alice := e.device("alice", "phone")
	e.grant("acme", "alice")
	ks2, err := e.admin.Rotate(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	_, older := e.keyRow("acme", "alice", "phone") // kept by the attacker
	ks3, err := e.admin.Rotate(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}

	path := filepath.Join(t.TempDir(), "floor.json")
	floor, err := OpenFileFloor(path)
	if err != nil {
		t.Fatal(err)
	}
	first, stop := e.startRing(e.ringOptions("alice", "phone", alice, floor, &rowErrors{}))
	holds(t, first, "acme", ks3)
	stop()
	if m, _ := floor.Mark("acme"); m.Seq != 4 || m.Generation != 3 {
		t.Fatalf("floor after the first run: %+v", m)
	}

	e.exec(`DELETE FROM shapeseal_log WHERE tenant_id = 'acme' AND seq = (SELECT max(seq) FROM shapeseal_log WHERE tenant_id = 'acme')`)
	e.putRow("acme", "alice", "phone", "", ks2.Generation(), older)
	// Clients arriving later see only the tables as they are now (as after
	// Electric compacts a shape's log), not the newer rows before.
	for _, table := range []string{LogTable, TenantKeysTable} {
		if _, err := e.srv.Rotate(table); err != nil {
			t.Fatal(err)
		}
	}

	reopened, err := OpenFileFloor(path)
	if err != nil {
		t.Fatal(err)
	}
	errs := &rowErrors{}
	second, _ := e.startRing(e.ringOptions("alice", "phone", alice, reopened, errs))
	re := errs.refusal(t, chain.ErrRollback, "acme")
	if ce, ok := errors.AsType[*chain.Error](re); !ok || ce.Tenant != "acme" || re.Key != "" {
		t.Errorf("%v", re)
	}
	holds(t, second, "acme", nil)

	fresh, _ := e.ring("alice", "phone", alice, nil)
	holds(t, fresh, "acme", ks2)
}

// TestKeyringFork: a tenant is deleted — its log, keysets and wrapped
// keys — and created again under the same id. A device's floor refuses
// the new log as a fork, until the device forgets the old tenant.
func TestKeyringFork(t *testing.T) {
	t.Parallel()
	e := newTrustEnv(t)
	old := e.tenant("acme")
	alice := e.device("alice", "phone")
	e.grant("acme", "alice")
	path := filepath.Join(t.TempDir(), "floor.json")
	floor, err := OpenFileFloor(path)
	if err != nil {
		t.Fatal(err)
	}
	first, stop := e.startRing(e.ringOptions("alice", "phone", alice, floor, &rowErrors{}))
	holds(t, first, "acme", old)
	stop()

	for _, table := range []string{LogTable, "shapeseal_keysets", TenantKeysTable} {
		e.exec(`DELETE FROM ` + table + ` WHERE tenant_id = 'acme'`)
	}
	// Created again by an operator (an Admin that does not remember the
	// old log: e.admin would refuse the shorter one as a rollback).
	ctx := context.Background()
	operator := e.adminWith(e.root)
	again, err := operator.CreateTenant(ctx, e.kek, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := operator.Grant(ctx, "acme", "alice"); err != nil { // a log as long as the old one
		t.Fatal(err)
	}
	if again.Commitment() == old.Commitment() {
		t.Fatal("the same keyset twice")
	}

	reopened, err := OpenFileFloor(path)
	if err != nil {
		t.Fatal(err)
	}
	errs := &rowErrors{}
	second, stop := e.startRing(e.ringOptions("alice", "phone", alice, reopened, errs))
	re := errs.refusal(t, chain.ErrFork, "acme")
	if ce, ok := errors.AsType[*chain.Error](re); !ok || ce.Seq != 2 || re.Key != "" {
		t.Errorf("%v", re)
	}
	holds(t, second, "acme", nil)
	stop()

	if err := reopened.Forget("acme"); err != nil {
		t.Fatal(err)
	}
	forgot, err := OpenFileFloor(path)
	if err != nil {
		t.Fatal(err)
	}
	third, _ := e.startRing(e.ringOptions("alice", "phone", alice, forgot, &rowErrors{}))
	holds(t, third, "acme", again)
	if m, _ := forgot.Mark("acme"); m.Seq != 2 || m.Generation != 1 {
		t.Fatalf("floor after forgetting: %+v", m)
	}
}

// TestKeyringRegrantSameGeneration: a device gets a new identity (same
// user and device id, new recipient): certified again and granted again,
// it receives the same keyset, at the same generation, re-wrapped. A ring
// with the new identity opens the cells written before — one started
// afresh, and one that was running, whose key shape (replica=default)
// delivers the re-grant as an update carrying only the wrapped column.
func TestKeyringRegrantSameGeneration(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newTrustEnv(t)
	acme := e.tenant("acme")
	oldID := e.device("alice", "phone")
	e.grant("acme", "alice")
	id := e.item(acme, "kept", "k")
	cc, cell := cellContext("acme", id, "title"), e.cellOf(id, "title")
	oldRing, oldErrs := e.ring("alice", "phone", oldID, nil)
	if pt, err := oldRing.Open(ctx, cc, cell); err != nil || string(pt) != "kept" {
		t.Fatalf("before: %q, %v", pt, err)
	}

	newID, _ := GenerateIdentity()
	errs := &rowErrors{}
	opts := e.ringOptions("alice", "phone", newID, nil, errs)
	opts.Stream.Params.Replica = "" // default: updates carry the changed columns only
	running, _ := e.startRing(opts)
	holds(t, running, "acme", nil)
	changes := e.follow(opts.Stream)
	select {
	case m := <-changes:
		if m.Headers.Operation != client.Insert {
			t.Fatalf("first change of the key shape: %v", m.Headers.Operation)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no snapshot of the key shape")
	}

	// Certificates and log entries carry whole seconds, and a certificate
	// not newer than the entry that set the device's recipient is taken for
	// a replay: re-certify in a later second than the grant (the same
	// second is TestKeyringRegrantSameSecond).
	nextSecond()
	if err := e.admin.CertifyDevice(ctx, "alice", "phone", newID.Recipient().String()); err != nil {
		t.Fatal(err)
	}
	if n, err := e.admin.Grant(ctx, "acme", "alice"); err != nil || n != 1 {
		t.Fatalf("grant again: %d, %v", n, err)
	}
	if gen, _ := e.keyRow("acme", "alice", "phone"); gen != 1 {
		t.Fatalf("generation %d after the re-grant", gen)
	}
	if ks := e.current("acme"); ks.Commitment() != acme.Commitment() {
		t.Fatal("the re-grant changed the keyset")
	}
	select {
	case m := <-changes:
		_, gen := m.Value["generation"]
		_, wrapped := m.Value["wrapped"]
		if m.Headers.Operation != client.Update || gen || !wrapped {
			t.Fatalf("the re-grant reached the key shape as %v with %v", m.Headers.Operation, keysOf(m.Value))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the re-grant did not reach the key shape")
	}

	holds(t, waitGenRing(t, running, "acme", 1), "acme", acme)
	if pt, err := running.Open(ctx, cc, cell); err != nil || string(pt) != "kept" {
		t.Fatalf("running ring, new identity: %q, %v", pt, err)
	}
	fresh, _ := e.ring("alice", "phone", newID, nil)
	if pt, err := fresh.Open(ctx, cc, cell); err != nil || string(pt) != "kept" {
		t.Fatalf("new ring, new identity: %q, %v", pt, err)
	}
	for _, re := range errs.all() {
		if !errors.Is(re, ErrWrongIdentity) && !errors.Is(re, ErrNotMember) {
			t.Errorf("running ring: %v", re)
		}
	}

	// The old identity no longer receives keys.
	waitGen(t, oldRing, "acme", 0)
	oldErrs.refusal(t, ErrNotMember, "acme")
}

// nextSecond sleeps until the wall clock's next whole second.
func nextSecond() {
	now := time.Now()
	time.Sleep(now.Truncate(time.Second).Add(time.Second).Sub(now) + 10*time.Millisecond)
}

// TestKeyringRegrantSameSecond: a device re-certified with a new identity
// in the same second as the entry that granted it is re-granted like one
// re-certified later: the new certificate is newer, not a replay.
func TestKeyringRegrantSameSecond(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newTrustEnv(t)
	acme := e.tenant("acme")
	nextSecond() // what follows takes well under a second
	e.device("alice", "phone")
	e.grant("acme", "alice")
	newID, _ := GenerateIdentity()
	if err := e.admin.CertifyDevice(ctx, "alice", "phone", newID.Recipient().String()); err != nil {
		t.Fatal(err)
	}
	n, err := e.admin.Grant(ctx, "acme", "alice")
	if err != nil || n != 1 {
		t.Fatalf("grant again: %d, %v", n, err)
	}
	ring, _ := e.ring("alice", "phone", newID, nil)
	holds(t, ring, "acme", acme)
}

func keysOf(r client.Row) []string { return slices.Sorted(maps.Keys(r)) }

// delayTransport holds back every response for delay while armed, to the
// requests that match.
type delayTransport struct {
	armed atomic.Bool
	delay time.Duration
	match func(*http.Request) bool
}

func (d *delayTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err == nil && d.armed.Load() && (d.match == nil || d.match(req)) {
		time.Sleep(d.delay)
	}
	return resp, err
}

// droppedWithin reports whether r holds no keyset for tenant at some
// point within d.
func droppedWithin(r *Keyring, tenant string, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, err := r.Wait(ctx, tenant, func(ks *Keyset) bool { return ks == nil })
	return err == nil
}

// TestKeyringRotationKeepsServing: a rotation whose new row reaches the
// ring before the log entry that names it (the log shape is slower) must
// not leave the ring without the tenant's keyset meanwhile.
func TestKeyringRotationKeepsServing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newTrustEnv(t)
	ks1 := e.tenant("acme")
	alice := e.device("alice", "phone")
	e.grant("acme", "alice")
	slowLog := &delayTransport{delay: 2 * time.Second}
	opts := e.ringOptions("alice", "phone", alice, nil, &rowErrors{})
	opts.Log.HTTPClient = &http.Client{Transport: slowLog}
	ring, _ := e.startRing(opts)
	holds(t, ring, "acme", ks1)

	slowLog.armed.Store(true)
	ks2, err := e.admin.Rotate(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	dropped := droppedWithin(ring, "acme", 1500*time.Millisecond)
	slowLog.armed.Store(false)
	holds(t, waitGenRing(t, ring, "acme", 2), "acme", ks2)
	if dropped {
		t.Error("while the rotated row waited for its log entry, the ring held no keyset for the tenant")
	}
}

// TestKeyringRefetchKeepsServing: while one of the ring's shapes is
// refetched (a must-refetch, then a slow snapshot), the ring keeps serving
// the keysets it holds: it does not publish a half-rebuilt ring when the
// other shape is up to date.
func TestKeyringRefetchKeepsServing(t *testing.T) {
	t.Parallel()
	for _, table := range []string{TenantKeysTable, LogTable} {
		t.Run(table, func(t *testing.T) {
			t.Parallel()
			e := newTrustEnv(t)
			acme := e.tenant("acme")
			alice := e.device("alice", "phone")
			e.grant("acme", "alice")
			slowSnapshot := &delayTransport{delay: 2 * time.Second, match: func(r *http.Request) bool {
				return r.URL.Query().Get("offset") == "-1"
			}}
			errs := &rowErrors{}
			opts := e.ringOptions("alice", "phone", alice, nil, errs)
			refetched := &opts.Stream
			if table == LogTable {
				refetched = &opts.Log
			}
			refetched.HTTPClient = &http.Client{Transport: slowSnapshot}
			ring, _ := e.startRing(opts)
			holds(t, ring, "acme", acme)

			before := published(ring)
			slowSnapshot.armed.Store(true)
			if n, _ := e.srv.Rotate(table); n == 0 {
				t.Fatal("no shape rotated")
			}
			if droppedWithin(ring, "acme", 1500*time.Millisecond) {
				t.Fatal("the ring held no keyset for acme while the shape was refetched")
			}
			slowSnapshot.armed.Store(false)
			waitPublished(t, ring, before) // rebuilt
			holds(t, ring, "acme", acme)
			if errs := errs.all(); len(errs) != 0 {
				t.Errorf("row errors: %v", errs)
			}
		})
	}
}
