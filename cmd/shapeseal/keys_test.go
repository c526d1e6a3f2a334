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
//
// The steps run in order on one keysE2E, each building on the one before.
func TestKeysEndToEnd(t *testing.T) {
	s := newKeysE2E(t)
	s.createTenant()
	s.writeSecrets()
	s.readBeforeRevoke()
	s.startLiveReader()
	s.rotate()
	s.revokeAlice()
	s.readAfterRevoke()
	s.forgedAfterRevoke()
	s.liveReaderSawAll()
}

// keysE2E is the state TestKeysEndToEnd's steps share.
type keysE2E struct {
	t      *testing.T
	ctx    context.Context
	kekURI string
	dbURL  string
	db     *pgx.Conn

	dir         string
	root        string // the pinned root's verify key
	adminKey    keysync.VerifyKey
	writerFloor string
	idFile      map[string]string // user → identity file

	srv  *electrictest.TestServer
	want map[string][2]any // row id → title, body

	live, liveErr syncBuffer
	cancelLive    context.CancelFunc
	liveDone      chan error

	aliceOld *keysync.Keyset // alice's keyset before her revocation
	spec     keysync.TableSpec
}

// keysRowID is the id of the i-th row of TestKeysEndToEnd.
func keysRowID(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }

// newKeysE2E starts Vault with a transit key and a database, and points the
// commands at them through the environment.
func newKeysE2E(t *testing.T) *keysE2E {
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
	s := &keysE2E{t: t, ctx: ctx, idFile: map[string]string{}}
	// The URI names the Vault of VAULT_ADDR: another host is refused.
	s.kekURI = "hcvault://" + va.Host + "/transit/keys/shapeseal-e2e"

	s.dbURL = pgtest.NewDB(t)
	t.Setenv("DATABASE_URL", s.dbURL)
	s.db, err = pgx.Connect(ctx, s.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.db.Close(context.Background()) })
	return s
}

func (s *keysE2E) run(f stdioRun, args ...string) string {
	s.t.Helper()
	var out, errOut bytes.Buffer
	if err := f(s.ctx, args, &out, &errOut); err != nil {
		s.t.Fatalf("%v: %v\n%s", args, err, errOut.String())
	}
	return out.String()
}

func (s *keysE2E) fail(f stdioRun, args ...string) (string, string, error) {
	s.t.Helper()
	var out, errOut bytes.Buffer
	err := f(s.ctx, args, &out, &errOut)
	if err == nil {
		s.t.Fatalf("%v succeeded:\n%s", args, out.String())
	}
	return out.String(), errOut.String(), err
}

func (s *keysE2E) writeRows(stdin string, args ...string) {
	s.t.Helper()
	var out, errOut bytes.Buffer
	args = append([]string{"--table", "items", "--encrypted", "title,body", "--tenant-column", "tenant_id"}, args...)
	if err := write(s.ctx, args, strings.NewReader(stdin), &out, &errOut); err != nil {
		s.t.Fatalf("write %v: %v\n%s", args, err, errOut.String())
	}
}

