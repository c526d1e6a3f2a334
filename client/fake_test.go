package client

// Hand-written handlers, only for faults a real Electric (or electrictest)
// cannot be made to produce: a cache serving an expired shape after a 409,
// a proxy stripping headers, a pre-1.0 server answering 204, a body that
// fails after delivering messages and is answered differently on retry.

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

type fakeResp struct {
	status int
	header map[string]string
	body   string
}

// scripted serves the given responses in order and records request URLs.
type scripted struct {
	mu   sync.Mutex
	resp []fakeResp
	reqs []url.Values
	hdrs []http.Header
}

func (s *scripted) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	s.reqs = append(s.reqs, r.URL.Query())
	s.hdrs = append(s.hdrs, r.Header.Clone())
	if len(s.resp) == 0 {
		s.mu.Unlock()
		http.Error(w, "script exhausted", http.StatusTeapot)
		return
	}
	fr := s.resp[0]
	s.resp = s.resp[1:]
	s.mu.Unlock()
	for k, v := range fr.header {
		w.Header().Set(k, v)
	}
	if fr.status == 0 {
		fr.status = 200
	}
	w.WriteHeader(fr.status)
	io.WriteString(w, fr.body)
}

func (s *scripted) requests() []url.Values {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]url.Values(nil), s.reqs...)
}

func ok(handle, offset, body string) fakeResp {
	return fakeResp{header: map[string]string{
		"electric-handle": handle, "electric-offset": offset, "electric-schema": `{"id":{"type":"int8","pk_index":0}}`,
		"electric-cursor": "100",
	}, body: body}
}

const (
	row1 = `{"headers":{"operation":"insert","relation":["public","t"]},"key":"1","value":{"id":"1"}}`
	row2 = `{"headers":{"operation":"insert","relation":["public","t"]},"key":"2","value":{"id":"2"}}`
	utd  = `{"headers":{"control":"up-to-date","global_last_seen_lsn":"5"}}`
)

func fastBackoff() Backoff {
	return Backoff{Initial: time.Millisecond, Max: 5 * time.Millisecond, MaxRetryAfter: 10 * time.Millisecond}
}

func startScripted(t *testing.T, resp ...fakeResp) (*scripted, string) {
	sc := &scripted{resp: resp}
	srv := httptest.NewServer(sc)
	t.Cleanup(srv.Close)
	return sc, srv.URL + "/v1/shape"
}

func collect(t *testing.T, s *ShapeStream) ([]Message, error) {
	t.Helper()
	var out []Message
	for m, err := range s.Messages(t.Context()) {
		if err != nil {
			return out, err
		}
		out = append(out, m)
	}
	return out, nil
}

func keysOf(ms []Message) string {
	var b strings.Builder
	for _, m := range ms {
		switch {
		case m.IsChange():
			b.WriteString(m.Key)
		case m.IsUpToDate():
			b.WriteString("U")
		case m.IsMustRefetch():
			b.WriteString("R")
		case m.Headers.Control == SnapshotEnd:
			b.WriteString("E")
		}
	}
	return b.String()
}

func TestStaleCachedResponseAfter409(t *testing.T) {
	sc, u := startScripted(t,
		ok("h1", "0_0", "["+row1+"]"),
		fakeResp{status: 409, header: map[string]string{"electric-handle": "h2"}, body: `[{"headers":{"control":"must-refetch"}}]`},
		ok("h1", "0_0", "["+row1+"]"), // a cache ignoring cache-buster/expired_handle
		ok("h2", "0_0", "["+row2+"]"),
		ok("h2", "0_inf", "["+utd+"]"),
	)
	s, _ := New(Options{URL: u, Backoff: fastBackoff()})
	ms, err := collect(t, s)
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(ms); got != "1R2U" {
		t.Errorf("messages %s, want 1R2U", got)
	}
	reqs := sc.requests()
	if q := reqs[2]; q.Get("expired_handle") != "h1" || q.Get("cache-buster") == "" || q.Get("handle") != "h2" || q.Get("offset") != "-1" {
		t.Errorf("request after 409: %v", q)
	}
	if q := reqs[3]; q.Get("cache-buster") == "" || q.Get("cache-buster") == reqs[2].Get("cache-buster") {
		t.Errorf("retry after a stale response needs a fresh cache-buster: %v", q)
	}
	if s.Handle() != "h2" || s.Offset() != "0_inf" {
		t.Errorf("handle %s offset %s", s.Handle(), s.Offset())
	}
}

