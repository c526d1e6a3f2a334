package main

// The active database operator, through the real commands.
//
// The attacker of these tests can run any SQL on shapeseal's tables and on
// the application's (pgtest.Exec), and serve whatever Electric serves; it
// holds no signing key (neither the root nor an admin key of the tenant)
// and, unless a test says otherwise, not the KEK. Each attack is made on a
// real Postgres, and its outcome observed through the commands an operator
// and a device run — init, signkey, keygen, tenant, device add, grant,
// rotate, revoke, reencrypt, write, tail --encrypted, floor forget — never
// by calling package keysync's administration directly. Every attack must
// end in a typed refusal, or in a row that is reported ("shapeseal:
// ignored: …" on stderr, a refusal on tail's stderr) and ignored: never the
// attacker's plaintext in what tail prints, never a key the attacker can
// unwrap.
//
//  1. TestAttackPlantedDevices: a device row and its tenant-key
//     ("membership") row for a user the log does not know, a device row
//     under a member, and a member's device row whose recipient was
//     replaced. Refused in keysync.Admin: rotate wraps only to the devices
//     the log lists and deletes the planted key rows (reported); grant
//     takes devices only from certificates signed by an admin of the
//     tenant (the uncertified rows and the replaced recipient are reported,
//     the certified recipient is used). tail with the real identity still
//     decrypts; with the attacker's identity, nothing.
//  2. TestAttackRevokedRowPutBack: a revoked member's wrapped-key row put
//     back. rotate deletes it (reported) and does not re-grant; the revoked
//     device's keyring refuses it (the log no longer lists the device), so
//     its tail prints no new row.
//  3. TestAttackKeysetRows: the newest shapeseal_keysets row deleted (write
//     and rotate refuse with a *keysync.StateError, never seal under the
//     previous key); a newer rogue row under another KEK (ignored by write,
//     which loads the generation the log names; deleted and reported by the
//     next rotate); `write --kek` other than the log's (a
//     *keysync.KEKMismatchError); an hcvault:// KEK whose host is not
//     VAULT_ADDR's (a *vaultkek.HostMismatchError, before Vault is asked).
//  4. TestAttackCrossTenantAdmin: an admin of tenant globex grants, rotates,
//     revokes and delegates acme (chain.ErrUnauthorized, the log unchanged)
//     and certifies a device for an acme member (not taken by acme's
//     grant); a keyset it made and wrapped for an acme member is refused by
//     the member's keyring (keysync.ErrUntrustedKeyset on tail's stderr).
//  5. TestAttackKEKOnly: with only the KEK, the administration commands
//     refuse (no signing key), and write refuses without a pinned root;
//     the keyset a writer decrypts with the KEK, wrapped and "certified" by
//     a key of its own for a device of its own, and a log entry it signs,
//     give that device nothing. init creates no table of signers, and no
//     signing key is stored in the database.
//  6. TestAttackForgedCellAfterRevoke: a cell the revoked member forged
//     with the key it kept, after the revocation: reencrypt --retire leaves
//     it alone, reports it as suspect and refuses to retire the old key
//     (keysync.ErrKeysInUse); once the row is deleted, the key retires, and
//     the forged cell put back opens for no one.
//  7. TestAttackRollback: the newest log entry and its keyset row deleted,
//     and the previous wrapped row put back: tail's default floor file and
//     write's floor refuse (chain.ErrRollback, with the floor forget hint);
//     a tenant deleted and created again is refused as a fork
//     (chain.ErrFork) until `floor forget`.
//  8. TestAttackAdminRollback: the revocation entry cut from the log, and
//     the revoked member's row put back, before the admin's next ordinary
//     rotate. It must be refused as a rollback (chain.ErrRollback) by the
//     admin's floor. The admin commands keep no floor yet (and
//     keysync.Admin does not raise its Floor to the entries it signs), so
//     the rotation re-admits the revoked member and this test fails: see
//     its message.
//
// 1, 2 and 4 are in this file; 3, 5 and 6 in attack_keyset_test.go; 7 and 8
// in attack_rollback_test.go.

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// TestAttackPlantedDevices: devices the database adds get nothing.
func TestAttackPlantedDevices(t *testing.T) {
	t.Parallel()
	e := newAttackEnv(t)
	alice, aliceRcpt := e.device("alice", "d1")
	e.grant("alice")
	id1 := e.mustWrite("acme secret 1")
	evil, evilRcpt := e.identity("evil") // the operator's own device

	// An ordinary rotation wraps only to the log's devices, and deletes
	// (and reports) the planted rows.
	plantDevices(t, e, evilRcpt)
	out, errOut := e.as(e.adminFile, runRotate, "--tenant", "acme")
	if !strings.Contains(out, "generation 2") {
		t.Fatalf("rotate: %s", out)
	}
	for _, w := range []string{`deleted the wrapped key of device "laptop" of "mallory", which the log does not list`,
		`deleted the wrapped key of device "evil" of "alice", which the log does not list`} {
		if !strings.Contains(errOut, "shapeseal: ignored: ") || !strings.Contains(errOut, w) {
			t.Errorf("rotate did not report %q:\n%s", w, errOut)
		}
	}
	if rows := e.keyRows(); len(rows) != 1 || rows["alice/d1"] != 2 {
		t.Fatalf("attack not refused: key rows after rotate: %v", rows)
	}

	// Planted again, an ordinary grant of alice takes neither the device
	// under her nor the replaced recipient, and reports both; a grant of
	// mallory finds no certified device.
	plantDevices(t, e, evilRcpt)
	plantedGrantRefused(t, e, aliceRcpt)
	// What is left for the operator (mallory's row, which grant of alice
	// does not touch; alice's rows) does not unwrap with its identity.
	e.nothingOpensFor(evil)

	// alice's real device still decrypts, old rows and new.
	id2 := e.mustWrite("acme secret 2")
	if r := e.tail(alice, "alice", "d1"); r.title(id1) != "acme secret 1" || r.title(id2) != "acme secret 2" {
		t.Fatalf("alice locked out:\n%s\n%s", r.out, r.errOut)
	}
	// The operator's identity, following any of the rows, gets nothing.
	for _, dev := range [][2]string{{"mallory", "laptop"}, {"alice", "evil"}, {"alice", "d1"}} {
		who := "the operator's identity as " + dev[0] + "/" + dev[1]
		r := e.tail(evil, dev[0], dev[1])
		r.noPlaintext(t, who, "acme secret")
		for _, id := range []string{id1, id2} {
			if r.cellError(id) != "no_key" {
				t.Errorf("%s: row %s: %v", who, id, r.rows[id])
			}
		}
		// A row there is for it is reported as refused.
		if _, ok := e.keyRows()[dev[0]+"/"+dev[1]]; ok && !strings.Contains(r.errOut, "refused") {
			t.Errorf("%s: stderr:\n%s", who, r.errOut)
		}
	}
}

