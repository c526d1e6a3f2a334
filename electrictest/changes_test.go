package electrictest_test

// §4: change messages for replica=default and replica=full, PK changes,
// rows moving into and out of a where clause, columns, value encodings,
// keys, schemas and quoted identifiers.

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
)

// collect polls live until n change messages arrived (and fails on more,
// after one extra short wait when quiet is set).
func (f *follower) collect(n int) []msg {
	f.e.t.Helper()
	var got []msg
	deadline := time.Now().Add(10 * time.Second)
	for len(got) < n {
		if time.Now().After(deadline) {
			f.e.t.Fatalf("got %d change messages, want %d: %v", len(got), n, got)
		}
		got = append(got, f.live()...)
	}
	if len(got) > n {
		f.e.t.Fatalf("got %d change messages, want %d: %v", len(got), n, got)
	}
	return got
}

// expectQuiet checks that a live request times out without changes.
func (f *follower) expectQuiet() {
	f.e.t.Helper()
	if got := f.live(); len(got) > 0 {
		f.e.t.Fatalf("unexpected changes: %v", got)
	}
}

// checkChange compares a change message with want, a JSON text in which the
// headers lsn and txids are not given: they are checked for form only, and
// must equal lsn (when not empty).
func checkChange(t *testing.T, got msg, want string, lsn *string) {
	t.Helper()
	h := got.headers()
	l, _ := h["lsn"].(string)
	if !digitsRE.MatchString(l) || l == "0" {
		t.Errorf("lsn %v in %v", h["lsn"], got)
	}
	if *lsn != "" && l != *lsn {
		t.Errorf("lsn %s, want %s (same transaction)", l, *lsn)
	}
	*lsn = l
	tx, ok := h["txids"].([]any)
	if !ok || len(tx) != 1 {
		t.Errorf("txids %v", h["txids"])
	}
	c := msg{}
	for k, v := range got {
		c[k] = v
	}
	hc := map[string]any{}
	for k, v := range h {
		if k != "lsn" && k != "txids" {
			hc[k] = v
		}
	}
	c["headers"] = hc
	if !jsonEq(t, mustMarshal(c), want) {
		t.Errorf("change message\n got: %s\nwant: %s", mustMarshal(c), want)
	}
}