// Stale responses at offset -1: three retries with fresh cache-busters,
// then one without expired_handle (self-healing), which accepts the handle.
// When the same handle expires again and keeps coming back, the stream gives
// up with a StaleResponseError.
func TestStaleCachedResponseGivesUp(t *testing.T) {
	refetch := fakeResp{status: 409, header: map[string]string{"electric-handle": "h2"}, body: `[{"headers":{"control":"must-refetch"}}]`}
	resp := []fakeResp{ok("h1", "0_0", "["+row1+"]"), refetch}
	for range 4 {
		resp = append(resp, ok("h1", "0_0", "["+row1+"]")) // stale
	}
	resp = append(resp, ok("h1", "0_0", "["+row1+"]"), ok("h1", "0_inf", "["+utd+"]"), refetch)
	for range 4 {
		resp = append(resp, ok("h1", "0_0", "["+row1+"]")) // stale again
	}
	sc, u := startScripted(t, resp...)
	s, _ := New(Options{URL: u, Backoff: fastBackoff(), Live: true})
	ms, err := collect(t, s)
	var se *StaleResponseError
	if !errors.As(err, &se) || se.Handle != "h1" {
		t.Fatalf("err = %v", err)
	}
	if got := keysOf(ms); got != "1R1UR" {
		t.Errorf("messages %s, want 1R1UR", got)
	}
	reqs := sc.requests()
	if len(reqs) != 13 {
		t.Fatalf("%d requests, want 13", len(reqs))
	}
	for i, q := range reqs {
		wantExpired := map[bool]string{true: "h1"}[i >= 2 && i <= 5 || i >= 9]
		if q.Get("expired_handle") != wantExpired || q.Has("expired_handle") != (wantExpired != "") {
			t.Errorf("request %d: expired_handle %q, want %q: %v", i, q.Get("expired_handle"), wantExpired, q)
		}
		if i >= 2 && i != 7 && i != 8 && q.Get("cache-buster") == "" {
			t.Errorf("request %d without a cache-buster: %v", i, q)
		}
	}
	if q := reqs[7]; q.Get("offset") != "0_0" || q.Get("handle") != "h1" {
		t.Errorf("after self-healing: %v", q)
	}
}

// Stale responses to a request at another offset than -1 are never
// accepted: the stream gives up after three retries.
func TestStaleResponseAtOffsetGivesUp(t *testing.T) {
	resp := []fakeResp{
		ok("h1", "0_0", "["+row1+"]"),
		{status: 409, header: map[string]string{"electric-handle": "h2"}, body: `[{"headers":{"control":"must-refetch"}}]`},
		ok("h2", "0_0", "["+row2+"]"),
	}
	for range 4 {
		resp = append(resp, ok("h1", "3_0", "[]")) // a cache that ignores handle
	}
	sc, u := startScripted(t, resp...)
	s, _ := New(Options{URL: u, Backoff: fastBackoff()})
	ms, err := collect(t, s)
	var se *StaleResponseError
	if !errors.As(err, &se) || se.Handle != "h1" || keysOf(ms) != "1R2" || len(sc.requests()) != 7 {
		t.Fatalf("err = %v, messages %s, %d requests", err, keysOf(ms), len(sc.requests()))
	}
}

func TestMissingHeaders(t *testing.T) {
	_, u := startScripted(t, fakeResp{header: map[string]string{"electric-handle": "h", "electric-offset": "0_0"}, body: "[]"})
	recovered := 0
	s, _ := New(Options{URL: u, OnError: func(error) *Recovery { recovered++; return &Recovery{} }})
	_, err := collect(t, s)
	var me *MissingHeadersError
	if !errors.As(err, &me) || len(me.Missing) != 1 || me.Missing[0] != "electric-schema" {
		t.Fatalf("err = %v", err)
	}
	if recovered != 0 {
		t.Error("OnError must not be able to retry a MissingHeadersError")
	}
	if _, err2 := s.Next(t.Context()); err2 != err {
		t.Errorf("terminal error not sticky: %v", err2)
	}
}