// plantDevices plants, as the operator, devices with evilRcpt: one for
// mallory, whom the log does not know, one under alice, each with a copy
// of alice's wrapped key, and evilRcpt in alice's real device row.
func plantDevices(t *testing.T, e *attackEnv, evilRcpt string) {
	t.Helper()
	// A device for mallory, whom the log does not know, and a
	// membership row for it (a copy of alice's wrapped key).
	pgtest.Exec(t, e.url, `INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ('mallory', 'laptop', $1)
		ON CONFLICT DO NOTHING`, evilRcpt)
	// A device under alice, a member, with its row too.
	pgtest.Exec(t, e.url, `INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ('alice', 'evil', $1)
		ON CONFLICT DO NOTHING`, evilRcpt)
	pgtest.Exec(t, e.url, `INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped)
		SELECT tenant_id, u, d, generation, wrapped FROM shapeseal_tenant_keys, (VALUES ('mallory', 'laptop'), ('alice', 'evil')) AS v(u, d)
		WHERE tenant_id = 'acme' AND user_id = 'alice' AND device_id = 'd1'
		ON CONFLICT DO NOTHING`)
	// alice's real device row now names the operator's recipient.
	pgtest.Exec(t, e.url, `UPDATE shapeseal_devices SET recipient = $1 WHERE user_id = 'alice' AND device_id = 'd1'`, evilRcpt)
}

