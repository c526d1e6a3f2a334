package electrictest_test

// The conformance suite: raw HTTP (net/http, no client library) against an
// electrictest server over a real Postgres, with real writes, for the
// scenarios of electric-protocol.md §0–§5, §7, §8.1–8.2. Every test gets its
// own database (pgtest.NewDB) and server, so they run in parallel.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// ---------------------------------------------------------------------------
// Harness

// env is one database with one electrictest server on it.
type env struct {
	t    *testing.T
	db   string
	pool *pgxpool.Pool
	srv  *electrictest.TestServer
	opts electrictest.Options
}

var httpClient = &http.Client{
	Timeout: 60 * time.Second,
	Transport: &http.Transport{
		MaxIdleConns:        2000,
		MaxIdleConnsPerHost: 2000,
		DisableCompression:  true,
	},
}

// newEnv creates a database, runs setup in it, and starts a server on it.
// LongPollTimeout defaults to 1s.
func newEnv(t *testing.T, opts electrictest.Options, setup ...string) *env {
	t.Helper()
	return newEnvOn(t, pgtest.NewDB(t), opts, setup...)
}

// newEnvOn is newEnv on the database db.
func newEnvOn(t *testing.T, db string, opts electrictest.Options, setup ...string) *env {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(db)
	if err != nil {
		t.Fatal(err)
	}
	// The settings Electric uses, so that ::text renders values as the
	// server sends them.
	for k, v := range map[string]string{"bytea_output": "hex", "DateStyle": "ISO, DMY", "TimeZone": "UTC", "IntervalStyle": "iso_8601", "extra_float_digits": "1"} {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	e := &env{t: t, db: db, pool: pool}
	for _, s := range setup {
		e.exec(s)
	}
	if opts.LongPollTimeout == 0 {
		opts.LongPollTimeout = time.Second
	}
	opts.DatabaseURL = db
	e.opts = opts
	e.srv = electrictest.StartTest(t, opts)
	return e
}

// exec runs SQL (several statements when there are no args).
func (e *env) exec(sql string, args ...any) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := e.pool.Exec(ctx, sql, args...); err != nil {
		e.t.Fatalf("exec %q: %v", sql, err)
	}
}

// scalar runs a query returning one text value.
func (e *env) scalar(sql string, args ...any) string {
	e.t.Helper()
	var s *string
	if err := e.pool.QueryRow(context.Background(), sql, args...).Scan(&s); err != nil {
		e.t.Fatalf("query %q: %v", sql, err)
	}
	if s == nil {
		return "<null>"
	}
	return *s
}

// rows returns the rows of a query whose first column is the row key and
// whose other columns are text values, as a client materialises them.
func (e *env) rows(sql string, args ...any) map[string]map[string]any {
	e.t.Helper()
	rs, err := e.pool.Query(context.Background(), sql, args...)
	if err != nil {
		e.t.Fatalf("query %q: %v", sql, err)
	}
	defer rs.Close()
	out := map[string]map[string]any{}
	names := []string{}
	for _, f := range rs.FieldDescriptions() {
		names = append(names, f.Name)
	}
	for rs.Next() {
		vals := make([]*string, len(names))
		ptrs := make([]any, len(names))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rs.Scan(ptrs...); err != nil {
			e.t.Fatal(err)
		}
		row := map[string]any{}
		for i := 1; i < len(names); i++ {
			if vals[i] == nil {
				row[names[i]] = nil
			} else {
				row[names[i]] = *vals[i]
			}
		}
		out[*vals[0]] = row
	}
	if err := rs.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
}

// response is one HTTP exchange.
type response struct {
	status  int
	header  http.Header
	body    []byte
	err     error // reading the body
	elapsed time.Duration
}

func (r response) String() string {
	return fmt.Sprintf("%d %s", r.status, abbrev(string(r.body), 500))
}

func abbrev(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

// request sends a request to the server; target is a path with query.
func (e *env) request(method, target string, hdr ...string) response {
	e.t.Helper()
	return doRequest(e.t, method, e.srv.URL+target, hdr...)
}

func doRequest(t testing.TB, method, u string, hdr ...string) response {
	t.Helper()
	r, err := fetch(method, u, hdr...)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	return r
}

// fetch is doRequest for other goroutines than the test's.
func fetch(method, u string, hdr ...string) (response, error) {
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		return response{}, err
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Add(hdr[i], hdr[i+1])
	}
	start := time.Now()
	res, err := httpClient.Do(req)
	if err != nil {
		return response{}, err
	}
	defer res.Body.Close()
	body, rerr := io.ReadAll(res.Body)
	return response{status: res.StatusCode, header: res.Header, body: body, err: rerr, elapsed: time.Since(start)}, nil
}

// goFetch runs fetch in a goroutine; the channel yields the response (a
// zero response with status 0 on a transport error).
func goFetch(t testing.TB, method, u string, hdr ...string) <-chan response {
	ch := make(chan response, 1)
	go func() {
		r, err := fetch(method, u, hdr...)
		if err != nil {
			t.Errorf("%s %s: %v", method, u, err)
		}
		ch <- r
	}()
	return ch
}

// shape sends GET /v1/shape with a query built from key/value pairs.
func (e *env) shape(kv ...string) response {
	e.t.Helper()
	return e.request("GET", "/v1/shape?"+qs(kv...))
}

// qs encodes key/value pairs as a query string.
func qs(kv ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Add(kv[i], kv[i+1])
	}
	return v.Encode()
}

// rawRequest writes a request line verbatim on a new connection, so that
// paths like /v1//shape or /v1/%73hape reach the server unchanged.
func (e *env) rawRequest(method, target string) response {
	e.t.Helper()
	u, _ := url.Parse(e.srv.URL)
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		e.t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", method, target, u.Host)
	res, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, target, err)
	}
	defer res.Body.Close()
	body, rerr := io.ReadAll(res.Body)
	return response{status: res.StatusCode, header: res.Header, body: body, err: rerr}
}

// msg is one message of a log response.
type msg map[string]any

func (r response) msgs(t testing.TB) []msg {
	t.Helper()
	var out []msg
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatalf("body is not a JSON array of messages: %v: %s", err, abbrev(string(r.body), 2000))
	}
	return out
}

func (m msg) headers() map[string]any {
	h, _ := m["headers"].(map[string]any)
	return h
}
func (m msg) control() string { s, _ := m.headers()["control"].(string); return s }
func (m msg) op() string      { s, _ := m.headers()["operation"].(string); return s }
func (m msg) key() string     { s, _ := m["key"].(string); return s }
func (m msg) value() map[string]any {
	v, _ := m["value"].(map[string]any)
	return v
}

// jsonEq reports whether two JSON texts are equal as values.
func jsonEq(t testing.TB, got, want string) bool {
	t.Helper()
	var g, w any
	if err := json.Unmarshal([]byte(got), &g); err != nil {
		t.Errorf("not JSON: %v: %s", err, got)
		return false
	}
	if err := json.Unmarshal([]byte(want), &w); err != nil {
		t.Fatalf("bad expectation %s: %v", want, err)
	}
	return reflect.DeepEqual(g, w)
}

