package main

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
)

// TestKeysLocalKEK runs the key commands with a local KEK file, and checks
// their usage errors.
func TestKeysLocalKEK(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := pgtest.NewDB(t)
	dir := t.TempDir()
	kekPath := filepath.Join(dir, "kek.json")
	if _, err := keysync.GenerateLocalKEK(kekPath); err != nil {
		t.Fatal(err)
	}
	kek := "local://" + filepath.ToSlash(kekPath)
	db := []string{"--database-url", url}
	run := func(f stdioRun, args ...string) (string, error) {
		var out, errOut bytes.Buffer
		err := f(ctx, args, &out, &errOut)
		return out.String(), err
	}
	must := func(f stdioRun, args ...string) string {
		t.Helper()
		out, err := run(f, args...)
		if err != nil {
			t.Fatalf("%v: %v", args, err)
		}
		return out
	}
	must(runInit, db...)
	pgtest.Exec(t, url, `CREATE TABLE notes (id int8 PRIMARY KEY, org uuid NOT NULL, note text)`)
	rcpt := strings.TrimSpace(must(runKeygen, "-o", filepath.Join(dir, "a.key")))
	must(runDevice, append([]string{"add", "--user", "a", "--device", "d", "--recipient", rcpt}, db...)...)
	org := "0b5e0000-0000-4000-8000-000000000001"
	must(runTenant, append([]string{"create", "--tenant", org, "--kek", kek}, db...)...)
	must(runGrant, append([]string{"--tenant", org, "--user", "a"}, db...)...)

	var out, errOut bytes.Buffer
	args := append([]string{"--table", "notes", "--encrypted", "note", "--tenant-column", "org",
		"--json", `{"id": 7, "org": "` + strings.ToUpper(org) + `", "note": "hello"}`}, db...)
	if err := write(ctx, args, strings.NewReader(""), &out, &errOut); err != nil {
		t.Fatal(err, errOut.String())
	}
	// Another table holds a cell of the tenant; its tenant column is named
	// otherwise, so --retire counts its cells when --also names it.
	pgtest.Exec(t, url, `CREATE TABLE files (id int8 PRIMARY KEY, owner uuid NOT NULL, name text)`)
	args = append([]string{"--table", "files", "--encrypted", "name", "--tenant-column", "owner",
		"--json", `{"id": 1, "owner": "` + org + `", "name": "report.pdf"}`}, db...)
	out.Reset()
	errOut.Reset()
	if err := write(ctx, args, strings.NewReader(""), &out, &errOut); err != nil {
		t.Fatal(err, errOut.String())
	}
	must(runRotate, append([]string{"--tenant", org}, db...)...)
	notes := append([]string{"--tenant", org, "--table", "notes", "--columns", "note", "--tenant-column", "org", "--retire", "--also", "files:name:owner"}, db...)
	if out, err := run(runReencrypt, notes...); !errors.Is(err, keysync.ErrKeysInUse) || !strings.Contains(err.Error(), "public.files.name") ||
		!strings.Contains(out, "1 cells rewritten") || !strings.Contains(out, "still seals 1 cells") {
		t.Errorf("reencrypt --retire with files not re-encrypted: %s, %v", out, err)
	}
	must(runReencrypt, append([]string{"--tenant", org, "--table", "files", "--columns", "name", "--tenant-column", "owner"}, db...)...)
	if out := must(runReencrypt, notes...); !strings.Contains(out, "0 cells rewritten") || !strings.Contains(out, "retired 1 keys") {
		t.Errorf("reencrypt: %s", out)
	}

	for name, c := range map[string]struct {
		f    stdioRun
		args []string
		want string
	}{
		"no tenant":        {runGrant, []string{"--user", "a"}, "--tenant is required"},
		"bad kek":          {runTenant, []string{"create", "--tenant", "x", "--kek", "s3://k"}, "unsupported KEK URI"},
		"no kek":           {runTenant, []string{"create", "--tenant", "x", "--kek", ""}, "no KEK"},
		"no subcommand":    {runDevice, []string{"--user", "a"}, `want subcommand "add"`},
		"no keyset":        {runRotate, []string{"--tenant", "nobody"}, "no keyset stored"},
		"not a member":     {runRevoke, []string{"--tenant", org, "--user", "zed"}, "not a member"},
		"bad recipient":    {runDevice, []string{"add", "--user", "b", "--device", "d", "--recipient", "ssh-rsa AAA"}, "unsupported recipient"},
		"keygen without o": {runKeygen, []string{"-o", ""}, "-o FILE"},
		"also alone":       {runReencrypt, []string{"--tenant", org, "--table", "notes", "--columns", "note", "--also", "files:name"}, "--also names tables for --retire"},
		"bad also":         {runReencrypt, []string{"--tenant", org, "--table", "notes", "--columns", "note", "--retire", "--also", "files"}, "want TABLE:C1,C2"},
	} {
		a := c.args
		if name != "keygen without o" {
			a = append(a, db...)
		}
		if _, err := run(c.f, a...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want %q", name, err, c.want)
		}
	}
	// Bad rows are refused and nothing of the batch is written.
	args = append([]string{"--table", "notes", "--encrypted", "note", "--tenant-column", "org"}, db...)
	stdin := `{"id": 8, "org": "` + org + `", "note": "ok"}` + "\n" + `{"id": 9, "org": "` + org + `", "note": 42}` + "\n"
	if err := write(ctx, args, strings.NewReader(stdin), &out, &errOut); err == nil || !strings.Contains(err.Error(), "row 2") {
		t.Errorf("bad row: %v", err)
	}
	if err := write(ctx, append(args, "--update", "--json", `{"id": 99, "org": "`+org+`", "note": "x"}`), nil, &out, &errOut); err == nil {
		t.Error("updated a missing row")
	}
	var n int
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	conn.QueryRow(ctx, `SELECT count(*) FROM notes`).Scan(&n)
	if n != 1 {
		t.Errorf("%d rows", n)
	}
}
