package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// Helpers of the attack tests (attack_test.go, attack_keyset_test.go,
// attack_rollback_test.go): a tenant "acme" on a fresh database, driven
// through the real commands (in-process, as keys_test.go does), and the
// operator's view of the tables.

// attackTable is the application table of the attack tests.
const attackTable = `CREATE TABLE items (id uuid PRIMARY KEY, tenant_id text NOT NULL, title text, body text)`

// attackSpec is how items' cells are sealed.
var attackSpec = keysync.TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}

// attackEnv is one database with shapeseal's tables and the items table,
// a root key, an admin key of tenant "acme" (created by the root, under a
// local KEK), a writer's floor and an Electric serving the database.
type attackEnv struct {
	t   *testing.T
	ctx context.Context
	url string
	db  *pgx.Conn
	dir string
	srv *electrictest.TestServer

	kek                 string // local:// URI of the KEK acme's log names
	root, admin         string // public keys, ssvk1…
	rootFile, adminFile string // their key files
	writerFloor         string // floor file of `write`

	nextRow int
}

func newAttackEnv(t *testing.T) *attackEnv {
	t.Helper()
	e := &attackEnv{t: t, ctx: t.Context(), url: pgtest.NewDB(t), dir: t.TempDir()}
	db, err := pgx.Connect(e.ctx, e.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close(context.Background()) })
	e.db = db
	e.writerFloor = filepath.Join(e.dir, "writer.floor")

	e.rootFile, e.adminFile = filepath.Join(e.dir, "root.key"), filepath.Join(e.dir, "admin.key")
	e.root, _ = e.ok(runSignkey, "-o", e.rootFile)
	e.admin, _ = e.ok(runSignkey, "-o", e.adminFile)
	e.root, e.admin = strings.TrimSpace(e.root), strings.TrimSpace(e.admin)
	kekPath := filepath.Join(e.dir, "kek.json")
	if _, err := keysync.GenerateLocalKEK(kekPath); err != nil {
		t.Fatal(err)
	}
	e.kek = "local://" + filepath.ToSlash(kekPath)

	e.ok(runInit, "--database-url", e.url)
	pgtest.Exec(t, e.url, attackTable)
	e.ok(runTenant, e.withDB("create", "--tenant", "acme", "--kek", e.kek, "--key", e.rootFile, "--admin", e.admin)...)
	e.srv = electrictest.StartTest(t, electrictest.Options{DatabaseURL: e.url, LongPollTimeout: 300 * time.Millisecond})
	return e
}

// withDB appends the database and the pinned root to a command's flags.
func (e *attackEnv) withDB(args ...string) []string {
	return append(args, "--database-url", e.url, "--root", e.root)
}

// run runs a command in-process and returns its stdout, stderr and error.
func (e *attackEnv) run(f stdioRun, args ...string) (string, string, error) {
	var out, errOut bytes.Buffer
	err := f(e.ctx, args, &out, &errOut)
	return out.String(), errOut.String(), err
}

// ok runs a command that must succeed.
func (e *attackEnv) ok(f stdioRun, args ...string) (stdout, stderr string) {
	e.t.Helper()
	out, errOut, err := e.run(f, args...)
	if err != nil {
		e.t.Fatalf("%v: %v\n%s", args, err, errOut)
	}
	return out, errOut
}

// refused runs a command that must fail, and returns its error.
func (e *attackEnv) refused(f stdioRun, args ...string) (stdout, stderr string, err error) {
	e.t.Helper()
	out, errOut, err := e.run(f, args...)
	if err == nil {
		e.t.Fatalf("attack not refused: %v succeeded:\n%s\n%s", args, out, errOut)
	}
	return out, errOut, err
}

// as runs an administration command (with the database and root) signed
// with keyFile, which must succeed.
func (e *attackEnv) as(keyFile string, f stdioRun, args ...string) (stdout, stderr string) {
	e.t.Helper()
	return e.ok(f, e.withDB(append(args, "--key", keyFile)...)...)
}

// identity creates an age identity file named name and returns it and its
// recipient.
func (e *attackEnv) identity(name string) (file, recipient string) {
	e.t.Helper()
	file = filepath.Join(e.dir, name+".key")
	out, _ := e.ok(runKeygen, "-o", file)
	return file, strings.TrimSpace(out)
}

// device creates an identity for user's device, certified by the admin,
// and returns its file and recipient.
func (e *attackEnv) device(user, device string) (file, recipient string) {
	e.t.Helper()
	file, recipient = e.identity(user + "-" + device)
	e.as(e.adminFile, runDevice, "add", "--user", user, "--device", device, "--recipient", recipient)
	return file, recipient
}

