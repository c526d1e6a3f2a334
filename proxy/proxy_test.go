package proxy

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

const (
	itemsWhere = "tenant_id = ANY($1::text[])"
	upSecret   = "electric-secret-s"
)

// recorder wraps the real electrictest server and records every query
// that reaches it. It is not a mock: every request is served by Electric.
type recorder struct {
	next   http.Handler
	mu     sync.Mutex
	reqs   []url.Values
	health atomic.Int32 // requests of /v1/health
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.URL.Path == "/v1/health" {
		r.health.Add(1)
	}
	if req.URL.Path == "/v1/shape" {
		r.mu.Lock()
		r.reqs = append(r.reqs, req.URL.Query())
		r.mu.Unlock()
	}
	r.next.ServeHTTP(w, req)
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.reqs)
}

func (r *recorder) all() []url.Values {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.reqs)
}

type env struct {
	t       testing.TB
	db      string
	up      *electrictest.Server
	rec     *recorder
	upURL   string
	p       *Proxy
	url     string
	logs    *syncBuffer
	cleanup []func()
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func testRules() []ShapeRule {
	return []ShapeRule{
		{Name: "items", Table: "items", Where: itemsWhere, Params: []string{"$tenants"},
			Columns: []string{"id", "tenant_id", "title"}, Roles: []string{"reader", "admin"}},
		{Name: "news", Table: "public_news"},
		{Name: "mine", Table: "items", Where: "owner = $1", Params: []string{"sub"}, Replica: "full"},
		{Name: "keys", Kind: KindTenantKeys},
	}
}

func newEnv(t testing.TB, mut func(*Config)) *env {
	t.Helper()
	return newEnvSQL(t, testSchema, mut)
}

const testSchema = `
CREATE TABLE items (id int PRIMARY KEY, tenant_id text NOT NULL, owner text, title text, note text);
INSERT INTO items VALUES (1,'acme','alice','a1','secret1'),(2,'acme','bob','a2','secret2'),(3,'globex','carol','g1','secret3');
CREATE TABLE public_news (id int PRIMARY KEY, body text);
INSERT INTO public_news VALUES (1,'hello');
CREATE TABLE shapeseal_tenant_keys (tenant_id text, user_id text, device_id text, generation bigint, wrapped bytea,
  PRIMARY KEY (tenant_id, user_id, device_id));
INSERT INTO shapeseal_tenant_keys VALUES ('acme','alice','laptop',1,'\x01'),('acme','alice','phone',1,'\x02'),('acme','bob','pc',1,'\x03'),('globex','bob','pc',1,'\x04');
`

// newEnvSQL starts Postgres with schema, electrictest behind a recorder,
// and the proxy (configured by mut) in front.
func newEnvSQL(t testing.TB, schema string, mut func(*Config)) *env {
	t.Helper()
	testKeys(t)
	db := pgtest.NewDB(t)
	pgtest.Exec(t, db, schema)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	up, err := electrictest.New(ctx, electrictest.Options{DatabaseURL: db, Secret: upSecret, LongPollTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{next: up}
	hs := httptest.NewServer(rec)
	e := &env{t: t, db: db, up: up, rec: rec, upURL: hs.URL, logs: &syncBuffer{}}
	cfg := Config{Upstream: hs.URL, Secret: upSecret, Auth: testAuth(), Shapes: testRules(),
		Limits: Limits{RequestsPerSecond: -1, MaxLivePerUser: -1}}
	cfg.Logger = newTestLogger(e.logs)
	if mut != nil {
		mut(&cfg)
	}
	e.p, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ps := httptest.NewServer(e.p)
	e.url = ps.URL
	t.Cleanup(func() {
		ps.CloseClientConnections()
		ps.Close()
		hs.CloseClientConnections()
		up.Close()
		hs.Close()
		e.checkUpstream()
	})
	return e
}

// checkUpstream asserts that every upstream request stayed inside a rule.
func (e *env) checkUpstream() {
	allowed := map[string]bool{"offset": true, "handle": true, "live": true, "cursor": true, "live_sse": true,
		"experimental_live_sse": true, "expired_handle": true, "cache-buster": true, "log": true,
		"table": true, "where": true, "params[1]": true, "params[2]": true, "columns": true, "replica": true, "secret": true}
	for _, q := range e.rec.all() {
		if err := checkPinned(q, allowed); err != "" {
			e.t.Errorf("upstream request outside the rules: %s: %v", err, q)
		}
	}
}

func checkPinned(q url.Values, allowed map[string]bool) string {
	for k, v := range q {
		if !allowed[k] {
			return "key " + k
		}
		if len(v) != 1 {
			return "repeated " + k
		}
	}
	if q.Get("secret") != upSecret {
		return "secret"
	}
	switch q.Get("table") {
	case "items":
		switch q.Get("where") {
		case itemsWhere:
			if q.Get("columns") == "" || strings.Contains(q.Get("columns"), "note") || q.Has("params[2]") {
				return "items columns/params"
			}
		case "owner = $1":
			if q.Get("replica") != "full" || q.Has("params[2]") {
				return "mine replica"
			}
		default:
			return "items where"
		}
	case "public_news":
		if q.Has("where") || q.Has("params[1]") {
			return "news where"
		}
	case TenantKeysTable:
		w := q.Get("where")
		if !(w == "user_id = $1" && !q.Has("params[2]") || w == "user_id = $1 AND device_id = $2" && q.Get("params[2]") != "") || q.Get("params[1]") == "" {
			return "keys where"
		}
	default:
		return "table"
	}
	return ""
}

func token(t testing.TB, user string, extra map[string]any) string {
	c := claimsFor(user, map[string]any{"roles": []string{"reader"}, "tenant_ids": []string{"acme"}})
	for k, v := range extra {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return sign(t, "RS256", "rs", rsaKey, c)
}

func (e *env) do(method, rawURL, tok string, body io.Reader) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest(method, rawURL, body)
	if err != nil {
		e.t.Fatal(err)
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp
}

func readBody(t testing.TB, resp *http.Response) string {
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// follow reads a shape through the proxy with the Go client to the first
// up-to-date and returns the rows by key.
func follow(t *testing.T, shapeURL, tok string) map[string]client.Row {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := client.New(client.Options{URL: shapeURL, TokenSource: client.StaticToken(tok),
		OnError: func(error) *client.Recovery { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string]client.Row{}
	for m, err := range s.Messages(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if m.IsChange() {
			rows[m.Key] = m.Value
		}
	}
	return rows
}

func TestClientThroughProxy(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	tok := token(t, "alice", nil)
	rows := follow(t, e.url+"/v1/shapes/items", tok)
	if len(rows) != 2 {
		t.Fatalf("rows %v, want the two acme items", rows)
	}
	for _, r := range rows {
		if r["tenant_id"] != "acme" {
			t.Errorf("row of another tenant: %v", r)
		}
		if _, ok := r["note"]; ok {
			t.Errorf("column outside the allowlist: %v", r)
		}
	}
	// Two tenants as an array claim.
	rows = follow(t, e.url+"/v1/shapes/items", token(t, "root", map[string]any{"tenant_ids": []string{"acme", "globex"}}))
	if len(rows) != 3 {
		t.Fatalf("rows %v, want 3", rows)
	}
	// Narrowed columns (quoted, as the TS client sends them).
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	s, err := client.New(client.Options{URL: e.url + "/v1/shapes/items", TokenSource: client.StaticToken(tok),
		Params: client.Params{Columns: []string{"id", "title"}}, OnError: func(error) *client.Recovery { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	for m, err := range s.Messages(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if m.IsChange() && (len(m.Value) != 2 || m.Value["title"] == nil) {
			t.Fatalf("narrowed row %v", m.Value)
		}
	}
	// Live: a change reaches the client through the proxy.
	s, err = client.New(client.Options{URL: e.url + "/v1/shapes/mine", TokenSource: client.StaticToken(tok), Live: true})
	if err != nil {
		t.Fatal(err)
	}
	upToDate := 0
	for m, err := range s.Messages(ctx) {
		if err != nil {
			t.Fatal(err)
		}
		if m.IsUpToDate() {
			upToDate++
			if upToDate == 1 {
				pgtest.Exec(t, e.db, `INSERT INTO items VALUES (10,'acme','alice','new','x'), (11,'acme','bob','other','y')`)
			}
		}
		if m.IsChange() && m.Key != "" && m.Value["owner"] != "alice" {
			t.Fatalf("another user's row: %v", m.Value)
		}
		if m.IsChange() && m.Value["id"] == "10" {
			break
		}
	}
	if !strings.Contains(e.logs.String(), `"user":"alice"`) || strings.Contains(e.logs.String(), tok) || strings.Contains(e.logs.String(), upSecret) {
		t.Errorf("audit log: %s", e.logs.String())
	}
}

func TestKeyShapes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	rows := follow(t, e.url+"/v1/shapes/keys", token(t, "alice", map[string]any{"device_id": "laptop"}))
	if len(rows) != 1 {
		t.Fatalf("alice laptop: %v", rows)
	}
	for _, r := range rows {
		if r["user_id"] != "alice" || r["device_id"] != "laptop" {
			t.Fatalf("row %v", r)
		}
	}
	rows = follow(t, e.url+"/v1/shapes/keys", token(t, "alice", nil))
	if len(rows) != 2 {
		t.Fatalf("alice: %v", rows)
	}
	rows = follow(t, e.url+"/v1/shapes/keys", token(t, "bob", nil))
	for _, r := range rows {
		if r["user_id"] != "bob" {
			t.Fatalf("bob got %v", r)
		}
	}
	// Asking for alice's keys with bob's token never reaches upstream.
	n := e.rec.count()
	bob := token(t, "bob", nil)
	for _, q := range []string{"offset=-1&where=user_id%3D%27alice%27", "offset=-1&params[1]=alice", "offset=-1&params%5B1%5D=alice", "offset=-1&table=shapeseal_tenant_keys"} {
		resp := e.do("GET", e.url+"/v1/shapes/keys?"+q, bob, nil)
		if body := readBody(t, resp); resp.StatusCode != 400 {
			t.Errorf("%s: %d %s", q, resp.StatusCode, body)
		}
	}
	if e.rec.count() != n {
		t.Fatal("a refused request reached upstream")
	}
}

// TestAttackSuite: requests that try to choose the shape, invalid tokens,
// and valid tokens without what the rule needs are all refused, and none
// of them reaches upstream.
func TestAttackSuite(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	tok := token(t, "alice", nil)
	before := e.rec.count()
	checkAttackRequests(t, e, tok)
	checkAttackTokens(t, e)
	checkAttackClaims(t, e)
	if n := e.rec.count(); n != before {
		t.Fatalf("%d refused requests reached upstream", n-before)
	}
}

// checkAttackRequests sends requests that name a table, where, params or
// other parameters, use a non-canonical path, another method or a body,
// with the valid token tok: each gets its 4xx (a 400 with a JSON body).
func checkAttackRequests(t *testing.T, e *env, tok string) {
	t.Helper()
	type attack struct {
		method, target string // target: path and query, raw
		body           string
		want           int
	}
	attacks := []attack{}
	add := func(want int, targets ...string) {
		for _, tg := range targets {
			attacks = append(attacks, attack{"GET", tg, "", want})
		}
	}
	add(400, badShapeTargets(tok)...)
	add(404, "/v1/shape?offset=-1&table=items", "/v1/shapes/nope?offset=-1", "/v1/shapes?offset=-1", "/v1/shapes/items/x?offset=-1",
		"//v1/shapes/items?offset=-1") // sent as http://v1/shapes/items: path /shapes/items
	attacks = append(attacks,
		attack{"POST", "/v1/shapes/items?offset=-1", `{"table":"users","where":"true"}`, 400},
		attack{"POST", "/v1/shapes/items?offset=-1", `{}`, 400},
		attack{"GET", "/v1/shapes/items?offset=-1", `{"table":"users"}`, 400},
		attack{"PUT", "/v1/shapes/items?offset=-1", ``, 405},
		attack{"DELETE", "/v1/shapes/items?offset=-1&handle=x", ``, 405},
	)
	for _, a := range attacks {
		var body io.Reader
		if a.body != "" {
			body = strings.NewReader(a.body)
		}
		resp := e.rawDo(a.method, a.target, tok, body)
		b := readBody(t, resp)
		if resp.StatusCode != a.want {
			t.Errorf("%s %s: %d %s, want %d", a.method, a.target, resp.StatusCode, b, a.want)
		}
		if resp.StatusCode == 400 && !json.Valid([]byte(b)) {
			t.Errorf("%s: body not JSON: %q", a.target, b)
		}
	}
}

// badShapeTargets are shape request targets (path and query, raw) that
// are answered with 400 (tok, a valid token, is sent in one query).
func badShapeTargets(tok string) []string {
	return []string{
		"/v1/shapes/items?offset=-1&table=users",
		"/v1/shapes/items?offset=-1&where=1%3D1",
		"/v1/shapes/items?offset=-1&where=true",
		"/v1/shapes/items?offset=-1&params[1]=%7Bglobex%7D",
		"/v1/shapes/items?offset=-1&params%5B1%5D=%7Bglobex%7D",
		"/v1/shapes/items?offset=-1&params=%7B%221%22%3A%22globex%22%7D",
		"/v1/shapes/items?offset=-1&secret=" + upSecret,
		"/v1/shapes/items?offset=-1&api_secret=x",
		"/v1/shapes/items?offset=-1&replica=full",
		"/v1/shapes/items?offset=-1&queryable_columns=id",
		"/v1/shapes/items?offset=-1&subset__where=true",
		"/v1/shapes/items?offset=-1&subset[where]=true",
		"/v1/shapes/items?offset=-1&subset__params=%7B%7D",
		"/v1/shapes/items?offset=-1&experimental_compaction=true",
		"/v1/shapes/items?offset=-1&foo=bar",
		"/v1/shapes/items?offset=-1&offset=-1",
		"/v1/shapes/items?offset=-1&live=false&live=true",
		"/v1/shapes/items?offset=-1&%74able=users",
		"/v1/shapes/items?offset=-1&table%00=users",
		"/v1/shapes/items?offset=-1&Table=users",
		"/v1/shapes/items?offset=-1&%20table=users",
		"/v1/shapes/items?offset=-1;table=users",
		"/v1/shapes/items?offset=-1&&live=true",
		"/v1/shapes/items?offset=-1&live",
		"/v1/shapes/items?offset=-1&live=yes",
		"/v1/shapes/items?offset=-1%26table%3Dusers",
		"/v1/shapes/items?offset=%2D1&table=users",
		"/v1/shapes/items?offset=bogus",
		"/v1/shapes/items?offset=0_0",
		"/v1/shapes/items?offset=0_0&handle=..%2Fx",
		"/v1/shapes/items?offset=-1&cursor=1%20OR%201",
		"/v1/shapes/items?offset=now&live=true",
		"/v1/shapes/items?offset=-1&columns=note",
		"/v1/shapes/items?offset=-1&columns=id,note",
		"/v1/shapes/items?offset=-1&columns=%22id%22,%22note%22",
		"/v1/shapes/items?offset=-1&columns=ID,NOTE",
		"/v1/shapes/items?offset=-1&columns=id%2C%22note",
		"/v1/shapes/items?offset=-1&columns=id&columns=title",
		"/v1/shapes/items",
		"/v1/shapes/items?",
		"/v1/shapes/items?token=" + tok,
		"/v1/shapes//items?offset=-1",
		"/v1//shapes/items?offset=-1",
		"/v1/shapes/./items?offset=-1",
		"/v1/shapes/items/?offset=-1",
		"/v1/shapes/%69tems?offset=-1",
		"/v1/shapes/items%2F..%2Fnews?offset=-1",
		"/v1/shapes/items%00?offset=-1",
		"/v1/%73hapes/items?offset=-1",
		"/v1/shapes/news/../items?offset=-1",
	}
}

// checkAttackTokens sends invalid or missing tokens: each gets 401 with
// WWW-Authenticate, and the token is never echoed.
func checkAttackTokens(t *testing.T, e *env) {
	t.Helper()
	for name, tc := range rejectCases(t) {
		resp := e.do("GET", e.url+"/v1/shapes/items?offset=-1", tc.token, nil)
		b := readBody(t, resp)
		www := resp.Header.Get("WWW-Authenticate")
		if resp.StatusCode != 401 || !strings.Contains(www, `error="invalid_token"`) {
			t.Errorf("%s: %d %q %s", name, resp.StatusCode, www, b)
		}
		if len(tc.token) > 8 && (strings.Contains(b, tc.token) || strings.Contains(www, tc.token)) {
			t.Errorf("%s: token echoed", name)
		}
	}
	for name, h := range map[string]string{
		"missing": "", "basic": "Basic YWxpY2U6cA==", "empty bearer": "Bearer ", "bearer only": "Bearer",
	} {
		req, _ := http.NewRequest("GET", e.url+"/v1/shapes/items?offset=-1", nil)
		if h != "" {
			req.Header.Set("Authorization", h)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		if resp.StatusCode != 401 || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: %d %q", name, resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
		}
	}
}

// checkAttackClaims sends valid tokens without an allowed role, or without
// the claim the where needs: 403 (401 for a malformed claim).
func checkAttackClaims(t *testing.T, e *env) {
	t.Helper()
	for name, tk := range map[string]string{
		"no role":     token(t, "alice", map[string]any{"roles": []string{"guest"}}),
		"no roles":    token(t, "alice", map[string]any{"roles": nil}),
		"no tenants":  token(t, "alice", map[string]any{"tenant_ids": nil}),
		"bad tenants": token(t, "alice", map[string]any{"tenant_ids": map[string]any{"a": 1}}),
	} {
		resp := e.do("GET", e.url+"/v1/shapes/items?offset=-1", tk, nil)
		b := readBody(t, resp)
		want := 403
		if name == "bad tenants" {
			want = 401 // a malformed tenants claim invalidates the token
		}
		if resp.StatusCode != want {
			t.Errorf("%s: %d %s", name, resp.StatusCode, b)
		}
	}
}

// rawDo sends a request with the target exactly as written.
func (e *env) rawDo(method, target, tok string, body io.Reader) *http.Response {
	e.t.Helper()
	req, err := http.NewRequest(method, e.url+"/", body)
	if err != nil {
		e.t.Fatal(err)
	}
	req.URL.Opaque = target // sent verbatim as the request target
	if i := strings.IndexByte(target, '?'); i >= 0 {
		req.URL.Opaque, req.URL.RawQuery = target[:i], target[i+1:]
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp
}