func Test204Compatibility(t *testing.T) {
	sc, u := startScripted(t,
		ok("h", "0_0", "["+row1+"]"),
		ok("h", "0_inf", "["+utd+"]"),
		fakeResp{status: 204, header: map[string]string{"electric-handle": "h", "electric-offset": "0_inf", "electric-cursor": "200"}},
		fakeResp{header: map[string]string{"electric-handle": "h", "electric-offset": "7_0", "electric-cursor": "300"}, body: "[" + row2 + "," + utd + "]"},
	)
	s, _ := New(Options{URL: u, Live: true})
	var ms []Message
	for range 5 {
		m, err := s.Next(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	// The 204 is delivered as an up-to-date.
	if got := keysOf(ms); got != "1UU2U" {
		t.Errorf("messages %s", got)
	}
	reqs := sc.requests()
	if q := reqs[3]; q.Get("cursor") != "200" || q.Get("live") != "true" {
		t.Errorf("request after 204: %v", q)
	}
}

func TestOnErrorRecovery(t *testing.T) {
	sc, u := startScripted(t,
		ok("h", "0_0", "["+row1+"]"),
		fakeResp{status: 403, body: `{"message":"forbidden"}`},
		ok("h", "0_inf", "["+utd+"]"),
	)
	var seen error
	s, _ := New(Options{URL: u, Backoff: fastBackoff(), Header: http.Header{"X-A": {"1"}},
		OnError: func(err error) *Recovery {
			seen = err
			return &Recovery{Header: http.Header{"X-A": {"2"}}, Params: &Params{Table: "t2"}}
		}})
	ms, err := collect(t, s)
	if err != nil {
		t.Fatal(err)
	}
	if keysOf(ms) != "1U" {
		t.Errorf("messages %s", keysOf(ms))
	}
	var he *HTTPError
	if !errors.As(seen, &he) || he.StatusCode != 403 || string(he.Body) != `{"message":"forbidden"}` {
		t.Errorf("OnError saw %v", seen)
	}
	// Resumed from the same offset and handle, with the new header and params.
	if q := sc.requests()[2]; q.Get("offset") != "0_0" || q.Get("handle") != "h" || q.Get("table") != "t2" {
		t.Errorf("resumed with %v", q)
	}
	if h := sc.hdrs[2].Get("X-A"); h != "2" {
		t.Errorf("header %q", h)
	}
}

func TestHTTPErrorWithoutOnError(t *testing.T) {
	_, u := startScripted(t, fakeResp{status: 400, header: map[string]string{"Content-Type": "application/json"},
		body: `{"message":"Invalid request","errors":{"table":["does not exist"]}}`})
	s, _ := New(Options{URL: u + "?secret=hunter2", Params: Params{Table: "nope"}})
	_, err := collect(t, s)
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != 400 || he.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("err = %v", err)
	}
	if strings.Contains(err.Error(), "hunter2") || strings.Contains(he.URL, "hunter2") {
		t.Errorf("secret leaked: %v", err)
	}
}

func TestRetriesExhausted(t *testing.T) {
	var resp []fakeResp
	for range 4 {
		resp = append(resp, fakeResp{status: 500, body: "boom"})
	}
	_, u := startScripted(t, resp...)
	b := fastBackoff()
	b.MaxRetries = 3
	s, _ := New(Options{URL: u, Backoff: b})
	_, err := collect(t, s)
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != 500 {
		t.Fatalf("err = %v", err)
	}
}

// A body that breaks after two messages, and whose retry (same handle and
// offset) replays the same log: nothing is delivered twice. If the retry
// comes back with another handle, the consumer is told to refetch.
func TestInterruptedBodyResumes(t *testing.T) {
	row3 := `{"headers":{"operation":"insert","relation":["public","t"]},"key":"3","value":{"id":"3"}}`
	full := "[" + row1 + "," + row2 + "," + row3 + "]"
	cut := full[:len("["+row1+","+row2+",")+10]
	sc, u := startScripted(t,
		ok("h", "0_0", cut),
		ok("h", "0_0", full),
		ok("h", "0_inf", "["+utd+"]"),
	)
	s, _ := New(Options{URL: u, Backoff: fastBackoff()})
	ms, err := collect(t, s)
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(ms); got != "123U" {
		t.Errorf("messages %s, want 123U", got)
	}
	if q := sc.requests()[1]; q.Get("offset") != "-1" {
		t.Errorf("retry %v", q)
	}

	_, u = startScripted(t,
		ok("h", "0_0", cut),
		ok("h2", "0_0", full),
		ok("h2", "0_inf", "["+utd+"]"),
	)
	s, _ = New(Options{URL: u, Backoff: fastBackoff()})
	ms, err = collect(t, s)
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(ms); got != "12R123U" {
		t.Errorf("messages %s, want 12R123U", got)
	}
}

// Breaking out of Messages mid-response and resuming later loses and
// repeats nothing.
func TestBreakAndResume(t *testing.T) {
	_, u := startScripted(t,
		ok("h", "0_0", "["+row1+","+row2+"]"),
		ok("h", "0_0", "["+row1+","+row2+"]"),
		ok("h", "0_inf", "["+utd+"]"),
	)
	s, _ := New(Options{URL: u})
	var got []Message
	for m, err := range s.Messages(t.Context()) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
		break
	}
	rest, err := collect(t, s)
	if err != nil {
		t.Fatal(err)
	}
	if k := keysOf(append(got, rest...)); k != "12U" {
		t.Errorf("messages %s", k)
	}
}