func TestChangesReplicaDefaultAndFull(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 300 * time.Millisecond},
		`CREATE TABLE items (id int PRIMARY KEY, title text, n int, note text)`)
	def := e.follow("table", "items")
	full := e.follow("table", "items", "replica", "full")
	if def.handle == full.handle {
		t.Fatal("replica=default and replica=full share a shape")
	}
	rel := `"relation":["public","items"]`
	k1, k10 := `"\"public\".\"items\"/\"1\""`, `"\"public\".\"items\"/\"10\""`

	steps := []struct {
		sql       string
		def, full []string
	}{
		{`INSERT INTO items VALUES (1, 'a', 1, 'x')`,
			[]string{`{"key":` + k1 + `,"value":{"id":"1","title":"a","n":"1","note":"x"},"headers":{"operation":"insert",` + rel + `,"op_position":0,"last":true}}`},
			[]string{`{"key":` + k1 + `,"value":{"id":"1","title":"a","n":"1","note":"x"},"headers":{"operation":"insert",` + rel + `,"op_position":0,"last":true}}`}},
		{`UPDATE items SET title = 'b' WHERE id = 1`,
			[]string{`{"key":` + k1 + `,"value":{"id":"1","title":"b"},"headers":{"operation":"update",` + rel + `,"op_position":0,"last":true}}`},
			[]string{`{"key":` + k1 + `,"value":{"id":"1","title":"b","n":"1","note":"x"},"old_value":{"title":"a"},"headers":{"operation":"update",` + rel + `,"op_position":0,"last":true}}`}},
		{`UPDATE items SET n = NULL, note = 'y' WHERE id = 1`,
			[]string{`{"key":` + k1 + `,"value":{"id":"1","n":null,"note":"y"},"headers":{"operation":"update",` + rel + `,"op_position":0,"last":true}}`},
			[]string{`{"key":` + k1 + `,"value":{"id":"1","title":"b","n":null,"note":"y"},"old_value":{"n":"1","note":"x"},"headers":{"operation":"update",` + rel + `,"op_position":0,"last":true}}`}},
		// An update that changes nothing produces nothing.
		{`UPDATE items SET title = title WHERE id = 1`, nil, nil},
		// A PK change: delete with key_change_to, then insert with key_change_from.
		{`UPDATE items SET id = 10 WHERE id = 1`,
			[]string{
				`{"key":` + k1 + `,"value":{"id":"1"},"headers":{"operation":"delete",` + rel + `,"op_position":0,"key_change_to":` + k10 + `}}`,
				`{"key":` + k10 + `,"value":{"id":"10","title":"b","n":null,"note":"y"},"headers":{"operation":"insert",` + rel + `,"op_position":1,"key_change_from":` + k1 + `,"last":true}}`},
			[]string{
				`{"key":` + k1 + `,"value":{"id":"1","title":"b","n":null,"note":"y"},"headers":{"operation":"delete",` + rel + `,"op_position":0,"key_change_to":` + k10 + `}}`,
				`{"key":` + k10 + `,"value":{"id":"10","title":"b","n":null,"note":"y"},"headers":{"operation":"insert",` + rel + `,"op_position":1,"key_change_from":` + k1 + `,"last":true}}`}},
		{`DELETE FROM items WHERE id = 10`,
			[]string{`{"key":` + k10 + `,"value":{"id":"10"},"headers":{"operation":"delete",` + rel + `,"op_position":0,"last":true}}`},
			[]string{`{"key":` + k10 + `,"value":{"id":"10","title":"b","n":null,"note":"y"},"headers":{"operation":"delete",` + rel + `,"op_position":0,"last":true}}`}},
	}
	for _, s := range steps {
		e.exec(s.sql)
		for _, c := range []struct {
			f    *follower
			want []string
		}{{def, s.def}, {full, s.full}} {
			if len(c.want) == 0 {
				c.f.expectQuiet()
				continue
			}
			got := c.f.collect(len(c.want))
			lsn := ""
			for i, w := range c.want {
				checkChange(t, got[i], w, &lsn)
			}
			if !strings.HasSuffix(c.f.offset, "_"+fmt.Sprint(got[len(got)-1].headers()["op_position"])) || !strings.HasPrefix(c.f.offset, lsn+"_") {
				t.Errorf("electric-offset %s after %s", c.f.offset, mustMarshal(got[len(got)-1]))
			}
		}
	}

	// Several changes in one transaction: one lsn, op_position advancing by
	// 1 and by 2 after an update, last only on the last one.
	e.exec(`BEGIN;
		INSERT INTO items VALUES (2, 'p', 2, 'q');
		UPDATE items SET title = 'pp' WHERE id = 2;
		INSERT INTO items VALUES (3, 'r', 3, 's');
		UPDATE items SET id = 4 WHERE id = 3;
		DELETE FROM items WHERE id = 2;
		COMMIT`)
	got := def.collect(6)
	k2, k3, k4 := `"\"public\".\"items\"/\"2\""`, `"\"public\".\"items\"/\"3\""`, `"\"public\".\"items\"/\"4\""`
	want := []string{
		`{"key":` + k2 + `,"value":{"id":"2","title":"p","n":"2","note":"q"},"headers":{"operation":"insert",` + rel + `,"op_position":0}}`,
		`{"key":` + k2 + `,"value":{"id":"2","title":"pp"},"headers":{"operation":"update",` + rel + `,"op_position":2}}`,
		`{"key":` + k3 + `,"value":{"id":"3","title":"r","n":"3","note":"s"},"headers":{"operation":"insert",` + rel + `,"op_position":4}}`,
		`{"key":` + k3 + `,"value":{"id":"3"},"headers":{"operation":"delete",` + rel + `,"op_position":6,"key_change_to":` + k4 + `}}`,
		`{"key":` + k4 + `,"value":{"id":"4","title":"r","n":"3","note":"s"},"headers":{"operation":"insert",` + rel + `,"op_position":7,"key_change_from":` + k3 + `}}`,
		`{"key":` + k2 + `,"value":{"id":"2"},"headers":{"operation":"delete",` + rel + `,"op_position":8,"last":true}}`,
	}
	lsn := ""
	for i, w := range want {
		checkChange(t, got[i], w, &lsn)
	}
	full.collect(6)
	q := `SELECT format('"public"."items"/"%s"', id), id::text, title, n::text, note FROM items`
	def.converge(q)
	full.converge(q)
}

