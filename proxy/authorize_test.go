package proxy

import (
	"context"
	"errors"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// authorizeLog records Config.Authorize's calls and refuses what deny says.
type authorizeLog struct {
	mu    sync.Mutex
	calls []Request
	ids   []*Identity
	deny  func(*Identity, *Request) error
}

func (a *authorizeLog) hook(ctx context.Context, id *Identity, req *Request) error {
	a.mu.Lock()
	a.calls = append(a.calls, *req)
	a.ids = append(a.ids, id)
	deny := a.deny
	a.mu.Unlock()
	if deny != nil {
		return deny(id, req)
	}
	return nil
}

func (a *authorizeLog) snapshot() []Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.calls)
}

func (a *authorizeLog) setDeny(f func(*Identity, *Request) error) {
	a.mu.Lock()
	a.deny = f
	a.mu.Unlock()
}

// TestAuthorizeHTTP: the hook sees every request a rule matched, with the
// resolved table, where, params and columns, after the rule's own checks;
// its refusal is a 403 that tells the client nothing of the reason, and
// nothing reaches upstream.
func TestAuthorizeHTTP(t *testing.T) {
	t.Parallel()
	a := &authorizeLog{deny: func(id *Identity, req *Request) error {
		if id.UserID == "bob" && req.Shape == "news" {
			return errors.New("bob is suspended (ticket 4711)")
		}
		return nil
	}}
	e := newEnv(t, func(c *Config) { c.Authorize = a.hook })
	alice, bob := token(t, "alice", nil), token(t, "bob", nil)

	resp := e.do("GET", e.url+"/v1/shapes/items?offset=-1&columns=id,title", alice, nil)
	if body := readBody(t, resp); resp.StatusCode != 200 {
		t.Fatalf("allowed: %d %s", resp.StatusCode, body)
	}
	calls := a.snapshot()
	if len(calls) != 1 {
		t.Fatalf("%d calls", len(calls))
	}
	got := calls[0]
	if got.Shape != "items" || got.Table != "items" || got.Where != itemsWhere || !slices.Equal(got.Params, []string{`{"acme"}`}) ||
		!slices.Equal(got.Columns, []string{"id", "title"}) || got.Live || got.WebSocket || got.HTTP == nil ||
		got.HTTP.URL.Path != "/v1/shapes/items" {
		t.Errorf("request %+v", got)
	}
	if a.ids[0].UserID != "alice" {
		t.Errorf("identity %+v", a.ids[0])
	}
	resp = e.do("GET", e.url+"/v1/shapes/keys?offset=-1", token(t, "alice", map[string]any{"device_id": "laptop"}), nil)
	readBody(t, resp)
	if got := a.snapshot()[1]; got.Table != TenantKeysTable || got.Where != "user_id = $1 AND device_id = $2" ||
		!slices.Equal(got.Params, []string{"alice", "laptop"}) || got.Columns != nil {
		t.Errorf("keys request %+v", got)
	}

	before := e.rec.count()
	resp = e.do("GET", e.url+"/v1/shapes/news?offset=-1", bob, nil)
	body := readBody(t, resp)
	if resp.StatusCode != 403 || strings.TrimSpace(body) != `{"message":"Forbidden"}` {
		t.Errorf("refused: %d %s", resp.StatusCode, body)
	}
	if e.rec.count() != before {
		t.Error("a refused request reached upstream")
	}
	if logs := e.logs.String(); !strings.Contains(logs, "ticket 4711") {
		t.Errorf("the reason is not in the audit line: %s", logs)
	}
	// Not asked: anonymous, unknown shapes, or what the rule refuses.
	n := len(a.snapshot())
	for _, tc := range []struct{ path, tok string }{
		{"/v1/shapes/news?offset=-1", ""},
		{"/v1/shapes/nope?offset=-1", alice},
		{"/v1/shapes/items?offset=-1", token(t, "alice", map[string]any{"roles": []string{"guest"}})},
		{"/v1/shapes/items?offset=-1&columns=note", alice},
		{"/v1/shapes/items?offset=-1&table=users", alice},
	} {
		resp := e.do("GET", e.url+tc.path, tc.tok, nil)
		readBody(t, resp)
	}
	if got := len(a.snapshot()); got != n {
		t.Errorf("asked %d times about requests refused before", got-n)
	}
	// A live poll is one request: Live set.
	off, handle, _ := e.initial("news", alice)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	poll := livePoll(ctx, http.DefaultClient, e.url+"/v1/shapes/news?offset="+off+"&handle="+handle+"&live=true", alice, nil)
	waitFor(t, "the live poll", func() bool {
		c := a.snapshot()
		return c[len(c)-1].Live
	})
	pgtest.Exec(t, e.db, `INSERT INTO public_news VALUES (2,'x')`)
	if r := <-poll; r.err != nil || r.resp.StatusCode != 200 {
		t.Fatalf("live poll: %v", r.err)
	}
}

