package electrictest_test

// Interoperability tests: the official TypeScript client,
// @electric-sql/client (pinned in interop/package.json), run by Node,
// follows shapes served by electrictest (in-process, and through the
// `shapeseal devserver` command) while rows are inserted, updated and
// deleted and shapes are rotated, and must end with exactly the rows
// Postgres has.
//
// The Node side is interop/follow.mjs: one JSON line per message the
// ShapeStream delivers, plus {"rows": [...], "keys": [...]} whenever the
// Shape (the client's own materialisation) notifies. The tests compare those
// rows, with their JavaScript types, to the table as Postgres renders it.
//
// internal/nodetest finds Node and installs interop/node_modules (npm ci,
// once per test binary, skipped when it already matches package-lock.json).
// Without Node or npm, or when the install fails, the tests skip, unless CI
// is true: then they fail.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/nodetest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

const (
	// interopMaxLatency is the bound on commit-to-visible in the follower.
	interopMaxLatency = time.Second
	// interopGiveUp is how long a wait lasts before the test gives up (a
	// change slower than interopMaxLatency but within this is reported
	// with its latency; one that never comes fails with the follower's
	// state).
	interopGiveUp = 10 * time.Second
	// interopConverge bounds the initial sync and the refetch after a
	// rotation.
	interopConverge = 20 * time.Second
	// interopLongPoll is the servers' live timeout: short, so idle long
	// polls end with 200 + up-to-date several times during a test.
	interopLongPoll = 2 * time.Second
)

// interopTable is the table every interop test syncs.
const interopTable = `CREATE TABLE items (id int PRIMARY KEY, title text, n int8, done bool)`

// interopColumns are the columns of items with the JSON kind the client's
// default parser gives them: int4 → Number, text → string, int8 → BigInt
// (printed as a string by follow.mjs), bool → boolean.
var interopColumns = []interopColumn{{"id", 'n'}, {"title", 's'}, {"n", 's'}, {"done", 'b'}}

type interopColumn struct {
	name string
	kind byte // 'n' number, 's' string, 'b' bool
}

