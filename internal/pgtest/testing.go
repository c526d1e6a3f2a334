package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// TB is the part of testing.TB that pgtest uses; *testing.T and *testing.B
// satisfy it. pgtest does not import package testing, so that commands that
// start a cluster (shapeseal dev, devserver) do not link it.
type TB interface {
	Helper()
	Fatal(args ...any)
	Fatalf(format string, args ...any)
	Errorf(format string, args ...any)
	Skipf(format string, args ...any)
	Cleanup(func())
}

// M is what Run needs of *testing.M.
type M interface{ Run() (code int) }

// shared is the cluster of this test binary, opened on first use by NewDB.
var shared struct {
	once     sync.Once
	cluster  *Cluster
	err      error
	underRun atomic.Bool // Run is in charge of stopping a private cluster
}

// Run runs the tests of m and then stops the private cluster that NewDB
// started for them, if any. It returns the exit code for os.Exit:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }
//
// If stopping the cluster fails, Run reports it and returns a failing code.
func Run(m M) int {
	shared.underRun.Store(true)
	code := m.Run()
	// Waits for a start in progress, and keeps any later NewDB from
	// starting a cluster that nobody would stop.
	shared.once.Do(func() { shared.err = errors.New("pgtest: NewDB called after the tests finished") })
	if c := shared.cluster; c != nil {
		if err := c.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

// errNoRun is returned when a private cluster would be needed but nothing
// would stop it.
var errNoRun = errors.New(`pgtest: DATABASE_URL is not set and TestMain does not call pgtest.Run, so a private cluster would never be stopped; add: func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }`)

func sharedCluster() (*Cluster, error) {
	shared.once.Do(func() {
		if os.Getenv("DATABASE_URL") == "" && !shared.underRun.Load() {
			shared.err = errNoRun
			return
		}
		// Generous: it may include apt-get install on a fresh CI machine.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		shared.cluster, shared.err = Open(ctx, Options{
			Install: inCI(),
			Logf: func(format string, args ...any) {
				fmt.Fprintf(os.Stderr, format+"\n", args...)
			},
		})
	})
	return shared.cluster, shared.err
}

// inCI reports whether the CI environment variable is true, as CI services
// set it. Tests must then fail rather than skip when Postgres is missing.
func inCI() bool {
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return ci
}

// NewDB creates a fresh, empty database on this test binary's cluster and
// returns a URL that connects to it (as the superuser postgres, or as
// DATABASE_URL's user). The cluster is the one
// in DATABASE_URL if set; otherwise a private one, started on first use
// (installing PostgreSQL when CI is true) and stopped by [Run].
//
// When the test ends, the database is dropped, even if connections,
// replication connections or replication slots still use it.
//
// If no cluster can be had, NewDB skips the test, or fails it when the CI
// environment variable is true. NewDB is safe to call from parallel tests.
func NewDB(t TB) string {
	t.Helper()
	c, err := sharedCluster()
	if errors.Is(err, errNoRun) {
		t.Fatal(err)
	}
	if err != nil {
		if inCI() {
			t.Fatalf("pgtest: PostgreSQL is unavailable (CI is true, so this fails instead of skipping): %v", err)
		}
		t.Skipf("pgtest: PostgreSQL is unavailable, skipping (set DATABASE_URL or install PostgreSQL): %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	url, drop, err := c.CreateDB(ctx, "pgtest")
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		if err := drop(); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return url
}

// CreateDB creates a fresh, empty database named prefix_<random hex> on the
// cluster and returns a URL that connects to it, and a function that drops
// it again, even while connections, replication connections or replication
// slots still use it. Benchmark programs use it as NewDB is used in tests.
func (c *Cluster) CreateDB(ctx context.Context, prefix string) (url string, drop func() error, err error) {
	var b [8]byte
	rand.Read(b[:])
	name := prefix + "_" + hex.EncodeToString(b[:])
	url, err = withDatabase(c.URL(), name)
	if err != nil {
		return "", nil, err
	}
	conn, err := pgx.Connect(ctx, c.URL())
	if err != nil {
		return "", nil, fmt.Errorf("connecting to create a database: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		return "", nil, fmt.Errorf("creating database %s: %w", name, err)
	}
	return url, func() error {
		if err := dropDatabase(c.URL(), name); err != nil {
			return fmt.Errorf("dropping database %s: %w", name, err)
		}
		return nil
	}, nil
}

// dropDatabase drops the database name. DROP DATABASE ... WITH (FORCE)
// terminates ordinary sessions and drops the database's replication slots,
// but refuses while a slot is in use by a walsender, so it first terminates
// every session of the database itself, walsenders included. Terminated
// sessions take a moment to go away, so it retries for a while.
func dropDatabase(adminURL, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		err := tryDropDatabase(ctx, adminURL, name)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func tryDropDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	// Best effort: whatever is left shows up as DROP DATABASE's error.
	_, _ = conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = $1 AND pid <> pg_backend_pid()`, name)
	_, err = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
	return err
}

// Exec runs sql with args on a new connection to url, and fails the test on
// error. Without args, sql may hold several statements separated by
// semicolons (it is sent with the simple query protocol).
func Exec(t TB, url string, sql string, args ...any) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("pgtest.Exec: connecting: %v", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("pgtest.Exec(%q): %v", abbrev(sql), err)
	}
}

func abbrev(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}