func mustJSON(t testing.TB, got, want string) {
	t.Helper()
	if !jsonEq(t, got, want) {
		t.Errorf("JSON mismatch\n got: %s\nwant: %s", got, want)
	}
}

func (r response) expectStatus(t testing.TB, status int) {
	t.Helper()
	if r.status != status {
		t.Fatalf("status %d, want %d: %s (headers %v)", r.status, status, abbrev(string(r.body), 1000), r.header)
	}
}

// hdrAbsent fails when a header is present.
func hdrAbsent(t testing.TB, r response, names ...string) {
	t.Helper()
	for _, n := range names {
		if v, ok := r.header[http.CanonicalHeaderKey(n)]; ok {
			t.Errorf("header %s present (%q), want absent", n, v)
		}
	}
}

func hdrIs(t testing.TB, r response, name, want string) {
	t.Helper()
	v, ok := r.header[http.CanonicalHeaderKey(name)]
	if !ok || len(v) != 1 || v[0] != want {
		t.Errorf("header %s = %q (present %v), want %q", name, v, ok, want)
	}
}

var (
	handleRE = regexp.MustCompile(`^[0-9]+-[0-9]+$`)
	offsetRE = regexp.MustCompile(`^[0-9]+_([0-9]+|inf)$`)
	digitsRE = regexp.MustCompile(`^[0-9]+$`)
)

const (
	ccInitial     = "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"
	ccCatchUp     = "public, max-age=60, stale-while-revalidate=300"
	ccLive        = "public, max-age=5, stale-while-revalidate=5"
	cc409         = "public, max-age=60, must-revalidate"
	cc409NoHandle = "public, max-age=1, must-revalidate"
	jsonCT        = "application/json; charset=utf-8"
	mustRefBody   = `[{"headers":{"control":"must-refetch"}}]`
	exposeHdrs    = "electric-cursor,electric-handle,electric-has-data,electric-offset,electric-schema,electric-up-to-date,electric-internal-known-error,retry-after"
)

// ---------------------------------------------------------------------------
// A materialising follower, like a client's Shape.

type follower struct {
	e       *env
	def     []string // the shape definition as key/value pairs
	handle  string
	offset  string
	cursor  string
	schema  string
	rows    map[string]map[string]any
	tags    map[string][]string // subquery shapes: each row's tags
	lenient bool                // changes_only: updates and deletes of unseen rows are fine
	log     []msg
	refetch int // 409s seen
}

func (e *env) newFollower(def ...string) *follower {
	return &follower{e: e, def: def, offset: "-1", rows: map[string]map[string]any{}}
}

// follow starts a follower and syncs it to up-to-date.
func (e *env) follow(def ...string) *follower {
	e.t.Helper()
	f := e.newFollower(def...)
	f.catchUp()
	return f
}

func (f *follower) query(live bool) string {
	kv := slices.Clone(f.def)
	kv = append(kv, "offset", f.offset)
	if f.offset != "-1" && f.offset != "now" {
		kv = append(kv, "handle", f.handle)
	}
	if live {
		kv = append(kv, "live", "true", "cursor", f.cursor)
	}
	return qs(kv...)
}

// step makes one request and applies its messages; it reports whether the
// response ended with up-to-date. A 409 resets the follower.
func (f *follower) step(live bool) (upToDate bool, msgs []msg) {
	t := f.e.t
	t.Helper()
	if f.offset == "-1" {
		live = false // live is invalid with offset=-1
	}
	r := f.e.request("GET", "/v1/shape?"+f.query(live))
	if r.status == http.StatusConflict {
		if string(r.body) != mustRefBody {
			t.Fatalf("409 body %s", r.body)
		}
		f.refetch++
		f.handle = r.header.Get("electric-handle")
		f.offset = "-1"
		f.rows = map[string]map[string]any{}
		f.tags = nil
		f.schema = ""
		return false, nil
	}
	r.expectStatus(t, http.StatusOK)
	if r.err != nil {
		t.Fatalf("reading body: %v", r.err)
	}
	f.handle = r.header.Get("electric-handle")
	f.offset = r.header.Get("electric-offset")
	if !handleRE.MatchString(f.handle) || !offsetRE.MatchString(f.offset) {
		t.Fatalf("bad handle %q or offset %q", f.handle, f.offset)
	}
	if live {
		f.cursor = r.header.Get("electric-cursor")
	} else if s := r.header.Get("electric-schema"); f.schema == "" {
		f.schema = s
	}
	msgs = r.msgs(t)
	f.apply(msgs)
	_, utd := r.header["Electric-Up-To-Date"]
	last := len(msgs) > 0 && msgs[len(msgs)-1].control() == "up-to-date"
	if utd != last {
		t.Fatalf("electric-up-to-date header %v but body ends with up-to-date %v", utd, last)
	}
	return utd, msgs
}

func (f *follower) apply(msgs []msg) {
	t := f.e.t
	t.Helper()
	if f.tags == nil {
		f.tags = map[string][]string{}
	}
	for _, m := range msgs {
		if m.control() != "" {
			continue
		}
		f.log = append(f.log, m)
		k := m.key()
		if tags, ok := m.headers()["tags"].([]any); ok {
			f.tags[k] = nil
			for _, tg := range tags {
				f.tags[k] = append(f.tags[k], tg.(string))
			}
		}
		switch ev, _ := m.headers()["event"].(string); ev {
		case "move-in":
			continue
		case "move-out":
			// Rows whose tag has the pattern's value at its position leave.
			for _, p := range m.headers()["patterns"].([]any) {
				pat := p.(map[string]any)
				pos, val := int(pat["pos"].(float64)), pat["value"].(string)
				for key, tags := range f.tags {
					for _, tg := range tags {
						if slots := strings.Split(tg, "/"); pos < len(slots) && slots[pos] == val {
							delete(f.rows, key)
							delete(f.tags, key)
							break
						}
					}
				}
			}
			continue
		}
		switch m.op() {
		case "insert":
			if _, ok := f.rows[k]; ok {
				for _, l := range f.log {
					if j := mustMarshal(l); strings.Contains(j, `"event"`) || l.key() == k {
						t.Log(j)
					}
				}
				t.Fatalf("insert of a row already present (doubled): %v", m)
			}
			f.rows[k] = maps.Clone(m.value())
		case "update":
			row, ok := f.rows[k]
			if !ok {
				if f.lenient {
					continue
				}
				t.Fatalf("update of a row not present (lost insert): %v", m)
			}
			maps.Copy(row, m.value())
		case "delete":
			if _, ok := f.rows[k]; !ok && !f.lenient {
				t.Fatalf("delete of a row not present: %v", m)
			}
			delete(f.rows, k)
			delete(f.tags, k)
		default:
			t.Fatalf("unexpected message %v", m)
		}
	}
}

// catchUp requests non-live until up-to-date.
func (f *follower) catchUp() {
	f.e.t.Helper()
	for i := 0; ; i++ {
		if i > 10000 {
			f.e.t.Fatal("no up-to-date after 10000 requests")
		}
		if utd, _ := f.step(false); utd {
			return
		}
	}
}

