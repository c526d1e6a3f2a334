package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// initial does the offset=-1 request and returns offset and handle after
// the snapshot (following pages until the snapshot ends).
func (e *env) initial(shape, tok string) (offset, handle string, resp *http.Response) {
	e.t.Helper()
	resp = e.do("GET", e.url+"/v1/shapes/"+shape+"?offset=-1", tok, nil)
	body := readBody(e.t, resp)
	if resp.StatusCode != 200 {
		e.t.Fatalf("initial %s: %d %s", shape, resp.StatusCode, body)
	}
	offset, handle = resp.Header.Get("electric-offset"), resp.Header.Get("electric-handle")
	// Catch up to up-to-date.
	for range 10 {
		r := e.do("GET", e.url+"/v1/shapes/"+shape+"?offset="+offset+"&handle="+handle, tok, nil)
		b := readBody(e.t, r)
		if r.StatusCode != 200 {
			e.t.Fatalf("catch-up: %d %s", r.StatusCode, b)
		}
		offset = r.Header.Get("electric-offset")
		if _, ok := r.Header["Electric-Up-To-Date"]; ok {
			return offset, handle, resp
		}
	}
	e.t.Fatal("never up to date")
	return
}

func TestStreamingLive(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	alice := token(t, "alice", nil)
	carol := token(t, "carol", map[string]any{"tenant_ids": []string{"globex"}})
	aOff, aHandle, _ := e.initial("items", alice)
	cOff, cHandle, _ := e.initial("items", carol)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		who  string
		at   time.Time
		body string
		code int
	}
	results := make(chan result, 2)
	poll := func(who, tok, off, handle string) {
		req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/v1/shapes/items?offset="+off+"&handle="+handle+"&live=true", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			results <- result{who: who, code: -1, body: err.Error()}
			return
		}
		b := readBody(t, resp)
		results <- result{who, time.Now(), b, resp.StatusCode}
	}
	go poll("alice", alice, aOff, aHandle)
	go poll("carol", carol, cOff, cHandle)
	time.Sleep(300 * time.Millisecond)
	start := time.Now()
	pgtest.Exec(t, e.db, `INSERT INTO items VALUES (20,'acme','alice','live','x')`)
	r := <-results
	if r.who != "alice" || r.code != 200 || !strings.Contains(r.body, `"live"`) {
		t.Fatalf("first live response: %+v", r)
	}
	if d := r.at.Sub(start); d > 2*time.Second {
		t.Fatalf("live response held back %v", d)
	}
	select {
	case r2 := <-results:
		if r2.at.Sub(start) < 2*time.Second {
			t.Fatalf("carol's poll answered early: %+v", r2)
		}
	case <-time.After(500 * time.Millisecond):
		// carol's long poll is still open upstream, as it should be.
	}
}

func TestSSEFlushed(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	alice := token(t, "alice", nil)
	off, handle, _ := e.initial("items", alice)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/v1/shapes/items?offset="+off+"&handle="+handle+"&live=true&live_sse=true", nil)
	req.Header.Set("Authorization", "Bearer "+alice)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("SSE: %d %v", resp.StatusCode, resp.Header)
	}
	go func() {
		time.Sleep(200 * time.Millisecond)
		pgtest.Exec(t, e.db, `INSERT INTO items VALUES (30,'acme','alice','sse','x')`)
	}()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if strings.Contains(sc.Text(), `"sse"`) {
			return // the event arrived while the stream is still open
		}
	}
	t.Fatalf("SSE event not received: %v", sc.Err())
}

