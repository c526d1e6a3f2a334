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
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

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