// live makes one live request and returns its change messages.
func (f *follower) live() []msg {
	f.e.t.Helper()
	_, msgs := f.step(true)
	var out []msg
	for _, m := range msgs {
		if m.control() == "" {
			out = append(out, m)
		}
	}
	return out
}

// liveUntil polls live until cond holds or the deadline passes.
func (f *follower) liveUntil(d time.Duration, cond func() bool) {
	f.e.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			f.e.t.Fatalf("condition not met within %v; rows: %v", d, f.rows)
		}
		f.step(true)
	}
}

// converge follows the shape until it equals the rows of sql (see rows).
func (f *follower) converge(sql string, args ...any) {
	f.e.t.Helper()
	want := f.e.rows(sql, args...)
	deadline := time.Now().Add(30 * time.Second)
	for !reflect.DeepEqual(normBools(f.rows), normBools(want)) && time.Now().Before(deadline) {
		f.step(true)
		// A writer whose context was cancelled may still commit its last
		// transaction after want was read (the server finishes the query
		// the client gave up on): read the table again.
		want = f.e.rows(sql, args...)
	}
	f.equal(want)
}

// equal compares the materialised rows with what Postgres has.
func (f *follower) equal(want map[string]map[string]any) {
	f.e.t.Helper()
	if !reflect.DeepEqual(normBools(f.rows), normBools(want)) {
		var diff []string
		for k, w := range want {
			if g, ok := f.rows[k]; !ok {
				diff = append(diff, fmt.Sprintf("missing %s %v", k, w))
			} else if !reflect.DeepEqual(g, w) {
				diff = append(diff, fmt.Sprintf("differs %s: got %v want %v", k, g, w))
			}
		}
		for k, g := range f.rows {
			if _, ok := want[k]; !ok {
				diff = append(diff, fmt.Sprintf("extra %s %v", k, g))
			}
		}
		slices.Sort(diff)
		if len(diff) > 20 {
			diff = append(diff[:20], "...")
		}
		f.e.t.Fatalf("materialised shape differs from the table (%d vs %d rows):\n%s", len(f.rows), len(want), strings.Join(diff, "\n"))
	}
}

// normBools maps the booleans of replicated changes ("t", "f") to their
// snapshot form ("true", "false"), as clients parse both the same way (§4.2).
func normBools(rows map[string]map[string]any) map[string]map[string]any {
	out := make(map[string]map[string]any, len(rows))
	for k, r := range rows {
		n := make(map[string]any, len(r))
		for c, v := range r {
			switch v {
			case "t":
				v = "true"
			case "f":
				v = "false"
			}
			n[c] = v
		}
		out[k] = n
	}
	return out
}

// itemKey is the row key of public.items with a single PK value.
func itemKey(id string) string { return `"public"."items"/"` + id + `"` }

// ---------------------------------------------------------------------------
// §3.1 Initial sync

const itemsTable = `CREATE TABLE items (id int8 PRIMARY KEY, title text NOT NULL, n int4, done bool)`

func TestInitialSync(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, itemsTable,
		`INSERT INTO items VALUES (1, 'a', 10, true), (2, 'b', NULL, false), (3, 'c', 30, NULL)`)

	r := e.shape("table", "items", "offset", "-1")
	r.expectStatus(t, 200)
	hdrIs(t, r, "content-type", jsonCT)
	hdrIs(t, r, "electric-offset", "0_0")
	hdrIs(t, r, "electric-has-data", "true")
	hdrIs(t, r, "cache-control", ccInitial)
	hdrIs(t, r, "access-control-allow-origin", "*")
	hdrIs(t, r, "access-control-expose-headers", exposeHdrs)
	hdrIs(t, r, "access-control-allow-methods", "GET, POST, HEAD, DELETE, OPTIONS")
	hdrAbsent(t, r, "electric-up-to-date", "electric-cursor", "electric-snapshot", "surrogate-control")
	if !strings.HasPrefix(r.header.Get("electric-server"), "ElectricSQL/") {
		t.Errorf("electric-server %q", r.header.Get("electric-server"))
	}
	if r.header.Get("x-request-id") == "" {
		t.Error("no x-request-id")
	}
	handle := r.header.Get("electric-handle")
	if !handleRE.MatchString(handle) {
		t.Fatalf("handle %q does not look like <phash2>-<unix µs>", handle)
	}
	hdrIs(t, r, "etag", `"`+handle+`:-1:0_0"`)
	mustJSON(t, r.header.Get("electric-schema"),
		`{"id":{"type":"int8","pk_index":0,"not_null":true},"title":{"type":"text","not_null":true},"n":{"type":"int4"},"done":{"type":"bool"}}`)

	msgs := r.msgs(t)
	if len(msgs) != 4 {
		t.Fatalf("want 3 inserts + snapshot-end, got %s", r.body)
	}
	want := []string{
		`{"key":"\"public\".\"items\"/\"1\"","value":{"id":"1","title":"a","n":"10","done":"true"},"headers":{"operation":"insert","relation":["public","items"]}}`,
		`{"key":"\"public\".\"items\"/\"2\"","value":{"id":"2","title":"b","n":null,"done":"false"},"headers":{"operation":"insert","relation":["public","items"]}}`,
		`{"key":"\"public\".\"items\"/\"3\"","value":{"id":"3","title":"c","n":"30","done":null},"headers":{"operation":"insert","relation":["public","items"]}}`,
	}
	got := map[string]string{}
	for _, m := range msgs[:3] {
		b, _ := json.Marshal(m)
		got[m.key()] = string(b)
	}
	for _, w := range want {
		var wm msg
		json.Unmarshal([]byte(w), &wm)
		mustJSON(t, got[wm.key()], w)
	}
	end := msgs[3].headers()
	if msgs[3].control() != "snapshot-end" || len(msgs[3]) != 1 {
		t.Fatalf("last message %v, want snapshot-end", msgs[3])
	}
	for _, k := range []string{"xmin", "xmax"} {
		if s, _ := end[k].(string); !digitsRE.MatchString(s) {
			t.Errorf("snapshot-end %s = %v, want a decimal string", k, end[k])
		}
	}
	if xip, ok := end["xip_list"].([]any); !ok {
		t.Errorf("snapshot-end xip_list = %v", end["xip_list"])
	} else {
		for _, x := range xip {
			if s, _ := x.(string); !digitsRE.MatchString(s) {
				t.Errorf("xip_list element %v is not a decimal string", x)
			}
		}
	}
	if len(end) != 4 {
		t.Errorf("snapshot-end headers %v", end)
	}

	// The same definition again: the same shape, the same body.
	r2 := e.shape("table", "items", "offset", "-1", "handle", "ignored-with-offset-1")
	r2.expectStatus(t, 200)
	if r2.header.Get("electric-handle") != handle || !bytes.Equal(r2.body, r.body) {
		t.Errorf("second initial request: handle %q body %s", r2.header.Get("electric-handle"), r2.body)
	}

	// Catch-up: from 0_0 to up-to-date at 0_inf, with no changes.
	c := e.shape("table", "items", "offset", "0_0", "handle", handle)
	c.expectStatus(t, 200)
	hdrIs(t, c, "electric-offset", "0_inf")
	hdrIs(t, c, "electric-handle", handle)
	hdrIs(t, c, "electric-up-to-date", "")
	hdrIs(t, c, "cache-control", ccCatchUp)
	hdrAbsent(t, c, "electric-cursor")
	mustJSON(t, c.header.Get("electric-schema"), r.header.Get("electric-schema"))
	cm := c.msgs(t)
	if len(cm) != 1 || cm[0].control() != "up-to-date" || len(cm[0].headers()) != 2 {
		t.Fatalf("catch-up body %s", c.body)
	}
	if s, _ := cm[0].headers()["global_last_seen_lsn"].(string); !digitsRE.MatchString(s) {
		t.Errorf("global_last_seen_lsn %v", cm[0].headers()["global_last_seen_lsn"])
	}
	if et := c.header.Get("etag"); !strings.HasPrefix(et, `"`+handle+`:0_0:0_inf`) {
		t.Errorf("etag %s", et)
	}
	// At 0_inf: still up-to-date.
	c2 := e.shape("table", "items", "offset", "0_inf", "handle", handle)
	c2.expectStatus(t, 200)
	hdrIs(t, c2, "electric-offset", "0_inf")
	hdrIs(t, c2, "electric-up-to-date", "")
	// Leading zeros are tolerated (0_00 is 0_0).
	c3 := e.shape("table", "items", "offset", "0_00", "handle", handle)
	c3.expectStatus(t, 200)
	hdrIs(t, c3, "electric-offset", "0_inf")

	// HEAD: the same headers, no body.
	h := e.request("HEAD", "/v1/shape?"+qs("table", "items", "offset", "-1"))
	h.expectStatus(t, 200)
	if len(h.body) != 0 {
		t.Errorf("HEAD body %q", h.body)
	}
	for _, k := range []string{"electric-handle", "electric-offset", "electric-schema", "etag", "cache-control", "content-type", "electric-has-data"} {
		if h.header.Get(k) != r.header.Get(k) {
			t.Errorf("HEAD %s = %q, GET had %q", k, h.header.Get(k), r.header.Get(k))
		}
	}
}

