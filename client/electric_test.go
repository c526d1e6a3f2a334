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
	"net/http/httptest"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
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

func TestElectricRetryAfter(t *testing.T) {
	e := newEnv(t, electrictest.Options{})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items (id) VALUES (1)`)

	// A burst of 503s without Retry-After: retried with (fast) backoff.
	e.srv.FailNext(5, 503, 0)
	s, _ := New(Options{URL: e.url, Params: Params{Table: "items"}, HTTPClient: testClient(), Backoff: fastBackoff()})
	ms, err := collect(t, s)
	if err != nil || len(ms) < 2 {
		t.Fatalf("%d messages, %v", len(ms), err)
	}

	// Retry-After is honoured over a shorter backoff.
	e.srv.FailNext(1, 503, time.Second)
	s, _ = New(Options{URL: e.url, Params: Params{Table: "items"}, HTTPClient: testClient(),
		Backoff: Backoff{Initial: time.Millisecond}})
	start := time.Now()
	if _, err := collect(t, s); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < time.Second {
		t.Errorf("finished after %v, before the 1s Retry-After", el)
	}

	// 429 is retried too; a 400 is not.
	e.srv.FailNext(2, 429, 0)
	s, _ = New(Options{URL: e.url, Params: Params{Table: "items"}, HTTPClient: testClient(), Backoff: fastBackoff()})
	if _, err := collect(t, s); err != nil {
		t.Fatal(err)
	}
	s, _ = New(Options{URL: e.url, Params: Params{Table: "nope"}, HTTPClient: testClient(), Backoff: fastBackoff()})
	_, err = collect(t, s)
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != 400 || !strings.Contains(string(he.Body), "does not exist") {
		t.Errorf("unknown table: %v", err)
	}
}

// Bodies cut at every few bytes during a chunked initial sync: every row
// is delivered exactly once.
func TestElectricCutBodies(t *testing.T) {
	e := newEnv(t, electrictest.Options{ChunkBytes: 3000})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items (id, title) SELECT i, repeat('x', i % 50) FROM generate_series(1, 300) i`)
	for _, cut := range []int{0, 1, 57, 400, 1500, 2999} {
		e.srv.CutNext(3, cut)
		s, _ := New(Options{URL: e.url, Params: Params{Table: "items"}, HTTPClient: testClient(), Backoff: fastBackoff()})
		ms, err := collect(t, s)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for _, m := range ms {
			if m.IsChange() {
				seen[m.Key]++
			}
			if m.IsMustRefetch() {
				t.Fatalf("cut %d: unexpected must-refetch", cut)
			}
		}
		for k, n := range seen {
			if n != 1 {
				t.Fatalf("cut %d: %s delivered %d times", cut, k, n)
			}
		}
		if len(seen) != 300 {
			t.Fatalf("cut %d: %d rows", cut, len(seen))
		}
	}
}

