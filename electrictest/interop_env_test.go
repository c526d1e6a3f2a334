package electrictest_test

// The environment of the interop tests (see interop_test.go): database,
// follower, expectations.

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

type interopEnv struct {
	t          *testing.T
	db         string
	conn       *pgx.Conn
	filter     string                                            // SQL filter of the expected rows, "" for all
	write      func(sql string) (committed time.Time, err error) // nil: pgx
	f          *interopFollower
	serverLogs *interopTail
	latencies  []time.Duration
	names      []string
	refetches  int // must-refetch messages seen so far
}

func newInteropEnv(t *testing.T, db, filter string, write func(string) (time.Time, error)) *interopEnv {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	// With synchronous_commit=off (a DATABASE_URL cluster may have it) a
	// commit reaches the replication stream only when the WAL writer flushes
	// it, up to wal_writer_delay (200 ms) later. The test's own writes use
	// on, so that the latencies measured are the server's and the client's,
	// not the WAL writer's.
	if _, err := conn.Exec(ctx, "SET synchronous_commit = on"); err != nil {
		t.Fatalf("SET synchronous_commit: %v", err)
	}
	return &interopEnv{t: t, db: db, conn: conn, filter: filter, write: write}
}

// extraDiag adds the server's log to failure messages.
func (e *interopEnv) extraDiag() string {
	if e.serverLogs == nil {
		return ""
	}
	return "--- server log (tail) ---\n" + e.serverLogs.String()
}

// exec commits sql and returns the time latencies count from: with pgx,
// when Postgres acknowledged the commit; with psql, just before the
// transaction, by the server's clock (see TestInteropDevserver).
func (e *interopEnv) exec(sql string) time.Time {
	e.t.Helper()
	var err error
	var committed time.Time
	if e.write != nil {
		committed, err = e.write(sql)
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, err = e.conn.Exec(ctx, sql)
		cancel()
		committed = time.Now()
	}
	if err != nil {
		e.f.fatalf("commit %q: %v", sql, err)
	}
	return committed
}

// expected renders the table's current rows (those of the shape) as the
// follower must print them: sorted by Electric key, values typed as the
// client's default parser types them.
func (e *interopEnv) expected() string {
	e.t.Helper()
	q := "SELECT id::text, title, n::text, done::text FROM items"
	if e.filter != "" {
		q += " WHERE " + e.filter
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := e.conn.Query(ctx, q+" ORDER BY id")
	if err != nil {
		e.f.fatalf("query expected rows: %v", err)
	}
	var lines []string
	for rows.Next() {
		vals := make([]*string, len(interopColumns))
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			e.f.fatalf("scan expected rows: %v", err)
		}
		var b strings.Builder
		b.WriteString(`"public"."items"/"` + strings.ReplaceAll(*vals[0], "/", "//") + `"`)
		for i, c := range interopColumns {
			b.WriteString(" " + c.name + "=")
			switch {
			case vals[i] == nil:
				b.WriteString("NULL")
			case c.kind == 's':
				b.WriteString(strconv.Quote(*vals[i]))
			default:
				b.WriteString(*vals[i])
			}
		}
		lines = append(lines, b.String())
	}
	if err := rows.Err(); err != nil {
		e.f.fatalf("read expected rows: %v", err)
	}
	// The follower sorts by key; keys start alike, so this sorts the same.
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// initial waits for the first notification and checks it is the whole
// table: the Shape never notifies with a partial initial view.
func (e *interopEnv) initial() {
	e.t.Helper()
	want := e.expected()
	first, ok := e.f.waitFirstRows(interopConverge)
	if !ok {
		e.f.fatalf("no rows notification within %v; want the initial rows:\n%s", interopConverge, want)
	}
	if first.typeErr != "" {
		e.f.fatalf("initial rows: %s", first.typeErr)
	}
	if first.canon != want {
		e.f.fatalf("the first rows notification is not the table:\n%s", interopDiff(want, first.canon))
	}
	e.t.Logf("initial sync: %d rows", interopCount(want))
}

// step commits sql and waits for the follower's rows to equal the table's;
// the change must be visible within interopMaxLatency.
func (e *interopEnv) step(name, sql string) {
	e.t.Helper()
	before := e.f.latest()
	committed := e.exec(sql)
	want := e.expected()
	if before != nil && before.canon == want {
		e.t.Fatalf("step %q changes nothing in the shape; the test is wrong", name)
	}
	got, ok := e.f.waitRows(want, interopGiveUp)
	if !ok {
		e.f.fatalf("step %q: the follower's rows do not match the table %v after the commit:\n%s", name, interopGiveUp, e.f.diffLatest(want))
	}
	lat := max(got.at.Sub(committed), 0)
	e.latencies = append(e.latencies, lat)
	e.names = append(e.names, name)
	if lat > interopMaxLatency {
		e.t.Errorf("step %q: the change became visible after %v, want ≤ %v", name, lat, interopMaxLatency)
	}
	if n := e.f.refetchCount(); n != e.refetches {
		e.t.Errorf("step %q: the client got %d must-refetch messages; an ordinary change must not rotate the shape", name, n-e.refetches)
		e.refetches = n
	}
	e.t.Logf("step %q: visible after %v", name, lat.Round(100*time.Microsecond))
}

// rotate runs cause, which must make the shape's current handle invalid,
// then waits for the follower to receive a must-refetch and to converge to
// exactly the table's rows.
func (e *interopEnv) rotate(name string, cause func()) {
	e.t.Helper()
	start := time.Now()
	cause()
	want := e.expected()
	deadline := time.Now().Add(interopConverge)
	if !e.f.waitRefetch(e.refetches+1, interopConverge) {
		e.f.fatalf("%s: no must-refetch message within %v", name, interopConverge)
	}
	e.refetches = e.f.refetchCount()
	got, ok := e.f.waitRows(want, time.Until(deadline))
	if !ok {
		e.f.fatalf("%s: the follower did not converge to the table within %v after the must-refetch:\n%s", name, interopConverge, e.f.diffLatest(want))
	}
	e.t.Logf("%s: must-refetch received, converged to %d rows after %v", name, interopCount(want), got.at.Sub(start).Round(time.Millisecond))
}

// finish checks the end state and the stream as a whole, and logs the
// latencies.
func (e *interopEnv) finish() {
	e.t.Helper()
	want := e.expected()
	if got := e.f.latest(); got == nil || got.canon != want {
		e.f.fatalf("final state:\n%s", e.f.diffLatest(want))
	}
	if msg := e.f.check(); msg != "" {
		e.f.fatalf("%s", msg)
	}
	if len(e.latencies) > 0 {
		sorted := slices.Clone(e.latencies)
		slices.Sort(sorted)
		worst := slices.Index(e.latencies, sorted[len(sorted)-1])
		e.t.Logf("commit-to-visible latency over %d changes: min %v, median %v, max %v (step %q)",
			len(sorted), sorted[0].Round(100*time.Microsecond), sorted[len(sorted)/2].Round(100*time.Microsecond),
			sorted[len(sorted)-1].Round(100*time.Microsecond), e.names[worst])
	}
}

func interopCount(canon string) int {
	if canon == "" {
		return 0
	}
	return strings.Count(canon, "\n") + 1
}
