package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// TestKeysLocalKEK runs the key commands with a local KEK file — tenant
// create, admins, show, device add, grant, write, rotate, reencrypt with
// --retire and --also, floor forget — and checks their usage errors. Each
// step goes on from where the one before left the database.
func TestKeysLocalKEK(t *testing.T) {
	t.Parallel()
	k := newKeysLocal(t)
	for _, step := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"signkey", k.signkeys},
		{"tenant", k.tenant},
		{"admins", k.admins},
		{"write and rotate", k.writeAndRotate},
		{"reencrypt", k.reencrypt},
		{"usage", k.usage},
		{"bad rows", k.badRows},
		{"tenant created again", k.createdAgain},
	} {
		if !t.Run(step.name, step.f) {
			return // the next steps need this one
		}
	}
}

// keysLocal is the state the steps of TestKeysLocalKEK share.
type keysLocal struct {
	ctx                             context.Context
	url, dir                        string
	kek                             string   // the KEK's URI
	rootFile, adminFile, admin2File string   // signing keys
	root, admin, admin2             string   // their public keys
	rcpt                            string   // user a's device's recipient
	org                             string   // the tenant
	floor                           string   // the writer's floor file
	writeNotes                      []string // write's flags for the notes table
}

func newKeysLocal(t *testing.T) *keysLocal {
	ctx := t.Context()
	url := pgtest.NewDB(t)
	dir := t.TempDir()
	kekPath := filepath.Join(dir, "kek.json")
	if _, err := keysync.GenerateLocalKEK(kekPath); err != nil {
		t.Fatal(err)
	}
	kek := "local://" + filepath.ToSlash(kekPath)
	return &keysLocal{
		ctx: ctx, url: url, dir: dir, kek: kek,
		rootFile: filepath.Join(dir, "root.key"), adminFile: filepath.Join(dir, "admin.key"), admin2File: filepath.Join(dir, "admin2.key"),
		org:        "0b5e0000-0000-4000-8000-000000000001",
		floor:      filepath.Join(dir, "writer.floor"),
		writeNotes: []string{"--table", "notes", "--encrypted", "note", "--tenant-column", "org"},
	}
}

func (k *keysLocal) run(f stdioRun, args ...string) (string, string, error) {
	var out, errOut bytes.Buffer
	err := f(k.ctx, args, &out, &errOut)
	return out.String(), errOut.String(), err
}

// mustFor returns run for t, failing t on an error.
func (k *keysLocal) mustFor(t *testing.T) func(f stdioRun, args ...string) string {
	return func(f stdioRun, args ...string) string {
		t.Helper()
		out, errOut, err := k.run(f, args...)
		if err != nil {
			t.Fatalf("%v: %v\n%s", args, err, errOut)
		}
		return out
	}
}

// withDB adds the database and the pinned root to args.
func (k *keysLocal) withDB(args ...string) []string {
	return append(args, "--database-url", k.url, "--root", k.root)
}

// writeRows runs write with stdin, args, the database and the floor, and
// returns its stderr.
func (k *keysLocal) writeRows(stdin string, args ...string) (string, error) {
	var out, errOut bytes.Buffer
	err := write(k.ctx, append(k.withDB(args...), "--floor", k.floor), strings.NewReader(stdin), &out, &errOut)
	return errOut.String(), err
}

// signkeys makes the keys: a root, which creates the tenant, and two admin
// keys.
func (k *keysLocal) signkeys(t *testing.T) {
	run, must := k.run, k.mustFor(t)
	rootFile, adminFile, admin2File := k.rootFile, k.adminFile, k.admin2File
	k.root = strings.TrimSpace(must(runSignkey, "-o", rootFile))
	k.admin = strings.TrimSpace(must(runSignkey, "-o", adminFile))
	k.admin2 = strings.TrimSpace(must(runSignkey, "-o", admin2File))
	for _, key := range []string{k.root, k.admin, k.admin2} {
		if _, err := keysync.ParseVerifyKey(key); err != nil {
			t.Fatalf("signkey printed %q: %v", key, err)
		}
	}
	if fi, err := os.Stat(rootFile); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("root key file: %v, %v", fi, err)
	}
	if _, _, err := run(runSignkey, "-o", rootFile); err == nil {
		t.Error("signkey overwrote a key file")
	}
}

