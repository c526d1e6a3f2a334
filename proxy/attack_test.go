package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// The attacks below are the leaks of the proxy's first version, one test
// each: what an anonymous caller could learn about the shape names, token
// strings that were accepted in many forms (attack_token_test.go), a
// device claim that widened the keys shape, a WebSocket beyond the live
// limit, an unthrottled health check and the upstream's server header.

// TestAttackAnonymousShapeNames: without a valid token, a configured
// shape name and an unknown one get the same answers (status, headers,
// body) for every method, the CORS preflight included, and /metrics never
// shows either name for those requests.
func TestAttackAnonymousShapeNames(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	forged := sign(t, "HS256", "hs", otherHMAC, claimsFor("alice", nil))
	preflight := map[string]string{"Origin": "https://app.test", "Access-Control-Request-Method": "GET",
		"Access-Control-Request-Headers": "authorization"}
	probes := []anonProbe{
		{method: "OPTIONS"},
		{method: "OPTIONS", hdr: preflight},
		{method: "OPTIONS", query: "offset=-1", hdr: preflight},
		{method: "GET", query: "offset=-1"},
		{method: "GET", query: "offset=-1&table=users"},
		{method: "GET", query: "offset=-1", auth: "Bearer " + forged},
		{method: "GET", query: "offset=-1", auth: "Bearer not-a-token"},
		{method: "GET", query: "offset=-1", auth: "Basic YWxpY2U6cA=="},
		{method: "HEAD", query: "offset=-1"},
		{method: "GET", query: "offset=-1", body: `{"table":"users"}`},
		{method: "POST", query: "offset=-1", body: `{}`},
		{method: "PUT", query: "offset=-1"},
		{method: "DELETE", query: "offset=-1"},
		{method: "GET", query: "offset=-1", hdr: map[string]string{"Origin": "https://app.test"}},
	}
	for _, p := range probes {
		known, unknown := anonAnswer(t, e, p, "items"), anonAnswer(t, e, p, "nope")
		if known != unknown {
			t.Errorf("%s %v: a configured shape answers\n%s\nand an unknown one\n%s", p.method, p, known, unknown)
		}
	}
	// The preflight is answered (a browser needs it before sending the
	// token), for every well-formed name alike.
	resp := e.do("OPTIONS", e.url+"/v1/shapes/nope", "", nil)
	readBody(t, resp)
	if resp.StatusCode != http.StatusNoContent {
		t.Errorf("preflight of an unknown name: %d", resp.StatusCode)
	}
	// /metrics (public here) shows neither name for those requests.
	page := e.metricsText(t)
	for _, name := range []string{`shape="items"`, `shape="nope"`} {
		if strings.Contains(page, name) {
			t.Errorf("/metrics shows %s after anonymous requests only:\n%s", name, page)
		}
	}
	if !strings.Contains(page, `shapeseal_proxy_requests_total{shape="-",status="401"}`) {
		t.Errorf("anonymous 401s are not counted under \"-\":\n%s", page)
	}
	// Once authenticated, requests are labelled with their shape again.
	resp = e.do("GET", e.url+"/v1/shapes/news?offset=-1", token(t, "alice", nil), nil)
	readBody(t, resp)
	if page := e.metricsText(t); !strings.Contains(page, `shapeseal_proxy_requests_total{shape="news",status="200"} 1`) {
		t.Errorf("an authenticated request is not labelled with its shape:\n%s", page)
	}
}

// anonProbe is one request of TestAttackAnonymousShapeNames: a method,
// query, Authorization header, body and other headers.
type anonProbe struct {
	method, query, auth, body string
	hdr                       map[string]string
}

