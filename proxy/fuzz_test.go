package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// recordingTransport stands in for the network in the fuzz target: it
// records what would reach Electric and answers an empty log.
type recordingTransport struct {
	mu   sync.Mutex
	seen []*url.URL
}

func (rt *recordingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rt.mu.Lock()
	rt.seen = append(rt.seen, r.URL)
	rt.mu.Unlock()
	h := http.Header{"Content-Type": {"application/json"}, "Cache-Control": {"public, max-age=60"}, "Electric-Offset": {"0_inf"}}
	return &http.Response{StatusCode: 200, Header: h, Body: io.NopCloser(strings.NewReader("[]")), Request: r}, nil
}

func FuzzShapeRequest(f *testing.F) {
	testKeys(f)
	rt := &recordingTransport{}
	p, err := New(Config{Upstream: "http://electric.invalid", Secret: upSecret, Auth: testAuth(), Shapes: testRules(),
		Transport: rt, Limits: Limits{RequestsPerSecond: -1, MaxLivePerUser: -1}})
	if err != nil {
		f.Fatal(err)
	}
	tok := token(f, "alice", map[string]any{"device_id": "laptop"})
	for _, s := range []struct{ path, query string }{
		{"/v1/shapes/items", "offset=-1"},
		{"/v1/shapes/items", "offset=-1&columns=%22id%22,title"},
		{"/v1/shapes/items", "offset=-1&columns=ID,%22Title%22"},
		{"/v1/shapes/items", "offset=0_inf&handle=1-2&live=true&cursor=3"},
		{"/v1/shapes/items", "offset=-1&table=users"},
		{"/v1/shapes/items", "offset=-1&%74able=users"},
		{"/v1/shapes/items", "offset=-1&table%00=users"},
		{"/v1/shapes/items", "offset=-1&where=true&params[1]=x"},
		{"/v1/shapes/items", "offset=-1&offset=0_0"},
		{"/v1/shapes/items", "offset=-1&secret=x&api_secret=y"},
		{"/v1/shapes/items", "offset=-1;where=true"},
		{"/v1/shapes/keys", "offset=-1&params%5B2%5D=phone"},
		{"/v1/shapes/mine", "offset=-1&replica=default&log=changes_only"},
		{"/v1/shapes/news", "offset=now&cache-buster=1&expired_handle=2"},
		{"/v1/shapes//items", "offset=-1"},
		{"/v1/shapes/%69tems", "offset=-1"},
		{"/v1/shapes/items/", "offset=-1"},
		{"/v1/%73hapes/items", "offset=-1"},
	} {
		f.Add(s.path, s.query)
	}
	f.Fuzz(func(t *testing.T, path, query string) {
		u, err := url.ParseRequestURI(path)
		if err != nil || u.RawQuery != "" || u.Host != "" {
			return
		}
		u.RawQuery = query
		req := httptest.NewRequest("GET", "/", nil)
		req.URL = u
		req.RequestURI = u.RequestURI()
		req.Header.Set("Authorization", "Bearer "+tok)
		rt.mu.Lock()
		rt.seen = nil
		rt.mu.Unlock()
		w := httptest.NewRecorder()
		p.ServeHTTP(w, req)
		rt.mu.Lock()
		seen := rt.seen
		rt.mu.Unlock()
		if w.Code >= 300 && len(seen) > 0 {
			t.Fatalf("refused (%d) yet forwarded: %v", w.Code, seen)
		}
		if w.Code == 200 && strings.HasPrefix(u.Path, "/v1/shapes/") && len(seen) != 1 {
			t.Fatalf("accepted but %d upstream requests", len(seen))
		}
		allowed := map[string]bool{"offset": true, "handle": true, "live": true, "cursor": true, "live_sse": true,
			"experimental_live_sse": true, "expired_handle": true, "cache-buster": true, "log": true,
			"table": true, "where": true, "params[1]": true, "params[2]": true, "columns": true, "replica": true, "secret": true}
		for _, up := range seen {
			if up.Path != "/v1/shape" {
				t.Fatalf("upstream path %q", up.Path)
			}
			q, err := url.ParseQuery(up.RawQuery)
			if err != nil {
				t.Fatalf("upstream query %q: %v", up.RawQuery, err)
			}
			if msg := checkPinned(q, allowed); msg != "" {
				t.Fatalf("outside the rules (%s): %v", msg, q)
			}
			switch q.Get("table") {
			case "items":
				if p1 := q.Get("params[1]"); p1 != `{"acme"}` && p1 != "alice" {
					t.Fatalf("params[1] %q", p1)
				}
			case TenantKeysTable:
				if q.Get("params[1]") != "alice" || q.Get("params[2]") != "laptop" {
					t.Fatalf("key shape params %v", q)
				}
			}
			for _, c := range strings.Split(q.Get("columns"), ",") {
				if c != "" && c != `"id"` && c != `"tenant_id"` && c != `"title"` && q.Get("table") == "items" && q.Get("where") == itemsWhere {
					t.Fatalf("column %q", c)
				}
			}
		}
	})
}

func TestParseColumns(t *testing.T) {
	for in, want := range map[string]string{
		`id,title`: "id|title", `"id","title"`: "id|title", `ID,Title`: "id|title", `"ID"`: "ID",
		`"a,b",c`: "a,b|c", `"fo""o"`: `fo"o`,
	} {
		got, err := parseColumns(in)
		if err != nil || strings.Join(got, "|") != want {
			t.Errorf("%s: %q %v, want %q", in, got, err, want)
		}
	}
	for _, in := range []string{``, `id,`, `"a"b"`, `""`, `a-b`, `1a`, `"unterminated`} {
		if got, err := parseColumns(in); err == nil {
			t.Errorf("%s: accepted as %q", in, got)
		}
	}
}