// TestInteropFollow: the client follows all of items through inserts,
// updates (partial, to NULL, multi-row), deletes, a primary key change,
// tricky text, a Rotate, a TRUNCATE + re-insert in one transaction and a
// TRUNCATE followed by a separate re-insert.
func TestInteropFollow(t *testing.T) {
	node, dir := nodetest.Setup(t)
	db := pgtest.NewDB(t)
	pgtest.Exec(t, db, interopTable+`;
		INSERT INTO items VALUES
			(1, 'one', 1, false),
			(2, 'two', 9223372036854775807, true),
			(3, NULL, NULL, NULL),
			(4, 'four', -9223372036854775808, false),
			(5, 'five', 5, true)`)
	logs := &interopTail{max: 64 << 10}
	srv := electrictest.StartTest(t, electrictest.Options{
		DatabaseURL: db, LongPollTimeout: interopLongPoll,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	env := newInteropEnv(t, db, "", nil)
	env.serverLogs = logs
	f := startFollower(t, node, dir, srv.URL+"/v1/shape", env.extraDiag, "--table", "items")
	env.f = f

	env.initial()
	env.step("insert", `INSERT INTO items VALUES (6, 'six', 6, false)`)
	env.step("update one column", `UPDATE items SET title = 'one, updated' WHERE id = 1`)
	env.step("update several columns", `UPDATE items SET done = NOT done, n = n - 1, title = 'two, updated' WHERE id = 2`)
	env.step("update to NULL and from NULL", `BEGIN; UPDATE items SET title = NULL, done = NULL WHERE id = 5; UPDATE items SET title = 'three', n = 3, done = true WHERE id = 3; COMMIT`)
	env.step("delete", `DELETE FROM items WHERE id = 4`)
	env.step("multi-row transaction", `BEGIN;
		INSERT INTO items VALUES (7, 'seven', 7, true), (8, 'eight', 8, false);
		UPDATE items SET n = n * 10 WHERE id IN (1, 6);
		DELETE FROM items WHERE id = 5;
		COMMIT`)
	env.step("primary key change", `UPDATE items SET id = 100 WHERE id = 6`)
	env.step("insert and delete in one transaction", `BEGIN;
		INSERT INTO items VALUES (9, 'nine', 9, false);
		DELETE FROM items WHERE id = 9;
		INSERT INTO items VALUES (10, 'ten', 10, true);
		COMMIT`)
	env.step("tricky text", `INSERT INTO items VALUES (11, E'quote " backslash \\ newline \n tab \t unicode é ✓ 🎉 slash / amp & pct %', 11, false)`)
	env.step("empty string", `UPDATE items SET title = '' WHERE id = 7`)

	// A rotation while the client sits in a live poll: 409, refetch, and
	// the rows of the new snapshot, with a write racing the refetch.
	env.rotate("Rotate", func() {
		n, err := srv.Rotate("items")
		if err != nil || n != 1 {
			t.Fatalf("Rotate(items) = %d, %v; want 1 shape rotated", n, err)
		}
		env.exec(`INSERT INTO items VALUES (12, 'written during the refetch', 12, true)`)
	})
	env.step("change after Rotate", `UPDATE items SET title = 'after rotate' WHERE id = 1`)

	env.rotate("TRUNCATE and re-insert in one transaction", func() {
		env.exec(`BEGIN;
			TRUNCATE items;
			INSERT INTO items VALUES (20, 'twenty', 20, true), (21, 'twenty-one', NULL, false);
			COMMIT`)
	})
	env.step("change after TRUNCATE", `DELETE FROM items WHERE id = 21`)

	env.rotate("TRUNCATE, then re-insert", func() {
		env.exec(`TRUNCATE items`)
		env.exec(`INSERT INTO items VALUES (30, 'thirty', 30, false), (31, 'thirty-one', 31, true)`)
	})
	env.step("change after second TRUNCATE", `UPDATE items SET done = true WHERE id = 30`)

	env.finish()
}

// TestInteropWhereParams: a shape with a where clause and params (one of
// them full of characters that need URL encoding): rows move into and out
// of the shape as they are updated, rows outside it never show up, and a
// rotation converges to the filtered table.
func TestInteropWhereParams(t *testing.T) {
	node, dir := nodetest.Setup(t)
	db := pgtest.NewDB(t)
	const tricky = `O'Reilly "quoted" & ?=#%+ é`
	pgtest.Exec(t, db, interopTable+`;
		INSERT INTO items VALUES
			(1, 'in', 10, true),
			(2, 'out: not done', 10, false),
			(3, 'out: n too small', 1, true),
			(4, 'O''Reilly "quoted" & ?=#%+ é', 10, true),
			(5, 'in too', 50, true),
			(6, NULL, 7, true)`)
	logs := &interopTail{max: 64 << 10}
	srv := electrictest.StartTest(t, electrictest.Options{
		DatabaseURL: db, LongPollTimeout: interopLongPoll,
		Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	// The server evaluates the where clause with the params bound as text;
	// the expected rows come from the same filter, spelled with literals.
	where := `done = $1 AND n >= $2 AND title IS DISTINCT FROM $3`
	filter := `done = true AND n >= 5 AND title IS DISTINCT FROM '` + strings.ReplaceAll(tricky, `'`, `''`) + `'`
	env := newInteropEnv(t, db, filter, nil)
	env.serverLogs = logs
	f := startFollower(t, node, dir, srv.URL+"/v1/shape", env.extraDiag,
		"--table", "items", "--where", where, "--param", "true", "--param", "5", "--param", tricky)
	env.f = f

	env.initial()
	env.step("insert into the shape", `INSERT INTO items VALUES (7, 'new, in', 5, true)`)
	env.step("update inside the shape, insert outside it", `BEGIN;
		INSERT INTO items VALUES (8, 'new, out', 100, false);
		UPDATE items SET title = 'in, updated' WHERE id = 1;
		COMMIT`)
	env.step("move in (update)", `UPDATE items SET done = true WHERE id = 2`)
	env.step("move out (update)", `UPDATE items SET n = 4 WHERE id = 5`)
	env.step("move out (title becomes the param)", `UPDATE items SET title = $$`+tricky+`$$ WHERE id = 7`)
	env.step("move in (title no longer the param)", `UPDATE items SET title = 'no longer tricky' WHERE id = 4`)
	env.step("delete inside the shape", `DELETE FROM items WHERE id = 6`)
	env.step("move out and in in one transaction", `BEGIN;
		UPDATE items SET done = false WHERE id = 1;
		UPDATE items SET n = 99 WHERE id = 3;
		COMMIT`)
	env.rotate("Rotate", func() {
		n, err := srv.Rotate("public.items")
		if err != nil || n != 1 {
			t.Fatalf("Rotate(public.items) = %d, %v; want 1 shape rotated", n, err)
		}
		env.exec(`UPDATE items SET done = true WHERE id = 8`)
	})
	env.step("change after Rotate", `DELETE FROM items WHERE id = 2`)
	env.rotate("TRUNCATE and re-insert", func() {
		env.exec(`BEGIN; TRUNCATE items; INSERT INTO items VALUES (40, 'in', 40, true), (41, 'out', 41, false); COMMIT`)
	})
	env.step("change after TRUNCATE", `UPDATE items SET done = true WHERE id = 41`)
	env.finish()
}

// TestInteropDevserver: the same kind of run through the `shapeseal
// devserver` command, built from this module and run as a subprocess, with
// the writes committed by psql (pgx when psql is not installed). The forced
// rotation is a TRUNCATE, the one a separate process can cause.
func TestInteropDevserver(t *testing.T) {
	node, dir := nodetest.Setup(t)
	db := pgtest.NewDB(t)
	pgtest.Exec(t, db, interopTable+`;
		INSERT INTO items SELECT i, 'item ' || i, i * 1000, i % 2 = 0 FROM generate_series(1, 50) i`)
	bin := interopBuildShapeseal(t)
	dev := startDevserver(t, bin, db)
	var psql func(sql string) (time.Time, error)
	if p := interopPsql(); p != "" {
		t.Logf("writes go through %s", p)
		psql = func(sql string) (time.Time, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// Before the transaction, psql prints the server's clock: the
			// latency is measured from there, whatever psql's own start
			// and exit cost (a slight overestimate: it includes running
			// the statements).
			cmd := exec.CommandContext(ctx, p, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", db,
				"-c", "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8", "-c", sql)
			cmd.Env = append(os.Environ(), "PGOPTIONS=-c synchronous_commit=on") // see newInteropEnv
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			start := time.Now()
			out, err := cmd.Output()
			end := time.Now()
			if err != nil {
				return time.Time{}, fmt.Errorf("psql: %v\n%s%s", err, out, stderr.Bytes())
			}
			fields := strings.Fields(string(out))
			var us int64
			if len(fields) > 0 {
				us, err = strconv.ParseInt(fields[0], 10, 64)
			}
			if len(fields) == 0 || err != nil {
				return time.Time{}, fmt.Errorf("psql printed %q, want the server's clock first", out)
			}
			// Were the server's clock not this machine's, stay within
			// what psql's run allows.
			at := time.UnixMicro(us)
			if at.Before(start) {
				at = start
			} else if at.After(end) {
				at = end
			}
			return at, nil
		}
	} else {
		t.Logf("psql not found: writes go through pgx")
	}
	env := newInteropEnv(t, db, "", psql)
	env.serverLogs = dev.stderr
	f := startFollower(t, node, dir, dev.url+"/v1/shape", env.extraDiag, "--table", "items")
	env.f = f

	env.initial()
	env.step("insert", `INSERT INTO items VALUES (51, 'fifty-one', 51, true)`)
	env.step("update", `UPDATE items SET title = 'updated', done = NOT done WHERE id = 7`)
	env.step("delete", `DELETE FROM items WHERE id = 8`)
	env.step("multi-row transaction", `BEGIN; UPDATE items SET n = n + 1 WHERE id <= 10; DELETE FROM items WHERE id BETWEEN 40 AND 45; INSERT INTO items VALUES (52, NULL, NULL, NULL); COMMIT`)
	env.rotate("TRUNCATE and re-insert", func() {
		env.exec(`BEGIN; TRUNCATE items; INSERT INTO items SELECT i, 'again ' || i, i, true FROM generate_series(100, 120) i; COMMIT`)
	})
	env.step("change after TRUNCATE", `UPDATE items SET title = 'after truncate' WHERE id = 100`)
	env.finish()
	f.stop()
	dev.stop(t)
}

// ---- the test environment: database, follower, expectations ----

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

// ---- the Node follower ----

type interopRows struct {
	at      time.Time
	canon   string // rendered as by interopEnv.expected
	typeErr string // a value of the wrong JSON type, or an unknown column
}

type interopFollower struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *interopTail
	extra  func() string

	mu        sync.Mutex
	lines     []string // stdout, last 200 lines
	rows      []*interopRows
	refetches int
	ops       map[string]int
	badLines  []string
	errLine   string
	exited    bool
	exitErr   error
	wake      chan struct{} // closed and replaced on every line and at exit
	done      chan struct{} // closed once the process has exited
	stopOnce  sync.Once
	dumped    bool
}

func startFollower(t *testing.T, node, dir, shapeURL string, extra func() string, args ...string) *interopFollower {
	t.Helper()
	f := &interopFollower{
		t: t, stderr: &interopTail{max: 256 << 10}, extra: extra,
		ops: map[string]int{}, wake: make(chan struct{}), done: make(chan struct{}),
	}
	f.cmd = exec.Command(node, append([]string{"follow.mjs", "--url", shapeURL, "--log-requests"}, args...)...)
	f.cmd.Dir = dir
	f.cmd.Stderr = f.stderr
	f.cmd.SysProcAttr = &syscall.SysProcAttr{}
	interopSetPdeathsig(f.cmd.SysProcAttr)
	var err error
	if f.stdin, err = f.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := f.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatalf("start %s follow.mjs: %v", node, err)
	}
	go f.read(stdout)
	t.Cleanup(func() {
		f.stop()
		if t.Failed() {
			f.dump()
		}
	})
	return f
}

func (f *interopFollower) read(stdout io.Reader) {
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		f.handle(sc.Text(), time.Now())
	}
	err := f.cmd.Wait()
	f.mu.Lock()
	f.exited, f.exitErr = true, err
	close(f.wake)
	f.mu.Unlock()
	close(f.done)
}

func (f *interopFollower) handle(line string, at time.Time) {
	var ev struct {
		Rows    []map[string]json.RawMessage `json:"rows"`
		Keys    []string                     `json:"keys"`
		Error   json.RawMessage              `json:"error"`
		Key     *string                      `json:"key"`
		Headers *struct {
			Operation string   `json:"operation"`
			Control   string   `json:"control"`
			Relation  []string `json:"relation"`
		} `json:"headers"`
	}
	err := json.Unmarshal([]byte(line), &ev)
	f.mu.Lock()
	defer f.mu.Unlock()
	defer func() {
		close(f.wake)
		f.wake = make(chan struct{})
	}()
	f.lines = append(f.lines, line)
	if len(f.lines) > 200 {
		f.lines = f.lines[len(f.lines)-200:]
	}
	switch {
	case err != nil:
		f.badLines = append(f.badLines, fmt.Sprintf("not JSON (%v): %s", err, line))
	case ev.Error != nil:
		f.errLine = line
	case ev.Rows != nil || ev.Keys != nil:
		f.rows = append(f.rows, interopRender(ev.Rows, ev.Keys, at))
	case ev.Headers != nil && ev.Headers.Control != "":
		if ev.Headers.Control == "must-refetch" {
			f.refetches++
		}
	case ev.Headers != nil && ev.Key != nil:
		f.ops[ev.Headers.Operation]++
		if !slices.Equal(ev.Headers.Relation, []string{"public", "items"}) {
			f.badLines = append(f.badLines, "change message with relation "+fmt.Sprint(ev.Headers.Relation)+": "+line)
		}
	default:
		f.badLines = append(f.badLines, "unexpected line: "+line)
	}
}

// interopRender renders a rows notification like interopEnv.expected,
// noting values whose JSON type is not what the client's parser must give.
func interopRender(rows []map[string]json.RawMessage, keys []string, at time.Time) *interopRows {
	r := &interopRows{at: at}
	var typeErrs []string
	if len(rows) != len(keys) {
		typeErrs = append(typeErrs, fmt.Sprintf("%d rows but %d keys", len(rows), len(keys)))
	}
	lines := make([]string, len(rows))
	for i, row := range rows {
		var b strings.Builder
		if i < len(keys) {
			b.WriteString(keys[i])
		}
		for _, c := range interopColumns {
			b.WriteString(" " + c.name + "=")
			raw, ok := row[c.name]
			if !ok {
				b.WriteString("<missing>")
				continue
			}
			var v any
			d := json.NewDecoder(bytes.NewReader(raw))
			d.UseNumber()
			if err := d.Decode(&v); err != nil {
				typeErrs = append(typeErrs, fmt.Sprintf("%s: %v", c.name, err))
				continue
			}
			kind := byte(0)
			switch v := v.(type) {
			case nil:
				b.WriteString("NULL")
				continue
			case string:
				kind = 's'
				b.WriteString(strconv.Quote(v))
			case json.Number:
				kind = 'n'
				b.WriteString(v.String())
			case bool:
				kind = 'b'
				b.WriteString(strconv.FormatBool(v))
			default:
				b.WriteString(string(raw))
			}
			if kind != c.kind {
				typeErrs = append(typeErrs, fmt.Sprintf("row %d column %s: JSON value %s, want a %s", i, c.name, raw, map[byte]string{'n': "number", 's': "string", 'b': "boolean"}[c.kind]))
			}
		}
		for name := range row {
			if !slices.ContainsFunc(interopColumns, func(c interopColumn) bool { return c.name == name }) {
				typeErrs = append(typeErrs, "unknown column "+strconv.Quote(name))
			}
		}
		lines[i] = b.String()
	}
	r.canon = strings.Join(lines, "\n")
	r.typeErr = strings.Join(typeErrs, "; ")
	return r
}

// waitFor waits until cond (called with f.mu held) is true, the follower
// fails or exits, or timeout.
func (f *interopFollower) waitFor(timeout time.Duration, cond func() bool) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		f.mu.Lock()
		ok := cond()
		wake, errLine, exited, exitErr := f.wake, f.errLine, f.exited, f.exitErr
		typeErr := ""
		if n := len(f.rows); n > 0 {
			typeErr = f.rows[n-1].typeErr
		}
		f.mu.Unlock()
		if ok {
			return true
		}
		if errLine != "" {
			f.fatalf("the stream stopped with an error: %s", errLine)
		}
		if typeErr != "" {
			f.fatalf("the client's rows have values of the wrong type: %s", typeErr)
		}
		if exited {
			f.fatalf("node exited early: %v", exitErr)
		}
		select {
		case <-wake:
		case <-timer.C:
			return false
		}
	}
}