// A row moving into or out of the where clause is an insert or a delete
// (§4.3); updates outside the shape produce nothing. The same where clause
// with a parameter, typed by Postgres (n > $1 compares integers).
func TestWhereMoves(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 300 * time.Millisecond},
		`CREATE TABLE items (id int PRIMARY KEY, title text, n int)`,
		`INSERT INTO items VALUES (1, 'a', 1), (2, 'b', 10), (3, 'c', 9)`)
	lit := e.follow("table", "items", "where", "n > 5")
	par := e.follow("table", "items", "where", "n > $1", "params[1]", "5", "replica", "full")
	// Textual comparison would say '10' < '5'; typed, 10 > 5.
	for _, f := range []*follower{lit, par} {
		if len(f.rows) != 2 || f.rows[itemKey("2")] == nil || f.rows[itemKey("3")] == nil {
			t.Fatalf("snapshot %v", f.rows)
		}
	}
	rel := `"relation":["public","items"]`
	k := func(id string) string { return mustMarshal(itemKey(id)) }
	steps := []struct {
		sql       string
		lit, full []string
	}{
		{`UPDATE items SET n = 7 WHERE id = 1`,
			[]string{`{"key":` + k("1") + `,"value":{"id":"1","title":"a","n":"7"},"headers":{"operation":"insert",` + rel + `,"op_position":0,"last":true}}`},
			[]string{`{"key":` + k("1") + `,"value":{"id":"1","title":"a","n":"7"},"headers":{"operation":"insert",` + rel + `,"op_position":0,"last":true}}`}},
		{`UPDATE items SET n = 3 WHERE id = 2`,
			[]string{`{"key":` + k("2") + `,"value":{"id":"2"},"headers":{"operation":"delete",` + rel + `,"op_position":0,"last":true}}`},
			[]string{`{"key":` + k("2") + `,"value":{"id":"2","title":"b","n":"10"},"headers":{"operation":"delete",` + rel + `,"op_position":0,"last":true}}`}},
		{`UPDATE items SET title = 'z' WHERE id = 2`, nil, nil},
		{`INSERT INTO items VALUES (4, 'd', 2)`, nil, nil},
		{`DELETE FROM items WHERE id = 4`, nil, nil},
		{`UPDATE items SET n = 8 WHERE id = 1`,
			[]string{`{"key":` + k("1") + `,"value":{"id":"1","n":"8"},"headers":{"operation":"update",` + rel + `,"op_position":0,"last":true}}`},
			[]string{`{"key":` + k("1") + `,"value":{"id":"1","title":"a","n":"8"},"old_value":{"n":"7"},"headers":{"operation":"update",` + rel + `,"op_position":0,"last":true}}`}},
		// A PK change that leaves the shape is a plain delete, one that
		// enters it a plain insert.
		{`UPDATE items SET id = 11, n = 0 WHERE id = 1`,
			[]string{`{"key":` + k("1") + `,"value":{"id":"1"},"headers":{"operation":"delete",` + rel + `,"op_position":0,"last":true}}`},
			[]string{`{"key":` + k("1") + `,"value":{"id":"1","title":"a","n":"8"},"headers":{"operation":"delete",` + rel + `,"op_position":0,"last":true}}`}},
		{`UPDATE items SET id = 12, n = 99 WHERE id = 11`,
			[]string{`{"key":` + k("12") + `,"value":{"id":"12","title":"a","n":"99"},"headers":{"operation":"insert",` + rel + `,"op_position":0,"last":true}}`},
			[]string{`{"key":` + k("12") + `,"value":{"id":"12","title":"a","n":"99"},"headers":{"operation":"insert",` + rel + `,"op_position":0,"last":true}}`}},
		// NULL does not match n > 5.
		{`UPDATE items SET n = NULL WHERE id = 3`,
			[]string{`{"key":` + k("3") + `,"value":{"id":"3"},"headers":{"operation":"delete",` + rel + `,"op_position":0,"last":true}}`},
			[]string{`{"key":` + k("3") + `,"value":{"id":"3","title":"c","n":"9"},"headers":{"operation":"delete",` + rel + `,"op_position":0,"last":true}}`}},
	}
	for _, s := range steps {
		e.exec(s.sql)
		for _, c := range []struct {
			f    *follower
			want []string
		}{{lit, s.lit}, {par, s.full}} {
			if len(c.want) == 0 {
				c.f.expectQuiet()
				continue
			}
			got := c.f.collect(len(c.want))
			lsn := ""
			for i, w := range c.want {
				checkChange(t, got[i], w, &lsn)
			}
		}
	}
	q := `SELECT format('"public"."items"/"%s"', id), id::text, title, n::text FROM items WHERE n > 5`
	lit.converge(q)
	par.converge(q)
}

