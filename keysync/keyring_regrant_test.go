package keysync

import (
	"context"
	"errors"
	"maps"
	"slices"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/client"
)

// A device that gets a new identity is granted again: the same keyset, at
// the same generation, re-wrapped to its new recipient.

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