func TestElectricSlowResponses(t *testing.T) {
	e := newEnv(t, electrictest.Options{LongPollTimeout: 5 * time.Second})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items (id) VALUES (1)`)
	e.srv.SetDelay(150 * time.Millisecond)
	s, _ := New(Options{URL: e.url, Params: Params{Table: "items"}, Live: true, HTTPClient: testClient(),
		Backoff: fastBackoff(), LiveRequestTimeout: 400 * time.Millisecond})
	sh, stop := runShape(t, s)
	if err := sh.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.srv.SetDelay(0)
	// Live polls now outlast the 400ms watchdog (server waits 5s): the
	// stream abandons and retries them, and still sees new rows promptly.
	time.Sleep(time.Second)
	e.exec(`INSERT INTO items (id) VALUES (2)`)
	waitEqual(t, e, sh, "items", 3*time.Second)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// authProxy fronts electrictest with bearer-token checks; tokens can be
// expired at any moment, as an auth server would.
type authProxy struct {
	next http.Handler

	mu      sync.Mutex
	valid   map[string]bool
	used    map[string]bool // token prefixes accepted since their last expiry
	tokLog  []string
	minted  int
	refused int
	log     []string // "status offset handle" per shape request
}

func newAuthProxy(next http.Handler) *authProxy {
	return &authProxy{next: next, valid: map[string]bool{}, used: map[string]bool{}}
}

func (p *authProxy) mint(ctx context.Context) (string, error) { return p.mintFor("tok")(ctx) }

// mintFor returns a token fetcher whose tokens expire with expire(prefix).
func (p *authProxy) mintFor(prefix string) func(context.Context) (string, error) {
	return func(context.Context) (string, error) {
		p.mu.Lock()
		defer p.mu.Unlock()
		p.minted++
		tok := prefix + "-" + strconv.Itoa(p.minted)
		p.valid[tok] = true
		return tok, nil
	}
}

func (p *authProxy) expireAll() { p.expire("") }

// expireIfUsed expires the tokens of prefix if one of them was accepted
// since the last expiry: a token is never refused before its first use
// (which would be an AuthError by design).
func (p *authProxy) expireIfUsed(prefix string) {
	p.mu.Lock()
	used := p.used[prefix]
	p.mu.Unlock()
	if used {
		p.expire(prefix)
	}
}

func (p *authProxy) expire(prefix string) {
	p.mu.Lock()
	for tok := range p.valid {
		if strings.HasPrefix(tok, prefix+"-") || prefix == "" {
			delete(p.valid, tok)
		}
	}
	if prefix == "" {
		clear(p.used)
	}
	delete(p.used, prefix)
	p.tokLog = append(p.tokLog, "EXPIRE "+prefix)
	p.mu.Unlock()
}

func (p *authProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	q := r.URL.Query()
	p.mu.Lock()
	okTok := p.valid[tok]
	status := "200"
	if !okTok {
		p.refused++
		status = "401"
	} else if i := strings.LastIndex(tok, "-"); i > 0 {
		p.used[tok[:i]] = true
	}
	p.log = append(p.log, status+" "+q.Get("offset")+" "+q.Get("handle"))
	p.tokLog = append(p.tokLog, status+" "+tok+" "+q.Get("table")+" "+q.Get("offset"))
	p.mu.Unlock()
	if !okTok {
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token"`)
		http.Error(w, `{"message":"token expired"}`, http.StatusUnauthorized)
		return
	}
	p.next.ServeHTTP(w, r)
}

func (p *authProxy) requests() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.log)
}

