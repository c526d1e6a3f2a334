package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// TestDev runs `shapeseal dev` on a fresh database and follows the demo
// shape through its proxy as two users, with the key and log shapes of the
// proxy and the root key of the ready line: each reads the plaintext of
// their own tenant's rows and nothing of the other tenant's.
func TestDev(t *testing.T) {
	t.Setenv("DATABASE_URL", pgtest.NewDB(t))
	ctx, cancel := context.WithCancel(t.Context())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- dev(ctx, []string{"--dir", t.TempDir()}, pw)
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("dev: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("dev did not stop")
		}
	})

	lines := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(pr)
		s.Buffer(nil, 1<<20)
		for s.Scan() {
			lines <- s.Text()
		}
	}()
	var line string
	select {
	case line = <-lines:
	case err := <-done:
		t.Fatalf("dev ended: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("no ready line")
	}
	readyJSON, ok := strings.CutPrefix(line, "shapeseal dev ready ")
	if !ok {
		t.Fatalf("first line %q", line)
	}
	var ready struct {
		Proxy    string `json:"proxy_url"`
		Electric string `json:"electric_url"`
		Database string `json:"database_url"`
		Root     string
		KEK      string
		Shapes   map[string]string
		Users    map[string]struct {
			Token, Identity string
			Tenants         []string
		}
	}
	if err := json.Unmarshal([]byte(readyJSON), &ready); err != nil {
		t.Fatal(err)
	}
	if ready.Proxy == "" || ready.Electric == "" || ready.Database == "" || len(ready.Users) != 3 ||
		!strings.HasPrefix(ready.Root, "ssvk1") || ready.Shapes["log"] != ready.Proxy+"/v1/shapes/log" || !strings.HasPrefix(ready.KEK, "local://") {
		t.Fatalf("ready line %s", readyJSON)
	}

	follow := func(user string) string {
		u := ready.Users[user]
		var out, errOut syncBuffer
		err := tail(ctx, []string{ready.Shapes["items"], "--token", u.Token, "--identity", u.Identity, "--root", ready.Root,
			"--encrypted", "items:title,body", "--keys-url", ready.Shapes["keys"]}, &out, &errOut)
		if err != nil {
			t.Fatalf("tail as %s: %v\n%s", user, err, strings.Join(errOut.lines(), "\n"))
		}
		if e := strings.Join(errOut.lines(), "\n"); e != "" {
			t.Errorf("tail as %s, stderr:\n%s", user, e)
		}
		return strings.Join(out.lines(), "\n")
	}
	alice := follow("alice")
	if !strings.Contains(alice, "Only acme members can read this.") || strings.Contains(alice, "globex") || strings.Contains(alice, "ss1:") {
		t.Errorf("alice sees:\n%s", alice)
	}
	carol := follow("carol")
	if !strings.Contains(carol, "Only globex members can read this.") || strings.Contains(carol, "acme") {
		t.Errorf("carol sees:\n%s", carol)
	}
	conn, err := pgx.Connect(ctx, ready.Database)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var plain, total int
	err = conn.QueryRow(ctx, "SELECT count(*) FILTER (WHERE title NOT LIKE 'ss1:%' OR body NOT LIKE 'ss1:%'), count(*) FROM items").Scan(&plain, &total)
	if err != nil || plain != 0 || total != 3 {
		t.Errorf("items in Postgres: %d of %d not encrypted (%v)", plain, total, err)
	}
}

// devReady is the ready line of shapeseal dev.
type devReady struct {
	Proxy    string `json:"proxy_url"`
	Electric string `json:"electric_url"`
	Database string `json:"database_url"`
	// ElectricDB is the shape server's: its role's.
	ElectricDB string `json:"electric_database_url"`
	Dir        string
	Root       string
	KEK        string
	Shapes     map[string]string
	Users      map[string]struct {
		Token, Identity string
		Tenants         []string
	}
}

