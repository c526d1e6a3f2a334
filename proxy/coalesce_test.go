package proxy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// liveUpstream counts the live requests the upstream has received.
func (e *env) liveUpstream() int {
	n := 0
	for _, q := range e.rec.all() {
		if q.Get("live") == "true" {
			n++
		}
	}
	return n
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for " + what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestCoalescedLivePolls holds many identical live polls through the
// proxy: the upstream (electrictest) sees one live request per distinct
// rule-resolved URL, every poll gets the change, one client leaving does
// not disturb the others, and another tenant's polls are never shared.
func TestCoalescedLivePolls(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	alice := token(t, "alice", nil)
	bob := token(t, "bob", nil) // same tenant as alice: the same resolved shape
	carol := token(t, "carol", map[string]any{"tenant_ids": []string{"globex"}})
	off, handle, _ := e.initial("items", alice)
	cOff, cHandle, _ := e.initial("items", carol)
	base := e.liveUpstream()

	type result struct {
		who, body string
		code      int
	}
	const n = 20
	results := make(chan result, n+2)
	poll := func(ctx context.Context, who, tok, off, handle string) {
		req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/v1/shapes/items?offset="+off+"&handle="+handle+"&live=true", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			results <- result{who: who, code: -1, body: err.Error()}
			return
		}
		results <- result{who, readBody(t, resp), resp.StatusCode}
	}
	go poll(context.Background(), "acme", alice, off, handle)
	waitFor(t, "the first poll", func() bool { return e.p.metrics.liveNow.Load() == 1 })
	leaverCtx, leave := context.WithCancel(context.Background())
	go poll(leaverCtx, "leaver", alice, off, handle)
	for i := range n - 1 {
		tok := alice
		if i%2 == 1 {
			tok = bob
		}
		go poll(context.Background(), "acme", tok, off, handle)
	}
	go poll(context.Background(), "carol", carol, cOff, cHandle)
	waitFor(t, "all polls", func() bool { return e.p.metrics.liveNow.Load() == n+2 })
	// The first client leaves: the shared request must go on.
	leave()
	if r := <-results; r.who != "leaver" || r.code != -1 {
		t.Fatalf("leaver: %+v", r)
	}
	waitFor(t, "the leaver's handler", func() bool { return e.p.metrics.liveNow.Load() == n+1 })
	// The shared requests reach the upstream on their own goroutines.
	waitFor(t, "2 upstream live requests", func() bool { return e.liveUpstream()-base >= 2 })
	if got := e.liveUpstream() - base; got != 2 {
		t.Fatalf("upstream saw %d live requests for %d polls of 2 shapes, want 2", got, n+2)
	}
	pgtest.Exec(t, e.db, `INSERT INTO items VALUES (30,'acme','alice','shared','x')`)
	for range n {
		r := <-results
		if r.who != "acme" || r.code != 200 || !strings.Contains(r.body, `"shared"`) {
			t.Fatalf("acme poll: %+v", r)
		}
	}
	if got := e.liveUpstream() - base; got != 2 {
		t.Fatalf("upstream saw %d live requests, want 2", got)
	}
	// carol's poll (another tenant, another upstream request) never sees
	// acme's row: it ends with the upstream's long-poll timeout.
	r := <-results
	if r.who != "carol" || r.code != 200 && r.code != 204 || strings.Contains(r.body, `"shared"`) {
		t.Fatalf("carol: %+v", r)
	}
	if got := e.p.live.inFlight(); got != 0 {
		t.Fatalf("%d shared requests left over", got)
	}
}

// TestCoalescedLastLeaverCancels checks that the shared upstream request
// is cancelled once every poll waiting on it has gone.
func TestCoalescedLastLeaverCancels(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	alice := token(t, "alice", nil)
	off, handle, _ := e.initial("items", alice)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequestWithContext(ctx, "GET", e.url+"/v1/shapes/items?offset="+off+"&handle="+handle+"&live=true", nil)
			req.Header.Set("Authorization", "Bearer "+alice)
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	// The shared request is counted on the leader's goroutine, some time
	// after its poll.
	waitFor(t, "the polls", func() bool { return e.p.metrics.liveNow.Load() == 3 && e.p.metrics.liveShared.Load() >= 1 })
	if got := e.p.metrics.liveShared.Load(); got != 1 {
		t.Fatalf("%d shared upstream requests, want 1", got)
	}
	cancel()
	wg.Wait()
	// Well before the upstream's 3 s long poll ends.
	waitFor(t, "the shared request to be cancelled", func() bool {
		return e.p.metrics.liveShared.Load() == 0 && e.p.live.inFlight() == 0
	})
}

// gatedBigTransport answers live requests, once released, with a body
// larger than liveShareMax, and counts them.
type gatedBigTransport struct {
	size    int64
	release chan struct{}
	live    atomic.Int64
}

func (bt *gatedBigTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Query().Get("live") == "true" {
		bt.live.Add(1)
		select {
		case <-bt.release:
		case <-r.Context().Done():
			return nil, r.Context().Err()
		}
	}
	h := http.Header{"Content-Type": {"application/json"}, "Electric-Offset": {"0_1"}, "Electric-Handle": {"h"}}
	return &http.Response{StatusCode: 200, Header: h, Body: io.NopCloser(&zeroJSON{bt.size}), ContentLength: -1, Request: r}, nil
}

// bigProxy is a proxy whose upstream answers live requests, once released,
// with size bytes: more than it shares.
func bigProxy(t *testing.T, size int64) (*Proxy, *gatedBigTransport) {
	t.Helper()
	testKeys(t)
	bt := &gatedBigTransport{size: size, release: make(chan struct{})}
	p, err := New(Config{Upstream: "http://electric.invalid", Secret: upSecret, Auth: testAuth(), Shapes: testRules(),
		Transport: bt, Limits: Limits{RequestsPerSecond: -1, MaxLivePerUser: -1}})
	if err != nil {
		t.Fatal(err)
	}
	return p, bt
}

// TestCoalescedLargeBody: a live response over the sharing cap is not
// shared; each poll fetches and streams it whole on its own.
func TestCoalescedLargeBody(t *testing.T) {
	t.Parallel()
	const size = 3 << 20
	p, bt := bigProxy(t, size)
	srv := httptest.NewServer(p)
	defer srv.Close()
	tok := token(t, "alice", nil)
	const n = 4
	errs := make(chan error, n)
	for range n {
		go func() {
			req, _ := http.NewRequest("GET", srv.URL+"/v1/shapes/news?offset=0_0&handle=h&live=true", nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs <- err
				return
			}
			k, err := io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err == nil && (resp.StatusCode != 200 || k != size) {
				err = &requestError{Status: resp.StatusCode, Field: "body", Msg: "short body"}
			}
			errs <- err
		}()
	}
	// On failure, release the upstream before srv.Close waits for the
	// handlers.
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(bt.release) }) }
	defer release()
	// The shared request reaches the upstream on the leader's goroutine
	// some time after its poll is counted.
	waitFor(t, "the polls", func() bool { return p.metrics.liveNow.Load() == n && bt.live.Load() >= 1 })
	if got := bt.live.Load(); got != 1 {
		t.Fatalf("%d upstream live requests before release, want 1 (shared)", got)
	}
	release()
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if got := bt.live.Load(); got != n+1 {
		t.Fatalf("%d upstream live requests, want %d (the shared one, then one each)", got, n+1)
	}
}
