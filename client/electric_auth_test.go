package client

// Tests of token refresh against electrictest over a real Postgres, behind
// an auth proxy that expires tokens (helpers in electric_test.go).

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
)

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
