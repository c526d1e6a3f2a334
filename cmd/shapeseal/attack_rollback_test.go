package main

// Attacks by rollback of the log (7 and 8 of the list in attack_test.go).

import (
	"errors"
	"strings"
	"testing"

	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// TestAttackRollback: floors refuse a log cut back, and a tenant replaced.
func TestAttackRollback(t *testing.T) {
	t.Parallel()
	e := newAttackEnv(t)
	alice, _ := e.device("alice", "d1")
	e.device("bob", "d1")
	e.grant("alice")
	e.grant("bob")
	id1 := e.mustWrite("acme secret 1")
	gen1, older := e.wrapped("alice", "d1") // kept by the operator
	e.as(e.adminFile, runRotate, "--tenant", "acme")
	id2 := e.mustWrite("acme secret 2") // the writer's floor: entry 4, generation 2
	// alice's tail, once: its default floor file, next to her identity.
	if r := e.tail(alice, "alice", "d1"); r.title(id1) != "acme secret 1" || r.title(id2) != "acme secret 2" {
		t.Fatalf("alice: %v\n%s", r.rows, r.errOut)
	}
	aliceFloor := keysync.DefaultFloorPath(alice)
	if m, err := keysync.OpenFileFloor(aliceFloor); err != nil {
		t.Fatal(err)
	} else if mk, _ := m.Mark("acme"); mk.Seq != 4 || mk.Generation != 2 {
		t.Fatalf("alice's floor: %+v", mk)
	}

	t.Run("log cut back", func(t *testing.T) {
		// The rotation's entry and keyset row go; alice's generation-1
		// row comes back.
		pgtest.Exec(t, e.url, `DELETE FROM shapeseal_log WHERE tenant_id = 'acme' AND seq = 4`)
		pgtest.Exec(t, e.url, `DELETE FROM shapeseal_keysets WHERE tenant_id = 'acme' AND generation = 2`)
		pgtest.Exec(t, e.url, `UPDATE shapeseal_tenant_keys SET generation = $1, wrapped = $2 WHERE tenant_id = 'acme' AND user_id = 'alice'`, gen1, older)
		e.forget("shapeseal_log", "shapeseal_tenant_keys")
		if st := e.state(); st.Seq() != 3 || st.Keyset().Generation != 1 {
			t.Fatalf("the log cut back verifies as %d entries, generation %d", st.Seq(), st.Keyset().Generation)
		}

		r := e.tail(alice, "alice", "d1")
		r.noPlaintext(t, "alice on the log cut back", "acme secret")
		if r.cellError(id1) != "no_key" || r.cellError(id2) != "no_key" {
			t.Errorf("alice: %v", r.rows)
		}
		hint := "shapeseal floor forget --floor " + aliceFloor + " --tenant acme"
		if !strings.Contains(r.errOut, "log rolled back: 3 entries, 4 seen before") || !strings.Contains(r.errOut, hint) {
			t.Errorf("alice's tail did not refuse the rollback with the hint %q:\n%s", hint, r.errOut)
		}

		n := e.count(`SELECT * FROM items`)
		_, _, err := e.write("under generation 1?")
		if !errors.Is(err, chain.ErrRollback) || !strings.Contains(err.Error(), "shapeseal floor forget --floor "+e.writerFloor+" --tenant acme") {
			t.Errorf("attack not refused: write on the log cut back: %v", err)
		}
		if m := e.count(`SELECT * FROM items`); m != n {
			t.Errorf("attack not refused: %d rows written on the log cut back", m-n)
		}
	})

	t.Run("tenant deleted and created again", func(t *testing.T) { tenantRecreatedRefused(t, e, alice, aliceFloor) })
}

// tenantRecreatedRefused: acme deleted and created again by the root is
// refused, as a rollback by tenant create and as a fork by write and by
// alice's tail, until each forgets its floor.
func tenantRecreatedRefused(t *testing.T, e *attackEnv, alice, aliceFloor string) {
	// A new acme, as long as the old one, made by the root (a
	// compromised root, or an operator fooled into it): another log.
	pgtest.Exec(t, e.url, `DELETE FROM items; DELETE FROM shapeseal_log; DELETE FROM shapeseal_keysets; DELETE FROM shapeseal_tenant_keys`)
	e.forget("items", "shapeseal_log", "shapeseal_tenant_keys")
	// The administrators saw the old acme: creating it again is a
	// decision they make with floor forget, not something a deleted
	// log makes them do.
	_, _, err := e.refused(runTenant, e.withDB("create", "--tenant", "acme", "--kek", e.kek, "--admin", e.admin, "--key", e.rootFile)...)
	adminFloor, _ := defaultFloor("", "SHAPESEAL_ADMIN_FLOOR", "admin", e.url)
	if !errors.Is(err, chain.ErrRollback) || !strings.Contains(err.Error(), "shapeseal floor forget --floor "+adminFloor+" --tenant acme") {
		t.Errorf("tenant create over a tenant the administrator saw: %v", err)
	}
	e.ok(runFloor, "forget", "--floor", adminFloor, "--tenant", "acme")
	e.as(e.rootFile, runTenant, "create", "--tenant", "acme", "--kek", e.kek, "--admin", e.admin)
	e.grant("alice")
	e.grant("bob")
	e.as(e.adminFile, runRotate, "--tenant", "acme")
	if st := e.state(); st.Seq() != 4 {
		t.Fatalf("the new log has %d entries", st.Seq())
	}

	// The writer refuses it as a fork.
	_, _, err = e.write("into the new tenant?")
	if !errors.Is(err, chain.ErrFork) || !strings.Contains(err.Error(), "shapeseal floor forget --floor "+e.writerFloor+" --tenant acme") {
		t.Errorf("attack not refused: write to a tenant created again: %v", err)
	}
	if n := e.count(`SELECT * FROM items`); n != 0 {
		t.Errorf("%d rows written", n)
	}
	// Forgotten by the writer (as after checking out of band), a row
	// of the new tenant: alice's tail refuses the new log too.
	if out, _ := e.ok(runFloor, "forget", "--floor", e.writerFloor, "--tenant", "acme"); !strings.Contains(out, "forgot tenant acme (seen up to entry 4, generation 2)") {
		t.Errorf("floor forget: %s", out)
	}
	id := e.mustWrite("the new acme")
	r := e.tail(alice, "alice", "d1")
	r.noPlaintext(t, "alice before floor forget", "the new acme")
	if r.cellError(id) != "no_key" || !strings.Contains(r.errOut, "log forked") ||
		!strings.Contains(r.errOut, "shapeseal floor forget --floor "+aliceFloor+" --tenant acme") {
		t.Errorf("alice's tail on a tenant created again: %v\n%s", r.rows, r.errOut)
	}

	// Once forgotten (checked out of band), both follow the new log.
	e.ok(runFloor, "forget", "--floor", aliceFloor, "--tenant", "acme")
	if r := e.tail(alice, "alice", "d1"); r.title(id) != "the new acme" {
		t.Errorf("alice after floor forget: %v\n%s", r.rows, r.errOut)
	}
}

// TestAttackAdminRollback: the admin commands must not re-sign a log cut
// back before a revocation. Not parallel: it gives the commands a user
// configuration directory of their own, where a floor of the admin
// commands, like write's, would be kept by default.
func TestAttackAdminRollback(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	e := newAttackEnv(t)
	alice, _ := e.device("alice", "d1")
	e.device("bob", "d1")
	e.grant("alice")
	e.grant("bob")
	e.mustWrite("before the revocation") // the writer's floor: entry 3
	gen, saved := e.wrapped("alice", "d1")
	if r := e.tail(alice, "alice", "d1"); r.errOut != "" { // alice's floor: entry 3; then she is offline
		t.Fatal(r.errOut)
	}
	e.as(e.adminFile, runRevoke, "--tenant", "acme", "--user", "alice")

	// The revocation (entry 4) and its keyset row are cut; alice's row is
	// put back. The log verifies: it is the log as it was before.
	pgtest.Exec(t, e.url, `DELETE FROM shapeseal_log WHERE tenant_id = 'acme' AND seq = 4`)
	pgtest.Exec(t, e.url, `DELETE FROM shapeseal_keysets WHERE tenant_id = 'acme' AND generation = 2`)
	pgtest.Exec(t, e.url, `INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped) VALUES ('acme', 'alice', 'd1', $1, $2)`, gen, saved)

	// The admin's next ordinary rotation.
	out, errOut, err := e.run(runRotate, e.withDB("--tenant", "acme", "--key", e.adminFile)...)
	if err == nil {
		st := e.state()
		id := e.mustWrite("after the revocation")
		r := e.tail(alice, "alice", "d1")
		t.Fatalf("attack not refused: cmd/shapeseal/keys.go (*adminFlags).admin sets no keysync.Admin.Floor, so the admin's "+
			"rotate verified the log the database cut back before alice's revocation and re-signed it (%s): alice is a member "+
			"again (%v, %d devices in the log), her device received the new keyset (key rows %v), and her tail printed %q, a row "+
			"that write sealed after the revocation. Fix: give the administration commands a floor file, as write has one "+
			"(--floor, $SHAPESEAL_ADMIN_FLOOR, else shapeseal/admin.floor in the user's configuration directory), set "+
			"Admin.Floor and pass refusals through forkHint; and in keysync/tenant.go (*Admin).tx raise a.Floor to the "+
			"committed state (st.Seq(), st.Head(), its generation), or an admin's floor never holds the entries it signed "+
			"(the revocation)\n%s",
			strings.TrimSpace(out), st.IsMember("alice"), len(st.Devices()), e.keyRows(), r.title(id), errOut)
	}
	if !errors.Is(err, chain.ErrRollback) {
		t.Errorf("rotate on the log cut back: %v, want chain.ErrRollback", err)
	}
	if st := e.state(); st.Seq() != 3 || e.keyRows()["alice/d1"] != gen {
		t.Errorf("the refused rotation changed the log (%d entries) or the key rows (%v)", st.Seq(), e.keyRows())
	}
}