// tenant makes the tenant, certifies user a's device, grants a the tenant,
// and shows it.
func (k *keysLocal) tenant(t *testing.T) {
	must, withDB := k.mustFor(t), k.withDB
	url, dir, kek, org, admin := k.url, k.dir, k.kek, k.org, k.admin
	rootFile, adminFile := k.rootFile, k.adminFile
	must(runInit, "--database-url", url)
	pgtest.Exec(t, url, `CREATE TABLE notes (id int8 PRIMARY KEY, org uuid NOT NULL, note text)`)
	rcpt := strings.TrimSpace(must(runKeygen, "-o", filepath.Join(dir, "a.key")))
	k.rcpt = rcpt
	out := must(runTenant, withDB("create", "--tenant", org, "--kek", kek, "--key", rootFile, "--admin", admin)...)
	if !strings.Contains(out, "generation 1 under "+kek) || !strings.Contains(out, "admin "+admin) {
		t.Errorf("tenant create: %s", out)
	}
	// The admin certifies and grants.
	out = must(runDevice, withDB("add", "--user", "a", "--device", "d", "--recipient", rcpt, "--key", adminFile)...)
	if !strings.Contains(out, "certified device d of a") || !strings.Contains(out, "shapeseal grant") {
		t.Errorf("device add: %s", out)
	}
	if out := must(runGrant, withDB("--tenant", org, "--user", "a", "--key", adminFile)...); !strings.Contains(out, "(1 devices)") {
		t.Errorf("grant: %s", out)
	}

	// tenant show prints the verified state, and no secret.
	out = must(runTenant, withDB("show", "--tenant", org)...)
	for _, w := range []string{"seq 2\n", "head ", "admin " + admin, "generation 1\n", "primary ", "kek " + kek, "member a\n", "  device d age1pq1"} {
		if !strings.Contains(out, w) {
			t.Errorf("tenant show: no %q in\n%s", w, out)
		}
	}
	if strings.Contains(out, "sssk1") || strings.Contains(out, "AGE-SECRET") {
		t.Errorf("tenant show prints a secret:\n%s", out)
	}
}

// admins: admin2 may not administer the tenant until a root delegates it;
// an admin may not delegate.
func (k *keysLocal) admins(t *testing.T) {
	run, must, withDB := k.run, k.mustFor(t), k.withDB
	org, admin2, rootFile, adminFile, admin2File := k.org, k.admin2, k.rootFile, k.adminFile, k.admin2File
	if _, _, err := run(runRotate, withDB("--tenant", org, "--key", admin2File)...); !errors.Is(err, chain.ErrUnauthorized) {
		t.Errorf("rotate by a key that is not an admin: %v", err)
	}
	if _, _, err := run(runTenant, withDB("admins", "--tenant", org, "--key", adminFile, "--add", admin2)...); !errors.Is(err, chain.ErrUnauthorized) {
		t.Errorf("an admin delegated the tenant: %v", err)
	}
	if out := must(runTenant, withDB("admins", "--tenant", org, "--key", rootFile, "--add", admin2)...); !strings.Contains(out, "admin "+admin2) {
		t.Errorf("tenant admins --add: %s", out)
	}
}

// writeAndRotate writes a row of notes and one of files, then admin2
// rotates the keyset until withdrawn.
func (k *keysLocal) writeAndRotate(t *testing.T) {
	run, must, withDB, writeRows := k.run, k.mustFor(t), k.withDB, k.writeRows
	url, org, floor, admin2 := k.url, k.org, k.floor, k.admin2
	rootFile, admin2File := k.rootFile, k.admin2File
	if errOut, err := writeRows("", "--table", "notes", "--encrypted", "note", "--tenant-column", "org",
		"--json", `{"id": 7, "org": "`+strings.ToUpper(org)+`", "note": "hello"}`); err != nil {
		t.Fatal(err, errOut)
	}
	if b, err := os.ReadFile(floor); err != nil || !strings.Contains(string(b), `"`+org+`":{"seq":3,`) {
		t.Errorf("writer floor: %s, %v", b, err)
	}
	// Another table holds a cell of the tenant; its tenant column is named
	// otherwise, so --retire counts its cells when --also names it.
	pgtest.Exec(t, url, `CREATE TABLE files (id int8 PRIMARY KEY, owner uuid NOT NULL, name text)`)
	if errOut, err := writeRows("", "--table", "files", "--encrypted", "name", "--tenant-column", "owner",
		"--json", `{"id": 1, "owner": "`+org+`", "name": "report.pdf"}`); err != nil {
		t.Fatal(err, errOut)
	}
	must(runRotate, withDB("--tenant", org, "--key", admin2File)...)
	// Withdrawn, admin2 may no longer.
	must(runTenant, withDB("admins", "--tenant", org, "--key", rootFile, "--remove", admin2)...)
	if _, _, err := run(runRotate, withDB("--tenant", org, "--key", admin2File)...); !errors.Is(err, chain.ErrUnauthorized) {
		t.Errorf("rotate by a withdrawn admin: %v", err)
	}
}