func (f *interopFollower) waitFirstRows(timeout time.Duration) (*interopRows, bool) {
	var r *interopRows
	ok := f.waitFor(timeout, func() bool {
		if len(f.rows) > 0 {
			r = f.rows[0]
		}
		return r != nil
	})
	return r, ok
}

// waitRows waits for the latest rows notification to equal want.
func (f *interopFollower) waitRows(want string, timeout time.Duration) (*interopRows, bool) {
	var r *interopRows
	ok := f.waitFor(timeout, func() bool {
		if n := len(f.rows); n > 0 && f.rows[n-1].canon == want {
			r = f.rows[n-1]
		}
		return r != nil
	})
	return r, ok
}

func (f *interopFollower) waitRefetch(n int, timeout time.Duration) bool {
	return f.waitFor(timeout, func() bool { return f.refetches >= n })
}

func (f *interopFollower) refetchCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refetches
}

func (f *interopFollower) latest() *interopRows {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(f.rows); n > 0 {
		return f.rows[n-1]
	}
	return nil
}

func (f *interopFollower) diffLatest(want string) string {
	got := f.latest()
	if got == nil {
		return "no rows notification yet; want:\n" + want
	}
	return interopDiff(want, got.canon)
}

// check reports problems with the stream as a whole.
func (f *interopFollower) check() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var probs []string
	if len(f.badLines) > 0 {
		probs = append(probs, "unexpected output:\n"+strings.Join(f.badLines, "\n"))
	}
	for _, op := range []string{"insert", "update", "delete"} {
		if f.ops[op] == 0 {
			probs = append(probs, "no "+op+" message was received")
		}
	}
	for op := range f.ops {
		if op != "insert" && op != "update" && op != "delete" {
			probs = append(probs, fmt.Sprintf("%d change messages with operation %q", f.ops[op], op))
		}
	}
	return strings.Join(probs, "\n")
}