func TestElectricAuthRefreshResumesAtSameOffset(t *testing.T) {
	e := newEnv(t, electrictest.Options{LongPollTimeout: 300 * time.Millisecond})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items (id) SELECT generate_series(1, 5)`)
	ap := newAuthProxy(e.srv.Server)
	front := httptest.NewServer(ap)
	defer front.Close()

	ts := NewSharedTokenSource(ap.mint)
	s, _ := New(Options{URL: front.URL + "/v1/shape", Params: Params{Table: "items"}, Live: true,
		TokenSource: ts, HTTPClient: testClient(), Backoff: fastBackoff()})
	seen := map[string]int{}
	next := func() Message {
		m, err := s.Next(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if m.IsChange() {
			seen[m.Key+"/"+m.Headers.LSN]++
		}
		return m
	}
	for !next().IsUpToDate() {
	}
	for round := range 3 {
		ap.expireAll()
		e.exec(`INSERT INTO items (id) VALUES ($1)`, 100+round)
		key := fmt.Sprintf(`"public"."items"/"%d"`, 100+round)
		for got := false; ; {
			m := next()
			got = got || m.Key == key
			if got && m.IsUpToDate() {
				break
			}
		}
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("%s delivered %d times", k, n)
		}
	}
	if len(seen) != 8 {
		t.Errorf("%d changes, want 8", len(seen))
	}
	// Every 401 is followed by the same request (offset and handle) with a new token.
	reqs := ap.requests()
	n401 := 0
	for i, r := range reqs {
		if strings.HasPrefix(r, "401") {
			n401++
			if i+1 >= len(reqs) || reqs[i+1][4:] != r[4:] {
				t.Errorf("after %q came %q", r, reqs[min(i+1, len(reqs)-1)])
			}
		}
	}
	if n401 != 3 || ap.minted != 4 {
		t.Errorf("%d 401s, %d tokens minted; want 3 and 4", n401, ap.minted)
	}
}

func TestElectricAuthSingleFlight(t *testing.T) {
	e := newEnv(t, electrictest.Options{LongPollTimeout: 300 * time.Millisecond})
	const n = 12
	for i := range n {
		e.exec(fmt.Sprintf(itemsDDL, "items"+strconv.Itoa(i)))
	}
	ap := newAuthProxy(e.srv.Server)
	front := httptest.NewServer(ap)
	defer front.Close()
	ts := NewSharedTokenSource(func(ctx context.Context) (string, error) {
		time.Sleep(20 * time.Millisecond) // a slow auth server widens the race
		return ap.mint(ctx)
	})
	var shapes []*Shape
	for i := range n {
		s, _ := New(Options{URL: front.URL + "/v1/shape", Params: Params{Table: "items" + strconv.Itoa(i)}, Live: true,
			TokenSource: ts, HTTPClient: testClient(), Backoff: fastBackoff()})
		sh, _ := runShape(t, s)
		shapes = append(shapes, sh)
	}
	for _, sh := range shapes {
		if err := sh.Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	ap.expireAll()
	for i := range n {
		e.exec(fmt.Sprintf(`INSERT INTO items%d (id) VALUES (1)`, i))
	}
	for i, sh := range shapes {
		waitEqual(t, e, sh, "items"+strconv.Itoa(i), 5*time.Second)
	}
	ap.mu.Lock()
	minted, refused := ap.minted, ap.refused
	ap.mu.Unlock()
	if minted != 2 {
		t.Errorf("%d tokens minted for %d streams (%d refusals); want 2: one refresh", minted, n, refused)
	}
}

func TestElectricAuthErrorAfterRefresh(t *testing.T) {
	e := newEnv(t, electrictest.Options{})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	ap := newAuthProxy(e.srv.Server)
	front := httptest.NewServer(ap)
	defer front.Close()
	var fetches atomic.Int32
	ts := NewSharedTokenSource(func(ctx context.Context) (string, error) {
		fetches.Add(1)
		return "never-valid", nil
	})
	s, _ := New(Options{URL: front.URL + "/v1/shape", Params: Params{Table: "items"}, TokenSource: ts, HTTPClient: testClient()})
	_, err := collect(t, s)
	var ae *AuthError
	if !errors.As(err, &ae) || ae.Err.StatusCode != 401 {
		t.Fatalf("err = %v", err)
	}
	if fetches.Load() != 2 {
		t.Errorf("%d token fetches; want 2 (initial + one refresh)", fetches.Load())
	}
	if strings.Contains(err.Error(), "never-valid") {
		t.Error("token in error message")
	}

	// A static token cannot refresh: the 401 reaches OnError / the caller.
	s, _ = New(Options{URL: front.URL + "/v1/shape", Params: Params{Table: "items"}, TokenSource: StaticToken("x"), HTTPClient: testClient()})
	_, err = collect(t, s)
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != 401 || errors.As(err, &ae) {
		t.Fatalf("static token: err = %v", err)
	}
}

// Cancelling the context stops a long poll at once, and no goroutine
// outlives the stream.
func TestElectricCancelStopsPromptly(t *testing.T) {
	e := newEnv(t, electrictest.Options{LongPollTimeout: 20 * time.Second})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	hc := testClient()
	base := runtime.NumGoroutine()

	s, _ := New(Options{URL: e.url, Params: Params{Table: "items"}, Live: true, HTTPClient: hc})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		for {
			if _, err := s.Next(ctx); err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond) // now in a live long poll
	start := time.Now()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if el := time.Since(start); el > 200*time.Millisecond {
		t.Errorf("stopped after %v", el)
	}
	// The stream can be read again with a new context.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if _, err := s.Next(ctx2); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second Next: %v", err)
	}
	s.Close()
	hc.CloseIdleConnections()
	waitGoroutines(t, base)
}

func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:n])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