func TestInitialSyncEmptyTable(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, itemsTable)
	r := e.shape("table", "items", "offset", "-1")
	r.expectStatus(t, 200)
	m := r.msgs(t)
	if len(m) != 1 || m[0].control() != "snapshot-end" {
		t.Fatalf("empty table: body %s, want only snapshot-end", r.body)
	}
	hdrIs(t, r, "electric-offset", "0_0")
	hdrAbsent(t, r, "electric-up-to-date")
	f := e.follow("table", "items")
	if len(f.rows) != 0 || f.offset != "0_inf" {
		t.Fatalf("rows %v offset %s", f.rows, f.offset)
	}
}

// ---------------------------------------------------------------------------
// §3.2 Live mode

func TestLiveLongPoll(t *testing.T) {
	t.Parallel()
	const timeout = 3 * time.Second
	e := newEnv(t, electrictest.Options{LongPollTimeout: timeout}, itemsTable)
	f := e.follow("table", "items")
	handle, start := f.handle, f.offset

	// A live request that starts before the commit returns the change.
	done := goFetch(t, "GET", e.srv.URL+"/v1/shape?"+qs("table", "items", "offset", start, "handle", handle, "live", "true", "cursor", ""))
	time.Sleep(300 * time.Millisecond)
	var xid string
	commitAt := time.Now()
	tx, err := e.pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tx.Exec(context.Background(), `INSERT INTO items VALUES (7, 'seven', 7, true)`)
	tx.QueryRow(context.Background(), `SELECT pg_current_xact_id()::text`).Scan(&xid)
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	var r response
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("live request did not return")
	}
	if lat := time.Since(commitAt); lat > timeout-time.Second {
		t.Errorf("live request returned %v after the commit: it was not woken by it", lat)
	}
	r.expectStatus(t, 200)
	hdrIs(t, r, "electric-handle", handle)
	hdrIs(t, r, "electric-has-data", "true")
	hdrIs(t, r, "electric-up-to-date", "")
	hdrIs(t, r, "cache-control", ccLive)
	hdrAbsent(t, r, "electric-schema")
	if c := r.header.Get("electric-cursor"); !digitsRE.MatchString(c) {
		t.Errorf("electric-cursor %q", c)
	}
	msgs := r.msgs(t)
	if len(msgs) != 2 {
		t.Fatalf("body %s", r.body)
	}
	h := msgs[0].headers()
	lsn, _ := h["lsn"].(string)
	if !digitsRE.MatchString(lsn) || lsn == "0" {
		t.Fatalf("lsn %v", h["lsn"])
	}
	mustJSON(t, mustMarshal(msgs[0]), fmt.Sprintf(
		`{"key":"\"public\".\"items\"/\"7\"","value":{"id":"7","title":"seven","n":"7","done":"t"},
		  "headers":{"operation":"insert","relation":["public","items"],"lsn":%q,"op_position":0,"txids":[%s],"last":true}}`, lsn, xid))
	mustJSON(t, mustMarshal(msgs[1]), fmt.Sprintf(`{"headers":{"control":"up-to-date","global_last_seen_lsn":%q}}`, lsn))
	hdrIs(t, r, "electric-offset", lsn+"_0")
	off := lsn + "_0"

	// Nothing more: the live request times out with 200 + up-to-date,
	// electric-has-data: false and the offset unchanged.
	r = e.shape("table", "items", "offset", off, "handle", handle, "live", "true", "cursor", r.header.Get("electric-cursor"))
	r.expectStatus(t, 200)
	if r.elapsed < timeout-200*time.Millisecond {
		t.Errorf("live request returned after %v, before the long-poll timeout %v", r.elapsed, timeout)
	}
	hdrIs(t, r, "electric-offset", off)
	hdrIs(t, r, "electric-has-data", "false")
	hdrIs(t, r, "electric-up-to-date", "")
	hdrIs(t, r, "cache-control", ccLive)
	hdrAbsent(t, r, "electric-schema")
	mustJSON(t, string(r.body), fmt.Sprintf(`[{"headers":{"control":"up-to-date","global_last_seen_lsn":%q}}]`, lsn))
	if et := strings.Split(strings.Trim(r.header.Get("etag"), `"`), ":"); len(et) != 4 {
		t.Errorf("no-change etag %q should have 4 segments", r.header.Get("etag"))
	}

	// live=1 and a bare &live count as live too; live=false does not.
	for _, q := range []string{"&live=1", "&live", "&live=yes"} {
		r := e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "0_0", "handle", handle)+q)
		r.expectStatus(t, 200)
		if r.header.Get("electric-cursor") == "" {
			t.Errorf("%s: not treated as live", q)
		}
	}
	r = e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "0_0", "handle", handle, "live", "false"))
	r.expectStatus(t, 200)
	hdrAbsent(t, r, "electric-cursor")
	if r.header.Get("electric-schema") == "" {
		t.Error("live=false: no electric-schema")
	}
}