// stop closes node's stdin (follow.mjs exits on EOF), then kills it if it
// has not exited within 5 s. A follower that exits with an error after a
// clean stop is reported.
func (f *interopFollower) stop() {
	f.stopOnce.Do(func() {
		f.stdin.Close()
		select {
		case <-f.done:
		case <-time.After(5 * time.Second):
			f.t.Errorf("node did not exit within 5 s of its stdin closing; killing it")
			f.cmd.Process.Kill()
			select {
			case <-f.done:
			case <-time.After(5 * time.Second):
				f.t.Errorf("node did not exit after SIGKILL")
				return
			}
		}
		f.mu.Lock()
		err, errLine := f.exitErr, f.errLine
		f.mu.Unlock()
		if err != nil && errLine == "" && !f.t.Failed() {
			f.t.Errorf("node exited with %v after its stdin closed, want status 0\n%s", err, f.diag())
		}
	})
}

func (f *interopFollower) diag() string {
	f.mu.Lock()
	last := f.lines[max(0, len(f.lines)-30):]
	out := "--- node stdout (last lines) ---\n" + strings.Join(last, "\n") + "\n"
	f.mu.Unlock()
	out += "--- node stderr (tail) ---\n" + f.stderr.String()
	if f.extra != nil {
		out += "\n" + f.extra()
	}
	return out
}

