package main

// Attacks on the keyset rows and the KEK (3, 5 and 6 of the list in
// attack_test.go).

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

	t.Run("rogue newer keyset row under another KEK", func(t *testing.T) { rogueKeysetRowIgnored(t, e, alice) })

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

	t.Run("hcvault host other than VAULT_ADDR", func(t *testing.T) { vaultHostRefused(t, e) })
}

// rogueKeysetRowIgnored: a keyset row above the log's generation, under
// a KEK of the operator's, is neither sealed with nor kept by a rotation.
func rogueKeysetRowIgnored(t *testing.T, e *attackEnv, alice string) {
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
}

// vaultHostRefused: an hcvault:// KEK on a host other than VAULT_ADDR is
// refused by write, tenant create and rotate.
func vaultHostRefused(t *testing.T, e *attackEnv) {
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

	// No signing key, only the KEK: every administration command refuses.
	kekOnlyCommandsRefused(t, e, malloryRcpt)

	// A writer's KEK decrypts the keyset the log names. It "certifies"
	// mallory's device with a key of its own, wraps the keyset to it, and
	// signs a log entry adding mallory.
	own := plantStolenKeyset(t, e, malloryRcpt)

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
	forgedEntryRefused(t, e, own, mallory, malloryRcpt, id1)
	e.nothingOpensFor(mallory)
	if r := e.tail(alice, "alice", "d1"); r.title(id1) != "acme secret" {
		t.Errorf("alice: %v\n%s", r.rows, r.errOut)
	}

	// There is no signer in the database: init made only these tables,
	// and no row of them holds a signing key.
	noSigningKeyStored(t, e)
}

// kekOnlyCommandsRefused checks that, holding the KEK but no signing key,
// no administration command (nor write, without a pinned root) changes
// acme's log or adds mallory's device.
func kekOnlyCommandsRefused(t *testing.T, e *attackEnv, malloryRcpt string) {
	t.Helper()
	seq := e.state().Seq()
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
}

// plantStolenKeyset decrypts acme's keyset with the writer's KEK, and
// stores mallory's device, a certificate of it signed by a key of mallory's
// own, and the keyset wrapped to it. It returns that key.
func plantStolenKeyset(t *testing.T, e *attackEnv, malloryRcpt string) *chain.PrivateKey {
	t.Helper()
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
	return own
}

// forgedEntryRefused appends to acme's log an entry adding mallory, signed
// by own, checks that tail and the admin commands refuse it, and deletes it.
func forgedEntryRefused(t *testing.T, e *attackEnv, own *chain.PrivateKey, mallory, malloryRcpt, id1 string) {
	t.Helper()
	st := e.state()
	entry, err := chain.Sign(e.ctx, chain.Entry{Tenant: "acme", Seq: st.Seq() + 1, Prev: st.Head(), Ops: []chain.Op{
		{Type: chain.OpMemberAdd, User: "mallory"},
		{Type: chain.OpDeviceAdd, User: "mallory", Device: "laptop", Recipient: malloryRcpt},
	}}, own)
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, e.url, `INSERT INTO shapeseal_log (tenant_id, seq, entry) VALUES ('acme', $1, $2)`, int64(entry.Seq), entry.Bytes())
	r := e.tail(mallory, "mallory", "laptop", "--no-floor")
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
}

// noSigningKeyStored checks that init made only shapeseal's five tables
// and that no row of them holds the root's or the admin's signing key.
func noSigningKeyStored(t *testing.T, e *attackEnv) {
	t.Helper()
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
