package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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
	"github.com/shapeseal/shapeseal/keysync/vaultkek"
)

// TestKeysEndToEnd is the acceptance of issue 4 with a real Vault, Postgres
// and Electric: `write` with a Vault KEK puts only ciphertext in Postgres;
// `tail` with a member's identity prints the plaintext, with a non-member's
// per-cell errors; after `revoke`, new rows are unreadable to the revoked
// member and readable to the others; `reencrypt` after `rotate` moves every
// cell to the primary key, and running it again changes nothing.
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
	kekURI := "hcvault://vault.invalid:8200/transit/keys/shapeseal-e2e" // the host comes from VAULT_ADDR

	url := pgtest.NewDB(t)
	t.Setenv("DATABASE_URL", url)
	db, err := pgx.Connect(ctx, url)
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
	writeRows := func(stdin string, args ...string) {
		t.Helper()
		var out, errOut bytes.Buffer
		args = append([]string{"--table", "items", "--encrypted", "title,body", "--tenant-column", "tenant_id"}, args...)
		if err := write(ctx, args, strings.NewReader(stdin), &out, &errOut); err != nil {
			t.Fatalf("write %v: %v\n%s", args, err, errOut.String())
		}
	}

	run(runInit)
	run(runInit) // idempotent
	pgtest.Exec(t, url, `CREATE TABLE items (id uuid PRIMARY KEY, tenant_id text NOT NULL, title text, body text)`)
	dir := t.TempDir()
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
	// tenant create prints the KEK's signer, the key devices must trust;
	// init --kek prints the same one.
	signer := signerOf(t, run(runTenant, "create", "--tenant", "acme", "--kek", kekURI))
	if again := signerOf(t, run(runInit, "--kek", kekURI)); again != signer {
		t.Fatalf("init --kek printed signer %s, tenant create %s", again, signer)
	}
	trusted, err := keysync.ParseVerifyKeys(signer)
	if err != nil {
		t.Fatal(err)
	}
	run(runGrant, "--tenant", "acme", "--user", "alice") // the KEK is found from the stored keyset
	run(runGrant, "--tenant", "acme", "--user", "bob", "--kek", kekURI)

	id := func(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }
	writeRows("", "--json", fmt.Sprintf(`{"id":%q,"tenant_id":"acme","title":"secret title 1","body":"secret body 1"}`, id(1)))
	writeRows(fmt.Sprintf("{\"id\":%q,\"tenant_id\":\"acme\",\"title\":\"secret title 2\"}\n\n{\"id\":%q,\"tenant_id\":\"acme\",\"title\":\"secret title 3\",\"body\":null}\n",
		strings.ToUpper(id(2)), id(3)))
	writeRows("", "--upsert", "--json", fmt.Sprintf(`{"id":%q,"tenant_id":"acme","body":"secret body 2"}`, id(2)))

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

	srv := electrictest.StartTest(t, electrictest.Options{DatabaseURL: url, LongPollTimeout: 300 * time.Millisecond})
	// tailRows runs tail once and returns the rows by id.
	tailRows := func(args ...string) map[string]map[string]any {
		t.Helper()
		var out, errOut syncBuffer
		args = append([]string{srv.URL, "--table", "items", "--encrypted", "items:title,body", "--tenant-column", "tenant_id", "--key-wait", "300ms",
			"--signer", signer}, args...)
		if err := tail(ctx, args, &out, &errOut); err != nil {
			t.Fatal(err, errOut.lines())
		}
		rows := map[string]map[string]any{}
		for _, m := range decryptedChanges(t, out.lines()) {
			if op := m.Headers["operation"]; op == "insert" || op == "update" {
				k, _ := m.Value["id"].(string)
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

	// Revoke alice; a row written afterwards is not for her.
	var aliceWrapped []byte
	db.QueryRow(ctx, `SELECT wrapped FROM shapeseal_tenant_keys WHERE user_id = 'alice'`).Scan(&aliceWrapped)
	aliceID, err := keysync.LoadIdentityFile(idFile["alice"])
	if err != nil {
		t.Fatal(err)
	}
	aliceOld, err := keysync.Unwrap(aliceID, aliceWrapped, "acme", trusted)
	if err != nil {
		t.Fatal(err)
	}
	run(runRevoke, "--tenant", "acme", "--user", "alice")
	if err := runRevoke(ctx, []string{"--tenant", "acme", "--user", "alice"}, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
		t.Error("revoked a non-member")
	}
	writeRows("", "--json", fmt.Sprintf(`{"id":%q,"tenant_id":"acme","title":"after revoke"}`, id(4)))
	want[id(4)] = [2]any{"after revoke", nil}
	var cell4 string
	db.QueryRow(ctx, `SELECT title FROM items WHERE id = $1`, id(4)).Scan(&cell4)
	spec := keysync.TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	ctx4, _ := spec.CellContext(map[string]any{"id": id(4), "tenant_id": "acme"}, "title")
	if _, err := keysync.Open(aliceOld, ctx4, cell4); !errors.Is(err, keysync.ErrNoKey) {
		t.Fatalf("alice's old keyset on a row written after the revocation: %v", err)
	}
	if r := member("alice", 4)[id(4)]; r == nil || r["title"].(map[string]any)["error"] != "no_key" {
		t.Errorf("alice after revoke: %v", r)
	}
	checkPlain("bob after revoke", member("bob", 4))

	// A live reader follows the table through rotation, reencrypt and
	// retirement.
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var live, liveErr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- tail(lctx, []string{srv.URL, "--live", "--table", "items", "--encrypted", "items:title,body",
			"--identity", idFile["bob"], "--user", "bob", "--device", "d1", "--key-wait", "5s", "--signer", signer}, &live, &liveErr)
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

	// Rotate, write, reencrypt in batches of 2: every cell under the
	// primary key, all still open; a second run changes nothing.
	run(runRotate, "--tenant", "acme", "--kek", kekURI)
	writeRows("", "--json", fmt.Sprintf(`{"id":%q,"tenant_id":"acme","title":"after rotate","body":"b5"}`, id(5)))
	want[id(5)] = [2]any{"after rotate", "b5"}
	kek, err := vaultkek.Open(kekURI)
	if err != nil {
		t.Fatal(err)
	}
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
	if ids := keyIDs(); len(ids) != 3 {
		t.Fatalf("keys before reencrypt: %v", ids)
	}
	reencrypt := []string{"--tenant", "acme", "--table", "items", "--columns", "title,body", "--tenant-column", "tenant_id", "--batch", "2"}
	out := run(runReencrypt, reencrypt...)
	if !strings.Contains(out, "5 rows, 6 cells rewritten") {
		t.Errorf("reencrypt: %s", out)
	}
	ks, err := keysync.LoadKeyset(ctx, db, kek, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if ids := keyIDs(); len(ids) != 1 || ids[ks.PrimaryKeyID()] != 8 {
		t.Fatalf("keys after reencrypt: %v (primary %08x)", ids, ks.PrimaryKeyID())
	}
	before := dump()
	if out := run(runReencrypt, reencrypt...); !strings.Contains(out, "0 cells rewritten") || dump() != before {
		t.Errorf("second reencrypt: %s", out)
	}
	checkPlain("bob after reencrypt", member("bob", 5))

	// Retire the old keys: the keyset shrinks to the primary, all still open.
	if out := run(runReencrypt, append(reencrypt, "--retire")...); !strings.Contains(out, "retired 2 keys") {
		t.Errorf("retire: %s", out)
	}
	if ks, _ := keysync.LoadKeyset(ctx, db, kek, "acme"); len(ks.KeyIDs()) != 1 {
		t.Errorf("keyset after retire: %v", ks)
	}
	checkPlain("bob after retire", member("bob", 5))
	// The live reader saw the new row and every rewrite, all in plaintext.
	waitLive("the rewrites", func(s string) bool {
		return strings.Contains(s, `"title":"after rotate"`) && strings.Count(s, `"operation":"update"`) >= 4
	})
	if s := strings.Join(live.lines(), "\n"); strings.Contains(s, `"error"`) || strings.Contains(s, "ss1:") {
		t.Errorf("live reader:\n%s", s)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("live tail: %v (%s)", err, liveErr.lines())
	}
	if d := dump(); d != before || strings.Contains(d, "after r") || strings.Contains(d, "secret") {
		t.Errorf("table after retire:\n%s", d)
	}
}

// signerOf returns the signer key from the output of init --kek or tenant
// create.
func signerOf(t *testing.T, out string) string {
	t.Helper()
	for l := range strings.Lines(out) {
		if rest, ok := strings.CutPrefix(l, "signer "); ok {
			k, _, _ := strings.Cut(rest, " ")
			return k
		}
	}
	t.Fatalf("no signer line in %q", out)
	return ""
}