// fatalf fails the test with the follower's diagnostics.
func (f *interopFollower) fatalf(format string, args ...any) {
	f.t.Helper()
	f.mu.Lock()
	f.dumped = true
	f.mu.Unlock()
	f.t.Fatalf(format+"\n%s", append(args, f.diag())...)
}

// dump logs the diagnostics of a failed test once.
func (f *interopFollower) dump() {
	f.mu.Lock()
	dumped := f.dumped
	f.dumped = true
	f.mu.Unlock()
	if !dumped {
		f.t.Logf("follower diagnostics:\n%s", f.diag())
	}
}

func interopDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			b.WriteString("+ " + l + "\n")
		}
	}
	if b.Len() == 0 {
		b.WriteString("(same rows, different order)\n")
	}
	return "(- in Postgres only, + in the client only)\n" + b.String() +
		"--- want (Postgres) ---\n" + want + "\n--- got (client) ---\n" + got
}

// interopTail keeps the last max bytes written to it.
type interopTail struct {
	mu  sync.Mutex
	max int
	buf []byte
	cut bool
}

func (w *interopTail) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	if len(w.buf) > w.max {
		w.buf = append(w.buf[:0], w.buf[len(w.buf)-w.max:]...)
		w.cut = true
	}
	return len(p), nil
}