// grant grants acme to user with the admin key.
func (e *attackEnv) grant(user string) {
	e.t.Helper()
	e.as(e.adminFile, runGrant, "--tenant", "acme", "--user", user)
}

// rowID returns a new row id.
func (e *attackEnv) rowID() string {
	e.nextRow++
	return fmt.Sprintf("00000000-0000-4000-8000-%012d", e.nextRow)
}

// write runs `write` of one acme row titled title (with the writer's floor,
// and the KEK the log names unless args say otherwise) and returns its id.
func (e *attackEnv) write(title string, args ...string) (id, stderr string, err error) {
	id = e.rowID()
	args = append(e.withDB("--table", "items", "--encrypted", "title,body", "--tenant-column", "tenant_id", "--floor", e.writerFloor,
		"--json", fmt.Sprintf(`{"id":%q,"tenant_id":"acme","title":%q}`, id, title)), args...)
	var out, errOut bytes.Buffer
	err = write(e.ctx, args, strings.NewReader(""), &out, &errOut)
	return id, errOut.String(), err
}

// mustWrite writes a row that must be written.
func (e *attackEnv) mustWrite(title string, args ...string) string {
	e.t.Helper()
	id, errOut, err := e.write(title, args...)
	if err != nil {
		e.t.Fatalf("write %q: %v\n%s", title, err, errOut)
	}
	return id
}

// insertSealed inserts, as the database can, an acme row whose title is
// sealed with ks (a keyset the attacker holds or made), and returns its id.
func (e *attackEnv) insertSealed(ks *keysync.Keyset, title string) string {
	e.t.Helper()
	id := e.rowID()
	row := map[string]any{"id": id, "tenant_id": "acme", "title": title}
	if err := attackSpec.SealRow(ks, row); err != nil {
		e.t.Fatal(err)
	}
	pgtest.Exec(e.t, e.url, `INSERT INTO items (id, tenant_id, title) VALUES ($1, 'acme', $2)`, id, row["title"])
	return id
}

// tailed is what one run of `tail --encrypted` printed.
type tailed struct {
	rows   map[string]map[string]any // by id, after every change
	out    string                    // stdout
	errOut string                    // stderr
}

// title returns the plaintext title of row id, or "" if it printed none.
func (r tailed) title(id string) string {
	s, _ := r.rows[id]["title"].(string)
	return s
}

// cellError returns the "error" of row id's title as tail printed it, or
// "" if the title is not a cell error.
func (r tailed) cellError(id string) string {
	m, _ := r.rows[id]["title"].(map[string]any)
	s, _ := m["error"].(string)
	return s
}

// tail runs `tail --encrypted items:title,body` once (until up to date)
// with an identity file, following the key shape of user's device, and
// the default floor next to the identity unless args say otherwise.
func (e *attackEnv) tail(identity, user, device string, args ...string) tailed {
	e.t.Helper()
	var out, errOut syncBuffer
	args = append([]string{e.srv.URL, "--table", "items", "--encrypted", "items:title,body", "--tenant-column", "tenant_id",
		"--key-wait", "300ms", "--root", e.root, "--identity", identity, "--user", user, "--device", device}, args...)
	if err := tail(e.ctx, args, &out, &errOut); err != nil {
		e.t.Fatalf("tail %v: %v\n%s", args, err, errOut.lines())
	}
	r := tailed{rows: map[string]map[string]any{}, out: strings.Join(out.lines(), "\n"), errOut: strings.Join(errOut.lines(), "\n")}
	for _, m := range decryptedChanges(e.t, out.lines()) {
		id, _ := m.Value["id"].(string)
		switch m.Headers["operation"] {
		case "delete":
			delete(r.rows, id)
		case "insert", "update":
			if r.rows[id] == nil {
				r.rows[id] = map[string]any{}
			}
			for c, v := range m.Value {
				r.rows[id][c] = v
			}
		}
	}
	return r
}

// noPlaintext fails the test if a tail printed any of the plaintexts.
func (r tailed) noPlaintext(t *testing.T, who string, plaintexts ...string) {
	t.Helper()
	for _, p := range plaintexts {
		if strings.Contains(r.out, p) {
			t.Errorf("attack not refused: %s printed %q:\n%s", who, p, r.out)
		}
	}
}

// state returns acme's log, verified from the root (no floor).
func (e *attackEnv) state() *chain.State {
	e.t.Helper()
	roots, err := keysync.ParseVerifyKeys(e.root)
	if err != nil {
		e.t.Fatal(err)
	}
	st, err := keysync.LoadState(e.ctx, e.db, roots, "acme", nil)
	if err != nil {
		e.t.Fatal(err)
	}
	return st
}