func TestCacheHeaders(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	alice := token(t, "alice", nil)
	for _, tc := range []struct {
		shape   string
		private bool
	}{{"items", true}, {"mine", true}, {"keys", true}, {"news", false}} {
		resp := e.do("GET", e.url+"/v1/shapes/"+tc.shape+"?offset=-1", alice, nil)
		readBody(t, resp)
		cc := resp.Header.Get("Cache-Control")
		if resp.StatusCode != 200 || cc == "" {
			t.Fatalf("%s: %d cache-control %q", tc.shape, resp.StatusCode, cc)
		}
		if tc.private != strings.HasPrefix(cc, "private") || tc.private && (strings.Contains(cc, "public") || strings.Contains(cc, "s-maxage")) {
			t.Errorf("%s: cache-control %q", tc.shape, cc)
		}
		if !tc.private && !strings.Contains(cc, "public") {
			t.Errorf("%s: public shape lost its cache-control: %q", tc.shape, cc)
		}
		if !strings.Contains(strings.Join(resp.Header.Values("Vary"), ","), "Authorization") {
			t.Errorf("%s: Vary %v", tc.shape, resp.Header.Values("Vary"))
		}
		for _, h := range []string{"Electric-Handle", "Electric-Offset", "Electric-Schema", "Etag"} {
			if resp.Header.Get(h) == "" {
				t.Errorf("%s: %s not forwarded", tc.shape, h)
			}
		}
		if resp.Header.Get("X-Request-Id") == "" {
			t.Errorf("no request id")
		}
		// Revalidation and HEAD pass through.
		req, _ := http.NewRequest("GET", e.url+"/v1/shapes/"+tc.shape+"?offset=-1", nil)
		req.Header.Set("Authorization", "Bearer "+alice)
		req.Header.Set("If-None-Match", resp.Header.Get("Etag"))
		r2, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, r2)
		if r2.StatusCode != http.StatusNotModified {
			t.Errorf("%s: If-None-Match gave %d", tc.shape, r2.StatusCode)
		}
		r3 := e.do("HEAD", e.url+"/v1/shapes/"+tc.shape+"?offset=-1", alice, nil)
		if b := readBody(t, r3); r3.StatusCode != 200 || b != "" || r3.Header.Get("Electric-Handle") == "" {
			t.Errorf("%s: HEAD %d %q", tc.shape, r3.StatusCode, b)
		}
	}
}

func TestMustRefetchPassesThrough(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	alice := token(t, "alice", nil)
	off, handle, _ := e.initial("items", alice)
	if !e.up.RotateHandle(handle) {
		t.Fatal("rotate")
	}
	resp := e.do("GET", e.url+"/v1/shapes/items?offset="+off+"&handle="+handle, alice, nil)
	body := readBody(t, resp)
	if resp.StatusCode != 409 || !strings.Contains(body, "must-refetch") {
		t.Fatalf("409: %d %s", resp.StatusCode, body)
	}
	if h := resp.Header.Get("electric-handle"); h == "" || h == handle {
		t.Errorf("409 handle %q", h)
	}
	if cc := resp.Header.Get("Cache-Control"); !strings.HasPrefix(cc, "private") {
		t.Errorf("409 cache-control %q", cc)
	}
}

func TestUpstreamDown(t *testing.T) {
	t.Parallel()
	testKeys(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	logs := &syncBuffer{}
	p, err := New(Config{Upstream: "http://" + addr, Secret: upSecret, Auth: testAuth(), Shapes: testRules(), Logger: newTestLogger(logs)})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p)
	defer srv.Close()
	e := &env{t: t, url: srv.URL}
	resp := e.do("GET", srv.URL+"/v1/shapes/items?offset=-1", token(t, "alice", nil), nil)
	body := readBody(t, resp)
	var m map[string]any
	if resp.StatusCode != 502 || json.Unmarshal([]byte(body), &m) != nil || m["message"] == nil {
		t.Fatalf("upstream down: %d %s", resp.StatusCode, body)
	}
	if strings.Contains(logs.String(), upSecret) {
		t.Fatalf("secret logged: %s", logs.String())
	}
	resp = e.do("GET", srv.URL+"/healthz", "", nil)
	readBody(t, resp)
	if resp.StatusCode != 503 {
		t.Fatalf("healthz with upstream down: %d", resp.StatusCode)
	}
	resp = e.do("GET", srv.URL+"/metrics", "", nil)
	if body := readBody(t, resp); !strings.Contains(body, "shapeseal_proxy_upstream_errors_total 2") {
		t.Fatalf("metrics: %s", body)
	}
}

func TestWrongUpstreamSecret(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.Secret = "wrong" })
	resp := e.do("GET", e.url+"/v1/shapes/news?offset=-1", token(t, "alice", nil), nil)
	readBody(t, resp)
	if resp.StatusCode != 502 {
		t.Fatalf("wrong secret: %d (a 401 would make clients refresh their token)", resp.StatusCode)
	}
	e.rec.mu.Lock()
	e.rec.reqs = nil // the wrong secret is expected here
	e.rec.mu.Unlock()
}