func mustMarshal(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

// §3.3 electric-cursor.
func TestCursor(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 2 * time.Second}, itemsTable)
	f := e.follow("table", "items")
	// One change, so live requests from 0_inf answer at once.
	e.exec(`INSERT INTO items VALUES (1, 'a', 1, true)`)
	f.liveUntil(5*time.Second, func() bool { return len(f.rows) == 1 })
	epoch := time.Date(2024, 10, 9, 0, 0, 0, 0, time.UTC)
	live := func(cursor string, withCursor bool) int64 {
		kv := []string{"table", "items", "offset", "0_inf", "handle", f.handle, "live", "true"}
		if withCursor {
			kv = append(kv, "cursor", cursor)
		}
		r := e.shape(kv...)
		r.expectStatus(t, 200)
		c, err := strconv.ParseInt(r.header.Get("electric-cursor"), 10, 64)
		if err != nil {
			t.Fatalf("electric-cursor %q", r.header.Get("electric-cursor"))
		}
		return c
	}
	now := func() int64 { return int64(time.Since(epoch) / time.Second) }

	before := now()
	c := live("", false)
	after := now()
	if c%2 != 0 || c < before || c > after+2 {
		t.Errorf("cursor %d: want the next multiple of 2 s since 2024-10-09 in [%d, %d]", c, before, after+2)
	}
	for _, garbage := range []string{"", "abc", "-5", "1.5"} {
		if g := live(garbage, true); g%2 != 0 || g < before || g > now()+2 {
			t.Errorf("cursor=%q: got %d, want the interval bucket", garbage, g)
		}
	}
	// Echoing the cursor never gives it back.
	for range 3 {
		n := live(strconv.FormatInt(c, 10), true)
		if n <= c || n > c+3600 {
			t.Errorf("cursor=%d: got %d, want in (cursor, cursor+3600]", c, n)
		}
		c = n
	}
	big := int64(99_999_999_999)
	if n := live(strconv.FormatInt(big, 10), true); n <= big || n > big+3600 {
		t.Errorf("cursor=%d: got %d", big, n)
	}

	// A long-poll timeout under a second gives cursor 0.
	srv := electrictest.StartTest(t, electrictest.Options{DatabaseURL: e.db, LongPollTimeout: 500 * time.Millisecond})
	r := doRequest(t, "GET", srv.URL+"/v1/shape?"+qs("table", "items", "offset", "-1"))
	r = doRequest(t, "GET", srv.URL+"/v1/shape?"+qs("table", "items", "offset", "0_0", "handle", r.header.Get("electric-handle"), "live", "true"))
	r.expectStatus(t, 200)
	hdrIs(t, r, "electric-cursor", "0")
}

// ---------------------------------------------------------------------------
// §2 ETag / If-None-Match, §3.1 HEAD

func TestETag(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, itemsTable, `INSERT INTO items VALUES (1, 'a', 1, true)`)
	r := e.shape("table", "items", "offset", "-1")
	r.expectStatus(t, 200)
	handle := r.header.Get("electric-handle")
	etag := r.header.Get("etag")

	nm := e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "-1"), "If-None-Match", etag)
	nm.expectStatus(t, 304)
	if len(nm.body) != 0 {
		t.Errorf("304 with a body: %q", nm.body)
	}
	hdrIs(t, nm, "etag", etag)
	hdrIs(t, nm, "electric-handle", handle)
	hdrIs(t, nm, "electric-offset", "0_0")
	hdrIs(t, nm, "cache-control", ccInitial)
	hdrAbsent(t, nm, "electric-schema")

	// A list, unquoted entries, and a non-matching tag.
	e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "-1"), "If-None-Match", `"nope", `+etag).expectStatus(t, 304)
	e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "-1"), "If-None-Match", strings.Trim(etag, `"`)).expectStatus(t, 304)
	e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "-1"), "If-None-Match", `"`+handle+`:-1:0_1"`).expectStatus(t, 200)

	// Catch-up responses with data.
	e.exec(`INSERT INTO items VALUES (2, 'b', 2, false)`)
	f := e.follow("table", "items")
	f.converge(`SELECT format('"public"."items"/"%s"', id), id::text, title, n::text, done::text FROM items`)
	c := e.shape("table", "items", "offset", "0_inf", "handle", handle)
	c.expectStatus(t, 200)
	if len(c.msgs(t)) != 2 {
		t.Fatalf("catch-up %s", c.body)
	}
	ct := c.header.Get("etag")
	if want := `"` + handle + `:0_inf:` + c.header.Get("electric-offset") + `"`; ct != want {
		t.Errorf("etag %s, want %s", ct, want)
	}
	nm = e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "0_inf", "handle", handle), "If-None-Match", ct)
	nm.expectStatus(t, 304)
	hdrAbsent(t, nm, "electric-schema")
	hdrIs(t, nm, "cache-control", ccCatchUp)
	// Live with data: 304 carries electric-cursor.
	nm = e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "0_inf", "handle", handle, "live", "true"), "If-None-Match", ct)
	nm.expectStatus(t, 304)
	if nm.header.Get("electric-cursor") == "" {
		t.Error("304 to a live request without electric-cursor")
	}
	hdrIs(t, nm, "cache-control", ccLive)

	// A non-live catch-up that finds nothing new is an ordinary log
	// response in Electric (do_serve_shape_log): has-data true, a 3-part
	// etag, revalidatable.
	u := e.shape("table", "items", "offset", f.offset, "handle", handle)
	u.expectStatus(t, 200)
	hdrIs(t, u, "electric-has-data", "true")
	hdrIs(t, u, "electric-up-to-date", "")
	if want := `"` + handle + ":" + f.offset + ":" + f.offset + `"`; u.header.Get("etag") != want {
		t.Errorf("catch-up with nothing new: etag %s, want %s", u.header.Get("etag"), want)
	}
	e.request("GET", "/v1/shape?"+qs("table", "items", "offset", f.offset, "handle", handle), "If-None-Match", u.header.Get("etag")).expectStatus(t, 304)

	// No-change responses (offset=now, a live timeout) can never be
	// revalidated: has-data false and a 4th etag segment.
	for _, kv := range [][]string{
		{"table", "items", "offset", "now"},
		{"table", "items", "offset", f.offset, "handle", handle, "live", "true"},
	} {
		u := e.shape(kv...)
		u.expectStatus(t, 200)
		hdrIs(t, u, "electric-has-data", "false")
		if parts := strings.Split(strings.Trim(u.header.Get("etag"), `"`), ":"); len(parts) != 4 {
			t.Errorf("%v: etag %s, want 4 parts", kv, u.header.Get("etag"))
		}
		e.request("GET", "/v1/shape?"+qs(kv...), "If-None-Match", u.header.Get("etag")).expectStatus(t, 200)
	}
}

// ---------------------------------------------------------------------------
// §0, §7, §8.1, §8.2: routes, secret, CORS, health, DELETE