// startDev runs dev with args until the returned stop is called, and
// returns its ready line, or the error it ended with before it was ready.
func startDev(t *testing.T, args ...string) (*devReady, func(), error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- dev(ctx, args, pw)
		pw.Close()
	}()
	stop := func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("dev: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("dev did not stop")
		}
	}
	lines := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(pr)
		s.Buffer(nil, 1<<20)
		for s.Scan() {
			lines <- s.Text()
		}
	}()
	select {
	case line := <-lines:
		readyJSON, ok := strings.CutPrefix(line, "shapeseal dev ready ")
		if !ok {
			stop()
			t.Fatalf("first line %q", line)
		}
		var r devReady
		if err := json.Unmarshal([]byte(readyJSON), &r); err != nil {
			stop()
			t.Fatal(err)
		}
		return &r, stop, nil
	case err := <-done:
		cancel()
		if err == nil {
			t.Fatal("dev ended without error before it was ready")
		}
		return nil, nil, err
	case <-time.After(60 * time.Second):
		cancel()
		t.Fatal("no ready line")
	}
	return nil, nil, nil
}

// TestDevRunsTwice runs shapeseal dev again on the same database: with the
// same --dir it reuses the demo (same root, the rows once, earlier tokens
// still valid); with another kept directory it refuses, naming --dir and
// --reset; --reset starts clean; a demo whose directory is gone is dropped.
func TestDevRunsTwice(t *testing.T) {
	dbURL := pgtest.NewDB(t)
	t.Setenv("DATABASE_URL", dbURL)
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	count := func() int {
		t.Helper()
		var n int
		if err := conn.QueryRow(ctx, "SELECT count(*) FROM items").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	readAs := func(r *devReady, token string) string {
		t.Helper()
		var out, errOut syncBuffer
		a := r.Users["alice"]
		err := tail(ctx, []string{r.Shapes["items"], "--token", token, "--identity", a.Identity, "--root", r.Root,
			"--encrypted", "items:title,body", "--keys-url", r.Shapes["keys"]}, &out, &errOut)
		if err != nil {
			t.Fatalf("tail: %v\n%s", err, strings.Join(errOut.lines(), "\n"))
		}
		return strings.Join(out.lines(), "\n")
	}

	dirA := t.TempDir()
	r1, stop, err := startDev(t, "--dir", dirA)
	if err != nil {
		t.Fatal(err)
	}
	stop()
	r2, stop, err := startDev(t, "--dir", dirA)
	if err != nil {
		t.Fatalf("second run with the same --dir: %v", err)
	}
	if r2.Root != r1.Root || r2.KEK != r1.KEK || r2.Dir != dirA {
		t.Errorf("second run: root %s, KEK %s, dir %s; first: %s, %s", r2.Root, r2.KEK, r2.Dir, r1.Root, r1.KEK)
	}
	if n := count(); n != 3 {
		t.Errorf("items after the second run: %d rows, want 3", n)
	}
	// The first run's token still works: the token key is kept in --dir.
	if s := readAs(r2, r1.Users["alice"].Token); !strings.Contains(s, "Only acme members can read this.") {
		t.Errorf("alice, with the first run's token:\n%s", s)
	}
	stop()

	dirB := t.TempDir()
	if _, _, err := startDev(t, "--dir", dirB); err == nil || !strings.Contains(err.Error(), "--dir "+dirA) || !strings.Contains(err.Error(), "--reset") {
		t.Fatalf("run with another --dir: %v", err)
	}
	r3, stop, err := startDev(t, "--dir", dirB, "--reset")
	if err != nil {
		t.Fatalf("--reset: %v", err)
	}
	if r3.Root == r1.Root || count() != 3 {
		t.Errorf("--reset: root %s (was %s), %d rows", r3.Root, r1.Root, count())
	}
	if s := readAs(r3, r3.Users["alice"].Token); !strings.Contains(s, "Only acme members can read this.") {
		t.Errorf("alice after --reset:\n%s", s)
	}
	stop()

	// dirB is gone: a run in a temporary directory drops its demo.
	os.RemoveAll(dirB)
	r4, stop, err := startDev(t)
	if err != nil {
		t.Fatalf("run after the directory is gone: %v", err)
	}
	if r4.Root == r3.Root || count() != 3 {
		t.Errorf("after the directory is gone: root %s (was %s), %d rows", r4.Root, r3.Root, count())
	}
	stop()
	if _, err := os.Stat(r4.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary directory %s left behind: %v", r4.Dir, err)
	}
}

// TestDevRemovesStaleDirs: a temporary directory of a run that was killed
// (its pid gone) is removed by the next start; one of a live process is
// kept.
func TestDevRemovesStaleDirs(t *testing.T) {
	stale, err := os.MkdirTemp("", devDirPrefix)
	if err != nil {
		t.Fatal(err)
	}
	live, err := os.MkdirTemp("", devDirPrefix)
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(live)
	defer os.RemoveAll(stale)
	// A pid that is gone: a child that has exited.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Skip(err)
	}
	os.WriteFile(filepath.Join(stale, "pid"), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o600)
	os.WriteFile(filepath.Join(live, "pid"), []byte(strconv.Itoa(os.Getppid())+"\n"), 0o600)
	removeStaleDevDirs()
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stale directory kept: %v", err)
	}
	if _, err := os.Stat(live); err != nil {
		t.Errorf("live directory removed: %v", err)
	}
}