// The where clause means the same for the snapshot and for every change:
// Postgres evaluates both. Each follower must end with exactly the rows the
// same query selects.
func TestWhereSemantics(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 300 * time.Millisecond},
		`CREATE TABLE items (id int PRIMARY KEY, title text, n int, done bool, tags text[], created timestamptz,
			price numeric(8,2), code char(5), data jsonb, "Weird Col" text)`,
		`INSERT INTO items SELECT i, CASE WHEN i % 3 = 0 THEN 'Abc' || i ELSE 'x' || i END, NULLIF(i % 7, 0), i % 2 = 0,
			CASE WHEN i % 4 = 0 THEN ARRAY['x','y'] ELSE ARRAY['y'] END, '2024-01-01 00:00:00+00'::timestamptz + i * interval '1 day',
			i * 0.25, CASE WHEN i % 5 = 0 THEN 'ab' ELSE 'cd' END, jsonb_build_object('k', CASE WHEN i % 6 = 0 THEN 'v' ELSE 'w' END),
			CASE WHEN i % 8 = 0 THEN 'x' END
			FROM generate_series(1, 300) i`)
	type shapeCase struct {
		where  string
		params []string
	}
	cases := []shapeCase{
		{"title ILIKE 'a%'", nil},
		{"n IS NULL", nil},
		{"n % 2 = 0", nil},
		{"lower(title) = $1", []string{"abc9"}},
		{"tags @> ARRAY['x']", nil},
		{"created > $1", []string{"2024-06-01 00:00:00+00"}},
		{"done", nil},
		{"NOT done AND n > $1 AND n < $2", []string{"2", "6"}},
		{"title = $1", []string{`it's "quoted"`}},
		{"id = ANY($1::int[])", []string{"{1,3,5,301,302}"}},
		{"price BETWEEN 1.5 AND 30.25", nil},
		{`"Weird Col" = 'x'`, nil},
		{"items.n > 3", nil},
		{"code = 'ab'", nil},
		{"data->>'k' = 'v'", nil},
		{"created::date = '2024-02-01'", nil},
		{"n IN (1, 2) OR title LIKE '%7'", nil},
	}
	followers := make([]*follower, len(cases))
	for i, c := range cases {
		kv := []string{"table", "items", "where", c.where, "columns", `"id","title","n","Weird Col"`}
		for j, p := range c.params {
			kv = append(kv, fmt.Sprintf("params[%d]", j+1), p)
		}
		followers[i] = e.follow(kv...)
	}
	e.exec(`UPDATE items SET n = n + 1 WHERE id % 3 = 0;
		UPDATE items SET title = 'ABC' || id WHERE id % 10 = 1;
		UPDATE items SET done = NOT done WHERE id % 9 = 0;
		UPDATE items SET tags = ARRAY['x'] WHERE id % 11 = 0;
		UPDATE items SET created = created - interval '200 days' WHERE id % 13 = 0;
		UPDATE items SET price = price * 3 WHERE id % 17 = 0;
		UPDATE items SET code = 'ab' WHERE id % 19 = 0;
		UPDATE items SET data = '{"k":"v"}' WHERE id % 23 = 0;
		UPDATE items SET "Weird Col" = 'x' WHERE id % 29 = 0;
		UPDATE items SET title = $$it's "quoted"$$ WHERE id = 31;
		DELETE FROM items WHERE id % 37 = 0;
		INSERT INTO items (id, title, n, done) VALUES (301, 'abc9', 5, false), (302, 'x', NULL, true);
		UPDATE items SET id = id + 1000 WHERE id % 41 = 0`)
	for i, c := range cases {
		args := make([]any, len(c.params))
		for j, p := range c.params {
			args[j] = p
		}
		t.Run(c.where, func(t *testing.T) {
			followers[i].converge(`SELECT format('"public"."items"/"%s"', id), id::text, title, n::text, "Weird Col" FROM items WHERE `+c.where, args...)
		})
	}
}

