package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// parkServer serves p through Proxy.Serve, which parks coalesced live
// polls, and returns its base URL and server.
func parkServer(t testing.TB, p *Proxy) (string, *http.Server) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
	done := make(chan error, 1)
	go func() { done <- p.Serve(hs, ln) }()
	t.Cleanup(func() {
		hs.Close()
		if err := <-done; err != http.ErrServerClosed {
			t.Errorf("Serve: %v", err)
		}
	})
	return "http://" + ln.Addr().String(), hs
}

type polled struct {
	resp *http.Response
	body string
	err  error
}

// livePoll sends a live GET and delivers its response on the returned
// channel.
func livePoll(ctx context.Context, c *http.Client, url, tok string, hdr map[string]string) <-chan polled {
	ch := make(chan polled, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			ch <- polled{err: err}
			return
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		ch <- polled{resp: resp, body: string(b), err: err}
	}()
	return ch
}

// TestParkedPollSameAsUnparked sends the same live poll through a plain
// http.Server and through Proxy.Serve: both share one upstream request,
// the second is parked, and both get the same status, headers (but Date)
// and body; each has its audit line and the gauges come back to zero.
func TestParkedPollSameAsUnparked(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *Config) { c.AllowedOrigins = []string{"https://app.example"} })
	purl, _ := parkServer(t, e.p)
	alice := token(t, "alice", nil)
	off, handle, _ := e.initial("items", alice)
	base := e.liveUpstream()
	path := "/v1/shapes/items?offset=" + off + "&handle=" + handle + "&live=true"
	hdr := map[string]string{"Origin": "https://app.example", "X-Request-Id": "same-request"}
	plain := livePoll(context.Background(), http.DefaultClient, e.url+path, alice, hdr)
	waitFor(t, "the plain poll", func() bool { return e.p.metrics.liveNow.Load() == 1 })
	parked := livePoll(context.Background(), http.DefaultClient, purl+path, alice, hdr)
	waitFor(t, "the parked poll", func() bool { return e.p.metrics.parked.Load() == 1 })
	if m := e.metricsText(t); !strings.Contains(m, "\nshapeseal_proxy_live_parked 1\n") {
		t.Errorf("metrics while parked:\n%s", m)
	}
	if got := e.liveUpstream() - base; got != 1 {
		t.Fatalf("%d upstream live requests, want 1 (shared)", got)
	}
	pgtest.Exec(t, e.db, `INSERT INTO items VALUES (40,'acme','alice','parked','x')`)
	a, b := <-plain, <-parked
	if a.err != nil || b.err != nil {
		t.Fatalf("plain: %v, parked: %v", a.err, b.err)
	}
	if a.resp.StatusCode != 200 || !strings.Contains(a.body, `"parked"`) {
		t.Fatalf("plain: %d %s", a.resp.StatusCode, a.body)
	}
	if b.resp.StatusCode != a.resp.StatusCode || b.body != a.body || b.resp.ContentLength != a.resp.ContentLength {
		t.Fatalf("parked: %d (%d bytes) %q, plain: %d (%d bytes) %q", b.resp.StatusCode, b.resp.ContentLength, b.body,
			a.resp.StatusCode, a.resp.ContentLength, a.body)
	}
	ha, hb := a.resp.Header.Clone(), b.resp.Header.Clone()
	ha.Del("Date")
	hb.Del("Date")
	if !reflect.DeepEqual(ha, hb) {
		t.Fatalf("headers differ:\nplain  %v\nparked %v", ha, hb)
	}
	for _, h := range []string{"Vary", "X-Request-Id", "Access-Control-Allow-Origin", "Electric-Offset"} {
		if hb.Get(h) == "" {
			t.Errorf("parked response without %s: %v", h, hb)
		}
	}
	if b.resp.Header.Get("Date") == "" {
		t.Error("parked response without Date")
	}
	waitFor(t, "the gauges", func() bool { return e.p.metrics.liveNow.Load() == 0 && e.p.metrics.parked.Load() == 0 })
	waitFor(t, "an audit line per poll", func() bool {
		return strings.Count(e.logs.String(), `"request_id":"same-request"`) == 2
	})
	for _, l := range strings.Split(e.logs.String(), "\n") {
		if strings.Contains(l, `"request_id":"same-request"`) && !strings.Contains(l, `"status":200`) {
			t.Errorf("audit line: %s", l)
		}
	}
}

