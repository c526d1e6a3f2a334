package electrictest_test

// Conformance tests for behaviours once listed as differences from Electric
// (see README "electrictest vs Electric"): the electric-schema header's
// type modifiers, generated columns, queryable_columns, PK-less tables,
// and the LSN that live up-to-date messages report.

import (
	"strconv"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
)

// TestSchemaModifiers: electric-schema carries the type modifiers as
// Electric's Schema.from_column_info derives them (§2), including arrays
// whose dimensions the catalog does not record.
func TestSchemaModifiers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{},
		`CREATE TABLE mods (id int PRIMARY KEY, iv_y interval YEAR, iv_ds interval DAY TO SECOND(3), iv_p interval(2), iv interval,
			vb varbit, vb5 bit varying(5), b bit, ts0 timestamp(0), t3 time(3), tz timetz(2), n numeric, n52 numeric(5,2),
			vcs varchar(8)[], ints int4[], c char)`,
		`INSERT INTO mods (id, ints, vcs) VALUES (1, '{1,2}', '{a,b}')`,
		// LIKE and CREATE TABLE AS leave attndims at 0.
		`CREATE TABLE liked (LIKE mods INCLUDING ALL)`,
		`INSERT INTO liked SELECT * FROM mods`,
		`CREATE TABLE made AS SELECT id, ints, vcs FROM mods`)
	r := e.shape("table", "mods", "offset", "-1")
	r.expectStatus(t, 200)
	mustJSON(t, r.header.Get("electric-schema"), `{
		"id":{"type":"int4","pk_index":0,"not_null":true},
		"iv_y":{"type":"interval","fields":"YEAR"},
		"iv_ds":{"type":"interval","fields":"DAY TO SECOND","precision":3},
		"iv_p":{"type":"interval","precision":2},
		"iv":{"type":"interval"},
		"vb":{"type":"varbit","length":-1},
		"vb5":{"type":"varbit","length":5},
		"b":{"type":"bit","length":1},
		"ts0":{"type":"timestamp","type_mod":0},
		"t3":{"type":"time","precision":3},
		"tz":{"type":"timetz","precision":2},
		"n":{"type":"numeric"},
		"n52":{"type":"numeric","precision":5,"scale":2},
		"vcs":{"type":"varchar","dims":1,"max_length":8},
		"ints":{"type":"int4","dims":1},
		"c":{"type":"bpchar","length":1}}`)
	if dims := e.scalar(`SELECT attndims::text FROM pg_attribute WHERE attrelid = 'liked'::regclass AND attname = 'ints'`); dims != "0" {
		t.Skipf("this Postgres records attndims %s for LIKE", dims)
	}
	// attndims = 0: the array type's own name, no dims; its modifier is
	// one Electric does not interpret, so it is sent as type_mod.
	r = e.shape("table", "liked", "offset", "-1", "columns", "id,ints,vcs")
	r.expectStatus(t, 200)
	mustJSON(t, r.header.Get("electric-schema"), `{"id":{"type":"int4","pk_index":0,"not_null":true},"ints":{"type":"_int4"},"vcs":{"type":"_varchar","type_mod":12}}`)
	if v := r.msgs(t)[0].value(); v["ints"] != "{1,2}" || v["vcs"] != "{a,b}" {
		t.Errorf("values %v", v)
	}
	r = e.shape("table", "made", "offset", "-1")
	r.expectStatus(t, 200)
	mustJSON(t, r.header.Get("electric-schema"), `{"id":{"type":"int4"},"ints":{"type":"_int4"},"vcs":{"type":"_varchar","type_mod":12}}`)
}

// TestGeneratedColumns: Postgres before 18 does not replicate generated
// columns, so Electric refuses shapes that include them (§1.3).
func TestGeneratedColumns(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{},
		`CREATE TABLE gen (id int PRIMARY KEY, a int, twice int GENERATED ALWAYS AS (a * 2) STORED)`,
		`INSERT INTO gen (id, a) VALUES (1, 5)`)
	if v, _ := strconv.Atoi(e.scalar(`SELECT current_setting('server_version_num')`)); v >= 180000 {
		t.Skip("Postgres 18 replicates generated columns; Electric serves them there")
	}
	checkInvalid(t, e.shape("table", "gen", "offset", "-1"), "columns",
		`["The following columns are generated and cannot be included in the shape: twice. You can exclude them from the shape by explicitly listing which columns to fetch in the 'columns' query param"]`)
	checkInvalid(t, e.shape("table", "gen", "offset", "-1", "columns", "id,twice"), "columns",
		`["The following columns are generated and cannot be included in the shape: twice"]`)
	checkInvalid(t, e.shape("table", "gen", "offset", "-1", "queryable_columns", "id,a,twice"), "columns",
		`["The following columns are generated and cannot be included in the shape: twice. You can exclude them from the shape by explicitly listing which columns to fetch in the 'columns' query param"]`)
	// Unknown columns are reported before generated ones.
	checkInvalid(t, e.shape("table", "gen", "offset", "-1", "columns", "id,twice,nope"), "columns",
		`["The following columns are not found on the table: nope"]`)
	// Leaving them out works, for the snapshot and for changes.
	f := e.follow("table", "gen", "columns", "id,a")
	mustJSON(t, mustMarshal(f.rows), `{"\"public\".\"gen\"/\"1\"":{"id":"1","a":"5"}}`)
	e.exec(`UPDATE gen SET a = 6 WHERE id = 1`)
	mustJSON(t, mustMarshal(f.collect(1)[0].value()), `{"id":"1","a":"6"}`)
	g := e.follow("table", "gen", "queryable_columns", "id,a")
	mustJSON(t, mustMarshal(g.rows), `{"\"public\".\"gen\"/\"1\"":{"id":"1","a":"6"}}`)
}