// columns: the quoted form the TS client sends, only the selected columns
// in values and schema, and updates of other columns produce nothing.
func TestColumns(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 300 * time.Millisecond},
		`CREATE TABLE items (id int PRIMARY KEY, title text NOT NULL, n int, secret text)`,
		`INSERT INTO items VALUES (1, 'a', 1, 's1')`)
	r := e.shape("table", "items", "offset", "-1", "columns", `"id","title"`)
	r.expectStatus(t, 200)
	mustJSON(t, r.header.Get("electric-schema"), `{"id":{"type":"int4","pk_index":0,"not_null":true},"title":{"type":"text","not_null":true}}`)
	mustJSON(t, mustMarshal(r.msgs(t)[0]), `{"key":"\"public\".\"items\"/\"1\"","value":{"id":"1","title":"a"},"headers":{"operation":"insert","relation":["public","items"]}}`)
	// Unquoted, other case, other order: the same columns.
	for _, cols := range []string{"id,title", "ID,Title", "title,id"} {
		r := e.shape("table", "items", "offset", "-1", "columns", cols)
		r.expectStatus(t, 200)
		mustJSON(t, r.header.Get("electric-schema"), `{"id":{"type":"int4","pk_index":0,"not_null":true},"title":{"type":"text","not_null":true}}`)
	}

	f := e.follow("table", "items", "columns", `"id","title"`)
	g := e.follow("table", "items", "columns", `"id","title"`, "replica", "full")
	e.exec(`UPDATE items SET n = 2, secret = 's2' WHERE id = 1`)
	f.expectQuiet()
	g.expectQuiet()
	e.exec(`UPDATE items SET n = 3, title = 'b' WHERE id = 1`)
	lsn := ""
	checkChange(t, f.collect(1)[0], `{"key":"\"public\".\"items\"/\"1\"","value":{"id":"1","title":"b"},"headers":{"operation":"update","relation":["public","items"],"op_position":0,"last":true}}`, &lsn)
	checkChange(t, g.collect(1)[0], `{"key":"\"public\".\"items\"/\"1\"","value":{"id":"1","title":"b"},"old_value":{"title":"a"},"headers":{"operation":"update","relation":["public","items"],"op_position":0,"last":true}}`, &lsn)
	e.exec(`INSERT INTO items VALUES (2, 'c', 5, 'x'); DELETE FROM items WHERE id = 1`)
	lsn = ""
	got := f.collect(2)
	checkChange(t, got[0], `{"key":"\"public\".\"items\"/\"2\"","value":{"id":"2","title":"c"},"headers":{"operation":"insert","relation":["public","items"],"op_position":0}}`, &lsn)
	checkChange(t, got[1], `{"key":"\"public\".\"items\"/\"1\"","value":{"id":"1"},"headers":{"operation":"delete","relation":["public","items"],"op_position":2,"last":true}}`, &lsn)
	lsn = ""
	got = g.collect(2)
	checkChange(t, got[1], `{"key":"\"public\".\"items\"/\"1\"","value":{"id":"1","title":"b"},"headers":{"operation":"delete","relation":["public","items"],"op_position":2,"last":true}}`, &lsn)

	// The where clause may use columns outside the selection.
	h := e.follow("table", "items", "columns", "id", "where", "secret = 'x'")
	if len(h.rows) != 1 || len(h.rows[itemKey("2")]) != 1 {
		t.Fatalf("rows %v", h.rows)
	}

	bad := func(cols, msg string) {
		t.Helper()
		r := e.shape("table", "items", "offset", "-1", "columns", cols)
		r.expectStatus(t, 400)
		mustJSON(t, string(r.body), `{"message":"Invalid request","errors":{"columns":[`+mustMarshal(msg)+`]}}`)
		hdrIs(t, r, "cache-control", "no-store")
	}
	bad("title", "The list of columns must include all primary key columns, missing: id")
	bad(`"title","n"`, "The list of columns must include all primary key columns, missing: id")
	bad("id,nope", "The following columns are not found on the table: nope")
	bad(`id,"Title"`, "The following columns are not found on the table: Title")
	bad("id,nope,other", "The following columns are not found on the table: nope, other")
	bad("nope", "The list of columns must include all primary key columns, missing: id")
	bad("id,", "Invalid zero-length delimited identifier")
}