func TestTransformError(t *testing.T) {
	_, u := startScripted(t, ok("h", "0_0", "["+row1+"]"))
	boom := errors.New("cannot decrypt")
	s, _ := New(Options{URL: u, Transform: func(m *Message) error { return boom }})
	_, err := collect(t, s)
	var te *TransformError
	if !errors.As(err, &te) || !errors.Is(err, boom) || te.Key != "1" {
		t.Fatalf("err = %v", err)
	}
}

func TestContextCancelDuringBackoff(t *testing.T) {
	_, u := startScripted(t, fakeResp{status: 503, header: map[string]string{"Retry-After": "3600"}})
	s, _ := New(Options{URL: u})
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := s.Next(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) > time.Second {
		t.Fatalf("err = %v after %v", err, time.Since(start))
	}
}

// A context per call, cancelled as soon as Next returns, must not abort
// the response being read: the second message comes from the same request.
func TestContextPerCall(t *testing.T) {
	sc, u := startScripted(t, ok("h", "0_inf", "["+row1+","+row2+","+utd+"]"))
	s, _ := New(Options{URL: u})
	var got []Message
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		m, err := s.Next(ctx)
		cancel()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	if keysOf(got) != "12U" || len(sc.requests()) != 1 {
		t.Errorf("messages %s with %d requests", keysOf(got), len(sc.requests()))
	}
}

// A server (or cache) that keeps answering the same chunk without moving
// the offset is not hammered forever: five such responses start a backoff
// with a cache-buster before each further request, and the fifth detection
// stops the stream.
func TestFastLoopGuard(t *testing.T) {
	t.Parallel()
	var resp []fakeResp
	resp = append(resp, ok("h", "0_0", "["+row1+"]"))
	for range 40 {
		resp = append(resp, ok("h", "0_0", "[]"))
	}
	sc, u := startScripted(t, resp...)
	s, _ := New(Options{URL: u, Backoff: fastBackoff()})
	start := time.Now()
	_, err := collect(t, s)
	var fe *FastLoopError
	if !errors.As(err, &fe) || !errors.Is(err, ErrFastLoop) || fe.Offset != "0_0" || fe.Requests != 9 ||
		!strings.Contains(err.Error(), "without progress") || !strings.Contains(fe.What, "offset unchanged") {
		t.Fatalf("err = %v", err)
	}
	// 100–200, 200–400, 400–800, 800–1600 ms after detections 1–4.
	if el := time.Since(start); el < 1500*time.Millisecond {
		t.Errorf("stopped after %v, before the backoff of four detections", el)
	}
	reqs := sc.requests()
	if n := len(reqs); n != 10 {
		t.Errorf("%d requests, want 10 (1 + 5 to detect + 4 more detections)", n)
	}
	for i := 6; i < len(reqs); i++ {
		if reqs[i].Get("cache-buster") == "" || reqs[i].Get("cache-buster") == reqs[i-1].Get("cache-buster") {
			t.Errorf("request %d after a detection without a fresh cache-buster: %v", i, reqs[i])
		}
	}
}

// A refreshed token that gets past authentication (here: a 503 after it)
// may be refreshed again on a later 401; only a 401 answering the very
// request after a refresh is an AuthError. (Found by the property test.)
func TestRefreshAgainAfterTokenWasAccepted(t *testing.T) {
	sc, u := startScripted(t,
		fakeResp{status: 401},
		fakeResp{status: 503},
		fakeResp{status: 401},
		ok("h", "0_inf", "["+row1+","+utd+"]"),
	)
	n := 0
	ts := NewSharedTokenSource(func(context.Context) (string, error) { n++; return "t" + strconv.Itoa(n), nil })
	s, _ := New(Options{URL: u, TokenSource: ts, Backoff: fastBackoff()})
	ms, err := collect(t, s)
	if err != nil {
		t.Fatal(err)
	}
	if keysOf(ms) != "1U" || n != 3 {
		t.Errorf("messages %s, %d tokens", keysOf(ms), n)
	}
	var auth []string
	for _, h := range sc.hdrs {
		auth = append(auth, h.Get("Authorization"))
	}
	if strings.Join(auth, ",") != "Bearer t1,Bearer t2,Bearer t2,Bearer t3" {
		t.Errorf("Authorization headers %v", auth)
	}
}