// plantedGrantRefused checks that, on planted devices, a grant of alice
// takes neither the device under her nor the replaced recipient, and
// reports both, and that a grant of mallory finds no certified device.
func plantedGrantRefused(t *testing.T, e *attackEnv, aliceRcpt string) {
	t.Helper()
	seq := e.state().Seq()
	out, errOut := e.as(e.adminFile, runGrant, "--tenant", "acme", "--user", "alice")
	if !strings.Contains(out, "(1 devices)") {
		t.Errorf("grant: %s", out)
	}
	for _, w := range []string{`device "evil" of "alice" ignored: no certificate by a root or an admin of tenant "acme"`,
		`device "d1" of "alice" ignored: the row's recipient is not the certified one`,
		`deleted the wrapped key of device "evil" of "alice"`} {
		if !strings.Contains(errOut, w) {
			t.Errorf("grant did not report %q:\n%s", w, errOut)
		}
	}
	_, errOut, err := e.refused(runGrant, e.withDB("--tenant", "acme", "--user", "mallory", "--key", e.adminFile)...)
	if !errors.Is(err, keysync.ErrNoDevices) || !strings.Contains(errOut, `device "laptop" of "mallory" ignored`) {
		t.Errorf("grant of mallory: %v\n%s", err, errOut)
	}
	st := e.state()
	if st.Seq() != seq || !slices.Equal(st.Members(), []string{"alice"}) || len(st.Devices()) != 1 {
		t.Fatalf("attack not refused: the log took a planted device: seq %d (was %d), members %v, devices %v", st.Seq(), seq, st.Members(), st.Devices())
	}
	if r, _ := st.Device("alice", "d1"); r != aliceRcpt {
		t.Fatal("attack not refused: the log took the replaced recipient")
	}
	if rows := e.keyRows(); rows["alice/d1"] != 2 || rows["alice/evil"] != 0 {
		t.Fatalf("key rows after grant: %v", rows)
	}
}

// TestAttackRevokedRowPutBack: the database cannot re-admit a revoked user.
func TestAttackRevokedRowPutBack(t *testing.T) {
	t.Parallel()
	e := newAttackEnv(t)
	alice, _ := e.device("alice", "d1")
	bob, _ := e.device("bob", "d1")
	e.grant("alice")
	e.grant("bob")
	e.mustWrite("before the revocation")
	gen, saved := e.wrapped("alice", "d1") // kept by the operator

	out, errOut := e.as(e.adminFile, runRevoke, "--tenant", "acme", "--user", "alice")
	if !strings.Contains(out, "revoked alice from tenant acme: generation 2") {
		t.Fatalf("revoke: %s", out)
	}
	if strings.Contains(errOut, "ignored") {
		t.Errorf("revoke reported its own deletion of alice's row as tampering:\n%s", errOut)
	}
	putBack := func(gen int64) {
		t.Helper()
		pgtest.Exec(t, e.url, `INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped) VALUES ('acme', 'alice', 'd1', $1, $2)
			ON CONFLICT (tenant_id, user_id, device_id) DO UPDATE SET generation = excluded.generation, wrapped = excluded.wrapped`, gen, saved)
	}

	// The next rotation does not re-grant it: it deletes it, and says so.
	putBack(gen)
	out, errOut = e.as(e.adminFile, runRotate, "--tenant", "acme")
	if !strings.Contains(out, "generation 3") {
		t.Fatalf("rotate: %s", out)
	}
	if !strings.Contains(errOut, `shapeseal: ignored: keysync: tenant "acme": shapeseal_tenant_keys disagrees with the log: deleted the wrapped key of device "d1" of "alice", which the log does not list`) {
		t.Errorf("rotate did not report the row put back:\n%s", errOut)
	}
	if rows := e.keyRows(); len(rows) != 1 || rows["bob/d1"] != 3 {
		t.Fatalf("attack not refused: key rows after rotate: %v", rows)
	}
	if st := e.state(); st.IsMember("alice") {
		t.Fatal("attack not refused: the rotation re-admitted alice")
	}

	// Put back once more, claiming the newest generation: alice's tail
	// prints no plaintext of a row written since, and says why.
	putBack(3)
	id := e.mustWrite("after the revocation")
	r := e.tail(alice, "alice", "d1")
	r.noPlaintext(t, "alice after her revocation", "after the revocation", "before the revocation")
	if r.cellError(id) != "no_key" {
		t.Errorf("alice: row %s: %v", id, r.rows[id])
	}
	if !strings.Contains(r.errOut, "refused") || !strings.Contains(r.errOut, "does not list this device") {
		t.Errorf("alice's tail did not report the row put back:\n%s", r.errOut)
	}
	if r := e.tail(bob, "bob", "d1"); r.title(id) != "after the revocation" {
		t.Errorf("bob: %v\n%s", r.rows[id], r.errOut)
	}
}

