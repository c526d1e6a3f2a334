package main

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
	"github.com/shapeseal/shapeseal/proxy"
)

func init() {
	register(command{"dev", "run the whole stack locally on embedded defaults (Postgres, Electric, proxy, demo keys and rows)", runDev})
}

// devUser is a demo user of `shapeseal dev`.
type devUser struct {
	name    string
	tenants []string
}

var devUsers = []devUser{
	{"alice", []string{"acme"}},
	{"bob", []string{"acme", "globex"}},
	{"carol", []string{"globex"}},
}

// devItems is the demo table; title and body are encrypted per tenant.
const devItems = `CREATE TABLE IF NOT EXISTS items (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	tenant_id text NOT NULL,
	title text,
	body text,
	created_at timestamptz NOT NULL DEFAULT now()
)`

var devSpec = keysync.TableSpec{Table: "public.items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}

func runDev(ctx context.Context, args []string) error { return dev(ctx, args, os.Stdout) }

// devDirPrefix names the temporary directories of shapeseal dev; each holds
// a file "pid" naming the process that uses it, so that the next run removes
// those of a run that was killed.
const devDirPrefix = "shapeseal-dev-"

func dev(ctx context.Context, args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("dev", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: shapeseal dev [flags]

Runs the whole stack on this machine: a private Postgres (unless
DATABASE_URL is set), an Electric-compatible shape server, a local KEK, a
root signing key, the key-sync proxy, demo users (alice, bob, carol) with
certified device identities and tokens, two tenants (acme, globex) whose
signed logs grant them, and encrypted rows in "items". It prints one line
"shapeseal dev ready {json}" and serves until interrupted (or until the
process that started it, such as "go run", goes away), then cleans up.

Follow the demo shape, decrypted, as alice:

	shapeseal tail PROXY_URL/v1/shapes/items --token TOKEN --identity FILE \
		--root ROOT --encrypted items:title,body \
		--keys-url PROXY_URL/v1/shapes/keys --live

with the proxy URL, alice's token and identity file, and the root public key
(which devices pin to verify the tenants' logs) from the ready line; the
tenant logs come from PROXY_URL/v1/shapes/log.

The shape server connects as a role of its own that may only read the
synced tables (items, shapeseal_tenant_keys, shapeseal_log: REPLICATION
and SELECT, no superuser) and follows a publication of those tables made
for it, electric_shapeseal_dev, as Electric does with
ELECTRIC_MANUAL_TABLE_PUBLISHING; the ready line gives its URL as
electric_database_url. Both are dropped on exit.

With DATABASE_URL, Postgres must run with wal_level=logical and the role
must have REPLICATION (or be a superuser); if it may not create that role
(superuser, or CREATEROLE owning the tables), the shape server connects as
DATABASE_URL's role and publishes the tables itself. A second run on the same
database reuses the demo when given the same --dir (same root key, KEK,
identities and token key); an earlier demo whose directory is gone is
dropped and made again; one kept in another directory, or tables and
tenants that shapeseal dev did not create, are refused unless --reset
drops them (the items table, the tenants acme and globex, the demo users'
devices).

flags:
`)
		fs.PrintDefaults()
	}
	electricAddr := fs.String("electric-listen", "127.0.0.1:0", "address of the shape server")
	proxyAddr := fs.String("listen", "127.0.0.1:0", "address of the proxy")
	envFile := fs.String("env", "", "also write the ready line's URLs, root, tokens and identity files to this file as shell exports (PROXY_URL, SHAPESEAL_ROOT, ALICE_TOKEN, ALICE_IDENTITY, …), removed on exit")
	dir := fs.String("dir", "", "directory keeping the root key, the KEK, the identities and the token key across runs (default: a temporary one, removed on exit)")
	reset := fs.Bool("reset", false, "with DATABASE_URL, drop the demo of an earlier run (table items, tenants acme and globex, the demo users' devices) and start clean")
	verbose := fs.Bool("v", false, "log every request")
	if err := parseFlags(fs, args); err != nil {
		return helpOK(err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	level := slog.LevelWarn
	if *verbose {
		level = slog.LevelInfo
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctx = watchParent(ctx)

	removeStaleDevDirs()
	temporary := *dir == ""
	if temporary {
		d, err := os.MkdirTemp("", devDirPrefix)
		if err != nil {
			return err
		}
		defer removeDevDir(d)
		if err := os.WriteFile(filepath.Join(d, "pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
			return err
		}
		*dir = d
	} else {
		if err := os.MkdirAll(*dir, 0o700); err != nil {
			return err
		}
		abs, err := filepath.Abs(*dir)
		if err != nil {
			return err
		}
		*dir = abs
	}

	dbURL := os.Getenv("DATABASE_URL")
	private := dbURL == ""
	if private {
		fmt.Fprintln(os.Stderr, "shapeseal dev: starting a private Postgres")
		cl, err := pgtest.Start(ctx, pgtest.Options{Install: true})
		if err != nil {
			return err
		}
		defer cl.Stop()
		dbURL = cl.URL()
	}
	// Check the database before anything is written to it.
	conn, err := connectDB(ctx, dbURL, "DATABASE_URL")
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	if err := checkReplication(ctx, conn); err != nil {
		return err
	}

	kekPath := filepath.Join(*dir, "kek.json")
	kek, err := keysync.OpenKEK("local://" + kekPath)
	if errors.Is(err, os.ErrNotExist) {
		kek, err = keysync.GenerateLocalKEK(kekPath)
	}
	if err != nil {
		return err
	}
	root, err := devRoot(filepath.Join(*dir, "root.key"))
	if err != nil {
		return err
	}
	jwtKey, err := devJWTKey(filepath.Join(*dir, "jwt.key"))
	if err != nil {
		return err
	}
	if !private {
		if err := prepareDevDB(ctx, conn, root.Public().String(), *dir, temporary, *reset); err != nil {
			return err
		}
	}
	users, err := seedDev(ctx, conn, kek, root, *dir)
	if err != nil {
		return err
	}
	// Electric reads as a role of its own, from a publication made for it.
	ro, err := setupDevElectric(ctx, conn, dbURL, private)
	if err != nil {
		if private {
			return err
		}
		fmt.Fprintf(os.Stderr, "shapeseal dev: the shape server connects as DATABASE_URL's role (a read-only role of its own could not be made: %v)\n", err)
		ro = nil
	}
	conn.Close(context.Background())

	secret := randomHex(16)
	electricDB := dbURL
	opts := electrictest.Options{DatabaseURL: dbURL, Secret: secret, Logger: logger}
	if ro != nil {
		defer ro.drop()
		electricDB = ro.url
		opts.DatabaseURL, opts.Publication = ro.url, devPublication
	}
	srv, err := electrictest.New(ctx, opts)
	if err != nil && ro != nil && !private {
		fmt.Fprintf(os.Stderr, "shapeseal dev: the shape server connects as DATABASE_URL's role: as %s: %v\n", ro.role, err)
		electricDB = dbURL
		opts.DatabaseURL, opts.Publication = dbURL, ""
		srv, err = electrictest.New(ctx, opts)
	}
	if err != nil {
		return err
	}
	defer srv.Close()
	electricURL, stopElectric, err := serve(*electricAddr, srv)
	if err != nil {
		return err
	}
	defer stopElectric()

	px, err := proxy.New(proxy.Config{
		Upstream: electricURL,
		Secret:   secret,
		Auth: proxy.AuthConfig{
			Algorithms: []string{"HS256"},
			HMACKeys:   []proxy.HMACKey{{Secret: jwtKey}},
			Issuer:     "shapeseal-dev",
		},
		Shapes: []proxy.ShapeRule{
			{Name: "items", Table: "items", Where: "tenant_id = ANY($1::text[])", Params: []string{"$tenants"}},
			{Name: "keys", Kind: proxy.KindTenantKeys},
			// Devices read the logs of their token's tenants, filtered like
			// the tenants' data, to verify them from the root.
			{Name: "log", Table: keysync.LogTable, Where: keysync.LogShapeWhere, Params: []string{"$tenants"},
				Columns: []string{"tenant_id", "seq", "entry"}, Replica: "full"},
		},
		Logger: logger,
	})
	if err != nil {
		return err
	}
	proxyURL, stopProxy, err := serve(*proxyAddr, px)
	if err != nil {
		return err
	}
	defer stopProxy()

	type userInfo struct {
		Token    string   `json:"token"`
		Identity string   `json:"identity"`
		Tenants  []string `json:"tenants"`
	}
	out := struct {
		ElectricURL string              `json:"electric_url"`
		ProxyURL    string              `json:"proxy_url"`
		DatabaseURL string              `json:"database_url"`
		ElectricDB  string              `json:"electric_database_url"`
		Dir         string              `json:"dir"`
		Root        string              `json:"root"`
		KEK         string              `json:"kek"`
		Shapes      map[string]string   `json:"shapes"`
		Users       map[string]userInfo `json:"users"`
	}{
		ElectricURL: electricURL, ProxyURL: proxyURL, DatabaseURL: dbURL, ElectricDB: electricDB, Dir: *dir, Root: root.Public().String(), KEK: kek.URI(),
		Shapes: map[string]string{
			"items": proxyURL + "/v1/shapes/items",
			"keys":  proxyURL + "/v1/shapes/keys",
			"log":   proxyURL + "/v1/shapes/log",
		},
		Users: map[string]userInfo{},
	}
	for _, u := range devUsers {
		tok := signDevToken(jwtKey, map[string]any{
			"iss": "shapeseal-dev", "sub": u.name, "tenant_ids": u.tenants, "device_id": "laptop",
			"iat": time.Now().Unix(), "exp": time.Now().Add(24 * time.Hour).Unix(),
		})
		out.Users[u.name] = userInfo{Token: tok, Identity: users[u.name], Tenants: u.tenants}
	}
	if *envFile != "" {
		vars := [][2]string{{"ELECTRIC_URL", electricURL}, {"PROXY_URL", proxyURL}, {"DATABASE_URL", dbURL}, {"ELECTRIC_DATABASE_URL", electricDB}, {"SHAPESEAL_ROOT", out.Root}}
		for _, u := range devUsers {
			up := strings.ToUpper(u.name)
			vars = append(vars, [2]string{up + "_TOKEN", out.Users[u.name].Token}, [2]string{up + "_IDENTITY", out.Users[u.name].Identity})
		}
		if err := writeEnvFile(*envFile, vars); err != nil {
			return err
		}
		defer os.Remove(*envFile)
	}
	ready, _ := json.Marshal(out)
	fmt.Fprintf(stdout, "shapeseal dev ready %s\n", ready)
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "shapeseal dev: stopping")
	return nil
}

// devPublication is the publication dev's shape server follows.
const devPublication = "electric_shapeseal_dev"

// devElectricTables are the tables dev's shape server serves.
var devElectricTables = []string{"items", keysync.TenantKeysTable, keysync.LogTable}

// devElectric is the role dev's shape server connects as.
type devElectric struct {
	role, url string
	adminURL  string // who made it, to drop it; "": leave it (a private cluster goes anyway)
}

// setupDevElectric makes, as conn's role, the role that dev's shape server
// connects as, with LOGIN, REPLICATION and SELECT only on the synced
// tables, and the publication devPublication of those tables, which it
// sets to REPLICA IDENTITY FULL (as Electric's operator would with
// ELECTRIC_MANUAL_TABLE_PUBLISHING). The role is the database's own (roles
// are the cluster's, grants the database's) and gets a new random password
// each run. It changes nothing when it fails.
func setupDevElectric(ctx context.Context, conn *pgx.Conn, dbURL string, private bool) (*devElectric, error) {
	var dbName string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&dbName); err != nil {
		return nil, err
	}
	role := "shapeseal_electric"
	if !private {
		h := sha256.Sum256([]byte(dbName))
		role += "_" + hex.EncodeToString(h[:5])
	}
	password := randomHex(16)
	ident := pgx.Identifier{role}.Sanitize()
	tables := make([]string, len(devElectricTables))
	for i, t := range devElectricTables {
		tables[i] = pgx.Identifier{t}.Sanitize()
	}
	list := strings.Join(tables, ", ")
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil {
		return nil, err
	}
	verb := "CREATE"
	if exists {
		verb = "ALTER" // left by a run that was killed
	}
	stmts := []string{
		verb + " ROLE " + ident + " LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD '" + password + "'",
		"REVOKE ALL ON " + list + " FROM " + ident,
		"GRANT SELECT ON " + list + " TO " + ident,
		"DROP PUBLICATION IF EXISTS " + devPublication,
		"CREATE PUBLICATION " + devPublication + " FOR TABLE " + list,
	}
	for _, t := range tables {
		stmts = append(stmts, "ALTER TABLE "+t+" REPLICA IDENTITY FULL")
	}
	for _, q := range stmts {
		if _, err := tx.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("%s: %w", strings.ReplaceAll(q, password, "***"), err)
		}
	}
	u, err := dbURLAs(dbURL, role, password)
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	d := &devElectric{role: role, url: u}
	if !private {
		d.adminURL = dbURL
	}
	return d, nil
}

// drop drops the publication and the role (best effort: a run that is
// killed leaves them, and the next one takes them over).
func (d *devElectric) drop() {
	if d.adminURL == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, d.adminURL)
	if err != nil {
		return
	}
	defer conn.Close(context.Background())
	ident := pgx.Identifier{d.role}.Sanitize()
	for _, q := range []string{"DROP PUBLICATION IF EXISTS " + devPublication, "DROP OWNED BY " + ident, "DROP ROLE IF EXISTS " + ident} {
		if _, err := conn.Exec(ctx, q); err != nil {
			fmt.Fprintf(os.Stderr, "shapeseal dev: %s: %v\n", q, err)
			return
		}
	}
}

// dbURLAs returns dbURL (a URL or keyword/value string) with another user
// and password.
func dbURLAs(dbURL, user, password string) (string, error) {
	if strings.HasPrefix(dbURL, "postgres://") || strings.HasPrefix(dbURL, "postgresql://") {
		u, err := url.Parse(dbURL)
		if err != nil {
			return "", errors.New("cannot parse DATABASE_URL")
		}
		u.User = url.UserPassword(user, password)
		q := u.Query()
		q.Del("user")
		q.Del("password")
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// Keyword/value: the last setting of a keyword wins.
	return dbURL + " user=" + user + " password=" + password, nil
}

// devJWTKey loads the key the demo tokens are signed with from path, or
// creates it, so that tokens stay valid across runs with the same --dir.
func devJWTKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		key, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(key) < 32 {
			return nil, fmt.Errorf("%s: not a hex key of 32 bytes or more", path)
		}
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(path, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, err
	}
	return key, nil
}

// removeDevDir removes a temporary directory of dev, its pid file last: if
// the process is killed on the way, the next run finds the rest.
func removeDevDir(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "pid" {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
	os.RemoveAll(dir)
}

// removeStaleDevDirs removes the temporary directories of earlier runs
// whose process is gone (killed before it could clean up).
func removeStaleDevDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), devDirPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		os.RemoveAll(d)
	}
}

// devTenants are the demo's tenants.
var devTenants = []string{"acme", "globex"}

// devMarker records, in the database, the root key and directory of the
// demo that shapeseal dev made there.
const devMarker = `CREATE TABLE IF NOT EXISTS shapeseal_dev (
	root      text PRIMARY KEY,
	dir       text NOT NULL,
	temporary boolean NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
)`

// prepareDevDB decides what to do with a demo already in the database: the
// one of this root is reused; one of another root whose directory is gone
// (a temporary one, or deleted) is dropped; otherwise, with reset, dropped;
// else refused. It then records this run's root.
func prepareDevDB(ctx context.Context, conn *pgx.Conn, root, dir string, temporary, reset bool) error {
	var markerRoot, markerDir string
	var markerTemp, hasMarker, hasItems, hasTenants bool
	err := conn.QueryRow(ctx, `SELECT to_regclass('shapeseal_dev') IS NOT NULL, to_regclass('items') IS NOT NULL`).Scan(&hasMarker, &hasItems)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	if hasMarker {
		err := conn.QueryRow(ctx, `SELECT root, dir, temporary FROM shapeseal_dev ORDER BY created_at DESC LIMIT 1`).Scan(&markerRoot, &markerDir, &markerTemp)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("DATABASE_URL: %w", err)
		}
		if markerRoot == root {
			return nil // this demo: reuse it
		}
	}
	var hasLog bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('shapeseal_log') IS NOT NULL`).Scan(&hasLog); err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	if hasLog {
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM shapeseal_log WHERE tenant_id = ANY($1))`, devTenants).Scan(&hasTenants); err != nil {
			return fmt.Errorf("DATABASE_URL: %w", err)
		}
	}
	switch {
	case !hasItems && !hasTenants:
		// Nothing of a demo: start clean.
	case reset:
		fmt.Fprintln(os.Stderr, "shapeseal dev: --reset: dropping table items, tenants acme and globex and the demo users' devices")
		if err := dropDevDemo(ctx, conn, hasLog); err != nil {
			return err
		}
	case markerRoot != "" && (markerTemp || !fileExists(filepath.Join(markerDir, "root.key"))):
		fmt.Fprintf(os.Stderr, "shapeseal dev: dropping the demo of an earlier run, whose directory %s is gone\n", markerDir)
		if err := dropDevDemo(ctx, conn, hasLog); err != nil {
			return err
		}
	case markerRoot != "":
		return fmt.Errorf("DATABASE_URL holds the demo of an earlier run whose keys are in %s (root %s): pass --dir %s to reuse it, or --reset to drop it and start clean", markerDir, markerRoot, markerDir)
	default:
		what := "table items"
		if hasTenants {
			what = "tenants acme or globex"
			if hasItems {
				what = "table items and tenants acme or globex"
			}
		}
		return fmt.Errorf("DATABASE_URL already has %s, which this shapeseal dev did not make: pass --reset to drop them (table items, tenants acme and globex, the demo users' devices) and start clean, or set DATABASE_URL to another database", what)
	}
	if _, err := conn.Exec(ctx, devMarker); err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	_, err = conn.Exec(ctx, `INSERT INTO shapeseal_dev (root, dir, temporary) VALUES ($1, $2, $3)`, root, dir, temporary)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	return nil
}

// dropDevDemo drops what shapeseal dev made: table items, the demo tenants'
// logs and keys, the demo users' devices and the marker.
func dropDevDemo(ctx context.Context, conn *pgx.Conn, keyTables bool) error {
	users := make([]string, len(devUsers))
	for i, u := range devUsers {
		users[i] = u.name
	}
	type stmt struct {
		q    string
		args []any
	}
	stmts := []stmt{{`DROP TABLE IF EXISTS items`, nil}, {`DROP TABLE IF EXISTS shapeseal_dev`, nil}}
	if keyTables {
		stmts = append(stmts,
			stmt{`DELETE FROM shapeseal_tenant_keys WHERE tenant_id = ANY($1)`, []any{devTenants}},
			stmt{`DELETE FROM shapeseal_keysets WHERE tenant_id = ANY($1)`, []any{devTenants}},
			stmt{`DELETE FROM shapeseal_log WHERE tenant_id = ANY($1)`, []any{devTenants}},
			stmt{`DELETE FROM shapeseal_device_certs WHERE user_id = ANY($1)`, []any{users}},
			stmt{`DELETE FROM shapeseal_devices WHERE user_id = ANY($1)`, []any{users}})
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	for _, st := range stmts {
		if _, err := tx.Exec(ctx, st.q, st.args...); err != nil {
			return fmt.Errorf("drop the earlier demo: %w", err)
		}
	}
	return tx.Commit(ctx)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// devRoot loads the demo's root signing key from path, or creates it.
func devRoot(path string) (*chain.PrivateKey, error) {
	if _, err := os.Stat(path); err == nil {
		return keysync.LoadKeyFile(path)
	}
	return keysync.GenerateKeyFile(path)
}

// devIdentity loads a demo user's identity from path, or creates it, and
// returns its recipient.
func devIdentity(path string) (string, error) {
	id, err := keysync.LoadIdentityFile(path)
	if errors.Is(err, os.ErrNotExist) {
		hid, gerr := keysync.GenerateIdentity()
		if gerr != nil {
			return "", gerr
		}
		if err := keysync.WriteIdentityFile(path, hid); err != nil {
			return "", err
		}
		id, err = hid, nil
	}
	if err != nil {
		return "", err
	}
	return keysync.RecipientOf(id)
}

// seedDev creates the demo schema, identities, tenants (signed with the
// root key), device certificates, grants and encrypted rows, and returns
// each user's identity file.
func seedDev(ctx context.Context, conn *pgx.Conn, kek keysync.KEK, root *chain.PrivateKey, dir string) (map[string]string, error) {
	if err := keysync.ApplySchema(ctx, conn); err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, devItems); err != nil {
		return nil, err
	}
	roots := []keysync.VerifyKey{root.Public()}
	adm := &keysync.Admin{DB: conn, Roots: roots, Key: root, KEKs: keysync.UseKEK(kek)}
	for _, tenant := range devTenants {
		if _, err := adm.CreateTenant(ctx, kek, tenant); err != nil && !errors.Is(err, keysync.ErrTenantExists) {
			return nil, fmt.Errorf("tenant %s: %w", tenant, err)
		}
	}
	identities := map[string]string{}
	for _, u := range devUsers {
		path := filepath.Join(dir, u.name+".age")
		recipient, err := devIdentity(path)
		if err != nil {
			return nil, err
		}
		if err := adm.CertifyDevice(ctx, u.name, "laptop", recipient); err != nil {
			return nil, err
		}
		for _, t := range u.tenants {
			if _, err := adm.Grant(ctx, t, u.name); err != nil {
				return nil, fmt.Errorf("grant %s to %s: %w", t, u.name, err)
			}
		}
		identities[u.name] = path
	}
	// Rows are written once: a demo reused from an earlier run has them.
	var rowCount int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM items WHERE tenant_id = ANY($1)`, devTenants).Scan(&rowCount); err != nil {
		return nil, err
	}
	if rowCount > 0 {
		return identities, nil
	}
	w, err := keysync.NewWriter(devSpec, keysync.Insert, keysync.WriterOptions{Roots: roots, KEKs: keysync.UseKEK(kek), Floor: keysync.NewMemoryFloor()})
	if err != nil {
		return nil, err
	}
	rows := []map[string]any{
		{"tenant_id": "acme", "title": "Quarterly plan", "body": "Ship the encrypted sync demo."},
		{"tenant_id": "acme", "title": "Salaries", "body": "Only acme members can read this."},
		{"tenant_id": "globex", "title": "Launch codes", "body": "Only globex members can read this."},
	}
	for _, r := range rows {
		r["id"] = newUUID()
		if err := w.Write(ctx, conn, r); err != nil {
			return nil, err
		}
	}
	return identities, nil
}

// serve listens on addr and serves h until the returned stop is called. A
// proxy serves through its own Serve, which parks waiting live polls.
func serve(addr string, h http.Handler) (url string, stop func(), err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return "", nil, err
	}
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	if p, ok := h.(*proxy.Proxy); ok {
		go p.Serve(hs, ln)
	} else {
		go hs.Serve(ln)
	}
	return "http://" + ln.Addr().String(), func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if hs.Shutdown(ctx) != nil {
			hs.Close()
		}
	}, nil
}

// signDevToken mints an HS256 JWT for a demo user.
func signDevToken(key []byte, claims map[string]any) string {
	enc := base64.RawURLEncoding
	header := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	payload, _ := json.Marshal(claims)
	signing := header + "." + enc.EncodeToString(payload)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil))
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// writeEnvFile writes vars as shell exports to path, mode 0600 (the tokens
// are secrets), through a temporary file and a rename, so that a reader
// waiting for the file never sees half of it.
func writeEnvFile(path string, vars [][2]string) error {
	var b strings.Builder
	b.WriteString("# shapeseal dev: source this file (. FILE) in a shell\n")
	for _, v := range vars {
		fmt.Fprintf(&b, "export %s='%s'\n", v[0], strings.ReplaceAll(v[1], "'", `'\''`))
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o600); err != nil {
		return fmt.Errorf("--env: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("--env: %w", err)
	}
	return nil
}