func TestRoutes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, itemsTable)

	h := e.request("GET", "/v1/health")
	h.expectStatus(t, 200)
	mustJSON(t, string(h.body), `{"status":"active"}`)
	hdrIs(t, h, "content-type", jsonCT)
	hdrIs(t, h, "cache-control", "no-cache, no-store, must-revalidate")
	if h.header.Get("electric-server") == "" {
		t.Error("health: no electric-server header")
	}

	root := e.request("GET", "/")
	root.expectStatus(t, 200)
	if len(root.body) != 0 {
		t.Errorf("/ body %q", root.body)
	}
	e.request("HEAD", "/").expectStatus(t, 200)

	for _, p := range []string{"/nope", "/v1", "/v1/shapes", "/v2/shape", "/v1/health/x"} {
		r := e.request("GET", p)
		r.expectStatus(t, 404)
		if strings.TrimSpace(string(r.body)) != "Not found" {
			t.Errorf("%s: body %q", p, r.body)
		}
	}

	d := e.request("DELETE", "/v1/shape?"+qs("table", "items"))
	d.expectStatus(t, 405)
	mustJSON(t, string(d.body), `{"message":"DELETE not allowed"}`)
	hdrIs(t, d, "cache-control", "no-cache")

	// Normalised paths are the shape endpoint.
	for _, p := range []string{"/v1//shape", "/v1/shape/", "/v1/%73hape", "/v1/shape//", "//v1/shape"} {
		r := e.rawRequest("GET", p+"?table=items&offset=-1")
		r.expectStatus(t, 200)
		if r.header.Get("electric-handle") == "" {
			t.Errorf("%s: not served as a shape", p)
		}
	}
}

func TestOptionsPreflight(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{Secret: "s3cret"}, itemsTable)
	r := e.request("OPTIONS", "/v1/shape?table=items",
		"Origin", "https://app.example",
		"Access-Control-Request-Method", "GET",
		"Access-Control-Request-Headers", "If-None-Match")
	r.expectStatus(t, 204)
	hdrIs(t, r, "access-control-allow-origin", "https://app.example")
	hdrIs(t, r, "access-control-allow-methods", "GET, POST, HEAD, DELETE, OPTIONS")
	hdrIs(t, r, "access-control-max-age", "86400")
	hdrIs(t, r, "access-control-allow-headers", "If-None-Match")
	hdrIs(t, r, "access-control-expose-headers", exposeHdrs)
	hdrAbsent(t, r, "cache-control")
	if len(r.body) != 0 {
		t.Errorf("body %q", r.body)
	}
	// authorization is never allowed; traceparent is.
	r = e.request("OPTIONS", "/v1/shape", "Access-Control-Request-Headers", "authorization")
	r.expectStatus(t, 204)
	hdrAbsent(t, r, "access-control-allow-headers")
	hdrIs(t, r, "access-control-allow-origin", "*")
	r = e.request("OPTIONS", "/v1/shape", "Access-Control-Request-Headers", "traceparent")
	hdrIs(t, r, "access-control-allow-headers", "traceparent")
	// The value is not split on commas.
	r = e.request("OPTIONS", "/v1/shape", "Access-Control-Request-Headers", "if-none-match, authorization")
	hdrAbsent(t, r, "access-control-allow-headers")
}

func TestSecret(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{Secret: "s3cret"}, itemsTable)
	const unauthorized = `{"message":"Unauthorized - Invalid API secret"}`
	check401 := func(r response, what string) {
		t.Helper()
		if r.status != 401 {
			t.Errorf("%s: status %d, want 401: %s", what, r.status, r.body)
			return
		}
		if !strings.HasPrefix(what, "HEAD") {
			mustJSON(t, string(r.body), unauthorized)
		}
		// The secret check comes before the CORS headers.
		hdrAbsent(t, r, "access-control-allow-origin", "electric-handle")
	}
	check401(e.shape("table", "items", "offset", "-1"), "no secret")
	check401(e.shape("table", "items", "offset", "-1", "secret", "wrong"), "wrong secret")
	check401(e.shape("table", "items", "offset", "-1", "secret", ""), "empty secret")
	check401(e.shape("table", "items", "offset", "-1", "api_secret", "S3CRET"), "wrong api_secret")
	check401(e.request("DELETE", "/v1/shape?table=items"), "DELETE without secret")
	check401(e.request("HEAD", "/v1/shape?table=items&offset=-1"), "HEAD without secret")
	for _, p := range []string{"/v1//shape", "/v1/shape/", "/v1/%73hape", "/v1/shape//", "/v1/./shape", "/v1/x/../shape"} {
		check401(e.rawRequest("GET", p+"?table=items&offset=-1"), "GET "+p)
		check401(e.rawRequest("DELETE", p+"?table=items"), "DELETE "+p)
		// With the secret, the normalised path is the shape endpoint.
		r := e.rawRequest("GET", p+"?secret=s3cret")
		r.expectStatus(t, 400)
	}

	ok := e.shape("table", "items", "offset", "-1", "secret", "s3cret")
	ok.expectStatus(t, 200)
	e.shape("table", "items", "offset", "-1", "api_secret", "s3cret").expectStatus(t, 200)
	// Not the secret: health, root, OPTIONS.
	e.request("GET", "/v1/health").expectStatus(t, 200)
	e.request("GET", "/").expectStatus(t, 200)
	e.request("OPTIONS", "/v1/shape").expectStatus(t, 204)
	// A validation error only after the secret check.
	r := e.shape("secret", "s3cret", "offset", "-1")
	r.expectStatus(t, 400)
	mustJSON(t, string(r.body), `{"message":"Invalid request","errors":{"table":["can't be blank"]}}`)
}

func TestDeleteShape(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{AllowDelete: true}, itemsTable, `INSERT INTO items VALUES (1, 'a', 1, true)`)
	notFound := `{"message":"No existing shape found"}`

	r := e.request("DELETE", "/v1/shape?"+qs("table", "items"))
	r.expectStatus(t, 404)
	mustJSON(t, string(r.body), notFound)

	r = e.request("DELETE", "/v1/shape")
	r.expectStatus(t, 400)
	mustJSON(t, string(r.body), `{"message":"Invalid request","errors":{"handle":["can't be blank when shape definition is missing"]}}`)

	f := e.follow("table", "items")
	old := f.handle
	// A definition with another handle.
	r = e.request("DELETE", "/v1/shape?"+qs("table", "items", "handle", "1-2"))
	r.expectStatus(t, 400)
	if !jsonEq(t, string(r.body), `{"message":"Invalid request","errors":{"handle":["The specified shape definition and handle do not match. Please ensure the shape definition is correct or omit the shape handle from the request to obtain a new one."]}}`) {
		t.Errorf("mismatch body %s", r.body)
	}
	r = e.request("DELETE", "/v1/shape?"+qs("table", "items"))
	r.expectStatus(t, 202)
	if len(r.body) != 0 {
		t.Errorf("202 body %q", r.body)
	}
	hdrIs(t, r, "cache-control", "no-cache")
	// The next request of a client of the deleted shape is a 409.
	c := e.shape("table", "items", "offset", f.offset, "handle", old)
	c.expectStatus(t, 409)
	if string(c.body) != mustRefBody {
		t.Errorf("409 body %s", c.body)
	}
	nh := c.header.Get("electric-handle")
	if nh == "" || nh == old {
		t.Fatalf("409 handle %q (old %q)", nh, old)
	}
	// Deletion by handle alone.
	r = e.request("DELETE", "/v1/shape?"+qs("handle", nh))
	r.expectStatus(t, 202)
	r = e.request("DELETE", "/v1/shape?"+qs("handle", nh))
	r.expectStatus(t, 404)
	mustJSON(t, string(r.body), notFound)
	// Invalid definitions are 400s.
	r = e.request("DELETE", "/v1/shape?"+qs("table", "a.b.c"))
	r.expectStatus(t, 400)
}

