package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// TestTailDecrypts: tail decrypts for a member, refuses to start without a
// pinned root, prints per-cell errors for a non-member and for rows sealed
// after a revocation, and refuses a tenant created again until its floor
// forgets the old one. The steps run in order on one tailDecryptE2E, each
// building on the one before.
func TestTailDecrypts(t *testing.T) {
	t.Parallel()
	s := newTailDecryptE2E(t)
	s.readAsMember()
	s.refusedRoots()
	s.readAsNonMember()
	s.liveRevoke()
	s.tenantCreatedAgain()
}

// tailDecryptE2E is the state TestTailDecrypts's steps share.
type tailDecryptE2E struct {
	t   *testing.T
	ctx context.Context
	url string
	db  *pgx.Conn
	dir string

	kek     keysync.KEK
	rootKey *chain.PrivateKey
	root    string // rootKey's verify key
	adm     *keysync.Admin
	ks      *keysync.Keyset // acme's keyset
	spec    keysync.TableSpec
	srv     *electrictest.TestServer

	alice, eve string // identity files
	floorPath  string // alice's --floor file
	lastStderr string // of the last run
}

// newTailDecryptE2E makes the tenant acme with alice as its member, and eve
// a device of no tenant, seals two rows and starts Electric.
func newTailDecryptE2E(t *testing.T) *tailDecryptE2E {
	ctx := t.Context()
	s := &tailDecryptE2E{t: t, ctx: ctx}
	s.url = pgtest.NewDB(t)
	db, err := pgx.Connect(ctx, s.url)
	if err != nil {
		t.Fatal(err)
	}
	s.db = db
	t.Cleanup(func() { db.Close(context.Background()) })
	if err := keysync.ApplySchema(ctx, db); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, s.url, `CREATE TABLE items (id uuid PRIMARY KEY, tenant_id text NOT NULL, title text, body text)`)

	s.dir = t.TempDir()
	s.kek, err = keysync.GenerateLocalKEK(filepath.Join(s.dir, "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	s.rootKey, _ = chain.GenerateKey()
	s.root = s.rootKey.Public().String()
	s.adm = &keysync.Admin{DB: db, Roots: []keysync.VerifyKey{s.rootKey.Public()}, Key: s.rootKey}
	s.ks, err = s.adm.CreateTenant(ctx, s.kek, "acme")
	if err != nil {
		t.Fatal(err)
	}
	s.spec = keysync.TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	s.alice, s.eve = s.identity("alice"), s.identity("eve")
	if _, err := s.adm.Grant(ctx, "acme", "alice"); err != nil {
		t.Fatal(err)
	}
	s.insert(s.ks, "00000000-0000-4000-8000-000000000001", "first secret", "a body")
	s.insert(s.ks, "00000000-0000-4000-8000-000000000002", "second secret", "")
	s.srv = electrictest.StartTest(t, electrictest.Options{DatabaseURL: s.url, LongPollTimeout: 300 * time.Millisecond})
	return s
}

// insert seals a row of acme with ks and inserts it.
func (s *tailDecryptE2E) insert(ks *keysync.Keyset, id, title, body string) {
	t := s.t
	t.Helper()
	row := map[string]any{"id": id, "tenant_id": "acme", "title": title}
	if body != "" {
		row["body"] = body
	}
	if err := s.spec.SealRow(ks, row); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, s.url, `INSERT INTO items VALUES ($1, $2, $3, $4)`, row["id"], row["tenant_id"], row["title"], row["body"])
}

// identity writes the identity file of user's device d1, which the root
// certifies, and returns its path.
func (s *tailDecryptE2E) identity(user string) string {
	t := s.t
	id, err := keysync.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(s.dir, user+".key")
	if err := keysync.WriteIdentityFile(path, id); err != nil {
		t.Fatal(err)
	}
	rcpt, _ := keysync.RecipientOf(id)
	if err := s.adm.CertifyDevice(s.ctx, user, "d1", rcpt); err != nil {
		t.Fatal(err)
	}
	return path
}

