package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
)

func TestTailDecrypts(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	url := pgtest.NewDB(t)
	db, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())
	if err := keysync.ApplySchema(ctx, db); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, url, `CREATE TABLE items (id uuid PRIMARY KEY, tenant_id text NOT NULL, title text, body text)`)

	dir := t.TempDir()
	spec := keysync.TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	ks, _ := keysync.NewKeyset("acme")
	signer, _ := keysync.GenerateSigner()
	insert := func(ks *keysync.Keyset, id, title, body string) {
		t.Helper()
		row := map[string]any{"id": id, "tenant_id": "acme", "title": title}
		if body != "" {
			row["body"] = body
		}
		if err := spec.SealRow(ks, row); err != nil {
			t.Fatal(err)
		}
		pgtest.Exec(t, url, `INSERT INTO items VALUES ($1, $2, $3, $4)`, row["id"], row["tenant_id"], row["title"], row["body"])
	}
	identity := func(user string) string {
		id, err := keysync.GenerateIdentity()
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, user+".key")
		if err := keysync.WriteIdentityFile(path, id); err != nil {
			t.Fatal(err)
		}
		rcpt, _ := keysync.RecipientOf(id)
		pgtest.Exec(t, url, `INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ($1, 'd1', $2)`, user, rcpt)
		if user == "alice" {
			wrapped, err := keysync.Wrap(ks, signer, id.Recipient().String())
			if err != nil {
				t.Fatal(err)
			}
			pgtest.Exec(t, url, `INSERT INTO shapeseal_tenant_keys VALUES ('acme', $1, 'd1', 1, $2)`, user, wrapped)
			insert(ks, "00000000-0000-4000-8000-000000000001", "first secret", "a body")
			insert(ks, "00000000-0000-4000-8000-000000000002", "second secret", "")
		}
		return path
	}
	alice, eve := identity("alice"), identity("eve")
	srv := electrictest.StartTest(t, electrictest.Options{DatabaseURL: url, LongPollTimeout: 300 * time.Millisecond})

	run := func(args ...string) []map[string]any {
		t.Helper()
		var out, errOut syncBuffer
		args = append([]string{srv.URL, "--table", "items", "--encrypted", "items:title,body", "--tenant-column", "tenant_id",
			"--signer", signer.VerifyKey().String()}, args...)
		if err := tail(ctx, args, &out, &errOut); err != nil {
			t.Fatal(err, errOut.lines())
		}
		if s := strings.Join(errOut.lines(), "\n"); s != "" {
			t.Errorf("stderr: %s", s)
		}
		var values []map[string]any
		for _, m := range decryptedChanges(t, out.lines()) {
			if m.Headers["operation"] == "insert" {
				values = append(values, m.Value)
			}
		}
		if len(values) != 2 {
			t.Fatalf("output %s", out.lines())
		}
		return values
	}

	// A member, with the key shape filtered to her device.
	floorPath := filepath.Join(dir, "floor.json")
	v := run("--identity", alice, "--user", "alice", "--device", "d1", "--floor", floorPath)
	if b, err := os.ReadFile(floorPath); err != nil || string(b) != `{"acme":1}` {
		t.Errorf("--floor file: %q, %v", b, err)
	}
	if v[0]["title"] != "first secret" || v[0]["body"] != "a body" || v[1]["title"] != "second secret" || v[1]["body"] != nil {
		t.Errorf("member: %v", v)
	}

	// Without a trusted signer, tail refuses to start; trusting another
	// signer, alice's genuine keyset is refused and every cell is no_key.
	var errOut0 syncBuffer
	err = tail(ctx, []string{srv.URL, "--table", "items", "--encrypted", "items:title,body", "--identity", alice}, &syncBuffer{}, &errOut0)
	if err == nil || !strings.Contains(err.Error(), "--signer") {
		t.Errorf("tail without --signer: %v", err)
	}
	other, _ := keysync.GenerateSigner()
	var out1, errOut1 syncBuffer
	err = tail(ctx, []string{srv.URL, "--table", "items", "--encrypted", "items:title,body", "--identity", alice,
		"--user", "alice", "--device", "d1", "--key-wait", "300ms", "--signer", other.VerifyKey().String()}, &out1, &errOut1)
	if err != nil {
		t.Fatal(err)
	}
	if o := strings.Join(out1.lines(), "\n"); strings.Contains(o, "secret") || !strings.Contains(o, "no_key") {
		t.Errorf("alice trusting another signer printed:\n%s", o)
	}
	if e := strings.Join(errOut1.lines(), "\n"); !strings.Contains(e, "not signed by a trusted signer") {
		t.Errorf("alice trusting another signer, stderr:\n%s", e)
	}

	// A non-member following the whole key shape: alice's row is not for
	// her device, and every cell is a per-cell error.
	start := time.Now()
	v = run("--identity", eve, "--key-wait", "300ms")
	for _, row := range v {
		e, ok := row["title"].(map[string]any)
		if !ok || e["error"] != "no_key" || !strings.HasPrefix(e["message"].(string), "keysync: open public.items.title") {
			t.Errorf("non-member title: %v", row["title"])
		}
	}
	if e, ok := v[0]["body"].(map[string]any); !ok || e["error"] != "no_key" {
		t.Errorf("non-member body: %v", v[0]["body"])
	}
	if v[1]["body"] != nil {
		t.Errorf("NULL body: %v", v[1]["body"])
	}
	// One wait for the missing key, not one per cell.
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("non-member tail took %s", d)
	}

	// Live: alice reads a new row, then is revoked; rows sealed after the
	// revocation print per-cell errors.
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- tail(lctx, []string{srv.URL, "--live", "--table", "items", "--encrypted", "items:title,body",
			"--identity", alice, "--user", "alice", "--device", "d1", "--key-wait", "500ms", "--signer", signer.VerifyKey().String()}, &out, &errOut)
	}()
	waitFor := func(sub string) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !strings.Contains(strings.Join(out.lines(), "\n"), sub); {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s; output:\n%s\nstderr: %s", sub, strings.Join(out.lines(), "\n"), errOut.lines())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitFor(`"up-to-date"`)
	insert(ks, "00000000-0000-4000-8000-000000000003", "live secret", "")
	waitFor(`"title":"live secret"`)
	pgtest.Exec(t, url, `DELETE FROM shapeseal_tenant_keys WHERE user_id = 'alice'`)
	ks2, _ := ks.Rotate()
	time.Sleep(500 * time.Millisecond) // the revocation reaches her keyring
	insert(ks2, "00000000-0000-4000-8000-000000000004", "after revoke", "")
	waitFor(`"id":"00000000-0000-4000-8000-000000000004","tenant_id":"acme","title":{"error":"no_key"`)
	if strings.Contains(strings.Join(out.lines(), "\n"), "after revoke") {
		t.Error("revoked member read a new row")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("live tail: %v (%s)", err, errOut.lines())
	}
}

// tailChange is a change message as tail prints it.
type tailChange struct {
	Headers map[string]any `json:"headers"`
	Value   map[string]any `json:"value"`
}

// decryptedChanges parses the lines a decrypting tail printed, and fails
// the test if any holds a ciphertext.
func decryptedChanges(t *testing.T, lines []string) []tailChange {
	t.Helper()
	var ms []tailChange
	for _, l := range lines {
		if strings.Contains(l, "ss1:") {
			t.Errorf("ciphertext printed: %s", l)
		}
		var m tailChange
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		ms = append(ms, m)
	}
	return ms
}