// TestQueryableColumns: queryable_columns must include the primary key,
// names existing columns, bounds columns, and is the default projection
// (§1).
func TestQueryableColumns(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, itemsTable, `INSERT INTO items VALUES (1, 'a', 1, true)`)
	checkInvalid(t, e.shape("table", "items", "offset", "-1", "queryable_columns", "title"), "queryable_columns",
		`["The list of queryable columns must include all primary key columns, missing: id"]`)
	checkInvalid(t, e.shape("table", "items", "offset", "-1", "queryable_columns", "id,nope"), "queryable_columns",
		`["The following queryable columns are not found on the table: nope"]`)
	checkInvalid(t, e.shape("table", "items", "offset", "-1", "queryable_columns", "id,title", "columns", "id,n"), "columns",
		`["The following columns are not found on the table: n"]`)
	checkInvalid(t, e.shape("table", "items", "offset", "-1", "queryable_columns", `id,"bad`), "queryable_columns", "")

	// The default projection.
	r := e.shape("table", "items", "offset", "-1", "queryable_columns", `"title",id`)
	r.expectStatus(t, 200)
	mustJSON(t, r.header.Get("electric-schema"), `{"id":{"type":"int8","pk_index":0,"not_null":true},"title":{"type":"text","not_null":true}}`)
	mustJSON(t, mustMarshal(r.msgs(t)[0].value()), `{"id":"1","title":"a"}`)
	// columns within queryable_columns.
	r2 := e.shape("table", "items", "offset", "-1", "queryable_columns", "id,title", "columns", "id")
	r2.expectStatus(t, 200)
	mustJSON(t, r2.header.Get("electric-schema"), `{"id":{"type":"int8","pk_index":0,"not_null":true}}`)
	// Part of the shape definition: each list is a shape of its own.
	if h, h2 := r.header.Get("electric-handle"), r2.header.Get("electric-handle"); h == h2 || h == e.shape("table", "items", "offset", "-1").header.Get("electric-handle") {
		t.Errorf("queryable_columns does not make its own shape: %s %s", h, h2)
	}
	// Changes follow the projection.
	f := e.follow("table", "items", "queryable_columns", "id,title")
	e.exec(`INSERT INTO items VALUES (2, 'b', 2, false)`)
	mustJSON(t, mustMarshal(f.collect(1)[0].value()), `{"id":"2","title":"b"}`)
}

// TestPKlessColumns: a table without a primary key is keyed by all its
// columns, so columns must list them all, like primary key columns (§1.3,
// §4.1).
func TestPKlessColumns(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, `CREATE TABLE nopk (b text, a int, c int)`, `INSERT INTO nopk VALUES ('x', 1, 9)`)
	checkInvalid(t, e.shape("table", "nopk", "offset", "-1", "columns", "a,b"), "columns",
		`["The list of columns must include all primary key columns, missing: c"]`)
	checkInvalid(t, e.shape("table", "nopk", "offset", "-1", "queryable_columns", "a"), "queryable_columns",
		`["The list of queryable columns must include all primary key columns, missing: b, c"]`)
	r := e.shape("table", "nopk", "offset", "-1", "columns", "c,a,b")
	r.expectStatus(t, 200)
	if k := r.msgs(t)[0].key(); k != `"public"."nopk"/"x"/"1"/"9"` {
		t.Errorf("key %s, want the columns in table order", k)
	}
}

// TestUpToDateLSN: a live response's up-to-date reports the LSN of its own
// last change; a non-live one max(server-wide LSN, its last change) (§3.1,
// §3.2).
func TestUpToDateLSN(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 5 * time.Second}, itemsTable,
		`CREATE TABLE other (id int PRIMARY KEY)`)
	f := e.follow("table", "items")
	g := e.follow("table", "other")
	e.exec(`INSERT INTO items VALUES (1, 'a', 1, true)`)
	e.exec(`INSERT INTO other VALUES (1)`)
	l2 := g.collect(1)[0].headers()["lsn"].(string)
	// Wait until the server has finished routing the second transaction.
	var nonLive []msg
	for deadline := time.Now().Add(5 * time.Second); ; {
		r := e.shape("table", "items", "offset", f.offset, "handle", f.handle)
		r.expectStatus(t, 200)
		nonLive = r.msgs(t)
		if nonLive[len(nonLive)-1].headers()["global_last_seen_lsn"] == l2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("non-live up-to-date never reported the latest LSN %s: %v", l2, nonLive)
		}
		time.Sleep(20 * time.Millisecond)
	}
	l1 := nonLive[0].headers()["lsn"].(string)
	if l1 == l2 {
		t.Fatal("two transactions with one LSN")
	}
	r := e.shape("table", "items", "offset", f.offset, "handle", f.handle, "live", "true")
	r.expectStatus(t, 200)
	live := r.msgs(t)
	if len(live) != 2 || live[1].control() != "up-to-date" || live[1].headers()["global_last_seen_lsn"] != l1 {
		t.Errorf("live response %v: want its up-to-date at the change's LSN %s", live, l1)
	}
}