func (s *tailDecryptE2E) tailArgs(args ...string) []string {
	return append([]string{s.srv.URL, "--table", "items", "--encrypted", "items:title,body", "--tenant-column", "tenant_id"}, args...)
}

// run tails as a device; its stderr is empty, or for a device granted
// nothing the one warning that says so, naming its recipient.
func (s *tailDecryptE2E) run(args ...string) []map[string]any {
	t := s.t
	t.Helper()
	var out, errOut syncBuffer
	defer func() { s.lastStderr = strings.Join(errOut.lines(), "\n") }()
	if err := tail(s.ctx, s.tailArgs(append(args, "--root", s.root)...), &out, &errOut); err != nil {
		t.Fatal(err, errOut.lines())
	}
	if e := strings.TrimSpace(strings.Join(errOut.lines(), "\n")); e != "" && (strings.Contains(e, "\n") || !slices.Contains(args, s.eve) ||
		!strings.Contains(e, "warning: the keyring holds no key for any tenant") || !strings.Contains(e, "recipient age1")) {
		t.Errorf("stderr: %s", e)
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

func (s *tailDecryptE2E) checkMember(who string, v []map[string]any) {
	s.t.Helper()
	if v[0]["title"] != "first secret" || v[0]["body"] != "a body" || v[1]["title"] != "second secret" || v[1]["body"] != nil {
		s.t.Errorf("%s: %v", who, v)
	}
}

// readAsMember: a member, with the key and log shapes filtered to her: the
// floor is kept next to her identity by default.
func (s *tailDecryptE2E) readAsMember() {
	t, alice := s.t, s.alice
	s.checkMember("member", s.run("--identity", alice, "--user", "alice", "--device", "d1"))
	if b, err := os.ReadFile(keysync.DefaultFloorPath(alice)); err != nil || !strings.Contains(string(b), `"acme":{"seq":2,`) || !strings.Contains(string(b), `"generation":1}`) {
		t.Errorf("default floor file: %s, %v", b, err)
	}
	s.floorPath = filepath.Join(s.dir, "other.floor")
	s.checkMember("member, --floor", s.run("--identity", alice, "--user", "alice", "--device", "d1", "--floor", s.floorPath))
	if _, err := os.Stat(s.floorPath); err != nil {
		t.Errorf("--floor: %v", err)
	}
	// Unfiltered shapes, and a floor in memory only.
	s.checkMember("member, --no-floor", s.run("--identity", alice, "--no-floor"))
}

// refusedRoots: without a pinned root, tail refuses to start, saying what to
// pass; pinning another root, alice's tenant log is refused and every cell
// is no_key.
func (s *tailDecryptE2E) refusedRoots() {
	t, alice, root := s.t, s.alice, s.root
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--identity", alice}, "--root ssvk1"},
		{[]string{"--identity", alice, "--root", root, "--keys-url", s.srv.URL + "/my/keys/shape"}, "pass --log-url"},
		{[]string{"--identity", alice, "--root", root, "--floor", s.floorPath, "--no-floor"}, "exclusive"},
		{[]string{"--identity", alice, "--root", "ssvk1bad"}, "--root"},
	} {
		err := tail(s.ctx, s.tailArgs(c.args...), &syncBuffer{}, &syncBuffer{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("tail %v: %v, want %q", c.args, err, c.want)
		}
	}
	other, _ := chain.GenerateKey()
	var out1, errOut1 syncBuffer
	err := tail(s.ctx, s.tailArgs("--identity", alice, "--user", "alice", "--device", "d1", "--key-wait", "300ms", "--root", other.Public().String()), &out1, &errOut1)
	if err != nil {
		t.Fatal(err)
	}
	if o := strings.Join(out1.lines(), "\n"); strings.Contains(o, "secret") || !strings.Contains(o, "no_key") {
		t.Errorf("alice pinning another root printed:\n%s", o)
	}
	if e := strings.Join(errOut1.lines(), "\n"); !strings.Contains(e, "not authorized") {
		t.Errorf("alice pinning another root, stderr:\n%s", e)
	}
}

// readAsNonMember: a non-member following the whole key and log shapes:
// alice's row is not for her device, the log does not list her, and every
// cell is a per-cell error.
func (s *tailDecryptE2E) readAsNonMember() {
	t, eve := s.t, s.eve
	start := time.Now()
	v := s.run("--identity", eve, "--key-wait", "300ms")
	if !strings.Contains(s.lastStderr, "holds no key for any tenant") || !strings.Contains(s.lastStderr, eve) {
		t.Errorf("non-member's stderr: %s", s.lastStderr)
	}
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
}

// liveRevoke: live, alice reads a new row, then is revoked; rows sealed
// after the revocation print per-cell errors.
func (s *tailDecryptE2E) liveRevoke() {
	t, ctx := s.t, s.ctx
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- tail(lctx, s.tailArgs("--live", "--identity", s.alice, "--user", "alice", "--device", "d1", "--key-wait", "500ms", "--root", s.root), &out, &errOut)
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
	s.insert(s.ks, "00000000-0000-4000-8000-000000000003", "live secret", "")
	waitFor(`"title":"live secret"`)
	ks2, err := s.adm.Revoke(ctx, "acme", "alice")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond) // the revocation reaches her keyring
	s.insert(ks2, "00000000-0000-4000-8000-000000000004", "after revoke", "")
	waitFor(`"id":"00000000-0000-4000-8000-000000000004","tenant_id":"acme","title":{"error":"no_key"`)
	if strings.Contains(strings.Join(out.lines(), "\n"), "after revoke") {
		t.Error("revoked member read a new row")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("live tail: %v (%s)", err, errOut.lines())
	}
	if e := strings.Join(errOut.lines(), "\n"); !strings.Contains(e, "does not list this device") {
		t.Errorf("revoked member's stderr:\n%s", e)
	}
}

// tenantCreatedAgain: the tenant is deleted and created again, and alice
// granted: her floor refuses the new log (a fork of the one she saw), and
// says how to forget the old one; once forgotten, she reads the new tenant.
func (s *tailDecryptE2E) tenantCreatedAgain() {
	t, ctx, alice := s.t, s.ctx, s.alice
	pgtest.Exec(t, s.url, `DELETE FROM items; DELETE FROM shapeseal_log; DELETE FROM shapeseal_keysets; DELETE FROM shapeseal_tenant_keys`)
	// A new Admin: one that verified the old log refuses the new one too.
	s.adm = &keysync.Admin{DB: s.db, Roots: []keysync.VerifyKey{s.rootKey.Public()}, Key: s.rootKey}
	var err error
	s.ks, err = s.adm.CreateTenant(ctx, s.kek, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.adm.Grant(ctx, "acme", "alice"); err != nil {
		t.Fatal(err)
	}
	s.insert(s.ks, "00000000-0000-4000-8000-000000000001", "first secret", "a body")
	s.insert(s.ks, "00000000-0000-4000-8000-000000000002", "second secret", "")
	s.srv.Rotate("items") // a reader from scratch gets the new rows only
	var out2, errOut2 syncBuffer
	if err := tail(ctx, s.tailArgs("--identity", alice, "--user", "alice", "--device", "d1", "--key-wait", "100ms", "--root", s.root), &out2, &errOut2); err != nil {
		t.Fatal(err)
	}
	floorFile := keysync.DefaultFloorPath(alice)
	hint := "shapeseal floor forget --floor " + floorFile + " --tenant acme"
	if e := strings.Join(errOut2.lines(), "\n"); !strings.Contains(e, "log forked") || !strings.Contains(e, hint) {
		t.Errorf("tenant created again, stderr:\n%s", e)
	}
	if o := strings.Join(out2.lines(), "\n"); strings.Contains(o, "secret") {
		t.Errorf("tenant created again, before floor forget:\n%s", o)
	}
	var fout bytes.Buffer
	if err := runFloor(ctx, []string{"forget", "--floor", floorFile, "--tenant", "acme"}, &fout, &bytes.Buffer{}); err != nil || !strings.Contains(fout.String(), "forgot tenant acme") {
		t.Fatalf("floor forget: %v, %s", err, fout.String())
	}
	s.checkMember("member of the tenant created again", s.run("--identity", alice, "--user", "alice", "--device", "d1"))
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
