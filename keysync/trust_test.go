package keysync

import (
	"context"
	"testing"
)

// TestTrustSmoke: a tenant created by the root, a certified device granted,
// rotated and revoked; the device's keyring follows each step through the
// key and log shapes.
func TestTrustSmoke(t *testing.T) {
	ctx := context.Background()
	e := newTrustEnv(t)
	ks := e.tenant("acme")
	alice := e.device("alice", "laptop")
	e.grant("acme", "alice")
	ring, errs := e.ring("alice", "laptop", alice, nil)
	got := waitGen(t, ring, "acme", 1)
	if got.Commitment() != ks.Commitment() {
		t.Fatal("adopted another keyset")
	}
	ks2, err := e.admin.Rotate(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	waitGen(t, ring, "acme", ks2.Generation())
	if _, err := e.admin.Revoke(ctx, "acme", "alice"); err != nil {
		t.Fatal(err)
	}
	waitGen(t, ring, "acme", 0)
	t.Logf("row errors: %v", errs.all())
}