// TestDevChecksReplication: a role that may not replicate is refused
// before anything is written, with the statement to run.
func TestDevChecksReplication(t *testing.T) {
	dbURL := pgtest.NewDB(t)
	ctx := t.Context()
	admin, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	role := "shapeseal_norepl_" + randomHex(4)
	if _, err := admin.Exec(ctx, "CREATE ROLE "+role+" LOGIN PASSWORD 'pw' NOREPLICATION NOSUPERUSER"); err != nil {
		t.Fatal(err)
	}
	defer admin.Exec(context.Background(), "DROP ROLE "+role)
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u := fmt.Sprintf("postgres://%s:pw@%s/%s?sslmode=disable", role, net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))), cfg.Database)
	conn, err := connectDB(ctx, u, "DATABASE_URL")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := checkReplication(ctx, conn); err == nil || !strings.Contains(err.Error(), `ALTER ROLE "`+role+`" WITH REPLICATION`) {
		t.Errorf("checkReplication: %v", err)
	}
	t.Setenv("DATABASE_URL", u)
	if _, _, err := startDev(t, "--dir", t.TempDir()); err == nil || !strings.Contains(err.Error(), "may not replicate") {
		t.Errorf("dev: %v", err)
	}
	var items bool
	if err := admin.QueryRow(ctx, "SELECT to_regclass('items') IS NOT NULL OR to_regclass('shapeseal_log') IS NOT NULL").Scan(&items); err != nil || items {
		t.Errorf("dev wrote to the database before refusing it (%v)", err)
	}
}

