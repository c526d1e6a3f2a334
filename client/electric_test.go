package client

// Tests against electrictest over a real Postgres (internal/pgtest), with
// faults injected by the server itself.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

const itemsDDL = `CREATE TABLE %s (id int8 PRIMARY KEY, title text, n int4, flag bool, tags text[], doc jsonb)`

type env struct {
	t   testing.TB
	db  string
	srv *electrictest.TestServer
	url string // shape endpoint
}

func newEnv(t testing.TB, opts electrictest.Options) *env {
	t.Helper()
	db := pgtest.NewDB(t)
	opts.DatabaseURL = db
	if opts.LongPollTimeout == 0 {
		opts.LongPollTimeout = 2 * time.Second
	}
	srv := electrictest.StartTest(t, opts)
	return &env{t: t, db: db, srv: srv, url: srv.URL + "/v1/shape"}
}

func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	pgtest.Exec(e.t, e.db, sql, args...)
}

// tableRows reads a table as the shape should materialize it: key → row of
// Postgres text values.
func (e *env) tableRows(table string) map[string]Row {
	e.t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, e.db)
	if err != nil {
		e.t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, fmt.Sprintf(`SELECT id::text, title, n::text, flag::text, tags::text, doc::text FROM %s`, table))
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]Row{}
	for rows.Next() {
		var vals [6]*string
		if err := rows.Scan(&vals[0], &vals[1], &vals[2], &vals[3], &vals[4], &vals[5]); err != nil {
			e.t.Fatal(err)
		}
		r := Row{}
		for i, c := range []string{"id", "title", "n", "flag", "tags", "doc"} {
			if vals[i] == nil {
				r[c] = nil
			} else {
				r[c] = *vals[i]
			}
		}
		out[fmt.Sprintf(`"public"."%s"/"%s"`, table, *vals[0])] = r
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// normalizeBools maps the snapshot's "true"/"false" and replication's
// "t"/"f" (Electric sends both) to one form for comparison.
func normalize(rows map[string]Row) map[string]Row {
	out := make(map[string]Row, len(rows))
	for k, r := range rows {
		c := maps.Clone(r)
		switch c["flag"] {
		case "t":
			c["flag"] = "true"
		case "f":
			c["flag"] = "false"
		}
		out[k] = c
	}
	return out
}

func diffRows(got, want map[string]Row) string {
	got, want = normalize(got), normalize(want)
	var d []string
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			d = append(d, "missing "+k)
		} else if !maps.Equal(stringify(g), stringify(w)) {
			d = append(d, fmt.Sprintf("%s: got %v want %v", k, g, w))
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			d = append(d, "extra "+k)
		}
	}
	slices.Sort(d)
	if len(d) > 5 {
		d = append(d[:5], fmt.Sprintf("... %d more", len(d)-5))
	}
	return strings.Join(d, "; ")
}

func stringify(r Row) map[string]string {
	m := map[string]string{}
	for k, v := range r {
		if v == nil {
			m[k] = "<nil>"
		} else {
			m[k] = fmt.Sprint(v)
		}
	}
	return m
}

// waitEqual waits until the shape's rows equal the table's.
func waitEqual(t testing.TB, e *env, sh *Shape, table string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	want := e.tableRows(table)
	for {
		d := diffRows(sh.Rows(), want)
		if d == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("shape of %s differs from the table after %v: %s", table, timeout, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runShape runs a Shape in the background until the test ends.
func runShape(t testing.TB, s *ShapeStream) (*Shape, func() error) {
	sh := NewShape(s)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sh.Run(ctx) }()
	stop := func() error {
		cancel()
		err := <-done
		if errors.Is(err, context.Canceled) {
			return nil
		}
		return err
	}
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { stop() }) })
	return sh, func() (err error) { once.Do(func() { err = stop() }); return err }
}

func testClient() *http.Client {
	return &http.Client{Transport: &http.Transport{}}
}