// createTenant makes the root key and the admin key, the devices of alice,
// bob and eve, and the tenant acme with alice and bob as members.
func (s *keysE2E) createTenant() {
	t := s.t
	// The root key and the admin key. The admin commands and the writer
	// take the pinned root, the signing key and the writer's floor from
	// the environment.
	s.dir = t.TempDir()
	rootFile, adminFile := filepath.Join(s.dir, "root.key"), filepath.Join(s.dir, "admin.key")
	s.root = strings.TrimSpace(s.run(runSignkey, "-o", rootFile))
	admin := strings.TrimSpace(s.run(runSignkey, "-o", adminFile))
	var err error
	s.adminKey, err = keysync.ParseVerifyKey(admin)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SHAPESEAL_ROOT", s.root)
	t.Setenv("SHAPESEAL_KEY", adminFile)
	s.writerFloor = filepath.Join(s.dir, "writer.floor")
	t.Setenv("SHAPESEAL_WRITER_FLOOR", s.writerFloor)

	s.run(runInit)
	s.run(runInit) // idempotent
	pgtest.Exec(t, s.dbURL, `CREATE TABLE items (id uuid PRIMARY KEY, tenant_id text NOT NULL, title text, body text)`)
	for _, u := range []string{"alice", "bob", "eve"} {
		s.idFile[u] = filepath.Join(s.dir, u+".key")
		rcpt := strings.TrimSpace(s.run(runKeygen, "-o", s.idFile[u]))
		if !strings.HasPrefix(rcpt, "age1pq1") {
			t.Fatalf("keygen printed %q", rcpt)
		}
		s.run(runDevice, "add", "--user", u, "--device", "d1", "--recipient", rcpt)
	}
	if err := runKeygen(s.ctx, []string{"-o", s.idFile["alice"]}, &bytes.Buffer{}, &bytes.Buffer{}); err == nil {
		t.Error("keygen overwrote an identity file")
	}
	// Only a root creates a tenant; a Vault host other than VAULT_ADDR's is
	// refused.
	s.fail(runTenant, "create", "--tenant", "acme", "--kek", s.kekURI)
	s.fail(runTenant, "create", "--tenant", "acme", "--kek", "hcvault://vault.invalid:8200/transit/keys/shapeseal-e2e", "--key", rootFile)
	if out := s.run(runTenant, "create", "--tenant", "acme", "--kek", s.kekURI, "--key", rootFile, "--admin", admin); !strings.Contains(out, "generation 1 under "+s.kekURI) {
		t.Fatalf("tenant create: %s", out)
	}
	s.run(runGrant, "--tenant", "acme", "--user", "alice") // the KEK the log names
	s.run(runGrant, "--tenant", "acme", "--user", "bob", "--kek", s.kekURI)
	show := s.run(runTenant, "show", "--tenant", "acme")
	for _, w := range []string{"seq 3\n", "admin " + admin, "kek " + s.kekURI, "member alice\n", "member bob\n", "generation 1\n"} {
		if !strings.Contains(show, w) {
			t.Errorf("tenant show: no %q in\n%s", w, show)
		}
	}
}

// writeSecrets writes rows 1 to 3 and checks the database holds only their
// ciphertext.
func (s *keysE2E) writeSecrets() {
	t, id := s.t, keysRowID
	s.writeRows("", "--json", fmt.Sprintf(`{"id":%q,"tenant_id":"acme","title":"secret title 1","body":"secret body 1"}`, id(1)))
	s.writeRows(fmt.Sprintf("{\"id\":%q,\"tenant_id\":\"acme\",\"title\":\"secret title 2\"}\n\n{\"id\":%q,\"tenant_id\":\"acme\",\"title\":\"secret title 3\",\"body\":null}\n",
		strings.ToUpper(id(2)), id(3)))
	s.writeRows("", "--upsert", "--json", fmt.Sprintf(`{"id":%q,"tenant_id":"acme","body":"secret body 2"}`, id(2)))
	if b, err := os.ReadFile(s.writerFloor); err != nil || !strings.Contains(string(b), `"acme":{"seq":3,`) {
		t.Errorf("writer floor: %s, %v", b, err)
	}

	// What the database holds: ciphertext only.
	d := s.dump()
	if strings.Contains(d, "secret") || strings.Count(d, "ss1:") != 5 {
		t.Fatalf("table:\n%s", d)
	}
}

// dump is the table as the database holds it.
func (s *keysE2E) dump() string {
	s.t.Helper()
	var d string
	if err := s.db.QueryRow(s.ctx, `SELECT string_agg(i::text, E'\n' ORDER BY id) FROM items i`).Scan(&d); err != nil {
		s.t.Fatal(err)
	}
	return d
}