func (w *interopTail) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cut {
		return "[...]" + string(w.buf)
	}
	return string(w.buf)
}

// ---- shapeseal devserver and psql ----

func interopBuildShapeseal(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "shapeseal")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/shapeseal/shapeseal/cmd/shapeseal")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/shapeseal: %v\n%s", err, out)
	}
	return bin
}

type interopDevserver struct {
	cmd    *exec.Cmd
	url    string
	stderr *interopTail
	done   chan struct{}
	err    error
	once   sync.Once
}

// startDevserver runs `shapeseal devserver` on a free loopback port and
// waits for its ready line.
func startDevserver(t *testing.T, bin, db string) *interopDevserver {
	t.Helper()
	d := &interopDevserver{stderr: &interopTail{max: 64 << 10}, done: make(chan struct{})}
	d.cmd = exec.Command(bin, "devserver", "--database-url", db, "--listen", "127.0.0.1:0", "--long-poll", interopLongPoll.String(), "-v")
	d.cmd.Stderr = d.stderr
	d.cmd.SysProcAttr = &syscall.SysProcAttr{}
	interopSetPdeathsig(d.cmd.SysProcAttr)
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start shapeseal devserver: %v", err)
	}
	t.Cleanup(func() { d.stop(t) })
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "shapeseal devserver ready "); ok {
				select {
				case ready <- rest:
				default:
				}
			}
		}
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	select {
	case line := <-ready:
		var info struct {
			ElectricURL string `json:"electric_url"`
		}
		if err := json.Unmarshal([]byte(line), &info); err != nil || info.ElectricURL == "" {
			t.Fatalf("devserver ready line %q: no electric_url (%v)", line, err)
		}
		d.url = info.ElectricURL
		t.Logf("shapeseal devserver ready at %s", d.url)
	case <-d.done:
		t.Fatalf("shapeseal devserver exited before it was ready: %v\n--- stderr ---\n%s", d.err, d.stderr)
	case <-time.After(60 * time.Second):
		t.Fatalf("shapeseal devserver not ready within 60 s\n--- stderr ---\n%s", d.stderr)
	}
	return d
}

// stop sends SIGTERM and expects a clean exit within 10 s (else kills it).
func (d *interopDevserver) stop(t *testing.T) {
	d.once.Do(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
			if d.err != nil {
				t.Errorf("shapeseal devserver exited with %v on SIGTERM, want status 0\n--- stderr ---\n%s", d.err, d.stderr)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("shapeseal devserver did not exit within 10 s of SIGTERM; killing it\n--- stderr ---\n%s", d.stderr)
			d.cmd.Process.Kill()
			<-d.done
		}
	})
}

// interopPsql finds psql: on $PATH, else in the newest
// /usr/lib/postgresql/*/bin.
func interopPsql() string {
	if p, err := exec.LookPath("psql"); err == nil {
		return p
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/psql")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(a))))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(b))))
		return vb - va
	})
	if len(dirs) > 0 {
		return dirs[0]
	}
	return ""
}