func TestRateLimits(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.Limits = Limits{RequestsPerSecond: 0.5, Burst: 4, MaxLivePerUser: 1} })
	alice := token(t, "alice", nil)
	off, handle, _ := e.initial("news", alice) // 2 requests
	// One live poll is allowed, a second concurrent one is not.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/v1/shapes/news?offset="+off+"&handle="+handle+"&live=true", nil)
		req.Header.Set("Authorization", "Bearer "+alice)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			done <- -1
			return
		}
		readBody(t, resp)
		done <- resp.StatusCode
	}()
	time.Sleep(300 * time.Millisecond)
	bob := token(t, "bob", nil)
	resp := e.do("GET", e.url+"/v1/shapes/news?offset="+off+"&handle="+handle+"&live=true", alice, nil)
	if body := readBody(t, resp); resp.StatusCode != 429 || resp.Header.Get("Retry-After") == "" || !strings.Contains(body, "concurrent live") {
		t.Fatalf("second live poll: %d %s", resp.StatusCode, body)
	}
	// The bucket is now empty for alice, not for bob.
	resp = e.do("GET", e.url+"/v1/shapes/news?offset=-1", alice, nil)
	body := readBody(t, resp)
	ra, _ := strconv.Atoi(resp.Header.Get("Retry-After"))
	if resp.StatusCode != 429 || ra < 1 || !strings.Contains(body, "rate limit") {
		t.Fatalf("rate limit: %d retry-after %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	resp = e.do("GET", e.url+"/v1/shapes/news?offset=-1", bob, nil)
	readBody(t, resp)
	if resp.StatusCode != 200 {
		t.Fatalf("bob limited by alice: %d", resp.StatusCode)
	}
	cancel()
	<-done
}

func TestCORSAndOps(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.AllowedOrigins = []string{"https://app.test"} })
	req, _ := http.NewRequest("OPTIONS", e.url+"/v1/shapes/items", nil)
	req.Header.Set("Origin", "https://app.test")
	req.Header.Set("Access-Control-Request-Method", "GET")
	req.Header.Set("Access-Control-Request-Headers", "authorization")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, resp)
	if resp.StatusCode != 204 || resp.Header.Get("Access-Control-Allow-Origin") != "https://app.test" ||
		!strings.Contains(resp.Header.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Fatalf("preflight: %d %v", resp.StatusCode, resp.Header)
	}
	req, _ = http.NewRequest("GET", e.url+"/v1/shapes/news?offset=-1", nil)
	req.Header.Set("Origin", "https://app.test")
	req.Header.Set("Authorization", "Bearer "+token(t, "alice", nil))
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, resp)
	if !strings.Contains(resp.Header.Get("Access-Control-Expose-Headers"), "electric-handle") {
		t.Fatalf("expose headers: %v", resp.Header)
	}
	req.Header.Set("Origin", "https://evil.test")
	resp, _ = http.DefaultClient.Do(req)
	readBody(t, resp)
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Fatalf("evil origin allowed")
	}
	resp = e.do("GET", e.url+"/healthz", "", nil)
	if body := readBody(t, resp); resp.StatusCode != 200 || !strings.Contains(body, "active") {
		t.Fatalf("healthz: %d %s", resp.StatusCode, body)
	}
	resp = e.do("GET", e.url+"/metrics", "", nil)
	body := readBody(t, resp)
	for _, want := range []string{`shapeseal_proxy_requests_total{shape="news",status="200"} 2`,
		`shapeseal_proxy_request_duration_seconds_bucket{shape="news",le="+Inf"} 2`, `shapeseal_proxy_requests_total{shape="-",status="204"} 1` /* a preflight is anonymous: never labelled with its shape */, "shapeseal_proxy_live_requests 0"} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q:\n%s", want, body)
		}
	}
}

func TestClientDisconnectCancelsUpstream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	alice := token(t, "alice", nil)
	off, handle, _ := e.initial("items", alice)
	ctx, cancel := context.WithCancel(context.Background())
	req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/v1/shapes/items?offset="+off+"&handle="+handle+"&live=true", nil)
	req.Header.Set("Authorization", "Bearer "+alice)
	errc := make(chan error, 1)
	go func() {
		_, err := http.DefaultClient.Do(req)
		errc <- err
	}()
	deadline := time.Now().Add(2 * time.Second)
	for e.p.metrics.liveNow.Load() != 1 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	<-errc
	// The handler returns (and the live gauge drops) well before the
	// upstream long poll (3 s) would have ended.
	deadline = time.Now().Add(time.Second)
	for e.p.metrics.liveNow.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("live request still in flight after the client left")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