// tailRows runs tail once and returns the rows by id.
func (s *keysE2E) tailRows(args ...string) map[string]map[string]any {
	t := s.t
	t.Helper()
	var out, errOut syncBuffer
	args = append([]string{s.srv.URL, "--table", "items", "--encrypted", "items:title,body", "--tenant-column", "tenant_id", "--key-wait", "300ms",
		"--root", s.root}, args...)
	if err := tail(s.ctx, args, &out, &errOut); err != nil {
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

// member tails with the identity of user's device d1, which must see n rows.
func (s *keysE2E) member(user string, n int) map[string]map[string]any {
	s.t.Helper()
	rows := s.tailRows("--identity", s.idFile[user], "--user", user, "--device", "d1")
	if len(rows) != n {
		s.t.Fatalf("%s sees %d rows, want %d: %v", user, len(rows), n, rows)
	}
	return rows
}

// checkPlain checks rows hold the plaintext of every row of s.want.
func (s *keysE2E) checkPlain(who string, rows map[string]map[string]any) {
	s.t.Helper()
	for k, w := range s.want {
		if r := rows[k]; r == nil || r["title"] != w[0] || r["body"] != w[1] {
			s.t.Errorf("%s: row %s = %v, want %v", who, k, r, w)
		}
	}
}

// readBeforeRevoke starts Electric; the members read the plaintext, a
// non-member per-cell errors.
func (s *keysE2E) readBeforeRevoke() {
	t, id := s.t, keysRowID
	s.srv = electrictest.StartTest(t, electrictest.Options{DatabaseURL: s.dbURL, LongPollTimeout: 300 * time.Millisecond, AllowDelete: true})
	s.want = map[string][2]any{
		id(1): {"secret title 1", "secret body 1"},
		id(2): {"secret title 2", "secret body 2"},
		id(3): {"secret title 3", nil},
	}
	s.checkPlain("alice", s.member("alice", 3))
	s.checkPlain("bob", s.member("bob", 3))

	// A non-member: per-cell errors, never plaintext.
	for k, r := range s.tailRows("--identity", s.idFile["eve"]) {
		if e, ok := r["title"].(map[string]any); !ok || e["error"] != "no_key" {
			t.Errorf("eve: row %s title = %v", k, r["title"])
		}
	}
}

// startLiveReader starts bob's live reader, which follows the table through
// rotation, revocation, re-encryption, retirement and the shape's drop.
func (s *keysE2E) startLiveReader() {
	lctx, cancel := context.WithCancel(s.ctx)
	s.t.Cleanup(cancel)
	s.cancelLive = cancel
	s.liveDone = make(chan error, 1)
	go func() {
		s.liveDone <- tail(lctx, []string{s.srv.URL, "--live", "--table", "items", "--encrypted", "items:title,body",
			"--identity", s.idFile["bob"], "--user", "bob", "--device", "d1", "--key-wait", "5s", "--root", s.root}, &s.live, &s.liveErr)
	}()
	s.waitLive("up-to-date", func(l string) bool { return strings.Contains(l, `"up-to-date"`) })
}

// waitLive waits up to 15s for the live reader's output to meet cond.
func (s *keysE2E) waitLive(what string, cond func(string) bool) {
	s.t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !cond(strings.Join(s.live.lines(), "\n")); {
		if time.Now().After(deadline) {
			s.t.Fatalf("live reader waiting for %s:\n%s\nstderr: %s", what, strings.Join(s.live.lines(), "\n"), s.liveErr.lines())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// keyIDs counts the table's cells by the id of the key that seals them.
func (s *keysE2E) keyIDs() map[uint32]int {
	t := s.t
	t.Helper()
	rows, _ := s.db.Query(s.ctx, `SELECT title FROM items UNION ALL SELECT body FROM items WHERE body IS NOT NULL`)
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

// keyset is the primary and the key ids of acme's current keyset.
func (s *keysE2E) keyset() (primary uint32, ids []uint32) {
	s.t.Helper()
	roots, err := keysync.ParseVerifyKeys(s.root)
	if err != nil {
		s.t.Fatal(err)
	}
	st, err := keysync.LoadState(s.ctx, s.db, roots, "acme", nil)
	if err != nil {
		s.t.Fatal(err)
	}
	return st.Keyset().Primary, st.Keyset().KeyIDs
}

// wrappedKeyset unwraps the keyset a user's device holds now.
func (s *keysE2E) wrappedKeyset(user string) *keysync.Keyset {
	t := s.t
	t.Helper()
	var wrapped []byte
	if err := s.db.QueryRow(s.ctx, `SELECT wrapped FROM shapeseal_tenant_keys WHERE user_id = $1`, user).Scan(&wrapped); err != nil {
		t.Fatal(err)
	}
	ident, err := keysync.LoadIdentityFile(s.idFile[user])
	if err != nil {
		t.Fatal(err)
	}
	ks, err := keysync.Unwrap(ident, wrapped, "acme", []keysync.VerifyKey{s.adminKey})
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

// rotate rotates, then writes: two keys seal the table's cells.
func (s *keysE2E) rotate() {
	s.run(runRotate, "--tenant", "acme", "--kek", s.kekURI)
	s.writeRows("", "--json", fmt.Sprintf(`{"id":%q,"tenant_id":"acme","title":"after rotate","body":"b4"}`, keysRowID(4)))
	s.want[keysRowID(4)] = [2]any{"after rotate", "b4"}
	if ids := s.keyIDs(); len(ids) != 2 {
		s.t.Fatalf("keys before revoke: %v", ids)
	}
	s.aliceOld = s.wrappedKeyset("alice")
}

// revokeAlice revokes alice and, in one go, moves every cell to the new key
// in batches of 2, retires the old keys and drops the shape.
func (s *keysE2E) revokeAlice() {
	t := s.t
	out := s.run(runRevoke, "--tenant", "acme", "--user", "alice", "--table", "items", "--columns", "title,body", "--batch", "2",
		"--retire", "--electric-url", s.srv.URL)
	for _, w := range []string{"revoked alice from tenant acme: generation 3", "4 rows, 7 cells rewritten", "0 suspect", "retired 2 keys: generation 4", "dropped the shape of public.items"} {
		if !strings.Contains(out, w) {
			t.Errorf("revoke --table: no %q in\n%s", w, out)
		}
	}
	if _, _, err := s.fail(runRevoke, "--tenant", "acme", "--user", "alice"); !errors.Is(err, keysync.ErrNotMember) {
		t.Errorf("revoked a non-member: %v", err)
	}
	primary, ks := s.keyset()
	if ids := s.keyIDs(); len(ids) != 1 || ids[primary] != 7 || len(ks) != 1 {
		t.Fatalf("keys after revoke: %v (keyset %v)", ids, ks)
	}
	s.waitLive("the must-refetch of the dropped shape", func(l string) bool { return strings.Contains(l, `"must-refetch"`) })
}

// readAfterRevoke: a row written after the revocation is not for alice, nor
// are the re-encrypted ones; a second reencrypt rewrites nothing.
func (s *keysE2E) readAfterRevoke() {
	t, id := s.t, keysRowID
	s.writeRows("", "--json", fmt.Sprintf(`{"id":%q,"tenant_id":"acme","title":"after revoke"}`, id(5)))
	s.want[id(5)] = [2]any{"after revoke", nil}
	var cell5 string
	s.db.QueryRow(s.ctx, `SELECT title FROM items WHERE id = $1`, id(5)).Scan(&cell5)
	s.spec = keysync.TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	ctx5, _ := s.spec.CellContext(map[string]any{"id": id(5), "tenant_id": "acme"}, "title")
	if _, err := keysync.Open(s.aliceOld, ctx5, cell5); !errors.Is(err, keysync.ErrNoKey) {
		t.Fatalf("alice's old keyset on a row written after the revocation: %v", err)
	}
	for k, r := range s.member("alice", 5) {
		if e, ok := r["title"].(map[string]any); !ok || e["error"] != "no_key" {
			t.Errorf("alice after revoke: row %s title = %v", k, r["title"])
		}
	}
	s.checkPlain("bob after revoke", s.member("bob", 5))
	before := s.dump()
	if out := s.run(runReencrypt, "--tenant", "acme", "--table", "items", "--columns", "title,body"); !strings.Contains(out, "0 cells rewritten") || s.dump() != before {
		t.Errorf("second reencrypt: %s", out)
	}
}

// forgedAfterRevoke: eve is granted, keeps the keyset, is revoked, and then
// forges a row with it: re-encryption leaves the forged cell alone, reports
// it, and refuses to retire the key it keeps in use.
func (s *keysE2E) forgedAfterRevoke() {
	t, id := s.t, keysRowID
	s.run(runGrant, "--tenant", "acme", "--user", "eve")
	eveKS := s.wrappedKeyset("eve")
	if out := s.run(runRevoke, "--tenant", "acme", "--user", "eve"); !strings.Contains(out, "shapeseal reencrypt --tenant acme") {
		t.Errorf("revoke without --table: %s", out)
	}
	forged := map[string]any{"id": id(6), "tenant_id": "acme", "title": "forged by eve"}
	if err := s.spec.SealRow(eveKS, forged); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, s.dbURL, `INSERT INTO items (id, tenant_id, title) VALUES ($1, $2, $3)`, forged["id"], forged["tenant_id"], forged["title"])
	reencrypt := []string{"--tenant", "acme", "--table", "items", "--columns", "title,body", "--retire"}
	out, errOut, err := s.fail(runReencrypt, reencrypt...)
	if !strings.Contains(err.Error(), "suspect") || !strings.Contains(out, "8 cells rewritten") || !strings.Contains(out, "1 suspect") ||
		!strings.Contains(errOut, "suspect: keysync: public.items.title row ["+id(6)+`] of tenant "acme"`) || !strings.Contains(out, "still seals 1 cells") {
		t.Errorf("reencrypt --retire with a forged cell: %v\n%s\n%s", err, out, errOut)
	}
	if _, ks := s.keyset(); len(ks) != 2 {
		t.Errorf("keys retired with a suspect cell left: %v", ks)
	}
	// Deleted, the forged row keeps nothing in use.
	pgtest.Exec(t, s.dbURL, `DELETE FROM items WHERE id = $1`, id(6))
	if out := s.run(runReencrypt, reencrypt...); !strings.Contains(out, "0 suspect") || !strings.Contains(out, "retired 1 keys") {
		t.Errorf("reencrypt --retire: %s", out)
	}
	s.checkPlain("bob after retire", s.member("bob", 5))
}

// liveReaderSawAll: the live reader saw every row and rewrite, all in
// plaintext, and the table holds none.
func (s *keysE2E) liveReaderSawAll() {
	t := s.t
	s.waitLive("the rewrites", func(l string) bool {
		return strings.Contains(l, `"title":"after revoke"`) && strings.Count(l, `"operation":"update"`) >= 4
	})
	if l := strings.Join(s.live.lines(), "\n"); strings.Contains(l, `"error"`) || strings.Contains(l, "ss1:") {
		t.Errorf("live reader:\n%s", l)
	}
	s.cancelLive()
	if err := <-s.liveDone; err != nil {
		t.Fatalf("live tail: %v (%s)", err, s.liveErr.lines())
	}
	if d := s.dump(); strings.Contains(d, "after r") || strings.Contains(d, "secret") || strings.Contains(d, "forged") {
		t.Errorf("table after retire:\n%s", d)
	}
}
