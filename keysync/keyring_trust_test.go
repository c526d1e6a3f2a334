package keysync

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/keysync/chain"
)

// This file holds the keyring's "active database" tests — whoever can write
// every shapeseal table (but holds neither the root key nor an admin key)
// tries to hand a device keys the log does not give it, or to take it back
// to an older state. They run on trustEnv (trustenv_test.go), with the
// methods of keyring_env_test.go.

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
	entry := appendMemberEntry(t, e, "acme", "bob", "laptop", bob.Recipient().String(), adminB)
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

// appendMemberEntry signs with by, and inserts as the operator, the next
// entry of tenant's log, which makes user a member with device and rcpt.
func appendMemberEntry(t *testing.T, e *trustEnv, tenant, user, device, rcpt string, by chain.Signer) *chain.Entry {
	t.Helper()
	ctx := context.Background()
	st, err := e.admin.State(ctx, tenant)
	if err != nil {
		t.Fatal(err)
	}
	entry, err := chain.Sign(ctx, chain.Entry{Tenant: tenant, Seq: st.Seq() + 1, Prev: st.Head(), Ops: []chain.Op{
		{Type: chain.OpMemberAdd, User: user},
		{Type: chain.OpDeviceAdd, User: user, Device: device, Recipient: rcpt},
	}}, by)
	if err != nil {
		t.Fatal(err)
	}
	e.exec(`INSERT INTO shapeseal_log (tenant_id, seq, entry) VALUES ($1, $2, $3)`, tenant, int64(entry.Seq), entry.Bytes())
	return entry
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