// anonAnswer sends p to the shape name and returns the answer as text:
// status, headers but the request id and date, sorted, and body.
func anonAnswer(t *testing.T, e *env, p anonProbe, name string) string {
	t.Helper()
	var body *strings.Reader
	if p.body != "" {
		body = strings.NewReader(p.body)
	}
	u := e.url + "/v1/shapes/" + name
	if p.query != "" {
		u += "?" + p.query
	}
	var req *http.Request
	if body != nil {
		req, _ = http.NewRequest(p.method, u, body)
	} else {
		req, _ = http.NewRequest(p.method, u, nil)
	}
	if p.auth != "" {
		req.Header.Set("Authorization", p.auth)
	}
	for k, v := range p.hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b := readBody(t, resp)
	resp.Header.Del("X-Request-Id")
	resp.Header.Del("Date")
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range resp.Header {
			if !yield(k) {
				return
			}
		}
	})
	var out strings.Builder
	out.WriteString(resp.Status + "\n")
	for _, k := range keys {
		out.WriteString(k + ": " + strings.Join(resp.Header[k], ", ") + "\n")
	}
	return out.String() + "\n" + b
}

// TestAttackMetricsOwnListener: with MetricsListen, /metrics is gone from
// the proxy's routes (a 404 like any unknown path) and served on its own
// listener by Proxy.Serve, and by Proxy.MetricsHandler.
func TestAttackMetricsOwnListener(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	e := newEnv(t, func(c *Config) { c.MetricsListen = addr })
	resp := e.do("GET", e.url+"/v1/shapes/news?offset=-1", token(t, "alice", nil), nil)
	readBody(t, resp)
	resp = e.do("GET", e.url+"/metrics", "", nil)
	body := readBody(t, resp)
	other := e.do("GET", e.url+"/no-such-path", "", nil)
	if otherBody := readBody(t, other); resp.StatusCode != 404 || body != otherBody {
		t.Errorf("/metrics with MetricsListen: %d %s", resp.StatusCode, body)
	}
	proxyURL, _ := parkServer(t, e.p)
	resp = e.do("GET", proxyURL+"/metrics", "", nil)
	if body := readBody(t, resp); resp.StatusCode != 404 || strings.Contains(body, "shapeseal_proxy") {
		t.Errorf("Serve's proxy listener serves /metrics: %d", resp.StatusCode)
	}
	var page string
	waitFor(t, "the metrics listener", func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		page = readBody(t, resp)
		return resp.StatusCode == 200
	})
	if !strings.Contains(page, `shapeseal_proxy_requests_total{shape="news",status="200"} 1`) {
		t.Errorf("metrics listener:\n%s", page)
	}
	rec := httptest.NewRecorder()
	e.p.MetricsHandler().ServeHTTP(rec, httptest.NewRequest("GET", "/anything", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "shapeseal_proxy_live_requests") {
		t.Errorf("MetricsHandler: %d", rec.Code)
	}
	// A busy address is Serve's error, not a silent public fallback.
	p2, err := New(Config{Upstream: e.upURL, Auth: testAuth(), Shapes: testRules(), MetricsListen: addr})
	if err != nil {
		t.Fatal(err)
	}
	ln2, _ := net.Listen("tcp", "127.0.0.1:0")
	defer ln2.Close()
	if err := p2.Serve(&http.Server{Handler: p2}, ln2); err == nil || !strings.Contains(err.Error(), "metrics") {
		t.Errorf("Serve with a busy metrics address: %v", err)
	}
}

