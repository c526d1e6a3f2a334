package pgtest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

func TestMain(m *testing.M) { os.Exit(Run(m)) }

// startPrivate starts a private cluster (never DATABASE_URL's) and stops it
// when the test ends. Without server binaries it skips, unless CI is true.
func startPrivate(t *testing.T, opts Options) *Cluster {
	t.Helper()
	opts.Install = inCI()
	opts.Logf = t.Logf
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := Start(ctx, opts)
	if errors.Is(err, ErrNotInstalled) && !inCI() {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	return c
}

// sharedURL returns the URL of the cluster NewDB uses, skipping the test if
// NewDB had none (and so skipped its subtests).
func sharedURL(t *testing.T) string {
	t.Helper()
	c, err := sharedCluster()
	if err != nil {
		t.Skip(err)
	}
	return c.URL()
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryString(t *testing.T, conn *pgx.Conn, sql string, args ...any) string {
	t.Helper()
	var s string
	if err := conn.QueryRow(context.Background(), sql, args...).Scan(&s); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return s
}

func TestStartSettings(t *testing.T) {
	t.Parallel()
	c := startPrivate(t, Options{})

	want := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port)
	if c.URL() != want {
		t.Errorf("URL() = %q, want %q", c.URL(), want)
	}
	conn := connect(t, c.URL())
	for setting, want := range map[string]string{
		"wal_level":               "logical",
		"fsync":                   "off",
		"synchronous_commit":      "on",
		"full_page_writes":        "off",
		"max_replication_slots":   "200",
		"max_wal_senders":         "200",
		"max_connections":         "500",
		"shared_buffers":          "128MB",
		"listen_addresses":        "127.0.0.1",
		"unix_socket_directories": c.dir,
		"server_encoding":         "UTF8",
	} {
		if got := queryString(t, conn, "SHOW "+setting); got != want {
			t.Errorf("%s = %q, want %q", setting, got, want)
		}
	}
	if got := queryString(t, conn, "SELECT rolsuper::text FROM pg_roles WHERE rolname = current_user"); got != "true" {
		t.Errorf("current user is not a superuser")
	}
	if _, err := os.Stat(filepath.Join(c.dir, "postgres.log")); err != nil {
		t.Errorf("server log: %v", err)
	}

	// Logical replication connections are allowed over TCP.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rc, err := pgconn.Connect(ctx, c.URL()+"&replication=database")
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close(context.Background())
	if _, err := rc.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll(); err != nil {
		t.Fatalf("IDENTIFY_SYSTEM: %v", err)
	}
}

func TestStop(t *testing.T) {
	t.Parallel()
	c := startPrivate(t, Options{})
	conn := connect(t, c.URL()) // Stop must not wait for clients

	if err := c.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := os.Stat(c.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data directory %s still there after Stop (%v)", c.dir, err)
	}
	l, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", c.port))
	if err != nil {
		t.Errorf("port %d not free after Stop: %v", c.port, err)
	} else {
		l.Close()
	}
	if err := conn.Ping(context.Background()); err == nil {
		t.Errorf("connection still works after Stop")
	}
	if err := c.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestRestart: a fast restart keeps the data and the port, ends the
// connections of before, and Stop still cleans up after it.
func TestRestart(t *testing.T) {
	t.Parallel()
	c := startPrivate(t, Options{})
	ctx := context.Background()
	conn := connect(t, c.URL())
	if _, err := conn.Exec(ctx, `CREATE TABLE kept (n int); INSERT INTO kept VALUES (42)`); err != nil {
		t.Fatal(err)
	}
	url, port, pid := c.URL(), c.port, c.cmd.Process.Pid
	if err := c.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if c.URL() != url || c.port != port {
		t.Errorf("after Restart: %s (port %d), want %s (port %d)", c.URL(), c.port, url, port)
	}
	if c.cmd.Process.Pid == pid {
		t.Errorf("after Restart: the same postmaster (pid %d)", pid)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Errorf("a connection of before the restart still works")
	}
	var n int
	if err := connect(t, url).QueryRow(ctx, `SELECT n FROM kept`).Scan(&n); err != nil || n != 42 {
		t.Errorf("after Restart: SELECT n FROM kept = %d, %v; want 42", n, err)
	}
	if err := (&Cluster{external: true}).Restart(ctx); err == nil {
		t.Errorf("Restart of DATABASE_URL's cluster: no error")
	}
}

func TestStopAfterServerDied(t *testing.T) {
	t.Parallel()
	c := startPrivate(t, Options{})
	killGroup(c.cmd.Process)
	<-c.exited
	if err := c.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	if _, err := os.Stat(c.dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("data directory %s still there after Stop (%v)", c.dir, err)
	}
}

func TestStartDirAndPort(t *testing.T) {
	t.Parallel()
	parent, err := os.MkdirTemp("", "pgtest-parent-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	if err := os.Chmod(parent, 0o755); err != nil { // reachable by the postgres user
		t.Fatal(err)
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}

	c := startPrivate(t, Options{Dir: parent, Port: port})
	if c.port != port || !strings.Contains(c.URL(), fmt.Sprintf(":%d/", port)) {
		t.Errorf("asked for port %d, got %d (%s)", port, c.port, c.URL())
	}
	if filepath.Dir(c.dir) != parent {
		t.Errorf("cluster directory %s is not in %s", c.dir, parent)
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if entries, _ := os.ReadDir(parent); len(entries) != 0 {
		t.Errorf("%s not empty after Stop: %v", parent, entries)
	}
}

// As root, a failed Start explains why and leaves nothing behind.
func TestStartUnreachableDir(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("only root runs the server as another user")
	}
	if _, err := findBinDir(); err != nil && !inCI() {
		t.Skip(err)
	}
	parent := t.TempDir() // 0700, owned by root
	_, err := Start(context.Background(), Options{Dir: parent, Install: inCI()})
	var e *Error
	if !errors.As(err, &e) || e.Op != "initdb" || !strings.Contains(err.Error(), "cannot reach") {
		t.Fatalf("Start in an unreachable directory: got %v, want an initdb error explaining it", err)
	}
	t.Log(err)
	if entries, _ := os.ReadDir(parent); len(entries) != 0 {
		t.Errorf("failed Start left %v in %s", entries, parent)
	}
}

func TestOpen(t *testing.T) {
	c := startPrivate(t, Options{})
	ctx := context.Background()

	t.Setenv("DATABASE_URL", c.URL())
	got, err := Open(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got.URL() != c.URL() {
		t.Errorf("Open with DATABASE_URL: URL() = %q, want %q", got.URL(), c.URL())
	}
	if err := got.Stop(); err != nil {
		t.Errorf("Stop of a DATABASE_URL cluster: %v", err)
	}
	if err := ping(ctx, c.URL()); err != nil {
		t.Errorf("Stop of a DATABASE_URL cluster stopped the server: %v", err)
	}

	port, _ := freePort()
	t.Setenv("DATABASE_URL", fmt.Sprintf("postgres://postgres:secret@127.0.0.1:%d/postgres?sslmode=disable&connect_timeout=5", port))
	_, err = Open(ctx, Options{})
	var e *Error
	if !errors.As(err, &e) || e.Op != "connect" {
		t.Errorf("Open with an unreachable DATABASE_URL: got %v, want a connect error", err)
	} else if strings.Contains(err.Error(), "secret") {
		t.Errorf("error shows the password: %v", err)
	}
}

func TestNewDB(t *testing.T) {
	t.Parallel()
	var a, b string
	t.Run("create", func(t *testing.T) {
		var held *pgx.Conn
		t.Cleanup(func() { // registered first, so it runs after the drop
			if held != nil {
				held.Close(context.Background())
			}
		})
		a, b = NewDB(t), NewDB(t)
		if a == b {
			t.Fatalf("NewDB returned %s twice", a)
		}
		ca, cb := connect(t, a), connect(t, b)
		nameA := queryString(t, ca, "SELECT current_database()")
		nameB := queryString(t, cb, "SELECT current_database()")
		if nameA == nameB || !strings.HasPrefix(nameA, "pgtest_") || !strings.HasPrefix(nameB, "pgtest_") {
			t.Fatalf("databases %q and %q: want two distinct pgtest_ databases", nameA, nameB)
		}
		for _, conn := range []*pgx.Conn{ca, cb} {
			if n := queryString(t, conn, "SELECT count(*)::text FROM pg_class WHERE relnamespace = 'public'::regnamespace"); n != "0" {
				t.Errorf("new database has %s relations in public", n)
			}
		}
		Exec(t, a, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
		Exec(t, a, "INSERT INTO t VALUES ($1)", 2)
		if n := queryString(t, ca, "SELECT count(*)::text FROM t"); n != "2" {
			t.Errorf("count = %s, want 2", n)
		}
		if n := queryString(t, cb, "SELECT count(*)::text FROM pg_class WHERE relname = 't'"); n != "0" {
			t.Errorf("table created in one database is visible in the other")
		}
		// A session in a transaction must not keep the database alive.
		conn, err := pgx.Connect(context.Background(), a)
		if err != nil {
			t.Fatal(err)
		}
		held = conn
		if _, err := held.Exec(context.Background(), "BEGIN; LOCK t"); err != nil {
			t.Fatal(err)
		}
	})
	admin := connect(t, sharedURL(t))
	for _, u := range []string{a, b} {
		cfg, err := pgx.ParseConfig(u)
		if err != nil {
			t.Fatal(err)
		}
		if n := queryString(t, admin, "SELECT count(*)::text FROM pg_database WHERE datname = $1", cfg.Database); n != "0" {
			t.Errorf("database %s still exists after its test", cfg.Database)
		}
	}
}

// The database goes away even while a walsender streams from a slot in it.
func TestNewDBDropsReplicationSlots(t *testing.T) {
	t.Parallel()
	var slot, db string
	t.Run("stream", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		var rc *pgconn.PgConn
		t.Cleanup(func() { // registered first, so it runs after the drop
			if rc != nil {
				rc.Close(context.Background())
			}
		})
		url := NewDB(t)
		cfg, err := pgx.ParseConfig(url)
		if err != nil {
			t.Fatal(err)
		}
		db = cfg.Database
		slot = db + "_slot"
		Exec(t, url, "CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t")
		Exec(t, url, "SELECT pg_create_logical_replication_slot($1, 'pgoutput')", db+"_idle")

		rc, err = pgconn.Connect(ctx, url+"&replication=database")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := rc.Exec(ctx, "CREATE_REPLICATION_SLOT "+slot+" LOGICAL pgoutput").ReadAll(); err != nil {
			t.Fatal(err)
		}
		rc.Frontend().Send(&pgproto3.Query{String: "START_REPLICATION SLOT " + slot + " LOGICAL 0/0 (proto_version '1', publication_names 'p')"})
		if err := rc.Frontend().Flush(); err != nil {
			t.Fatal(err)
		}
		msg, err := rc.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := msg.(*pgproto3.CopyBothResponse); !ok {
			t.Fatalf("START_REPLICATION: got %T, want CopyBothResponse", msg)
		}
		admin := connect(t, sharedURL(t))
		if got := queryString(t, admin, "SELECT active::text FROM pg_replication_slots WHERE slot_name = $1", slot); got != "true" {
			t.Fatalf("slot %s active = %s, want true", slot, got)
		}
	})
	admin := connect(t, sharedURL(t))
	if n := queryString(t, admin, "SELECT count(*)::text FROM pg_replication_slots WHERE database = $1", db); n != "0" {
		t.Errorf("%s replication slots of %s left after its test", n, db)
	}
	if n := queryString(t, admin, "SELECT count(*)::text FROM pg_database WHERE datname = $1", db); n != "0" {
		t.Errorf("database %s still exists after its test", db)
	}
}

func TestNewDBParallel(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	seen := map[string]bool{}
	for i := range 10 {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			t.Parallel()
			url := NewDB(t)
			mu.Lock()
			dup := seen[url]
			seen[url] = true
			mu.Unlock()
			if dup {
				t.Errorf("NewDB returned %s twice", url)
			}
			Exec(t, url, "CREATE TABLE t (id int PRIMARY KEY)")
			Exec(t, url, "INSERT INTO t SELECT generate_series(1, $1::int)", 100)
		})
	}
}

func TestWithDatabase(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"postgres://u:p@h:5/postgres?sslmode=disable", "postgres://u:p@h:5/x?sslmode=disable"},
		{"postgresql://h/", "postgresql://h/x"},
		{"postgres://h/a?dbname=b&sslmode=disable", "postgres://h/x?sslmode=disable"},
		{"host=h dbname=a", "host=h dbname=a dbname=x"},
	} {
		got, err := withDatabase(tc.in, "x")
		if err != nil || got != tc.want {
			t.Errorf("withDatabase(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
		if cfg, err := pgx.ParseConfig(got); err != nil {
			t.Errorf("withDatabase(%q) = %q: %v", tc.in, got, err)
		} else if cfg.Database != "x" {
			t.Errorf("withDatabase(%q) = %q: database %q", tc.in, got, cfg.Database)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		less bool
	}{{"9.6", "15", true}, {"15", "16", true}, {"10", "9.6", false}} {
		if got := compareVersions(tc.a, tc.b) < 0; got != tc.less {
			t.Errorf("compareVersions(%s, %s) < 0 = %v", tc.a, tc.b, got)
		}
	}
}
