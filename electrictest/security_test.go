package electrictest_test

// A where clause can only ever be a boolean row filter: no statements, no
// subqueries (but the one membership test of subquery shapes), no volatile
// functions, no way out of its parentheses. Every
// attempt is a 400 in Electric's format that does not leak Postgres' error
// text, and has no side effect.

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
)

// whereAttacks are where clauses, on the tables of TestWhereInjection, that
// try to be more than a row filter: each must be refused.
var whereAttacks = []string{
	// Statements.
	`id = 1; DELETE FROM side`,
	`true; SELECT 1`,
	`id = 1;`,
	`id = 1) ; DELETE FROM items; SELECT (1`,
	`true); INSERT INTO side VALUES (9); SELECT (true`,
	// Escaping the parentheses the clause is wrapped in.
	`1=1) OR (true`,
	`true) UNION SELECT true FROM (SELECT 1`,
	`id = 1 /* ) OR (true */`,
	`id = 1 -- ) OR (true`,
	"id = 1 --\n) OR (true",
	`id = 1 /* nested /* */ ) OR (true */`,
	// Subqueries.
	// (`id IN (SELECT x FROM side)` is a subquery shape: see suspiciousFilters.)
	`id IN (SELECT x FROM side WHERE x IN (SELECT 1))`,
	`id IN (SELECT x FROM side WHERE evil())`,
	`id IN (SELECT evil()::int FROM side)`,
	`id IN (SELECT x FROM side) OR true`,
	`EXISTS(SELECT 1 FROM side)`,
	`EXISTS (TABLE side)`,
	`id = ANY(ARRAY(SELECT x FROM side))`,
	`(SELECT true)`,
	`id IN (VALUES (1))`,
	`(WITH w AS (SELECT 1) SELECT true)`,
	`id = (SeLeCt 1)`,
	// Volatile functions.
	`pg_sleep(10) IS NOT NULL`,
	`pg_catalog.pg_sleep(10) IS NOT NULL`,
	`"pg_sleep"(10) IS NOT NULL`,
	`PG_SLEEP(10) IS NOT NULL`,
	`pg_sleep (10) IS NOT NULL`,
	`U&"\0070g_sleep"(10) IS NOT NULL`,
	`u&"pg_sl\0065ep"(10) IS NOT NULL`,
	`pg_sleep_for('10 seconds') IS NOT NULL`,
	`nextval('s') > 0`,
	`setval('s', 100) > 0`,
	`pg_terminate_backend(pg_backend_pid())`,
	`pg_cancel_backend(1)`,
	`pg_advisory_lock(1) IS NULL`,
	`pg_try_advisory_lock(1)`,
	`set_config('default_transaction_read_only', 'off', false) = 'off'`,
	`evil()`,
	`EVIL()`,
	`"Evil"()`,
	`public.evil()`,
	`other.evil()`,
	`"other"."evil"()`,
	`evil_row(items)`,
	`items.evil_row`,
	`evil_any(id)`,
	`evil_plpgsql()`,
	`random() < 2`,
	`lo_import('/etc/passwd') > 0`,
	`pg_read_file('/etc/passwd') <> ''`,
	`pg_reload_conf()`,
	`pg_notify('c', 'x') IS NULL`,
	`gen_random_uuid() IS NOT NULL`,
	`clock_timestamp() > now()`,
	// Dollar quoting, odd strings.
	`$$x$$ = 'x'`,
	`$tag$ ) OR (true $tag$ = ''`,
	`title = $q$'$q$ OR pg_sleep(10) IS NULL`,
	`E'\'' OR pg_sleep(10) IS NULL OR '' = '`,
	`title = U&'\0027' OR pg_sleep(10) IS NULL`,
	"id = 1\x00; DELETE FROM side",
	"id = 1\x00 OR true",
	// Not row filters.
	`count(*) > 0`,
	`count(*) OVER () > 0`,
	`generate_series(1, 3) > 0`,
	`unnest(ARRAY[true, false])`,
	`1`,
	`NULL`,
	`id`,
	// Set-returning / aggregate / window in disguise.
	`bool_or(true)`,
	`row_number() OVER () = 1`,
}

// suspiciousFilters are legitimate filters that look like attacks.
var suspiciousFilters = []string{
	`title = 'select'`,
	`title = ';'`,
	`title = '--'`,
	`title = '/*'`,
	`title = ')'`,
	`title = 'a''b'`,
	`title = E'\''`,
	`"title" = 'x'`,
	`title LIKE '%;%'`,
	`lower(title) = 'a'`,
	`coalesce(n, 0) > 1`,
	`length(title) > 0`,
	`now() > '2000-01-01'`,
	`now() > '2000-01-01'::timestamp with time zone`,
	`(id = 1) OR (id = 2)`,
	`id = 1 AND (n = 1 OR (n IS NULL))`,
	`title = $1`,
	`id IN (SELECT x FROM side)`,
}