// §4.2 value encodings, from Electric's "can sync all data types" test and
// more: the snapshot and the replicated change of the same values.
func TestValueEncodings(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 5 * time.Second},
		`CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')`,
		`CREATE TYPE complex AS (r double precision, i double precision)`,
		`CREATE DOMAIN posint AS integer CHECK (VALUE > 0)`,
		`CREATE TABLE all_types (
			txt VARCHAR, i2 INT2 PRIMARY KEY, i4 INT4, i8 INT8, f8 FLOAT8, b BOOLEAN, json JSON, jsonb JSONB, blob BYTEA,
			ints INT8[], ints2 INT8[][], int4s INT4[], doubles FLOAT8[], bools BOOLEAN[], moods mood[], moods2 mood[][],
			complexes complex[], posints posint[], jsons JSONB[], txts TEXT[],
			ts timestamp, tstz timestamptz(3), d date, iv interval, num numeric(10,2), code char(5), codes char(3)[],
			u uuid, f4 real, vc varchar(20), uni text, m mood, p posint, bits bit(3), ts0 timestamp(0))`)
	e.exec(`INSERT INTO all_types VALUES ('test', 1, 2147483647, 9223372036854775807, 4.5, true, '{"foo":"bar"}', '{"foo":"bar"}',
		'\x0001fffe', '{1,2,3}', '{{1,2,3},{4,5,6}}', '{1,2,3}', '{1.2,-3.2,Infinity,-Infinity,NaN}', '{true,false,true}',
		'{sad,ok,happy}', '{{sad,ok},{ok,happy}}', ARRAY[(1.1,2.2),(3.3,4.4)]::complex[], '{5,9,2}',
		ARRAY['{"foo":"bar"}'::jsonb, '{"bar":"baz"}'::jsonb], '{foo,bar,baz}',
		'2024-11-13 10:45:33', '2024-11-13 10:45:33.123+02', '2024-11-13', '1 year 2 months 3 days 04:05:06', 1.5, 'ab', '{a,bc}',
		'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', 1.1, 'v', E'é ☃ "q" \\ tab\t nl\n ctl\x01', 'ok', 7, B'101')`)
	r := e.shape("table", "all_types", "offset", "-1")
	r.expectStatus(t, 200)
	mustJSON(t, r.header.Get("electric-schema"), `{
		"txt":{"type":"varchar"},"i2":{"type":"int2","pk_index":0,"not_null":true},"i4":{"type":"int4"},"i8":{"type":"int8"},
		"f8":{"type":"float8"},"b":{"type":"bool"},"json":{"type":"json"},"jsonb":{"type":"jsonb"},"blob":{"type":"bytea"},
		"ints":{"type":"int8","dims":1},"ints2":{"type":"int8","dims":2},"int4s":{"type":"int4","dims":1},
		"doubles":{"type":"float8","dims":1},"bools":{"type":"bool","dims":1},"moods":{"type":"mood","dims":1},
		"moods2":{"type":"mood","dims":2},"complexes":{"type":"complex","dims":1},"posints":{"type":"posint","dims":1},
		"jsons":{"type":"jsonb","dims":1},"txts":{"type":"text","dims":1},
		"ts":{"type":"timestamp"},"tstz":{"type":"timestamptz","precision":3},"d":{"type":"date"},"iv":{"type":"interval"},
		"num":{"type":"numeric","precision":10,"scale":2},"code":{"type":"bpchar","length":5},"codes":{"type":"bpchar","dims":1,"length":3},
		"u":{"type":"uuid"},"f4":{"type":"float4"},"vc":{"type":"varchar","max_length":20},"uni":{"type":"text"},
		"m":{"type":"mood"},"p":{"type":"posint"},"bits":{"type":"bit","length":3},"ts0":{"type":"timestamp","type_mod":0}}`)
	msgs := r.msgs(t)
	if len(msgs) != 2 {
		t.Fatalf("body %s", r.body)
	}
	const common = `"txt":"test","i2":"1","i4":"2147483647","i8":"9223372036854775807","f8":"4.5",
		"json":"{\"foo\":\"bar\"}","jsonb":"{\"foo\": \"bar\"}","blob":"\\x0001fffe",
		"ints":"{1,2,3}","ints2":"{{1,2,3},{4,5,6}}","int4s":"{1,2,3}","doubles":"{1.2,-3.2,Infinity,-Infinity,NaN}",
		"bools":"{t,f,t}","moods":"{sad,ok,happy}","moods2":"{{sad,ok},{ok,happy}}","posints":"{5,9,2}",
		"complexes":"{\"(1.1,2.2)\",\"(3.3,4.4)\"}","jsons":"{\"{\\\"foo\\\": \\\"bar\\\"}\",\"{\\\"bar\\\": \\\"baz\\\"}\"}",
		"txts":"{foo,bar,baz}","ts":"2024-11-13 10:45:33","tstz":"2024-11-13 08:45:33.123+00","d":"2024-11-13",
		"iv":"P1Y2M3DT4H5M6S","num":"1.50","code":"ab   ","codes":"{\"a  \",\"bc \"}",
		"u":"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11","f4":"1.1","vc":"v","uni":"é ☃ \"q\" \\ tab\t nl\n ctl\u0001",
		"m":"ok","p":"7","bits":"101","ts0":null`
	mustJSON(t, mustMarshal(msgs[0].value()), `{`+common+`,"b":"true"}`)
	if msgs[0].key() != `"public"."all_types"/"1"` {
		t.Errorf("key %s", msgs[0].key())
	}

	// The same values through replication (updated with themselves would be
	// no change, so change i4 and b, then compare the full row).
	f := e.follow("table", "all_types", "replica", "full")
	e.exec(`UPDATE all_types SET i4 = 2147483647 - 1, b = false WHERE i2 = 1`)
	got := f.collect(1)[0]
	want := strings.Replace(common, `"i4":"2147483647"`, `"i4":"2147483646"`, 1)
	mustJSON(t, mustMarshal(got.value()), `{`+want+`,"b":"f"}`)
	mustJSON(t, mustMarshal(got["old_value"]), `{"i4":"2147483647","b":"t"}`)

	// Electric's second update of the data-type test: every column changes.
	d := e.follow("table", "all_types")
	e.exec(`UPDATE all_types SET txt = 'changed', i4 = 20, i8 = 30, f8 = 40.5, json = '{"bar":"foo"}', jsonb = '{"bar":"foo"}',
		blob = '\xfffe0001', ints = '{4,5,6}', ints2 = '{{4,5,6},{7,8,9}}', int4s = '{4,5,6}', doubles = '{-100.2,-Infinity,NaN,3.2}',
		bools = '{false,true,false}', moods = '{sad,happy}', moods2 = '{{sad,happy},{happy,ok}}',
		complexes = ARRAY[(2.2,3.3),(4.4,5.5)]::complex[], posints = '{6,10,3}', jsons = ARRAY['{"bar":"baz"}'::jsonb], txts = '{new,values}',
		b = true, code = 'xyz', tstz = NULL
		WHERE i2 = 1`)
	got = d.collect(1)[0]
	mustJSON(t, mustMarshal(got.value()), `{"i2":"1","txt":"changed","i4":"20","i8":"30","f8":"40.5","b":"t",
		"json":"{\"bar\":\"foo\"}","jsonb":"{\"bar\": \"foo\"}","blob":"\\xfffe0001","ints":"{4,5,6}","ints2":"{{4,5,6},{7,8,9}}",
		"int4s":"{4,5,6}","doubles":"{-100.2,-Infinity,NaN,3.2}","bools":"{f,t,f}","moods":"{sad,happy}",
		"moods2":"{{sad,happy},{happy,ok}}","posints":"{6,10,3}","complexes":"{\"(2.2,3.3)\",\"(4.4,5.5)\"}",
		"jsons":"{\"{\\\"bar\\\": \\\"baz\\\"}\"}","txts":"{new,values}","code":"xyz  ","tstz":null}`)
}