// TestAttackCrossTenantAdmin: an admin of one tenant has no authority over
// another.
func TestAttackCrossTenantAdmin(t *testing.T) {
	t.Parallel()
	e := newAttackEnv(t)
	alice, aliceRcpt := e.device("alice", "d1")
	e.grant("alice")
	id1 := e.mustWrite("acme secret")

	// globex is delegated to adminB, which administers it.
	adminB, adminBFile := delegateGlobex(t, e)

	// On acme, adminB is refused.
	seq := e.state().Seq()
	for _, args := range [][]string{
		{"grant", "--tenant", "acme", "--user", "bob"},
		{"rotate", "--tenant", "acme"},
		{"revoke", "--tenant", "acme", "--user", "alice"},
		{"tenant", "admins", "--tenant", "acme", "--add", adminB},
	} {
		f := map[string]stdioRun{"grant": runGrant, "rotate": runRotate, "revoke": runRevoke, "tenant": runTenant}[args[0]]
		_, _, err := e.refused(f, e.withDB(append(args[1:], "--key", adminBFile)...)...)
		if !errors.Is(err, chain.ErrUnauthorized) {
			t.Errorf("%v by globex's admin: %v, want chain.ErrUnauthorized", args, err)
		}
	}
	// A device adminB certifies for alice counts for globex only: acme's
	// own grant of alice does not take it.
	_, evilRcpt := e.identity("evil")
	e.as(adminBFile, runDevice, "add", "--user", "alice", "--device", "evil", "--recipient", evilRcpt)
	e.grant("alice")
	st := e.state()
	if st.Seq() != seq || !slices.Equal(st.Members(), []string{"alice"}) || len(st.Devices()) != 1 {
		t.Fatalf("attack not refused: acme's log changed: seq %d (was %d), members %v, devices %v", st.Seq(), seq, st.Members(), st.Devices())
	}
	if r, _ := st.Device("alice", "d1"); r != aliceRcpt {
		t.Fatal("attack not refused: alice's device re-keyed")
	}

	// A keyset adminB made for acme, wrapped to alice's device in her row
	// — at the generation acme's log names, then at the next — and a row
	// sealed with it: alice's tail refuses the keyset and prints neither
	// the forged row nor anything else.
	keyB, err := keysync.LoadKeyFile(adminBFile)
	if err != nil {
		t.Fatal(err)
	}
	own, err := keysync.NewKeyset("acme")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		gen  uint64
		want string
	}{
		{1, "wrapped keyset is not signed by a trusted signer: not the keyset of generation 1 that the log names"},
		{2, "wrapped keyset is not signed by a trusted signer: generation 2, which the log does not name yet, signed by " + adminB + ", neither a root nor an admin of the tenant"},
	} {
		for own.Generation() < c.gen {
			if own, err = own.Rotate(); err != nil {
				t.Fatal(err)
			}
		}
		w, err := keysync.Wrap(e.ctx, own, keyB, aliceRcpt)
		if err != nil {
			t.Fatal(err)
		}
		pgtest.Exec(t, e.url, `UPDATE shapeseal_tenant_keys SET generation = $1, wrapped = $2 WHERE tenant_id = 'acme' AND user_id = 'alice'`, int64(c.gen), w)
		forged := e.insertSealed(own, fmt.Sprintf("forged by globex's admin, generation %d", c.gen))
		r := e.tail(alice, "alice", "d1")
		r.noPlaintext(t, "alice", "forged by globex", "acme secret")
		if r.cellError(forged) != "no_key" || r.cellError(id1) != "no_key" {
			t.Errorf("generation %d: alice's rows: %v", c.gen, r.rows)
		}
		if !strings.Contains(r.errOut, "refused: "+c.want) {
			t.Errorf("generation %d: alice's tail did not report the refusal %q:\n%s", c.gen, c.want, r.errOut)
		}
	}
}

// delegateGlobex creates tenant globex with a new admin, adminB, which
// certifies bob's device and grants him globex. It returns adminB's
// public key and key file.
func delegateGlobex(t *testing.T, e *attackEnv) (adminB, adminBFile string) {
	t.Helper()
	adminBFile = filepath.Join(e.dir, "adminB.key")
	adminB, _ = e.ok(runSignkey, "-o", adminBFile)
	adminB = strings.TrimSpace(adminB)
	e.as(e.rootFile, runTenant, "create", "--tenant", "globex", "--kek", e.kek, "--admin", adminB)
	_, bobRcpt := e.identity("bob")
	e.as(adminBFile, runDevice, "add", "--user", "bob", "--device", "d1", "--recipient", bobRcpt)
	if out, _ := e.as(adminBFile, runGrant, "--tenant", "globex", "--user", "bob"); !strings.Contains(out, "(1 devices)") {
		t.Fatalf("adminB's grant of globex: %s", out)
	}
	return adminB, adminBFile
}
