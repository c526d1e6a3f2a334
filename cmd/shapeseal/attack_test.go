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
	"github.com/shapeseal/shapeseal/keysync/vaultkek"
)

// TestAttackPlantedDevices: devices the database adds get nothing.
func TestAttackPlantedDevices(t *testing.T) {
	t.Parallel()
	e := newAttackEnv(t)
	alice, aliceRcpt := e.device("alice", "d1")
	e.grant("alice")
	id1 := e.mustWrite("acme secret 1")
	evil, evilRcpt := e.identity("evil") // the operator's own device

	plant := func() {
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

	// An ordinary rotation wraps only to the log's devices, and deletes
	// (and reports) the planted rows.
	plant()
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
	plant()
	seq := e.state().Seq()
	out, errOut = e.as(e.adminFile, runGrant, "--tenant", "acme", "--user", "alice")
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

// TestAttackKeysetRows: writers and admins take the keyset the log names,
// under the KEK the log names. Not parallel: it sets VAULT_ADDR.
func TestAttackKeysetRows(t *testing.T) {
	e := newAttackEnv(t)
	alice, _ := e.device("alice", "d1")
	e.grant("alice")
	e.as(e.adminFile, runRotate, "--tenant", "acme")
	e.mustWrite("under generation 2")
	var saved []byte
	if err := e.db.QueryRow(e.ctx, `SELECT encrypted_keyset FROM shapeseal_keysets WHERE tenant_id = 'acme' AND generation = 2`).Scan(&saved); err != nil {
		t.Fatal(err)
	}
	rows := e.count(`SELECT * FROM items`)

	t.Run("newest keyset row deleted", func(t *testing.T) {
		pgtest.Exec(t, e.url, `DELETE FROM shapeseal_keysets WHERE tenant_id = 'acme' AND generation = 2`)
		seq := e.state().Seq()
		for name, err := range map[string]error{
			"write": func() error { _, _, err := e.write("under the previous key?"); return err }(),
			"rotate": func() error {
				_, _, err := e.run(runRotate, e.withDB("--tenant", "acme", "--key", e.adminFile)...)
				return err
			}(),
		} {
			var se *keysync.StateError
			if !errors.As(err, &se) || !errors.Is(err, keysync.ErrStateMismatch) ||
				!strings.Contains(err.Error(), "shapeseal_keysets disagrees with the log: the log names generation 2, which is not stored") {
				t.Errorf("attack not refused: %s without the newest keyset row: %v", name, err)
			}
		}
		if n := e.count(`SELECT * FROM items`); n != rows {
			t.Errorf("attack not refused: %d rows written under the previous key", n-rows)
		}
		if e.state().Seq() != seq {
			t.Error("attack not refused: the log changed")
		}
		pgtest.Exec(t, e.url, `INSERT INTO shapeseal_keysets (tenant_id, generation, kek_uri, encrypted_keyset) VALUES ('acme', 2, $1, $2)`, e.kek, saved)
	})

	t.Run("rogue newer keyset row under another KEK", func(t *testing.T) {
		// The operator's KEK (a local file: a writer that opened any KEK a
		// row names could open it) and a keyset of its making at
		// generation 3; the genuine row's kek_uri is pointed at it too.
		evilPath := filepath.Join(e.dir, "evil-kek.json")
		evilKEK, err := keysync.GenerateLocalKEK(evilPath)
		if err != nil {
			t.Fatal(err)
		}
		rogue, err := keysync.NewKeyset("acme")
		if err != nil {
			t.Fatal(err)
		}
		for rogue.Generation() < 3 {
			if rogue, err = rogue.Rotate(); err != nil {
				t.Fatal(err)
			}
		}
		enc, err := keysync.EncryptKeyset(rogue, evilKEK)
		if err != nil {
			t.Fatal(err)
		}
		pgtest.Exec(t, e.url, `INSERT INTO shapeseal_keysets (tenant_id, generation, kek_uri, encrypted_keyset) VALUES ('acme', 3, $1, $2)`, evilKEK.URI(), enc)
		pgtest.Exec(t, e.url, `UPDATE shapeseal_keysets SET kek_uri = $1 WHERE tenant_id = 'acme' AND generation = 2`, evilKEK.URI())

		// write without --kek seals with the log's generation 2.
		id := e.mustWrite("sealed with the log's keyset")
		primary := e.state().Keyset().Primary
		if k := e.cellKey(id); k != primary || rogue.HasKey(k) {
			t.Fatalf("attack not refused: write sealed with key %08x; the log's primary is %08x", k, primary)
		}
		if r := e.tail(alice, "alice", "d1"); r.title(id) != "sealed with the log's keyset" {
			t.Fatalf("alice cannot open the row write sealed: %v\n%s", r.rows[id], r.errOut)
		}
		// The next rotation deletes the rogue row, says so, and stores its
		// own generation 3.
		out, errOut := e.as(e.adminFile, runRotate, "--tenant", "acme")
		if !strings.Contains(out, "generation 3") || !strings.Contains(errOut, "shapeseal: ignored: ") ||
			!strings.Contains(errOut, "deleted 1 keyset rows above the log's generation 2") {
			t.Errorf("rotate over the rogue row:\n%s\n%s", out, errOut)
		}
		id = e.mustWrite("sealed with generation 3")
		if k := e.cellKey(id); k != e.state().Keyset().Primary || rogue.HasKey(k) {
			t.Errorf("attack not refused: write sealed with key %08x after the rotation", k)
		}
	})

	t.Run("write --kek other than the log's", func(t *testing.T) {
		other := filepath.Join(e.dir, "other-kek.json")
		if _, err := keysync.GenerateLocalKEK(other); err != nil {
			t.Fatal(err)
		}
		n := e.count(`SELECT * FROM items`)
		var mismatch *keysync.KEKMismatchError
		if _, _, err := e.write("under another KEK?", "--kek", "local://"+other); !errors.As(err, &mismatch) ||
			mismatch.Log != e.kek || mismatch.Configured != "local://"+other {
			t.Errorf("attack not refused: write --kek other: %v", err)
		}
		if _, _, err := e.run(runGrant, e.withDB("--tenant", "acme", "--user", "alice", "--key", e.adminFile, "--kek", "local://"+other)...); !errors.As(err, &mismatch) {
			t.Errorf("attack not refused: grant --kek other: %v", err)
		}
		if m := e.count(`SELECT * FROM items`); m != n {
			t.Errorf("%d rows written", m-n)
		}
	})

	t.Run("hcvault host other than VAULT_ADDR", func(t *testing.T) {
		// No Vault runs: the host is refused before Vault is asked.
		t.Setenv("VAULT_ADDR", "https://vault.internal:8200")
		t.Setenv("VAULT_TOKEN", "not-a-token")
		t.Setenv("VAULT_AGENT_ADDR", "")
		const evil = "hcvault://vault.attacker.example:8200/transit/keys/acme"
		var hm *vaultkek.HostMismatchError
		if _, _, err := e.write("to the attacker's Vault?", "--kek", evil); !errors.As(err, &hm) || hm.URIHost != "vault.attacker.example:8200" {
			t.Errorf("attack not refused: write --kek %s: %v", evil, err)
		}
		if _, _, err := e.run(runTenant, e.withDB("create", "--tenant", "initech", "--kek", evil, "--key", e.rootFile)...); !errors.As(err, &hm) {
			t.Errorf("attack not refused: tenant create --kek %s: %v", evil, err)
		}
		if _, _, err := e.run(runRotate, e.withDB("--tenant", "acme", "--key", e.adminFile, "--kek", evil)...); !errors.As(err, &hm) {
			t.Errorf("attack not refused: rotate --kek %s: %v", evil, err)
		}
		if n := e.count(`SELECT * FROM shapeseal_log WHERE tenant_id = 'initech'`); n != 0 {
			t.Errorf("initech has %d log entries", n)
		}
	})
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
	adminBFile := filepath.Join(e.dir, "adminB.key")
	adminB, _ := e.ok(runSignkey, "-o", adminBFile)
	adminB = strings.TrimSpace(adminB)
	e.as(e.rootFile, runTenant, "create", "--tenant", "globex", "--kek", e.kek, "--admin", adminB)
	_, bobRcpt := e.identity("bob")
	e.as(adminBFile, runDevice, "add", "--user", "bob", "--device", "d1", "--recipient", bobRcpt)
	if out, _ := e.as(adminBFile, runGrant, "--tenant", "globex", "--user", "bob"); !strings.Contains(out, "(1 devices)") {
		t.Fatalf("adminB's grant of globex: %s", out)
	}

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

// TestAttackKEKOnly: the KEK (which writers hold) decrypts keysets, but
// grants nothing: authority is in signing keys, which the database does not
// hold.
func TestAttackKEKOnly(t *testing.T) {
	t.Parallel()
	e := newAttackEnv(t)
	alice, _ := e.device("alice", "d1")
	e.grant("alice")
	id1 := e.mustWrite("acme secret")
	mallory, malloryRcpt := e.identity("mallory")
	seq := e.state().Seq()

	// No signing key, only the KEK: every administration command refuses.
	for _, args := range [][]string{
		{"grant", "--tenant", "acme", "--user", "mallory", "--kek", e.kek},
		{"rotate", "--tenant", "acme", "--kek", e.kek},
		{"revoke", "--tenant", "acme", "--user", "alice", "--kek", e.kek},
		{"reencrypt", "--tenant", "acme", "--table", "items", "--columns", "title,body", "--retire", "--kek", e.kek},
		{"device", "add", "--user", "mallory", "--device", "laptop", "--recipient", malloryRcpt},
		{"tenant", "admins", "--tenant", "acme", "--add", e.admin},
		{"tenant", "create", "--tenant", "initech", "--kek", e.kek},
	} {
		f := map[string]stdioRun{"grant": runGrant, "rotate": runRotate, "revoke": runRevoke, "reencrypt": runReencrypt, "device": runDevice, "tenant": runTenant}[args[0]]
		if _, _, err := e.refused(f, e.withDB(args[1:]...)...); !strings.Contains(err.Error(), "no signing key: pass --key FILE") {
			t.Errorf("%v without --key: %v", args, err)
		}
	}
	// write with the KEK but no pinned root refuses too.
	if err := write(e.ctx, []string{"--database-url", e.url, "--kek", e.kek, "--floor", e.writerFloor, "--table", "items", "--encrypted", "title",
		"--json", `{"id":"00000000-0000-4000-8000-000000009999","tenant_id":"acme","title":"x"}`}, strings.NewReader(""), &syncBuffer{}, &syncBuffer{}); err == nil ||
		!strings.Contains(err.Error(), "no pinned root key") {
		t.Errorf("write without --root: %v", err)
	}
	if st := e.state(); st.Seq() != seq || st.IsMember("mallory") {
		t.Fatal("attack not refused: the log changed")
	}
	if n := e.count(`SELECT * FROM shapeseal_devices WHERE user_id = 'mallory'`); n != 0 {
		t.Fatal("device add without a key stored a device")
	}

	// A writer's KEK decrypts the keyset the log names. It "certifies"
	// mallory's device with a key of its own, wraps the keyset to it, and
	// signs a log entry adding mallory.
	kek, err := keysync.OpenKEK(e.kek)
	if err != nil {
		t.Fatal(err)
	}
	var enc []byte
	if err := e.db.QueryRow(e.ctx, `SELECT encrypted_keyset FROM shapeseal_keysets WHERE tenant_id = 'acme' AND generation = 1`).Scan(&enc); err != nil {
		t.Fatal(err)
	}
	stolen, err := keysync.DecryptKeyset(kek, "acme", 1, enc)
	if err != nil {
		t.Fatal(err)
	}
	own, err := chain.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := chain.SignCert(e.ctx, chain.Cert{User: "mallory", Device: "laptop", Recipient: malloryRcpt}, own)
	if err != nil {
		t.Fatal(err)
	}
	w, err := keysync.Wrap(e.ctx, stolen, own, malloryRcpt)
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, e.url, `INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ('mallory', 'laptop', $1)`, malloryRcpt)
	pgtest.Exec(t, e.url, `INSERT INTO shapeseal_device_certs (user_id, device_id, signer, cert) VALUES ('mallory', 'laptop', $1, $2)`, own.Public().String(), cert.Bytes())
	pgtest.Exec(t, e.url, `INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped) VALUES ('acme', 'mallory', 'laptop', 1, $1)`, w)

	// Its device's keyring does not adopt it: the log does not list it.
	r := e.tail(mallory, "mallory", "laptop")
	r.noPlaintext(t, "mallory", "acme secret")
	if r.cellError(id1) != "no_key" || !strings.Contains(r.errOut, "refused") || !strings.Contains(r.errOut, "does not list this device") {
		t.Errorf("mallory's tail: %v\n%s", r.rows, r.errOut)
	}
	// An ordinary grant of mallory does not take the certificate.
	_, errOut, err := e.refused(runGrant, e.withDB("--tenant", "acme", "--user", "mallory", "--key", e.adminFile)...)
	if !errors.Is(err, keysync.ErrNoDevices) || !strings.Contains(errOut, `shapeseal: ignored: keysync: device "laptop" of "mallory" ignored`) {
		t.Errorf("grant of mallory: %v\n%s", err, errOut)
	}

	// A log entry it signs is refused by every verifier: tail (mallory
	// gets nothing) and the admin commands.
	st := e.state()
	entry, err := chain.Sign(e.ctx, chain.Entry{Tenant: "acme", Seq: st.Seq() + 1, Prev: st.Head(), Ops: []chain.Op{
		{Type: chain.OpMemberAdd, User: "mallory"},
		{Type: chain.OpDeviceAdd, User: "mallory", Device: "laptop", Recipient: malloryRcpt},
	}}, own)
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, e.url, `INSERT INTO shapeseal_log (tenant_id, seq, entry) VALUES ('acme', $1, $2)`, int64(entry.Seq), entry.Bytes())
	r = e.tail(mallory, "mallory", "laptop", "--no-floor")
	r.noPlaintext(t, "mallory with a forged log entry", "acme secret")
	if r.cellError(id1) != "no_key" || !strings.Contains(r.errOut, "not authorized") {
		t.Errorf("mallory's tail with a forged log entry: %v\n%s", r.rows, r.errOut)
	}
	if _, _, err := e.refused(runTenant, e.withDB("show", "--tenant", "acme")...); !errors.Is(err, chain.ErrUnauthorized) {
		t.Errorf("tenant show with a forged entry: %v", err)
	}
	if _, _, err := e.refused(runRotate, e.withDB("--tenant", "acme", "--key", e.adminFile)...); !errors.Is(err, chain.ErrUnauthorized) {
		t.Errorf("rotate with a forged entry: %v", err)
	}
	pgtest.Exec(t, e.url, `DELETE FROM shapeseal_log WHERE tenant_id = 'acme' AND seq = $1`, int64(entry.Seq))
	e.nothingOpensFor(mallory)
	if r := e.tail(alice, "alice", "d1"); r.title(id1) != "acme secret" {
		t.Errorf("alice: %v\n%s", r.rows, r.errOut)
	}

	// There is no signer in the database: init made only these tables,
	// and no row of them holds a signing key.
	var tables []string
	rows, err := e.db.Query(e.ctx, `SELECT table_name::text FROM information_schema.tables WHERE table_name LIKE 'shapeseal%' ORDER BY 1`)
	if err == nil {
		for rows.Next() {
			var s string
			rows.Scan(&s)
			tables = append(tables, s)
		}
		rows.Close()
	}
	want := []string{"shapeseal_device_certs", "shapeseal_devices", "shapeseal_keysets", "shapeseal_log", "shapeseal_tenant_keys"}
	if !slices.Equal(tables, want) {
		t.Errorf("init made tables %v, want %v (no shapeseal_signers)", tables, want)
	}
	var signers *string
	e.db.QueryRow(e.ctx, `SELECT to_regclass('shapeseal_signers')::text`).Scan(&signers)
	if signers != nil {
		t.Errorf("a table of signers exists: %s", *signers)
	}
	for _, table := range tables {
		var dump string
		if err := e.db.QueryRow(e.ctx, `SELECT coalesce(string_agg(t::text, E'\n'), '') FROM `+table+` t`).Scan(&dump); err != nil {
			t.Fatal(err)
		}
		for name, file := range map[string]string{"root": e.rootFile, "admin": e.adminFile} {
			if strings.Contains(dump, seedHex(t, file)) || strings.Contains(dump, chain.PrivateKeyPrefix) {
				t.Errorf("%s holds the %s's signing key", table, name)
			}
		}
	}
}

// TestAttackForgedCellAfterRevoke: re-encryption does not launder the
// cells a revoked member forges with the key it kept.
func TestAttackForgedCellAfterRevoke(t *testing.T) {
	t.Parallel()
	e := newAttackEnv(t)
	alice, _ := e.device("alice", "d1")
	bob, _ := e.device("bob", "d1")
	e.grant("alice")
	e.grant("bob")
	honest := []string{e.mustWrite("honest 1"), e.mustWrite("honest 2")}
	kept := e.unwrap(alice, "alice", "d1") // what alice keeps
	oldKey := kept.PrimaryKeyID()

	e.as(e.adminFile, runRevoke, "--tenant", "acme", "--user", "alice")
	honest = append(honest, e.mustWrite("honest 3"))
	forged := e.insertSealed(kept, "forged by alice")
	cell := func() string {
		var c string
		e.db.QueryRow(e.ctx, `SELECT title FROM items WHERE id = $1`, forged).Scan(&c)
		return c
	}
	forgedCell := cell()

	reencrypt := e.withDB("--tenant", "acme", "--table", "items", "--columns", "title,body", "--retire", "--key", e.adminFile)
	out, errOut, err := e.refused(runReencrypt, reencrypt...)
	if !errors.Is(err, keysync.ErrKeysInUse) || !strings.Contains(err.Error(), "1 suspect cells remain") {
		t.Errorf("reencrypt --retire with a forged cell: %v", err)
	}
	for _, w := range []string{"4 rows, 2 cells rewritten", "1 suspect", fmt.Sprintf("key %08x still seals 1 cells: not retired", oldKey)} {
		if !strings.Contains(out, w) {
			t.Errorf("reencrypt: no %q in\n%s", w, out)
		}
	}
	if !strings.Contains(errOut, "reencrypt: suspect: keysync: public.items.title row ["+forged+`] of tenant "acme": sealed with key `+fmt.Sprintf("%08x", oldKey)) {
		t.Errorf("reencrypt did not report the forged cell:\n%s", errOut)
	}
	if cell() != forgedCell {
		t.Fatal("attack not refused: the forged cell was re-sealed")
	}
	st := e.state()
	if ks := st.Keyset(); ks.Generation != 2 || !slices.Contains(ks.KeyIDs, oldKey) {
		t.Fatalf("attack not refused: retired with a suspect cell left: %+v", ks)
	}
	for _, id := range honest {
		if e.cellKey(id) != st.Keyset().Primary {
			t.Errorf("honest row %s not re-sealed", id)
		}
	}

	// Deleted, the forged row keeps nothing in use: the old key retires.
	pgtest.Exec(t, e.url, `DELETE FROM items WHERE id = $1`, forged)
	if out, _ := e.ok(runReencrypt, reencrypt...); !strings.Contains(out, "0 cells rewritten") || !strings.Contains(out, "0 suspect") ||
		!strings.Contains(out, "retired 1 keys: generation 3") {
		t.Errorf("reencrypt --retire: %s", out)
	}
	if ks := e.state().Keyset(); slices.Contains(ks.KeyIDs, oldKey) {
		t.Fatalf("old key not retired: %+v", ks)
	}
	// Put back now, the forged cell opens for no one.
	pgtest.Exec(t, e.url, `INSERT INTO items (id, tenant_id, title) VALUES ($1, 'acme', $2)`, forged, forgedCell)
	r := e.tail(bob, "bob", "d1")
	r.noPlaintext(t, "bob", "forged by alice")
	if r.cellError(forged) != "no_key" || r.title(honest[0]) != "honest 1" || r.title(honest[2]) != "honest 3" {
		t.Errorf("bob: %v\n%s", r.rows, r.errOut)
	}
}

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

	t.Run("tenant deleted and created again", func(t *testing.T) {
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
	})
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
