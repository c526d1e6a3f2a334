package electrictest_test

// The harness of the conformance suite (see conformance_test.go): a
// database with a server on it, raw HTTP requests and checks of responses.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"regexp"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

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

func mustMarshal(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}