// TestAttackEmptyDeviceClaim: a token whose device claim names no device
// ("" or not a string) is refused on the tenant_keys shape, over HTTP and
// WebSocket; it is never served every device's wrapped keys.
func TestAttackEmptyDeviceClaim(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	before := e.rec.count()
	for name, tc := range map[string]struct {
		device any
		want   int
	}{
		"empty string": {"", 403},
		"number":       {42, 403},
		"boolean":      {true, 403},
		"null":         {json.RawMessage("null"), 401},
		"object":       {map[string]any{"id": "laptop"}, 401},
		"array":        {[]string{"laptop", "phone"}, 401},
	} {
		tok := token(t, "alice", map[string]any{"device_id": tc.device})
		resp := e.do("GET", e.url+"/v1/shapes/keys?offset=-1", tok, nil)
		if body := readBody(t, resp); resp.StatusCode != tc.want {
			t.Errorf("device_id %s: %d %s, want %d", name, resp.StatusCode, body, tc.want)
		}
	}
	if n := e.rec.count() - before; n != 0 {
		t.Fatalf("%d keys requests with a bad device claim reached upstream", n)
	}
	// Over a WebSocket: a 403 error frame for the subscription.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := client.DialWS(ctx, e.wsURL(), &client.WSOptions{TokenSource: client.StaticToken(token(t, "alice", map[string]any{"device_id": ""}))})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	s, _ := conn.Stream(ctx, "keys", client.WSStreamOptions{})
	var we *client.WSError
	if _, err := s.Next(ctx); !errors.As(err, &we) || we.Status != 403 {
		t.Errorf("WebSocket keys with an empty device: %v", err)
	}
	if n := e.rec.count() - before; n != 0 {
		t.Fatalf("%d keys requests with a bad device claim reached upstream", n)
	}
	// A named device gets its own keys; no device claim at all, the
	// user's (as documented): both unchanged.
	if rows := follow(t, e.url+"/v1/shapes/keys", token(t, "alice", map[string]any{"device_id": "phone"})); len(rows) != 1 {
		t.Errorf("alice phone: %v", rows)
	}
	if rows := follow(t, e.url+"/v1/shapes/keys", token(t, "alice", nil)); len(rows) != 2 {
		t.Errorf("alice, no device claim: %v", rows)
	}
}

// TestAttackWSLiveLimit: a WebSocket's live subscriptions count toward
// MaxLivePerUser with the connection itself, so one connection cannot
// hold more live polls than the limit allows an HTTP client.
func TestAttackWSLiveLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.Limits.MaxLivePerUser = 3 })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tok := token(t, "alice", nil)
	c := rawWS(t, ctx, e)
	defer c.CloseNow()
	writeWS(t, ctx, c, map[string]any{"type": "auth", "token": tok})
	if f := readFrame(t, ctx, c); f.Type != "auth_ok" {
		t.Fatalf("auth: %+v", f)
	}
	// The connection holds one slot: two live subscriptions fit, a third
	// does not, whatever its shape.
	status := map[string]int{}
	for _, sub := range []struct{ id, shape string }{{"a", "news"}, {"b", "items"}, {"c", "mine"}, {"d", "news"}} {
		writeWS(t, ctx, c, map[string]any{"type": "subscribe", "id": sub.id, "shape": sub.shape})
	}
	deadline := time.Now().Add(10 * time.Second)
	for (status["c"] == 0 || status["d"] == 0) && time.Now().Before(deadline) {
		f := readFrame(t, ctx, c)
		if f.Type == "error" {
			status[f.ID] = f.Status
		}
	}
	if status["a"] != 0 || status["b"] != 0 || status["c"] != 429 || status["d"] != 429 {
		t.Fatalf("subscriptions beyond the live limit: %v", status)
	}
	// A subscription that is not live holds no slot.
	writeWS(t, ctx, c, map[string]any{"type": "subscribe", "id": "once", "shape": "news", "live": false})
	readFrameUntil(t, ctx, c, func(f wsFrame) bool {
		if f.ID == "once" && f.Type == "error" {
			t.Fatalf("a non-live subscription refused: %+v", f)
		}
		return f.ID == "once" && f.Type == "done"
	})
	// Nor can an HTTP live poll of the same user take more.
	off, handle, _ := e.initial("news", tok)
	resp := e.do("GET", e.url+"/v1/shapes/news?offset="+off+"&handle="+handle+"&live=true", tok, nil)
	if body := readBody(t, resp); resp.StatusCode != 429 {
		t.Errorf("HTTP live poll next to the WebSocket: %d %s", resp.StatusCode, body)
	}
	// Unsubscribing gives the slot back.
	writeWS(t, ctx, c, map[string]any{"type": "unsubscribe", "id": "a"})
	readFrameUntil(t, ctx, c, func(f wsFrame) bool { return f.ID == "a" && f.Type == "done" })
	for i := 0; ; i++ {
		id := "e" + strconv.Itoa(i)
		writeWS(t, ctx, c, map[string]any{"type": "subscribe", "id": id, "shape": "news"})
		f := readFrameUntil(t, ctx, c, func(f wsFrame) bool { return f.ID == id })
		if f.Type == "messages" {
			break
		}
		if f.Status != 429 || i == 20 {
			t.Fatalf("after unsubscribe: %+v", f)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestAttackHealthzUpstream: anonymous /healthz requests, however many,
// make at most one upstream health request a second.
func TestAttackHealthzUpstream(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	start := time.Now()
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			resp, err := http.Get(e.url + "/healthz")
			if err != nil {
				t.Error(err)
				return
			}
			if body := readBody(t, resp); resp.StatusCode != 200 || !strings.Contains(body, "active") {
				t.Errorf("healthz: %d %s", resp.StatusCode, body)
			}
		})
	}
	wg.Wait()
	for range 30 {
		resp := e.do("GET", e.url+"/healthz", "", nil)
		readBody(t, resp)
	}
	n := int(e.rec.health.Load())
	if max := int(time.Since(start)/time.Second) + 1; n < 1 || n > max {
		t.Fatalf("50 health checks made %d upstream requests in %v", n, time.Since(start))
	}
	time.Sleep(healthTTL + 100*time.Millisecond)
	resp := e.do("GET", e.url+"/healthz", "", nil)
	readBody(t, resp)
	if got := int(e.rec.health.Load()); got != n+1 {
		t.Fatalf("after the cached answer expired: %d upstream requests, want %d", got, n+1)
	}
}