// TestParkedKeepAlive follows a shape on one keep-alive connection through
// Proxy.Serve: after a parked poll is answered, the connection goes back
// to the server and carries the next requests, parked or not.
func TestParkedKeepAlive(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	// A parked answer's write deadline must not outlive it: the
	// connection is used again after it has passed.
	e.p.parkWriteTimeout = 100 * time.Millisecond
	purl, _ := parkServer(t, e.p)
	alice := token(t, "alice", nil)
	off, handle, _ := e.initial("items", alice)
	tr := &http.Transport{MaxConnsPerHost: 1}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	var mu sync.Mutex
	var conns []bool // reused, per request
	trace := func(ctx context.Context) context.Context {
		return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
			mu.Lock()
			conns = append(conns, i.Reused)
			mu.Unlock()
		}})
	}
	for i := range 3 {
		ch := livePoll(trace(context.Background()), c, purl+"/v1/shapes/items?offset="+off+"&handle="+handle+"&live=true", alice, nil)
		waitFor(t, "the parked poll", func() bool { return e.p.metrics.parked.Load() == 1 })
		pgtest.Exec(t, e.db, `INSERT INTO items VALUES ($1,'acme','alice','ka','x')`, 50+i)
		r := <-ch
		if r.err != nil || r.resp.StatusCode != 200 || !strings.Contains(r.body, `"ka"`) {
			t.Fatalf("poll %d: %+v %s", i, r.err, r.body)
		}
		off = r.resp.Header.Get("Electric-Offset")
		time.Sleep(2 * e.p.parkWriteTimeout)
		// A non-live request in between, on the same connection.
		req, _ := http.NewRequestWithContext(trace(context.Background()), "GET", purl+"/v1/shapes/items?offset=-1", nil)
		req.Header.Set("Authorization", "Bearer "+alice)
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if body := readBody(t, resp); resp.StatusCode != 200 || !strings.Contains(body, `"a1"`) {
			t.Fatalf("snapshot after poll %d: %d %s", i, resp.StatusCode, body)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 6 || conns[0] {
		t.Fatalf("connections %v", conns)
	}
	for i, reused := range conns[1:] {
		if !reused {
			t.Fatalf("request %d took a new connection: %v", i+1, conns)
		}
	}
}

// TestParkedClientGoneLeaves: a client leaving while parked is seen at
// once (its audit line says so), the shared request goes on for the
// others, and the last one leaving cancels it.
func TestParkedClientGoneLeaves(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	purl, _ := parkServer(t, e.p)
	alice := token(t, "alice", nil)
	off, handle, _ := e.initial("items", alice)
	url := purl + "/v1/shapes/items?offset=" + off + "&handle=" + handle + "&live=true"
	ctx1, leave1 := context.WithCancel(context.Background())
	ctx2, leave2 := context.WithCancel(context.Background())
	p1 := livePoll(ctx1, http.DefaultClient, url, alice, nil)
	p2 := livePoll(ctx2, http.DefaultClient, url, alice, nil)
	waitFor(t, "two parked polls", func() bool { return e.p.metrics.parked.Load() == 2 })
	leave1()
	if r := <-p1; r.err == nil {
		t.Fatal("the cancelled poll got a response")
	}
	waitFor(t, "the first to leave", func() bool { return e.p.metrics.parked.Load() == 1 && e.p.metrics.liveNow.Load() == 1 })
	if e.p.live.inFlight() != 1 || e.p.metrics.liveShared.Load() != 1 {
		t.Fatal("the shared request ended with a poll still waiting")
	}
	leave2()
	<-p2
	// Well before the upstream's 3 s long poll ends.
	waitFor(t, "the shared request to be cancelled", func() bool {
		return e.p.metrics.liveShared.Load() == 0 && e.p.live.inFlight() == 0 && e.p.metrics.liveNow.Load() == 0 && e.p.metrics.parked.Load() == 0
	})
	waitFor(t, "two audit lines saying the client went away", func() bool {
		return strings.Count(e.logs.String(), `"reason":"client went away"`) == 2
	})
}

// TestParkedPipelined sends a live poll and a second request back to back
// on one connection: the second, read ahead by the server before the poll
// was parked, is answered after it, in order.
func TestParkedPipelined(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	purl, _ := parkServer(t, e.p)
	alice := token(t, "alice", nil)
	off, handle, _ := e.initial("items", alice)
	conn, err := net.Dial("tcp", strings.TrimPrefix(purl, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	auth := "Authorization: Bearer " + alice + "\r\n"
	_, err = io.WriteString(conn, "GET /v1/shapes/items?offset="+off+"&handle="+handle+"&live=true HTTP/1.1\r\nHost: x\r\n"+auth+"\r\n"+
		"GET /v1/shapes/items?offset=-1 HTTP/1.1\r\nHost: x\r\n"+auth+"\r\n")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the parked poll", func() bool { return e.p.metrics.parked.Load() == 1 })
	pgtest.Exec(t, e.db, `INSERT INTO items VALUES (60,'acme','alice','piped','x')`)
	br := bufio.NewReader(conn)
	for i, want := range []string{`"piped"`, `"a1"`} {
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("response %d: %v", i, err)
		}
		if body := readBody(t, resp); resp.StatusCode != 200 || !strings.Contains(body, want) {
			t.Fatalf("response %d: %d %s", i, resp.StatusCode, body)
		}
	}
}

// TestParkedServerClose: closing the server closes parked connections and
// records them.
func TestParkedServerClose(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	purl, hs := parkServer(t, e.p)
	alice := token(t, "alice", nil)
	off, handle, _ := e.initial("items", alice)
	ch := livePoll(context.Background(), http.DefaultClient, purl+"/v1/shapes/items?offset="+off+"&handle="+handle+"&live=true", alice, nil)
	waitFor(t, "the parked poll", func() bool { return e.p.metrics.parked.Load() == 1 })
	hs.Close()
	if r := <-ch; r.err == nil {
		t.Fatalf("a response after Close: %d", r.resp.StatusCode)
	}
	waitFor(t, "the poll to end", func() bool {
		return e.p.metrics.parked.Load() == 0 && e.p.metrics.liveNow.Load() == 0 && e.p.live.inFlight() == 0
	})
}

// TestParkedLargeBody: a live response over the sharing cap is fetched
// again by each parked poll and streamed chunked, whole, and the
// connection is reused afterwards.
func TestParkedLargeBody(t *testing.T) {
	t.Parallel()
	const size = 3 << 20
	p, bt := bigProxy(t, size)
	purl, _ := parkServer(t, p)
	tok := token(t, "alice", nil)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	const n = 3
	var chans []<-chan polled
	for range n {
		chans = append(chans, livePoll(context.Background(), c, purl+"/v1/shapes/news?offset=0_0&handle=h&live=true", tok, nil))
	}
	waitFor(t, "the parked polls", func() bool { return p.metrics.parked.Load() == n })
	close(bt.release)
	for _, ch := range chans {
		r := <-ch
		if r.err != nil || r.resp.StatusCode != 200 || len(r.body) != size {
			t.Fatalf("%v: %d bytes", r.err, len(r.body))
		}
	}
	if got := bt.live.Load(); got != n+1 {
		t.Fatalf("%d upstream live requests, want %d (the shared one, then one each)", got, n+1)
	}
	// The chunked framing ended cleanly: the next request reuses a connection.
	reused := false
	ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = i.Reused }})
	if r := <-livePoll(ctx, c, purl+"/v1/shapes/news?offset=0_0&handle=h&live=true", tok, nil); r.err != nil || len(r.body) != size || !reused {
		t.Fatalf("after: %v, %d bytes, reused %v", r.err, len(r.body), reused)
	}
}

// TestParkedUpstreamDown: a parked poll whose shared request fails gets
// the same 502 as an unparked one.
func TestParkedUpstreamDown(t *testing.T) {
	t.Parallel()
	testKeys(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + ln.Addr().String()
	ln.Close()
	p, err := New(Config{Upstream: down, Secret: upSecret, Auth: testAuth(), Shapes: testRules(),
		Limits: Limits{RequestsPerSecond: -1, MaxLivePerUser: -1}})
	if err != nil {
		t.Fatal(err)
	}
	purl, _ := parkServer(t, p)
	r := <-livePoll(context.Background(), http.DefaultClient, purl+"/v1/shapes/news?offset=0_0&handle=h&live=true", token(t, "alice", nil), nil)
	if r.err != nil || r.resp.StatusCode != http.StatusBadGateway || !strings.Contains(r.body, "unavailable") ||
		r.resp.ContentLength != int64(len(r.body)) || r.resp.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("%v: %+v %q", r.err, r.resp, r.body)
	}
}

// metricsText returns the proxy's /metrics page.
func (e *env) metricsText(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(e.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
