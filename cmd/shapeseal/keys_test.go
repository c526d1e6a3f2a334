package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/vault/api"
	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/internal/vaulttest"
	"github.com/shapeseal/shapeseal/keysync"
)

// TestKeysEndToEnd is the acceptance of key administration with a real
// Vault, Postgres and Electric, through the commands: a root key creates the
// tenant and delegates it to an admin key, which certifies devices and
// grants; `write` with the Vault KEK the log names puts only ciphertext in
// Postgres; `tail` with a member's identity prints the plaintext, with a
// non-member's per-cell errors; `revoke --table … --retire --electric-url`
// revokes, re-encrypts every cell under the new key, retires the old keys
// and drops the shape, after which new rows and old ones are unreadable to
// the revoked member and readable to the others; a cell forged with a
// revoked key after the revocation is reported as suspect and keeps the old
// key from being retired; a live reader follows it all in plaintext.
func TestKeysEndToEnd(t *testing.T) {
	v := vaulttest.New(t)
	ctx := t.Context()
	t.Setenv("VAULT_ADDR", v.Addr)
	t.Setenv("VAULT_TOKEN", v.Token)
	t.Setenv("VAULT_NAMESPACE", "")
	t.Setenv("SHAPESEAL_KEK", "")
	vc, err := api.NewClient(&api.Config{Address: v.Addr})
	if err != nil {
		t.Fatal(err)
	}
	vc.SetToken(v.Token)
	if _, err := vc.Logical().Write("transit/keys/shapeseal-e2e", nil); err != nil {
		t.Fatal(err)
	}
	va, err := url.Parse(v.Addr)
	if err != nil {
		t.Fatal(err)
	}
	// The URI names the Vault of VAULT_ADDR: another host is refused.
	kekURI := "hcvault://" + va.Host + "/transit/keys/shapeseal-e2e"

	dbURL := pgtest.NewDB(t)
	t.Setenv("DATABASE_URL", dbURL)
	db, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close(context.Background())

	run := func(f stdioRun, args ...string) string {
		t.Helper()
		var out, errOut bytes.Buffer
		if err := f(ctx, args, &out, &errOut); err != nil {
			t.Fatalf("%v: %v\n%s", args, err, errOut.String())
		}
		return out.String()
	}
	fail := func(f stdioRun, args ...string) (string, string, error) {
		t.Helper()
		var out, errOut bytes.Buffer
		err := f(ctx, args, &out, &errOut)
		if err == nil {
			t.Fatalf("%v succeeded:\n%s", args, out.String())
		}
		return out.String(), errOut.String(), err
	}
	writeRows := func(stdin string, args ...string) {
		t.Helper()
		var out, errOut bytes.Buffer
		args = append([]string{"--table", "items", "--encrypted", "title,body", "--tenant-column", "tenant_id"}, args...)
		if err := write(ctx, args, strings.NewReader(stdin), &out, &errOut); err != nil {
			t.Fatalf("write %v: %v\n%s", args, err, errOut.String())
		}
	}

	// The root key and the admin key. The admin commands and the writer
	// take the pinned root, the signing key and the writer's floor from
	// the environment.
	dir := t.TempDir()
	rootFile, adminFile := filepath.Join(dir, "root.key"), filepath.Join(dir, "admin.key")
	root := strings.TrimSpace(run(runSignkey, "-o", rootFile))
	admin := strings.TrimSpace(run(runSignkey, "-o", adminFile))
	adminKey, err := keysync.ParseVerifyKey(admin)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SHAPESEAL_ROOT", root)
	t.Setenv("SHAPESEAL_KEY", adminFile)
	writerFloor := filepath.Join(dir, "writer.floor")
	t.Setenv("SHAPESEAL_WRITER_FLOOR", writerFloor)

	run(runInit)
	run(runInit) // idempotent
	pgtest.Exec(t, dbURL, `CREATE TABLE items (id uuid PRIMARY KEY, tenant_id text NOT NULL, title text, body text)`)
	idFile := map[string]string{}
	for _, u := range []string{"alice", "bob", "eve"} {
		idFile[u] = filepath.Join(dir, u+".key")
		rcpt := strings.TrimSpace(run(runKeygen, "-o", idFile[u]))
		if !strings.HasPrefix(rcpt, "age1pq1") {
			t.Fatalf("keygen printed %q", rcpt)
		}
		run(runDevice, "add", "--user", u, "--device", "d1", "--recipient", rcpt)
	}
	if err := runKeygen(ctx, []string{"-o", idFile["alice"]}, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
		t.Error("keygen overwrote an identity file")
	}
	// Only a root creates a tenant; a Vault host other than VAULT_ADDR's is
	// refused.
	fail(runTenant, "create", "--tenant", "acme", "--kek", kekURI)
	fail(runTenant, "create", "--tenant", "acme", "--kek", "hcvault://vault.invalid:8200/transit/keys/shapeseal-e2e", "--key", rootFile)
	if out := run(runTenant, "create", "--tenant", "acme", "--kek", kekURI, "--key", rootFile, "--admin", admin); !strings.Contains(out, "generation 1 under "+kekURI) {
		t.Fatalf("tenant create: %s", out)
	}
	run(runGrant, "--tenant", "acme", "--user", "alice") // the KEK the log names
	run(runGrant, "--tenant", "acme", "--user", "bob", "--kek", kekURI)
	show := run(runTenant, "show", "--tenant", "acme")
	for _, w := range []string{"seq 3\n", "admin " + admin, "kek " + kekURI, "member alice\n", "member bob\n", "generation 1\n"} {
		if !strings.Contains(show, w) {
			t.Errorf("tenant show: no %q in\n%s", w, show)
		}
	}

	id := func(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }
	writeRows("", "--json", fmt.Sprintf(`{"id":%q,"tenant_id":"acme","title":"secret title 1","body":"secret body 1"}`, id(1)))
	writeRows(fmt.Sprintf("{\"id\":%q,\"tenant_id\":\"acme\",\"title\":\"secret title 2\"}\n\n{\"id\":%q,\"tenant_id\":\"acme\",\"title\":\"secret title 3\",\"body\":null}\n",
		strings.ToUpper(id(2)), id(3)))
	writeRows("", "--upsert", "--json", fmt.Sprintf(`{"id":%q,"tenant_id":"acme","body":"secret body 2"}`, id(2)))
	if b, err := os.ReadFile(writerFloor); err != nil || !strings.Contains(string(b), `"acme":{"seq":3,`) {
		t.Errorf("writer floor: %s, %v", b, err)
	}

	// What the database holds: ciphertext only.
	dump := func() string {
		t.Helper()
		var s string
		if err := db.QueryRow(ctx, `SELECT string_agg(i::text, E'\n' ORDER BY id) FROM items i`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	d := dump()
	if strings.Contains(d, "secret") || strings.Count(d, "ss1:") != 5 {
		t.Fatalf("table:\n%s", d)
	}

	srv := electrictest.StartTest(t, electrictest.Options{DatabaseURL: dbURL, LongPollTimeout: 300 * time.Millisecond, AllowDelete: true})
	// tailRows runs tail once and returns the rows by id.
	tailRows := func(args ...string) map[string]map[string]any {
		t.Helper()
		var out, errOut syncBuffer
		args = append([]string{srv.URL, "--table", "items", "--encrypted", "items:title,body", "--tenant-column", "tenant_id", "--key-wait", "300ms",
			"--root", root}, args...)
		if err := tail(ctx, args, &out, &errOut); err != nil {
			t.Fatal(err, errOut.lines())
		}
		rows := map[string]map[string]any{}
		for _, m := range decryptedChanges(t, out.lines()) {
			k, _ := m.Value["id"].(string)
			switch m.Headers["operation"] {
			case "delete":
				delete(rows, k)
			case "insert", "update":
				if rows[k] == nil {
					rows[k] = map[string]any{}
				}
				for c, v := range m.Value {
					rows[k][c] = v
				}
			}
		}
		return rows
	}
	member := func(user string, n int) map[string]map[string]any {
		t.Helper()
		rows := tailRows("--identity", idFile[user], "--user", user, "--device", "d1")
		if len(rows) != n {
			t.Fatalf("%s sees %d rows, want %d: %v", user, len(rows), n, rows)
		}
		return rows
	}
	want := map[string][2]any{
		id(1): {"secret title 1", "secret body 1"},
		id(2): {"secret title 2", "secret body 2"},
		id(3): {"secret title 3", nil},
	}
	checkPlain := func(who string, rows map[string]map[string]any) {
		t.Helper()
		for k, w := range want {
			if r := rows[k]; r == nil || r["title"] != w[0] || r["body"] != w[1] {
				t.Errorf("%s: row %s = %v, want %v", who, k, r, w)
			}
		}
	}
	checkPlain("alice", member("alice", 3))
	checkPlain("bob", member("bob", 3))

	// A non-member: per-cell errors, never plaintext.
	for k, r := range tailRows("--identity", idFile["eve"]) {
		if e, ok := r["title"].(map[string]any); !ok || e["error"] != "no_key" {
			t.Errorf("eve: row %s title = %v", k, r["title"])
		}
	}

	// A live reader follows the table through rotation, revocation,
	// re-encryption, retirement and the shape's drop.
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var live, liveErr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- tail(lctx, []string{srv.URL, "--live", "--table", "items", "--encrypted", "items:title,body",
			"--identity", idFile["bob"], "--user", "bob", "--device", "d1", "--key-wait", "5s", "--root", root}, &live, &liveErr)
	}()
	waitLive := func(what string, cond func(string) bool) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); !cond(strings.Join(live.lines(), "\n")); {
			if time.Now().After(deadline) {
				t.Fatalf("live reader waiting for %s:\n%s\nstderr: %s", what, strings.Join(live.lines(), "\n"), liveErr.lines())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitLive("up-to-date", func(s string) bool { return strings.Contains(s, `"up-to-date"`) })

	keyIDs := func() map[uint32]int {
		t.Helper()
		rows, _ := db.Query(ctx, `SELECT title FROM items UNION ALL SELECT body FROM items WHERE body IS NOT NULL`)
		cells, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			t.Fatal(err)
		}
		ids := map[uint32]int{}
		for _, c := range cells {
			k, err := keysync.CellKeyID(c)
			if err != nil {
				t.Fatal(err)
			}
			ids[k]++
		}
		return ids
	}
	roots, err := keysync.ParseVerifyKeys(root)
	if err != nil {
		t.Fatal(err)
	}
	keyset := func() (primary uint32, ids []uint32) {
		t.Helper()
		st, err := keysync.LoadState(ctx, db, roots, "acme", nil)
		if err != nil {
			t.Fatal(err)
		}
		return st.Keyset().Primary, st.Keyset().KeyIDs
	}
	// wrappedKeyset unwraps the keyset a user's device holds now.
	wrappedKeyset := func(user string) *keysync.Keyset {
		t.Helper()
		var wrapped []byte
		if err := db.QueryRow(ctx, `SELECT wrapped FROM shapeseal_tenant_keys WHERE user_id = $1`, user).Scan(&wrapped); err != nil {
			t.Fatal(err)
		}
		ident, err := keysync.LoadIdentityFile(idFile[user])
		if err != nil {
			t.Fatal(err)
		}
		ks, err := keysync.Unwrap(ident, wrapped, "acme", []keysync.VerifyKey{adminKey})
		if err != nil {
			t.Fatal(err)
		}
		return ks
	}

	// Rotate, then write: two keys seal the table's cells.
	run(runRotate, "--tenant", "acme", "--kek", kekURI)
	writeRows("", "--json", fmt.Sprintf(`{"id":%q,"tenant_id":"acme","title":"after rotate","body":"b4"}`, id(4)))
	want[id(4)] = [2]any{"after rotate", "b4"}
	if ids := keyIDs(); len(ids) != 2 {
		t.Fatalf("keys before revoke: %v", ids)
	}
	aliceOld := wrappedKeyset("alice")

	// Revoke alice and, in one go, move every cell to the new key in
	// batches of 2, retire the old keys and drop the shape.
	out := run(runRevoke, "--tenant", "acme", "--user", "alice", "--table", "items", "--columns", "title,body", "--batch", "2",
		"--retire", "--electric-url", srv.URL)
	for _, w := range []string{"revoked alice from tenant acme: generation 3", "4 rows, 7 cells rewritten", "0 suspect", "retired 2 keys: generation 4", "dropped the shape of public.items"} {
		if !strings.Contains(out, w) {
			t.Errorf("revoke --table: no %q in\n%s", w, out)
		}
	}
	if _, _, err := fail(runRevoke, "--tenant", "acme", "--user", "alice"); !errors.Is(err, keysync.ErrNotMember) {
		t.Errorf("revoked a non-member: %v", err)
	}
	primary, ks := keyset()
	if ids := keyIDs(); len(ids) != 1 || ids[primary] != 7 || len(ks) != 1 {
		t.Fatalf("keys after revoke: %v (keyset %v)", ids, ks)
	}
	waitLive("the must-refetch of the dropped shape", func(s string) bool { return strings.Contains(s, `"must-refetch"`) })

	// A row written after the revocation is not for alice, nor are the
	// re-encrypted ones.
	writeRows("", "--json", fmt.Sprintf(`{"id":%q,"tenant_id":"acme","title":"after revoke"}`, id(5)))
	want[id(5)] = [2]any{"after revoke", nil}
	var cell5 string
	db.QueryRow(ctx, `SELECT title FROM items WHERE id = $1`, id(5)).Scan(&cell5)
	spec := keysync.TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	ctx5, _ := spec.CellContext(map[string]any{"id": id(5), "tenant_id": "acme"}, "title")
	if _, err := keysync.Open(aliceOld, ctx5, cell5); !errors.Is(err, keysync.ErrNoKey) {
		t.Fatalf("alice's old keyset on a row written after the revocation: %v", err)
	}
	for k, r := range member("alice", 5) {
		if e, ok := r["title"].(map[string]any); !ok || e["error"] != "no_key" {
			t.Errorf("alice after revoke: row %s title = %v", k, r["title"])
		}
	}
	checkPlain("bob after revoke", member("bob", 5))
	before := dump()
	if out := run(runReencrypt, "--tenant", "acme", "--table", "items", "--columns", "title,body"); !strings.Contains(out, "0 cells rewritten") || dump() != before {
		t.Errorf("second reencrypt: %s", out)
	}

	// Eve is granted, keeps the keyset, is revoked, and then forges a row
	// with it: re-encryption leaves the forged cell alone, reports it, and
	// refuses to retire the key it keeps in use.
	run(runGrant, "--tenant", "acme", "--user", "eve")
	eveKS := wrappedKeyset("eve")
	if out := run(runRevoke, "--tenant", "acme", "--user", "eve"); !strings.Contains(out, "shapeseal reencrypt --tenant acme") {
		t.Errorf("revoke without --table: %s", out)
	}
	forged := map[string]any{"id": id(6), "tenant_id": "acme", "title": "forged by eve"}
	if err := spec.SealRow(eveKS, forged); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, dbURL, `INSERT INTO items (id, tenant_id, title) VALUES ($1, $2, $3)`, forged["id"], forged["tenant_id"], forged["title"])
	reencrypt := []string{"--tenant", "acme", "--table", "items", "--columns", "title,body", "--retire"}
	out, errOut, err := fail(runReencrypt, reencrypt...)
	if !strings.Contains(err.Error(), "suspect") || !strings.Contains(out, "8 cells rewritten") || !strings.Contains(out, "1 suspect") ||
		!strings.Contains(errOut, "suspect: keysync: public.items.title row ["+id(6)+`] of tenant "acme"`) || !strings.Contains(out, "still seals 1 cells") {
		t.Errorf("reencrypt --retire with a forged cell: %v\n%s\n%s", err, out, errOut)
	}
	if _, ks := keyset(); len(ks) != 2 {
		t.Errorf("keys retired with a suspect cell left: %v", ks)
	}
	// Deleted, the forged row keeps nothing in use.
	pgtest.Exec(t, dbURL, `DELETE FROM items WHERE id = $1`, id(6))
	if out := run(runReencrypt, reencrypt...); !strings.Contains(out, "0 suspect") || !strings.Contains(out, "retired 1 keys") {
		t.Errorf("reencrypt --retire: %s", out)
	}
	checkPlain("bob after retire", member("bob", 5))

	// The live reader saw every row and rewrite, all in plaintext.
	waitLive("the rewrites", func(s string) bool {
		return strings.Contains(s, `"title":"after revoke"`) && strings.Count(s, `"operation":"update"`) >= 4
	})
	if s := strings.Join(live.lines(), "\n"); strings.Contains(s, `"error"`) || strings.Contains(s, "ss1:") {
		t.Errorf("live reader:\n%s", s)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("live tail: %v (%s)", err, liveErr.lines())
	}
	if d := dump(); strings.Contains(d, "after r") || strings.Contains(d, "secret") || strings.Contains(d, "forged") {
		t.Errorf("table after retire:\n%s", d)
	}
}