// TestDevPassesCheck runs `shapeseal check` against the stack of
// `shapeseal dev`: every row that applies passes. The shape server
// connects as a role of its own (electric_database_url) that is no
// superuser and may only read the synced tables, and follows a publication
// of those tables only; tls is a skip on loopback, the proxy-config rows
// skip without --proxy-config.
func TestDevPassesCheck(t *testing.T) {
	dbURL := pgtest.NewDB(t)
	t.Setenv("DATABASE_URL", dbURL)
	r, stopDev, err := startDev(t, "--dir", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() { once.Do(stopDev) }
	defer stop()
	if r.ElectricDB == "" || r.ElectricDB == r.Database {
		t.Fatalf("electric_database_url %q (database_url %q)", r.ElectricDB, r.Database)
	}
	ecfg, err := pgx.ParseConfig(r.ElectricDB)
	if err != nil {
		t.Fatal(err)
	}
	role := ecfg.User
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	// The shape server's connections, replication included, are the role's.
	var users []string
	err = conn.QueryRow(ctx, `SELECT coalesce(array_agg(DISTINCT usename::text), '{}') FROM pg_stat_activity
		WHERE datname = current_database() AND application_name = 'electrictest'`).Scan(&users)
	if err != nil || len(users) != 1 || users[0] != role || !strings.HasPrefix(role, "shapeseal_electric") {
		t.Errorf("electrictest connects as %v (%v), want %s", users, err, role)
	}

	for i, args := range [][]string{
		{"--electric-url", r.Electric, "--database-url", r.ElectricDB, "--proxy-url", r.Proxy},
		{"--electric-url", r.Electric, "--database-url", r.Database, "--electric-role", role, "--proxy-url", r.Proxy},
		// Electric's role found from its replication slot.
		{"--electric-url", r.Electric, "--database-url", r.Database, "--proxy-url", r.Proxy},
	} {
		code, out, errOut := checkRun(t, nil, args...)
		t.Logf("shapeseal check, run %d:\n%s", i+1, out)
		if code != 0 || errOut != "" {
			t.Errorf("exit %d, stderr %q", code, errOut)
		}
		for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
			if strings.HasPrefix(l, "FAIL") {
				t.Errorf("failed: %s", l)
			}
		}
		for _, row := range []string{"electric-secret", "electric-not-public", "health", "electric-role", "publication"} {
			if l := checkLine(t, out, row); !strings.HasPrefix(l, "ok   ") {
				t.Errorf("%s: %s", row, l)
			}
		}
		if l := checkLine(t, out, "electric-role"); !strings.Contains(l, role+" is not a superuser and may not write the 3 tables of "+devPublication) {
			t.Errorf("electric-role: %s", l)
		}
		if l := checkLine(t, out, "publication"); !strings.Contains(l, devPublication+": 3 tables (items, shapeseal_log, shapeseal_tenant_keys)") {
			t.Errorf("publication: %s", l)
		}
		if l := checkLine(t, out, "tls"); !strings.HasPrefix(l, "skip ") {
			t.Errorf("tls: %s", l)
		}
		if strings.Contains(out, ecfg.Password) {
			t.Errorf("the output shows the role's password")
		}
	}
	stop()
	// dev dropped what it made for its shape server.
	var left bool
	err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1) OR EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $2)`, role, devPublication).Scan(&left)
	if err != nil || left {
		t.Errorf("role %s or publication %s left after dev stopped (%v)", role, devPublication, err)
	}
}

// TestDevFallsBackToItsRole: with a DATABASE_URL whose role may replicate
// but not create roles, dev keeps the shape server on that role (which
// publishes the tables itself), and the demo works.
func TestDevFallsBackToItsRole(t *testing.T) {
	dbURL := pgtest.NewDB(t)
	role := "shapeseal_nocreaterole_" + randomHex(4)
	pgtest.Exec(t, dbURL, `CREATE ROLE `+role+` LOGIN PASSWORD 'pw' REPLICATION NOSUPERUSER NOCREATEROLE;
		GRANT ALL ON SCHEMA public TO `+role+`;
		DO $$ BEGIN EXECUTE format('GRANT CREATE ON DATABASE %I TO `+role+`', current_database()); END $$`)
	t.Cleanup(func() { pgtest.Exec(t, dbURL, `DROP OWNED BY `+role+`; DROP ROLE `+role) })
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		t.Fatal(err)
	}
	u := fmt.Sprintf("postgres://%s:pw@%s/%s?sslmode=disable", role, net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port))), cfg.Database)
	t.Setenv("DATABASE_URL", u)
	r, stop, err := startDev(t, "--dir", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	if r.ElectricDB != r.Database {
		t.Errorf("electric_database_url %q, want database_url %q", r.ElectricDB, r.Database)
	}
	var out, errOut syncBuffer
	a := r.Users["alice"]
	err = tail(t.Context(), []string{r.Shapes["items"], "--token", a.Token, "--identity", a.Identity, "--root", r.Root,
		"--encrypted", "items:title,body", "--keys-url", r.Shapes["keys"]}, &out, &errOut)
	if s := strings.Join(out.lines(), "\n"); err != nil || !strings.Contains(s, "Only acme members can read this.") {
		t.Errorf("tail as alice: %v\n%s\n%s", err, s, strings.Join(errOut.lines(), "\n"))
	}
}