func TestWhereInjection(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 500 * time.Millisecond},
		`CREATE TABLE items (id int PRIMARY KEY, title text, n int)`,
		`INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 2)`,
		`CREATE TABLE side (x int)`,
		`CREATE SEQUENCE s`,
		// Volatile functions with a side effect, in every spelling.
		`CREATE FUNCTION evil() RETURNS bool VOLATILE LANGUAGE sql AS $$ INSERT INTO side VALUES (1); SELECT true $$`,
		`CREATE FUNCTION "Evil"() RETURNS bool VOLATILE LANGUAGE sql AS $$ INSERT INTO side VALUES (2); SELECT true $$`,
		`CREATE FUNCTION evil_row(items) RETURNS bool VOLATILE LANGUAGE sql AS $$ INSERT INTO side VALUES (3); SELECT true $$`,
		`CREATE FUNCTION evil_any(anyelement) RETURNS bool VOLATILE LANGUAGE sql AS $$ INSERT INTO side VALUES (4); SELECT true $$`,
		`CREATE FUNCTION evil_plpgsql() RETURNS bool VOLATILE LANGUAGE plpgsql AS $$ BEGIN EXECUTE 'INSERT INTO side VALUES (5)'; RETURN true; END $$`,
		`CREATE SCHEMA other`,
		`CREATE FUNCTION other.evil() RETURNS bool VOLATILE LANGUAGE sql AS $$ INSERT INTO side VALUES (6); SELECT true $$`,
	)
	seq := e.scalar(`SELECT last_value::text || '/' || is_called::text FROM s`)
	for _, a := range whereAttacks {
		t.Run(a, func(t *testing.T) {
			checkRefused(t, e.shape("table", "items", "offset", "-1", "where", a), a)
			// Also as a parameter value: params are bound, never spliced.
			r := e.shape("table", "items", "offset", "-1", "where", "title = $1", "params[1]", a)
			if strings.Contains(a, "\x00") {
				// Postgres text cannot hold NUL: an invalid value.
				checkInvalid(t, r, "where", "")
			} else if r.status != 200 || len(r.msgs(t)) != 1 {
				t.Errorf("as a parameter: %d %s", r.status, abbrev(string(r.body), 200))
			}
		})
	}
	// Concurrently, so that a slow one shows.
	start := time.Now()
	var wg sync.WaitGroup
	for _, a := range whereAttacks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := fetch("GET", e.srv.URL+"/v1/shape?"+qs("table", "items", "offset", "-1", "where", a)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if d := time.Since(start); d > 8*time.Second {
		t.Errorf("%d concurrent attacks took %v", len(whereAttacks), d)
	}

	checkNoSideEffects(t, e, seq)
	// The server still works, the rows are intact.
	f := e.follow("table", "items")
	e.exec(`INSERT INTO items VALUES (3, 'c', 3)`)
	f.converge(`SELECT format('"public"."items"/"%s"', id), id::text, title, n::text FROM items`)
	if len(f.rows) != 3 {
		t.Errorf("rows %v", f.rows)
	}
	// Legitimate filters that look suspicious are fine.
	for _, ok := range suspiciousFilters {
		kv := []string{"table", "items", "offset", "-1", "where", ok}
		if strings.Contains(ok, "$1") {
			kv = append(kv, "params[1]", "a")
		}
		if r := e.shape(kv...); r.status != 200 {
			t.Errorf("%q: status %d: %s", ok, r.status, r.body)
		}
	}
}

// checkRefused checks that an attack got a 400 in Electric's format, for
// the where clause or its params, soon.
func checkRefused(t *testing.T, r response, attack string) {
	t.Helper()
	if r.status != 400 {
		t.Errorf("%q: status %d, want 400: %s", attack, r.status, abbrev(string(r.body), 300))
		return
	}
	if r.elapsed > 5*time.Second {
		t.Errorf("%q: took %v", attack, r.elapsed)
	}
	var field string
	for _, f := range []string{"where", "params"} {
		if strings.Contains(string(r.body), `"errors":{"`+f+`":[`) {
			field = f
		}
	}
	if field == "" {
		t.Errorf("%q: 400 body %s", attack, r.body)
		return
	}
	checkInvalid(t, r, field, "")
}

// checkNoSideEffects checks that no attack wrote, moved the sequence s
// (whose state was seq), took a lock or left a query sleeping.
func checkNoSideEffects(t *testing.T, e *env, seq string) {
	t.Helper()
	if n := e.scalar(`SELECT count(*)::text FROM side`); n != "0" {
		t.Errorf("side table has %s rows", n)
	}
	if s := e.scalar(`SELECT last_value::text || '/' || is_called::text FROM s`); s != seq {
		t.Errorf("sequence moved: %s, was %s", s, seq)
	}
	if n := e.scalar(`SELECT count(*)::text FROM pg_locks WHERE locktype = 'advisory'`); n != "0" {
		t.Errorf("%s advisory locks taken", n)
	}
	if ro := e.scalar(`SELECT count(*)::text FROM pg_stat_activity WHERE application_name = 'electrictest' AND state = 'active' AND query ILIKE '%pg_sleep%'`); ro != "0" {
		t.Errorf("%s sleeping queries", ro)
	}
}