// Large (TOASTed) values that an update does not touch arrive as "unchanged"
// in pgoutput; the server must still send the right values.
func TestToastedValues(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 5 * time.Second},
		`CREATE TABLE docs (id int PRIMARY KEY, body text, n int)`)
	def := e.follow("table", "docs")
	full := e.follow("table", "docs", "replica", "full")
	big := e.scalar(`SELECT string_agg(md5(i::text), '') FROM generate_series(1, 4000) i`) // 128 kB, incompressible enough
	e.exec(`INSERT INTO docs VALUES (1, $1, 1)`, big)
	if v := def.collect(1)[0].value()["body"]; v != big {
		t.Fatalf("insert: body of %d bytes", len(fmt.Sprint(v)))
	}
	full.collect(1)
	e.exec(`UPDATE docs SET n = 2 WHERE id = 1`)
	d := def.collect(1)[0]
	mustJSON(t, mustMarshal(d.value()), `{"id":"1","n":"2"}`)
	fu := full.collect(1)[0]
	if fu.value()["body"] != big || fu.value()["n"] != "2" {
		t.Fatalf("replica=full update lost the unchanged TOASTed value: n=%v body %d bytes", fu.value()["n"], len(fmt.Sprint(fu.value()["body"])))
	}
	mustJSON(t, mustMarshal(fu["old_value"]), `{"n":"1"}`)
	e.exec(`DELETE FROM docs`)
	if v := full.collect(1)[0].value()["body"]; v != big {
		t.Fatal("replica=full delete lost the TOASTed value")
	}
	def.collect(1)
	// A where clause on the TOASTed column sees its value in updates.
	w := e.follow("table", "docs", "where", "length(body) > 1000")
	e.exec(`INSERT INTO docs VALUES (2, $1, 1), (3, 'short', 1)`, big)
	w.collect(1)
	e.exec(`UPDATE docs SET n = 5`)
	got := w.collect(1)[0]
	if got.key() != `"public"."docs"/"2"` || got.op() != "update" {
		t.Fatalf("got %v", got)
	}
}