// ---------------------------------------------------------------------------
// §1.2 offset=now, §1 log=changes_only

func TestOffsetNow(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, itemsTable, `INSERT INTO items VALUES (1, 'a', 1, true)`)
	r := e.shape("table", "items", "offset", "now", "handle", "whatever")
	r.expectStatus(t, 200)
	hdrIs(t, r, "electric-offset", "0_inf")
	hdrIs(t, r, "electric-has-data", "false")
	hdrIs(t, r, "electric-up-to-date", "")
	m := r.msgs(t)
	if len(m) != 1 || m[0].control() != "up-to-date" {
		t.Fatalf("offset=now body %s", r.body)
	}
	if r.header.Get("electric-schema") == "" {
		t.Error("offset=now: no electric-schema")
	}
	handle := r.header.Get("electric-handle")
	if !handleRE.MatchString(handle) {
		t.Fatalf("handle %q", handle)
	}

	// Continue from there: only changes after it.
	e.exec(`INSERT INTO items VALUES (2, 'b', 2, false)`)
	f := e.newFollower("table", "items")
	f.handle, f.offset, f.lenient = handle, "0_inf", false
	f.liveUntil(5*time.Second, func() bool { return len(f.rows) == 1 })
	if _, ok := f.rows[itemKey("2")]; !ok {
		t.Fatalf("rows %v", f.rows)
	}
	// offset=now again: the latest offset of the shape.
	r = e.shape("table", "items", "offset", "now")
	r.expectStatus(t, 200)
	hdrIs(t, r, "electric-offset", f.offset)
	hdrIs(t, r, "electric-handle", handle)
	hdrIs(t, r, "electric-has-data", "false")
}

func TestChangesOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, itemsTable, `INSERT INTO items VALUES (1, 'a', 1, true), (2, 'b', 2, true)`)
	r := e.shape("table", "items", "offset", "-1", "log", "changes_only")
	r.expectStatus(t, 200)
	m := r.msgs(t)
	if len(m) != 1 || m[0].control() != "snapshot-end" {
		t.Fatalf("changes_only initial body %s, want only snapshot-end", r.body)
	}
	full := e.shape("table", "items", "offset", "-1", "log", "full")
	if full.header.Get("electric-handle") == r.header.Get("electric-handle") {
		t.Error("log=full and log=changes_only share a shape")
	}
	if len(full.msgs(t)) != 3 {
		t.Errorf("log=full body %s", full.body)
	}
	f := e.newFollower("table", "items", "log", "changes_only")
	f.lenient = true
	f.catchUp()
	if len(f.rows) != 0 {
		t.Fatalf("rows %v", f.rows)
	}
	e.exec(`UPDATE items SET title = 'A' WHERE id = 1; INSERT INTO items VALUES (3, 'c', 3, false)`)
	var got []msg
	for len(got) < 2 {
		got = append(got, f.live()...)
	}
	if got[0].op() != "update" || got[0].key() != itemKey("1") || got[1].op() != "insert" || got[1].key() != itemKey("3") {
		t.Fatalf("changes %v", got)
	}
}

// ---------------------------------------------------------------------------
// §5.1 409 must-refetch

func TestMustRefetch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 5 * time.Second}, itemsTable, `INSERT INTO items VALUES (1, 'a', 1, true)`)
	f := e.follow("table", "items")
	check409 := func(r response, wantHandle string) string {
		t.Helper()
		r.expectStatus(t, 409)
		if string(r.body) != mustRefBody {
			t.Errorf("409 body %q, want %s", r.body, mustRefBody)
		}
		hdrIs(t, r, "cache-control", cc409)
		hdrIs(t, r, "content-type", jsonCT)
		// No electric-cursor, to live requests too: Electric's
		// Response.error/3 leaves out the request's parameters, and
		// put_cursor_headers adds the cursor only when they say live.
		hdrAbsent(t, r, "electric-schema", "electric-up-to-date", "surrogate-control", "electric-cursor")
		h := r.header.Get("electric-handle")
		if wantHandle != "" && h != wantHandle {
			t.Errorf("409 electric-handle %q, want %q", h, wantHandle)
		}
		if !handleRE.MatchString(h) {
			t.Errorf("409 electric-handle %q", h)
		}
		return h
	}

	// Unknown handle: 409 with the current handle.
	check409(e.shape("table", "items", "offset", "0_inf", "handle", "123-456"), f.handle)
	check409(e.shape("table", "items", "offset", "0_inf", "handle", "123-456", "live", "true"), f.handle)
	// A handle of another definition: 409 with this definition's handle.
	g := e.follow("table", "items", "where", "id > 0")
	check409(e.shape("table", "items", "where", "id > 1", "offset", g.offset, "handle", g.handle), "")
	h2 := e.shape("table", "items", "where", "id > 1", "offset", "-1").header.Get("electric-handle")
	if h2 == "" || h2 == g.handle {
		t.Errorf("handle of where id > 1: %q", h2)
	}

	// Rotate() wakes a waiting live request with a 409 without a handle
	// (Electric's hold_until_change learns of the rotation without a
	// replacement) and max-age=1.
	done := goFetch(t, "GET", e.srv.URL+"/v1/shape?"+qs("table", "items", "offset", f.offset, "handle", f.handle, "live", "true"))
	time.Sleep(300 * time.Millisecond)
	n, err := e.srv.Rotate("items")
	if err != nil || n != 3 { // the shapes of items, where id > 0, where id > 1
		t.Fatalf("Rotate: %d shapes, %v", n, err)
	}
	var r response
	select {
	case r = <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("a live request was not woken by Rotate")
	}
	r.expectStatus(t, 409)
	if string(r.body) != mustRefBody {
		t.Errorf("409 body %q, want %s", r.body, mustRefBody)
	}
	hdrIs(t, r, "cache-control", cc409NoHandle)
	hdrAbsent(t, r, "electric-handle", "electric-cursor", "electric-schema", "surrogate-control")
	// Non-live with the old handle: a new handle.
	newHandle := check409(e.shape("table", "items", "offset", f.offset, "handle", f.handle), "")
	if newHandle == f.handle {
		t.Fatal("409 after Rotate gives the old handle")
	}
	// The follower recovers from the 409 and converges.
	f.step(false)
	if f.refetch != 1 || f.handle != newHandle || f.offset != "-1" {
		t.Fatalf("after 409: refetch %d handle %q offset %s", f.refetch, f.handle, f.offset)
	}
	f.catchUp()
	f.equal(e.rows(`SELECT format('"public"."items"/"%s"', id), id::text, title, n::text, done::text FROM items`))

	// RotateHandle and a bad table name.
	if !e.srv.RotateHandle(newHandle) || e.srv.RotateHandle(newHandle) {
		t.Error("RotateHandle")
	}
	if _, err := e.srv.Rotate("a.b.c"); err == nil {
		t.Error("Rotate(a.b.c) did not fail")
	}
	if n, _ := e.srv.Rotate("public.nothing"); n != 0 {
		t.Errorf("Rotate(nothing) = %d", n)
	}
	check409(e.shape("table", "items", "offset", f.offset, "handle", newHandle), "")
}

