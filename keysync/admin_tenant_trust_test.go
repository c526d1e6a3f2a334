package keysync

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/shapeseal/shapeseal/keysync/chain"
)

// As in admin_trust_test.go, the test of this file plays an active database
// operator who holds no root or admin key; here an admin key is used beyond
// the tenants a root delegated to it.

// TestTrustCrossTenantAdmin: an admin key acts only on the tenants a root
// delegated to it, only while delegated; only a root creates tenants and
// names admins.
func TestTrustCrossTenantAdmin(t *testing.T) {
	ctx := context.Background()
	e := newTrustEnv(t)
	keyB := fixedSigner("globex admin")
	adminB := e.adminWith(keyB)
	e.tenant("acme")
	if _, err := e.admin.CreateTenant(ctx, e.kek, "globex", keyB.Public()); err != nil {
		t.Fatal(err)
	}
	e.device("alice", "laptop")
	e.grant("acme", "alice")
	e.device("bob", "phone")
	c := &crossAdmin{t: t, ctx: ctx, e: e, keyB: keyB, adminB: adminB}
	c.refusedInAcme()
	c.inGlobex()
	c.removed()

	// A root delegates acme to it: now it may act there.
	if err := e.admin.SetAdmins(ctx, "acme", []VerifyKey{keyB.Public()}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := adminB.Rotate(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if err := e.admin.SetAdmins(ctx, "acme", nil, []VerifyKey{keyB.Public()}); err != nil {
		t.Fatal(err)
	}
	_, err := adminB.Rotate(ctx, "acme")
	wantUnauthorized(t, "rotate after removal from acme", err)
}

// wantUnauthorized fails unless err is chain.ErrUnauthorized, and a
// *chain.Error but for a create.
func wantUnauthorized(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, chain.ErrUnauthorized) {
		t.Fatalf("%s: %v, want chain.ErrUnauthorized", what, err)
	}
	if _, ok := errors.AsType[*chain.Error](err); !ok && !strings.Contains(what, "create") {
		t.Fatalf("%s: %v is not a *chain.Error", what, err)
	}
}

// crossAdmin is TestTrustCrossTenantAdmin's globex admin: its key, and an
// Admin that signs with it.
type crossAdmin struct {
	t      *testing.T
	ctx    context.Context
	e      *trustEnv
	keyB   chain.Signer
	adminB *Admin
}

// refusedInAcme: globex's admin can change nothing of acme's log.
func (c *crossAdmin) refusedInAcme() {
	t, ctx, e, adminB := c.t, c.ctx, c.e, c.adminB
	t.Helper()
	spec := TableSpec{Table: "items", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	acmeSeq := mustState(t, e, "acme").Seq()
	_, err := adminB.Grant(ctx, "acme", "bob")
	wantUnauthorized(t, "grant of acme by globex's admin", err)
	_, err = adminB.Rotate(ctx, "acme")
	wantUnauthorized(t, "rotate of acme by globex's admin", err)
	_, err = adminB.Revoke(ctx, "acme", "alice")
	wantUnauthorized(t, "revoke of acme by globex's admin", err)
	_, err = adminB.RetireKeys(ctx, "acme", []TableSpec{spec}, 1)
	wantUnauthorized(t, "retire of acme by globex's admin", err)
	_, err = adminB.Reencrypt(ctx, spec, "acme", ReencryptOptions{Retire: true})
	wantUnauthorized(t, "reencrypt and retire of acme by globex's admin", err)
	if st := mustState(t, e, "acme"); st.Seq() != acmeSeq || st.IsMember("bob") {
		t.Fatal("globex's admin changed acme's log")
	}
}

// inGlobex: in globex, it may grant, rotate and certify devices that
// count there; but it may not create tenants or name admins.
func (c *crossAdmin) inGlobex() {
	t, ctx, e, adminB, keyB := c.t, c.ctx, c.e, c.adminB, c.keyB
	t.Helper()
	if n, err := adminB.Grant(ctx, "globex", "bob"); err != nil || n != 1 {
		t.Fatalf("grant of globex by its admin: %d, %v", n, err)
	}
	if _, err := adminB.Rotate(ctx, "globex"); err != nil {
		t.Fatal(err)
	}
	// A device it certifies counts in globex.
	_, carolRcpt := attackerDevice(t)
	if err := adminB.CertifyDevice(ctx, "carol", "phone", carolRcpt); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.Grant(ctx, "globex", "carol"); err != nil {
		t.Fatal(err)
	}
	// But it may not create tenants or name admins.
	_, err := adminB.CreateTenant(ctx, e.kek, "initech")
	wantUnauthorized(t, "create by an admin", err)
	if _, err := e.admin.State(ctx, "initech"); !errors.Is(err, chain.ErrNoLog) {
		t.Fatalf("initech: %v", err)
	}
	err = adminB.SetAdmins(ctx, "globex", []VerifyKey{mustSigner().Public()}, nil)
	wantUnauthorized(t, "admin_add by an admin", err)
	err = adminB.SetAdmins(ctx, "globex", nil, []VerifyKey{keyB.Public()})
	wantUnauthorized(t, "admin_remove by an admin", err)
	err = adminB.SetAdmins(ctx, "acme", []VerifyKey{keyB.Public()}, nil)
	wantUnauthorized(t, "admin_add to acme by globex's admin", err)
}

// removed: removed by the root, it can no longer act, and the devices it
// certified no longer count.
func (c *crossAdmin) removed() {
	t, ctx, e, adminB, keyB := c.t, c.ctx, c.e, c.adminB, c.keyB
	t.Helper()
	if err := e.admin.SetAdmins(ctx, "globex", nil, []VerifyKey{keyB.Public()}); err != nil {
		t.Fatal(err)
	}
	if admins := mustState(t, e, "globex").Admins(); len(admins) != 0 {
		t.Fatalf("globex's admins: %v", admins)
	}
	_, err := adminB.Rotate(ctx, "globex")
	wantUnauthorized(t, "rotate by a removed admin", err)
	_, err = adminB.Grant(ctx, "globex", "alice")
	wantUnauthorized(t, "grant by a removed admin", err)
	_, daveRcpt := attackerDevice(t)
	if err := adminB.CertifyDevice(ctx, "dave", "phone", daveRcpt); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.Grant(ctx, "globex", "dave"); !errors.Is(err, ErrNoDevices) {
		t.Fatalf("grant of a device certified by a removed admin: %v", err)
	}
}