// §4.1 keys: escaping of / and . in relation names and PK values, composite
// keys, PK-less tables; tables in other schemas and quoted identifiers.
func TestKeysAndIdentifiers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 300 * time.Millisecond},
		`CREATE TABLE "we.ird/name" (k text PRIMARY KEY, v int)`,
		`INSERT INTO "we.ird/name" VALUES ('a/b.c', 1), ('x"y', 2), ('', 3), ('//', 4)`,
		`CREATE SCHEMA "Other"`,
		`CREATE TABLE "Other"."Items" ("Id" int, "Sub" text, "Title" text, PRIMARY KEY ("Sub", "Id"))`,
		`INSERT INTO "Other"."Items" VALUES (1, 'x/y', 'one'), (2, 'z', 'two')`,
		`CREATE SCHEMA lower_s`,
		`CREATE TABLE lower_s.things (id int PRIMARY KEY)`,
		`INSERT INTO lower_s.things VALUES (1)`,
		`CREATE TABLE nopk (b text, a int)`,
		`INSERT INTO nopk VALUES ('x', 1), (NULL, 2)`)

	keys := func(r response) []string {
		t.Helper()
		r.expectStatus(t, 200)
		var ks []string
		for _, m := range r.msgs(t) {
			if m.control() == "" {
				ks = append(ks, m.key())
			}
		}
		return ks
	}
	eqKeys := func(got []string, want ...string) {
		t.Helper()
		g := strings.Join(got, "\n")
		w := strings.Join(want, "\n")
		if g != w {
			t.Errorf("keys\n got: %s\nwant: %s", g, w)
		}
	}
	r := e.shape("table", `"we.ird/name"`, "offset", "-1")
	ks := keys(r)
	slices.Sort(ks)
	eqKeys(ks, `"public"."we..ird//name"/""`, `"public"."we..ird//name"/"////"`, `"public"."we..ird//name"/"a//b.c"`, `"public"."we..ird//name"/"x"y"`)
	if rel := r.msgs(t)[0].headers()["relation"]; mustMarshal(rel) != `["public","we.ird/name"]` {
		t.Errorf("relation %v", rel)
	}
	e.shape("table", `public."we.ird/name"`, "offset", "-1").expectStatus(t, 200)

	r = e.shape("table", `"Other"."Items"`, "offset", "-1")
	ks = keys(r)
	slices.Sort(ks)
	eqKeys(ks, `"Other"."Items"/"x//y"/"1"`, `"Other"."Items"/"z"/"2"`)
	mustJSON(t, r.header.Get("electric-schema"), `{"Id":{"type":"int4","pk_index":1,"not_null":true},"Sub":{"type":"text","pk_index":0,"not_null":true},"Title":{"type":"text"}}`)
	if rel := r.msgs(t)[0].headers()["relation"]; mustMarshal(rel) != `["Other","Items"]` {
		t.Errorf("relation %v", rel)
	}
	// Quoted columns and where with capitals.
	f := e.follow("table", `"Other"."Items"`, "columns", `"Id","Sub"`, "where", `"Title" = 'one'`)
	if len(f.rows) != 1 || mustMarshal(f.rows[`"Other"."Items"/"x//y"/"1"`]) != `{"Id":"1","Sub":"x/y"}` {
		t.Fatalf("rows %v", f.rows)
	}
	e.exec(`UPDATE "Other"."Items" SET "Title" = 'one' WHERE "Id" = 2`)
	got := f.collect(1)[0]
	if got.op() != "insert" || got.key() != `"Other"."Items"/"z"/"2"` || mustMarshal(got.headers()["relation"]) != `["Other","Items"]` {
		t.Fatalf("got %v", got)
	}
	// Unquoted names are folded to lower case: Other.Items is other.items.
	nf := e.shape("table", "Other.Items", "offset", "-1")
	nf.expectStatus(t, 400)
	mustJSON(t, string(nf.body), `{"message":"Invalid request","errors":{"table":["Table \"other\".\"items\" does not exist. If the table name contains capitals or special characters you must quote it."]}}`)
	keys(e.shape("table", "LOWER_S.Things", "offset", "-1"))
	eqKeys(keys(e.shape("table", "lower_s.things", "offset", "-1")), `"lower_s"."things"/"1"`)

	// A PK-less table: every column is part of the key, in table order
	// (Electric's Inspector.get_pk_cols), NULL as _.
	ks = keys(e.shape("table", "nopk", "offset", "-1"))
	slices.Sort(ks)
	eqKeys(ks, `"public"."nopk"/"x"/"1"`, `"public"."nopk"/_/"2"`)
	p := e.follow("table", "nopk")
	e.exec(`DELETE FROM nopk WHERE a = 2`)
	got = p.collect(1)[0]
	mustJSON(t, mustMarshal(got.value()), `{"a":"2","b":null}`)
	if got.key() != `"public"."nopk"/_/"2"` {
		t.Errorf("delete key %s", got.key())
	}
	e.exec(`UPDATE nopk SET b = 'y' WHERE a = 1`)
	gotAll := p.collect(2)
	if gotAll[0].op() != "delete" || gotAll[1].op() != "insert" || gotAll[1].key() != `"public"."nopk"/"y"/"1"` {
		t.Errorf("PK-less update: %v", gotAll)
	}
}