// keyRows returns acme's rows of shapeseal_tenant_keys, "user/device" →
// generation.
func (e *attackEnv) keyRows() map[string]int64 {
	e.t.Helper()
	rows, err := e.db.Query(e.ctx, `SELECT user_id || '/' || device_id, generation FROM shapeseal_tenant_keys WHERE tenant_id = 'acme'`)
	if err != nil {
		e.t.Fatal(err)
	}
	m := map[string]int64{}
	for rows.Next() {
		var k string
		var g int64
		if err := rows.Scan(&k, &g); err != nil {
			e.t.Fatal(err)
		}
		m[k] = g
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return m
}

// wrapped returns the wrapped keyset of a device's row of acme.
func (e *attackEnv) wrapped(user, device string) (generation int64, wrapped []byte) {
	e.t.Helper()
	if err := e.db.QueryRow(e.ctx, `SELECT generation, wrapped FROM shapeseal_tenant_keys WHERE tenant_id = 'acme' AND user_id = $1 AND device_id = $2`,
		user, device).Scan(&generation, &wrapped); err != nil {
		e.t.Fatalf("tenant-key row of %s/%s: %v", user, device, err)
	}
	return generation, wrapped
}

// unwrap opens the wrapped keyset of a device's row with its identity file,
// as the device would, trusting the root and the admin.
func (e *attackEnv) unwrap(identity, user, device string) *keysync.Keyset {
	e.t.Helper()
	_, w := e.wrapped(user, device)
	ks, err := keysync.Unwrap(loadIdentity(e.t, identity), w, "acme", e.signers())
	if err != nil {
		e.t.Fatal(err)
	}
	return ks
}

// signers returns the root and the admin of acme.
func (e *attackEnv) signers() []keysync.VerifyKey {
	e.t.Helper()
	ks, err := keysync.ParseVerifyKeys(e.root + "," + e.admin)
	if err != nil {
		e.t.Fatal(err)
	}
	return ks
}

// nothingOpensFor fails the test if any row of shapeseal_tenant_keys
// unwraps with identity to a keyset signed by the root or the admin: a row
// is either for another identity, or (made by someone holding the KEK) not
// signed by a key the device trusts.
func (e *attackEnv) nothingOpensFor(identity string) {
	e.t.Helper()
	id := loadIdentity(e.t, identity)
	rows, err := e.db.Query(e.ctx, `SELECT tenant_id, user_id, device_id, wrapped FROM shapeseal_tenant_keys`)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var tenant, user, device string
		var w []byte
		if err := rows.Scan(&tenant, &user, &device, &w); err != nil {
			e.t.Fatal(err)
		}
		if _, err := keysync.Unwrap(id, w, tenant, e.signers()); !errors.Is(err, keysync.ErrWrongIdentity) && !errors.Is(err, keysync.ErrUntrustedKeyset) {
			e.t.Errorf("attack not refused: the row of %s/%s of tenant %s for the attacker's identity: %v", user, device, tenant, err)
		}
	}
}

// cellKey returns the key id that sealed the title of items row id.
func (e *attackEnv) cellKey(id string) uint32 {
	e.t.Helper()
	var cell string
	if err := e.db.QueryRow(e.ctx, `SELECT title FROM items WHERE id = $1`, id).Scan(&cell); err != nil {
		e.t.Fatal(err)
	}
	k, err := keysync.CellKeyID(cell)
	if err != nil {
		e.t.Fatal(err)
	}
	return k
}

// count returns the number of rows of a query's result.
func (e *attackEnv) count(query string, args ...any) int {
	e.t.Helper()
	var n int
	if err := e.db.QueryRow(e.ctx, `SELECT count(*) FROM (`+query+`) q`, args...).Scan(&n); err != nil {
		e.t.Fatal(err)
	}
	return n
}

// forget replaces Electric's shapes of the tables, so that readers syncing
// from scratch see them as they are now, as an Electric that compacted its
// shape logs (or the attacker's own server) would serve them.
func (e *attackEnv) forget(tables ...string) {
	e.t.Helper()
	for _, table := range tables {
		if _, err := e.srv.Rotate(table); err != nil {
			e.t.Fatal(err)
		}
	}
}

func loadIdentity(t *testing.T, file string) age.Identity {
	t.Helper()
	id, err := keysync.LoadIdentityFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// seedHex returns the hex of a signing key file's private seed.
func seedHex(t *testing.T, keyFile string) string {
	t.Helper()
	k, err := keysync.LoadKeyFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.TrimPrefix(k.Text(), chain.PrivateKeyPrefix)
	seed, err := base64.RawURLEncoding.DecodeString(text)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(seed)
}