// reencrypt retires the old keys once both tables are re-encrypted, and
// refuses a KEK other than the log's.
func (k *keysLocal) reencrypt(t *testing.T) {
	run, must, withDB := k.run, k.mustFor(t), k.withDB
	dir, org, adminFile := k.dir, k.org, k.adminFile
	notes := withDB("--tenant", org, "--table", "notes", "--columns", "note", "--tenant-column", "org", "--retire", "--also", "files:name:owner", "--key", adminFile)
	if out, _, err := run(runReencrypt, notes...); !errors.Is(err, keysync.ErrKeysInUse) || !strings.Contains(err.Error(), "public.files.name") ||
		!strings.Contains(out, "1 cells rewritten") || !strings.Contains(out, "still seals 1 cells") {
		t.Errorf("reencrypt --retire with files not re-encrypted: %s, %v", out, err)
	}
	must(runReencrypt, withDB("--tenant", org, "--table", "files", "--columns", "name", "--tenant-column", "owner", "--key", adminFile)...)
	if out := must(runReencrypt, notes...); !strings.Contains(out, "0 cells rewritten") || !strings.Contains(out, "retired 1 keys") {
		t.Errorf("reencrypt: %s", out)
	}
	out := must(runTenant, withDB("show", "--tenant", org)...)
	if !strings.Contains(out, "generation 3\n") || !strings.Contains(out, "seq 6\n") {
		t.Errorf("tenant show after retire:\n%s", out)
	}

	// A --kek other than the one the log names is refused.
	otherKEK := filepath.Join(dir, "other.json")
	if _, err := keysync.GenerateLocalKEK(otherKEK); err != nil {
		t.Fatal(err)
	}
	var mismatch *keysync.KEKMismatchError
	if _, _, err := run(runRotate, withDB("--tenant", org, "--key", adminFile, "--kek", "local://"+otherKEK)...); !errors.As(err, &mismatch) {
		t.Errorf("rotate with another KEK: %v", err)
	}

}