func TestElectricInitialSyncCatchUpLive(t *testing.T) {
	e := newEnv(t, electrictest.Options{ChunkBytes: 2000, LongPollTimeout: 500 * time.Millisecond})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items SELECT i, 'title ' || i, i, i % 2 = 0, ARRAY['a','b "q"'], '{"k": 1}' FROM generate_series(1, 100) i`)

	s, err := New(Options{URL: e.url, Params: Params{Table: "items"}, Live: true, HTTPClient: testClient()})
	if err != nil {
		t.Fatal(err)
	}
	// Read the initial sync by hand: chunked catch-up, then up-to-date.
	var inserts int
	sawEnd := false
	for {
		m, err := s.Next(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if m.IsChange() {
			inserts++
		}
		if m.Headers.Control == SnapshotEnd {
			sawEnd = true
		}
		if m.IsUpToDate() {
			break
		}
	}
	if inserts != 100 || !sawEnd || !s.IsUpToDate() {
		t.Fatalf("initial sync: %d inserts, snapshot-end %v", inserts, sawEnd)
	}
	if s.Schema()["id"].Type != "int8" || s.Handle() == "" || s.Offset() == "-1" {
		t.Errorf("schema %v handle %q offset %q", s.Schema(), s.Handle(), s.Offset())
	}

	// Live: changes arrive, batched by transaction, ending in up-to-date.
	go func() {
		time.Sleep(100 * time.Millisecond)
		e.exec(`BEGIN; UPDATE items SET title = 'new' WHERE id = 1; DELETE FROM items WHERE id = 2; INSERT INTO items (id, title) VALUES (1000, 'x'); COMMIT`)
	}()
	var got []string
	for len(got) < 3 {
		m, err := s.Next(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if m.IsChange() {
			got = append(got, string(m.Headers.Operation)+" "+m.Key)
			if m.Headers.LSN == "" || len(m.Headers.TxIDs) == 0 {
				t.Errorf("replicated change without lsn/txids: %s", m.Raw())
			}
		}
	}
	want := []string{`update "public"."items"/"1"`, `delete "public"."items"/"2"`, `insert "public"."items"/"1000"`}
	if !slices.Equal(got, want) {
		t.Errorf("live changes %q, want %q", got, want)
	}
}

func TestElectricShapeMatchesTable(t *testing.T) {
	e := newEnv(t, electrictest.Options{LongPollTimeout: 300 * time.Millisecond})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items SELECT i, 't' || i, i, true, '{x,y}', NULL FROM generate_series(1, 20) i`)
	s, _ := New(Options{URL: e.url, Params: Params{Table: "items"}, Live: true, HTTPClient: testClient()})
	sh, stop := runShape(t, s)
	if err := sh.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	waitEqual(t, e, sh, "items", 5*time.Second)
	e.exec(`UPDATE items SET title = NULL, flag = false WHERE id <= 5`)
	e.exec(`DELETE FROM items WHERE id > 15`)
	e.exec(`INSERT INTO items (id, title, doc) VALUES (99, 'new', '{"a": [1, 2]}')`)
	e.exec(`UPDATE items SET id = 100 WHERE id = 99`) // primary-key change
	waitEqual(t, e, sh, "items", 5*time.Second)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

func TestElectricParsedValues(t *testing.T) {
	e := newEnv(t, electrictest.Options{})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items VALUES (9007199254740993, 'a', -7, true, '{"x y",NULL}', '{"k": [1]}')`)
	s, _ := New(Options{URL: e.url, Params: Params{Table: "items"}, Parse: true, HTTPClient: testClient()})
	sh := NewShape(s)
	if err := sh.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	r, ok := sh.Get(`"public"."items"/"9007199254740993"`)
	if !ok {
		t.Fatal(sh.Rows())
	}
	if r["id"] != int64(9007199254740993) || r["n"] != int64(-7) || r["flag"] != true ||
		!slices.Equal(r["tags"].([]any), []any{"x y", nil}) || string(r["doc"].(json.RawMessage)) != `{"k": [1]}` {
		t.Errorf("parsed row %#v", r)
	}
}

func TestElectricRotationMidStream(t *testing.T) {
	e := newEnv(t, electrictest.Options{LongPollTimeout: 300 * time.Millisecond})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items (id, title) SELECT i, 't' FROM generate_series(1, 10) i`)
	s, _ := New(Options{URL: e.url, Params: Params{Table: "items"}, Live: true, HTTPClient: testClient(), Backoff: fastBackoff()})

	refetches := 0
	for m, err := range s.Messages(t.Context()) {
		if err != nil {
			t.Fatal(err)
		}
		if m.IsUpToDate() {
			break
		}
	}
	h1 := s.Handle()
	e.exec(`INSERT INTO items (id, title) VALUES (11, 'x')`)
	if n, err := e.srv.Rotate("items"); err != nil || n != 1 {
		t.Fatalf("Rotate: %d, %v", n, err)
	}
	e.exec(`DELETE FROM items WHERE id = 1`)
	sh := NewShape(nil)
	for m, err := range s.Messages(t.Context()) {
		if err != nil {
			t.Fatal(err)
		}
		if m.IsMustRefetch() {
			refetches++
		}
		if sh.Apply(m) && refetches > 0 {
			break
		}
	}
	if refetches != 1 || s.Handle() == h1 {
		t.Fatalf("refetches %d, handle %s → %s", refetches, h1, s.Handle())
	}
	if d := diffRows(sh.Rows(), e.tableRows("items")); d != "" {
		t.Error(d)
	}
}