// TestAuthorizeWebSocket: a subscription is asked about at subscribe and
// before each upstream request; a refusal is a 403 error frame without the
// reason, and ends the subscription, live or not.
func TestAuthorizeWebSocket(t *testing.T) {
	t.Parallel()
	a := &authorizeLog{}
	var denyNews atomic.Bool
	a.deny = func(id *Identity, req *Request) error {
		if req.Shape == "news" && (id.UserID == "bob" || denyNews.Load()) {
			return errors.New("secret reason")
		}
		return nil
	}
	e := newEnv(t, func(c *Config) { c.Authorize = a.hook })
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	c := rawWS(t, ctx, e)
	defer c.CloseNow()
	writeWS(t, ctx, c, map[string]any{"type": "auth", "token": token(t, "bob", nil)})
	writeWS(t, ctx, c, map[string]any{"type": "subscribe", "id": "n", "shape": "news"})
	f := readFrameUntil(t, ctx, c, func(f wsFrame) bool { return f.ID == "n" })
	if f.Type != "error" || f.Status != 403 {
		t.Fatalf("refused subscription: %+v", f)
	}
	before := e.rec.count()

	c2 := rawWS(t, ctx, e)
	defer c2.CloseNow()
	writeWS(t, ctx, c2, map[string]any{"type": "auth", "token": token(t, "alice", nil)})
	writeWS(t, ctx, c2, map[string]any{"type": "subscribe", "id": "n", "shape": "news"})
	readFrameUntil(t, ctx, c2, func(f wsFrame) bool { return f.ID == "n" && f.Type == "messages" && f.UpToDate })
	// Its live poll is held upstream (3 s): the counts stand still.
	waitFor(t, "the live poll", func() bool { return e.liveUpstream() == 1 })
	var ws, polls int
	for _, r := range a.snapshot() {
		if r.WebSocket && r.HTTP != nil && r.HTTP.URL.Path == "/v1/ws" {
			ws++
		}
	}
	for _, q := range e.rec.all()[before:] {
		if q.Get("table") == "public_news" {
			polls++
		}
	}
	// bob's refusal, then alice's subscribe and each poll but the first
	// (which the subscribe check covers).
	if want := 1 + 1 + polls - 1; ws != want {
		t.Errorf("%d calls for %d upstream requests, want %d", ws, polls, want)
	}
	// Refused later: the live subscription ends with a 403 frame after
	// its poll in flight.
	denyNews.Store(true)
	pgtest.Exec(t, e.db, `INSERT INTO public_news VALUES (2,'x')`)
	_, b, err := c2.Read(ctx)
	for err == nil && !strings.Contains(string(b), `"type":"error"`) {
		_, b, err = c2.Read(ctx)
	}
	if err != nil || !strings.Contains(string(b), `"status":403`) || strings.Contains(string(b), "secret") {
		t.Fatalf("frame %s: %v", b, err)
	}
	if last := a.snapshot(); !last[len(last)-1].Live {
		t.Errorf("a live poll not marked Live: %+v", last[len(last)-1])
	}
}