// usage checks the commands' usage errors, which change nothing.
func (k *keysLocal) usage(t *testing.T) {
	run, must, withDB := k.run, k.mustFor(t), k.withDB
	url, dir, kek, org, rcpt, admin, floor := k.url, k.dir, k.kek, k.org, k.rcpt, k.admin, k.floor
	rootFile, adminFile, admin2File := k.rootFile, k.adminFile, k.admin2File
	for name, c := range map[string]struct {
		f    stdioRun
		args []string
		want string
	}{
		"no tenant":           {runGrant, withDB("--user", "a", "--key", adminFile), "--tenant is required"},
		"bad kek":             {runTenant, withDB("create", "--tenant", "x", "--kek", "s3://k", "--key", rootFile), "unsupported KEK URI"},
		"no kek":              {runTenant, withDB("create", "--tenant", "x", "--kek", "", "--key", rootFile), "no KEK"},
		"admin creates":       {runTenant, withDB("create", "--tenant", "x", "--kek", kek, "--key", adminFile), "takes a pinned root key"},
		"tenant exists":       {runTenant, withDB("create", "--tenant", org, "--kek", kek, "--key", rootFile), "tenant exists"},
		"no subcommand":       {runDevice, withDB("--user", "a"), `want subcommand "add"`},
		"bad tenant sub":      {runTenant, withDB("delete", "--tenant", org), `want subcommand "create" or "admins" or "show"`},
		"no log":              {runRotate, withDB("--tenant", "nobody", "--key", adminFile), "has no log"},
		"not a member":        {runRevoke, withDB("--tenant", org, "--user", "zed", "--key", adminFile), "not a member"},
		"bad recipient":       {runDevice, withDB("add", "--user", "b", "--device", "d", "--recipient", "ssh-rsa AAA", "--key", adminFile), "unsupported recipient"},
		"no key":              {runGrant, withDB("--tenant", org, "--user", "a"), "pass --key FILE"},
		"no device key":       {runDevice, withDB("add", "--user", "b", "--device", "d", "--recipient", rcpt), "pass --key FILE"},
		"no root":             {runGrant, []string{"--database-url", url, "--tenant", org, "--user", "a", "--key", adminFile}, "pass --root ssvk1"},
		"bad root":            {runGrant, append(withDB("--tenant", org, "--user", "a", "--key", adminFile), "--root", "ssvk1nope"), "--root"},
		"other root":          {runTenant, []string{"show", "--tenant", org, "--database-url", url, "--root", admin}, "not authorized"},
		"keygen without o":    {runKeygen, []string{"-o", ""}, "-o FILE"},
		"signkey without o":   {runSignkey, nil, "-o FILE"},
		"also alone":          {runReencrypt, withDB("--tenant", org, "--table", "notes", "--columns", "note", "--also", "files:name"), "--also names tables for --retire"},
		"bad also":            {runReencrypt, withDB("--tenant", org, "--table", "notes", "--columns", "note", "--retire", "--also", "files"), "want TABLE:C1,C2"},
		"reencrypt no key":    {runReencrypt, withDB("--tenant", org, "--table", "notes", "--columns", "note", "--tenant-column", "org"), "pass --key FILE"},
		"reencrypt non-admin": {runReencrypt, withDB("--tenant", org, "--table", "notes", "--columns", "note", "--tenant-column", "org", "--key", admin2File), "not authorized"},
		"revoke bad table":    {runRevoke, withDB("--tenant", org, "--user", "a", "--key", adminFile, "--retire"), "--table is required"},
		"floor no tenant":     {runFloor, []string{"forget", "--floor", floor}, "--tenant is required"},
		"floor missing":       {runFloor, []string{"forget", "--floor", filepath.Join(dir, "nope"), "--tenant", org}, "no such file"},
	} {
		if _, _, err := run(c.f, c.args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	// The refused revocation above changed nothing: a is still a member.
	if out := must(runTenant, withDB("show", "--tenant", org)...); !strings.Contains(out, "member a\n") {
		t.Errorf("a revoke with bad flags revoked:\n%s", out)
	}

}

// badRows: bad rows are refused and nothing of the batch is written.
func (k *keysLocal) badRows(t *testing.T) {
	ctx, url, org, floor, writeRows := k.ctx, k.url, k.org, k.floor, k.writeRows
	args := k.writeNotes
	stdin := `{"id": 8, "org": "` + org + `", "note": "ok"}` + "\n" + `{"id": 9, "org": "` + org + `", "note": 42}` + "\n"
	if _, err := writeRows(stdin, args...); err == nil || !strings.Contains(err.Error(), "row 2") {
		t.Errorf("bad row: %v", err)
	}
	if _, err := writeRows("", append(args, "--update", "--json", `{"id": 99, "org": "`+org+`", "note": "x"}`)...); err == nil {
		t.Error("updated a missing row")
	}
	noRoot := append(args, "--database-url", url, "--floor", floor, "--json", `{"id": 8, "org": "`+org+`", "note": "x"}`)
	if err := write(ctx, noRoot, strings.NewReader(""), &bytes.Buffer{}, &bytes.Buffer{}); err == nil || !strings.Contains(err.Error(), "pass --root") {
		t.Errorf("write without --root: %v", err)
	}
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	conn.QueryRow(ctx, `SELECT count(*) FROM notes`).Scan(&n)
	if n != 1 {
		t.Errorf("%d rows", n)
	}

}

// createdAgain: the tenant is deleted and created again: the writer's floor
// refuses its new, shorter log as a rollback until the tenant is forgotten.
func (k *keysLocal) createdAgain(t *testing.T) {
	run, must, withDB, writeRows := k.run, k.mustFor(t), k.withDB, k.writeRows
	url, kek, org, floor, rootFile := k.url, k.kek, k.org, k.floor, k.rootFile
	args := k.writeNotes
	pgtest.Exec(t, url, `DELETE FROM notes; DELETE FROM files; DELETE FROM shapeseal_log; DELETE FROM shapeseal_keysets; DELETE FROM shapeseal_tenant_keys`)
	// The administrator's own floor saw the old tenant too: creating it
	// again takes forgetting it there first.
	adminFloor, _ := defaultFloor("", "SHAPESEAL_ADMIN_FLOOR", "admin", url)
	if _, _, err := run(runTenant, withDB("create", "--tenant", org, "--kek", kek, "--key", rootFile)...); !errors.Is(err, chain.ErrRollback) {
		t.Errorf("tenant create over a tenant the administrator saw: %v", err)
	}
	must(runFloor, "forget", "--floor", adminFloor, "--tenant", org)
	must(runTenant, withDB("create", "--tenant", org, "--kek", kek, "--key", rootFile)...)
	row := append(args, "--json", `{"id": 10, "org": "`+org+`", "note": "again"}`)
	if _, err := writeRows("", row...); !errors.Is(err, chain.ErrRollback) || !strings.Contains(err.Error(), "shapeseal floor forget --floor "+floor+" --tenant "+org) {
		t.Errorf("write to a tenant created again: %v", err)
	}
	if out := must(runFloor, "forget", "--floor", floor, "--tenant", org); !strings.Contains(out, "forgot tenant "+org) {
		t.Errorf("floor forget: %s", out)
	}
	if out := must(runFloor, "forget", "--floor", floor, "--tenant", org); !strings.Contains(out, "remembers nothing") {
		t.Errorf("floor forget again: %s", out)
	}
	if errOut, err := writeRows("", row...); err != nil {
		t.Fatal(err, errOut)
	}
}