func TestTruncate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 5 * time.Second}, itemsTable, `INSERT INTO items VALUES (1, 'a', 1, true), (2, 'b', 2, false)`)
	f := e.follow("table", "items")
	g := e.follow("table", "items", "where", "n > 1")
	done := goFetch(t, "GET", e.srv.URL+"/v1/shape?"+qs("table", "items", "offset", f.offset, "handle", f.handle, "live", "true"))
	time.Sleep(300 * time.Millisecond)
	e.exec(`TRUNCATE items`)
	var r response
	select {
	case r = <-done:
	case <-time.After(4 * time.Second):
		t.Fatal("TRUNCATE did not wake the live request")
	}
	r.expectStatus(t, 409)
	if string(r.body) != mustRefBody {
		t.Errorf("body %s", r.body)
	}
	// A live wait ended by the rotation: no handle, max-age=1 (§5.1).
	hdrAbsent(t, r, "electric-handle")
	hdrIs(t, r, "cache-control", cc409NoHandle)
	// The other shape of the table is invalidated too.
	e.shape("table", "items", "where", "n > 1", "offset", g.offset, "handle", g.handle).expectStatus(t, 409)

	// Refetch: the table as it is now.
	e.exec(`INSERT INTO items VALUES (3, 'c', 3, true)`)
	f.step(true)
	if f.refetch != 1 {
		t.Fatalf("refetch %d", f.refetch)
	}
	f.converge(`SELECT format('"public"."items"/"%s"', id), id::text, title, n::text, done::text FROM items`)
}

// ---------------------------------------------------------------------------
// §3.4 Server-Sent Events

// sseEvent is one event of an SSE stream: data, or a comment.
type sseEvent struct {
	data, comment string
	at            time.Time
}

// openSSE starts an SSE request and returns its response and a channel of
// events, closed when the stream ends.
func (e *env) openSSE(kv ...string) (*http.Response, <-chan sseEvent) {
	e.t.Helper()
	res, err := httpClient.Get(e.srv.URL + "/v1/shape?" + qs(kv...))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { res.Body.Close() })
	ch := make(chan sseEvent, 100)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
			case strings.HasPrefix(line, "data: "):
				ch <- sseEvent{data: strings.TrimPrefix(line, "data: "), at: time.Now()}
			case strings.HasPrefix(line, ":"):
				ch <- sseEvent{comment: line, at: time.Now()}
			default:
				ch <- sseEvent{data: "unexpected line: " + line, at: time.Now()}
			}
		}
	}()
	return res, ch
}

func next(t *testing.T, ch <-chan sseEvent, d time.Duration) (sseEvent, bool) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		return ev, ok
	case <-time.After(d):
		t.Fatalf("no SSE event within %v", d)
		return sseEvent{}, false
	}
}

func TestSSE(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{SSETimeout: 3 * time.Second, SSEKeepAlive: 400 * time.Millisecond}, itemsTable,
		`INSERT INTO items VALUES (1, 'a', 1, true)`)
	f := e.follow("table", "items")
	start := time.Now()
	res, ch := e.openSSE("table", "items", "offset", f.offset, "handle", f.handle, "live", "true", "live_sse", "true", "cursor", "")
	if res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	// Electric's put_resp_headers applies to SSE too: etag, has-data and
	// up-to-date, besides the SSE headers.
	if _, ok := res.Header["Electric-Up-To-Date"]; !ok {
		t.Error("no electric-up-to-date on an SSE response")
	}
	for k, want := range map[string]string{"content-type": "text/event-stream", "cache-control": "public, max-age=2", "electric-handle": f.handle, "electric-offset": f.offset,
		"etag": `"` + f.handle + ":" + f.offset + ":" + f.offset + `"`, "electric-has-data": "true", "electric-up-to-date": ""} {
		if got := res.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if res.Header.Get("electric-cursor") == "" {
		t.Error("no electric-cursor")
	}
	if res.Header.Get("electric-schema") != "" {
		t.Error("electric-schema on a live response")
	}
	// Keep-alive comments while nothing happens.
	ev, _ := next(t, ch, 2*time.Second)
	if ev.comment != ": keep-alive" {
		t.Fatalf("first event %+v, want a keep-alive comment", ev)
	}
	// A change: its message, then up-to-date, as data events.
	e.exec(`INSERT INTO items VALUES (2, 'b', 2, false)`)
	var data []msg
	for len(data) < 2 {
		ev, ok := next(t, ch, 2*time.Second)
		if !ok {
			t.Fatal("stream ended")
		}
		if ev.comment != "" {
			continue
		}
		var m msg
		if err := json.Unmarshal([]byte(ev.data), &m); err != nil {
			t.Fatalf("data %q: %v", ev.data, err)
		}
		data = append(data, m)
	}
	if data[0].op() != "insert" || data[0].key() != itemKey("2") || data[1].control() != "up-to-date" {
		t.Fatalf("events %v", data)
	}
	if data[1].headers()["global_last_seen_lsn"] != data[0].headers()["lsn"] {
		t.Errorf("up-to-date %v after a change at lsn %v", data[1], data[0].headers()["lsn"])
	}
	// The stream ends after SSETimeout.
	for {
		ev, ok := next(t, ch, 4*time.Second)
		if !ok {
			break
		}
		if ev.comment == "" {
			t.Errorf("unexpected event %+v", ev)
		}
	}
	if d := time.Since(start); d < 2500*time.Millisecond || d > 5*time.Second {
		t.Errorf("stream lasted %v, SSETimeout is 3s", d)
	}

	// Data already there (at the old offset): sent at once, then the end.
	start = time.Now()
	_, ch = e.openSSE("table", "items", "offset", f.offset, "handle", f.handle, "live", "", "experimental_live_sse", "true")
	var n int
	for ev := range ch {
		if ev.data != "" {
			n++
		}
	}
	if n != 2 || time.Since(start) > time.Second {
		t.Errorf("immediate SSE response: %d events in %v", n, time.Since(start))
	}

	// A rotation ends the stream without an event; reconnecting gets 409.
	f.catchUp()
	_, ch = e.openSSE("table", "items", "offset", f.offset, "handle", f.handle, "live", "true", "live_sse", "true")
	time.Sleep(200 * time.Millisecond)
	e.srv.RotateHandle(f.handle)
	for ev := range ch {
		if ev.data != "" {
			t.Errorf("event after rotation: %+v", ev)
		}
	}
	r := e.shape("table", "items", "offset", f.offset, "handle", f.handle, "live", "true", "live_sse", "true")
	r.expectStatus(t, 409)
	if string(r.body) != mustRefBody {
		t.Errorf("409 body %s", r.body)
	}
}