// TestAttackServerHeaders: the upstream names itself (electric-server:
// software and version); the proxy's responses never carry it, whether
// streamed, shared between coalesced polls or written by a parked poll.
func TestAttackServerHeaders(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	tok := token(t, "alice", nil)
	up, err := http.Get(e.upURL + "/v1/health")
	if err != nil {
		t.Fatal(err)
	}
	readBody(t, up)
	if up.Header.Get("Electric-Server") == "" {
		t.Fatal("the upstream sends no electric-server header: the test is wrong")
	}
	check := func(what string, h http.Header) {
		t.Helper()
		for _, k := range []string{"Electric-Server", "Server", "Via", "X-Powered-By"} {
			if v := h.Get(k); v != "" {
				t.Errorf("%s: %s: %s", what, k, v)
			}
		}
	}
	off, handle, resp := e.initial("news", tok)
	check("initial GET", resp.Header)
	resp = e.do("HEAD", e.url+"/v1/shapes/news?offset=-1", tok, nil)
	readBody(t, resp)
	check("HEAD", resp.Header)
	// Live polls: coalesced on a plain server, parked with Serve.
	parkURL, _ := parkServer(t, e.p)
	q := "/v1/shapes/news?offset=" + off + "&handle=" + handle + "&live=true"
	plain := livePoll(testCtx(t), http.DefaultClient, e.url+q, tok, nil)
	parked := livePoll(testCtx(t), &http.Client{Transport: &http.Transport{}}, parkURL+q, tok, nil)
	time.Sleep(300 * time.Millisecond) // past parkAfter
	pgtest.Exec(t, e.db, `INSERT INTO public_news VALUES (2,'news')`)
	for what, ch := range map[string]<-chan polled{"coalesced live poll": plain, "parked live poll": parked} {
		r := <-ch
		if r.err != nil || r.resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", what, r.err, r.resp)
		}
		check(what, r.resp.Header)
	}
}

// testCtx is a context for t, with a deadline.
func testCtx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}
