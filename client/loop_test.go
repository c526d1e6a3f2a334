package client

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestLoopDelay(t *testing.T) {
	for n := 1; n <= 8; n++ {
		c := min(loopBase<<n, loopMax)
		for range 100 {
			if d := loopDelay(n); d < c/2 || d >= c {
				t.Fatalf("detection %d: %v outside [%v, %v)", n, d, c/2, c)
			}
		}
	}
}

func TestLoopGuardWindow(t *testing.T) {
	var g loopGuard
	t0 := time.Unix(0, 0)
	// Five without progress, but not within 500 ms: no detection.
	for i := range 12 {
		if g.cycle(t0.Add(time.Duration(i) * 130 * time.Millisecond)) {
			t.Fatalf("detection at request %d, 130 ms apart", i+1)
		}
	}
	g.progress()
	for i := range 4 {
		if g.cycle(t0.Add(time.Duration(i) * time.Millisecond)) {
			t.Fatalf("detection at request %d", i+1)
		}
	}
	if !g.cycle(t0.Add(4*time.Millisecond)) || g.detections != 1 {
		t.Fatal("no detection at the fifth request within 500 ms")
	}
	// Until progress, every further one is a detection, however slow.
	if !g.cycle(t0.Add(time.Hour)) || g.detections != 2 {
		t.Fatal("no detection after the first")
	}
	g.progress()
	if g.cycle(t0.Add(time.Hour)) || g.detections != 0 || g.n != 1 {
		t.Fatalf("progress did not reset the guard: %+v", g)
	}
}

// loopServer answers every request with a 409, naming a new handle each
// time (shape eviction churn) or the same one, and records when requests
// arrive.
type loopServer struct {
	sameHandle bool
	first      func(w http.ResponseWriter, n int) bool // answers the first requests, if set

	mu    sync.Mutex
	times []time.Time
}

func (ls *loopServer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ls.mu.Lock()
	ls.times = append(ls.times, time.Now())
	n := len(ls.times)
	ls.mu.Unlock()
	if ls.first != nil && ls.first(w, n) {
		return
	}
	h := "h-next"
	if !ls.sameHandle {
		h = "h" + strconv.Itoa(n)
	}
	w.Header().Set("electric-handle", h)
	w.Header().Set("cache-control", "public, max-age=60, must-revalidate")
	w.WriteHeader(http.StatusConflict)
	io.WriteString(w, `[{"headers":{"control":"must-refetch"}}]`)
}

// countSince returns how many requests arrived within d of start.
func (ls *loopServer) countSince(start time.Time, d time.Duration) (within, total int) {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	for _, at := range ls.times {
		if at.Sub(start) < d {
			within++
		}
	}
	return within, len(ls.times)
}

// An upstream that answers 409 to every request gets a handful of
// requests per second, not thousands, and the stream stops with a
// FastLoopError within a few seconds.
func TestFastLoop409Rate(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		ls   *loopServer
		live bool
	}{
		{name: "new handle each time", ls: &loopServer{}},
		{name: "same handle", ls: &loopServer{sameHandle: true}},
		{name: "live stream", live: true, ls: &loopServer{first: func(w http.ResponseWriter, n int) bool {
			if n > 1 {
				return false
			}
			fr := ok("h0", "0_inf", "["+row1+","+utd+"]")
			for k, v := range fr.header {
				w.Header().Set(k, v)
			}
			io.WriteString(w, fr.body)
			return true
		}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			srv := httptest.NewServer(tc.ls)
			defer srv.Close()
			s, _ := New(Options{URL: srv.URL + "/v1/shape?secret=hunter2", Params: Params{Table: "items"}, Live: tc.live})
			start := time.Now()
			refetches := 0
			var err error
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			for {
				var m Message
				if m, err = s.Next(ctx); err != nil {
					break
				}
				if m.IsMustRefetch() {
					refetches++
				}
			}
			elapsed := time.Since(start)
			in2s, total := tc.ls.countSince(start, 2*time.Second)
			t.Logf("%d requests in the first 2 s, %d in all; %d must-refetches; stopped after %v: %v",
				in2s, total, refetches, elapsed.Round(time.Millisecond), err)
			var fe *FastLoopError
			if !errors.As(err, &fe) || !errors.Is(err, ErrFastLoop) || fe.What != "409 must-refetch" || fe.Offset != "-1" {
				t.Fatalf("err = %v, want a FastLoopError about 409s at offset -1", err)
			}
			if in2s > 15 || total > 15 {
				t.Errorf("%d requests in the first 2 s, %d in all; want at most 15", in2s, total)
			}
			// The delays of four detections add up to at most 3 s.
			if elapsed > 6*time.Second {
				t.Errorf("the error surfaced after %v", elapsed)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(fe.URL, "hunter2") {
				t.Errorf("secret in the error: %v", err)
			}
			if _, err2 := s.Next(t.Context()); err2 != err {
				t.Errorf("the error is not terminal: %v", err2)
			}
		})
	}
}

// OnError may resume after a FastLoopError; the request rate stays bounded.
func TestFastLoopOnErrorResumes(t *testing.T) {
	t.Parallel()
	ls := &loopServer{}
	srv := httptest.NewServer(ls)
	defer srv.Close()
	var loops atomic.Int32
	s, _ := New(Options{URL: srv.URL + "/v1/shape", Params: Params{Table: "items"},
		OnError: func(err error) *Recovery {
			if errors.Is(err, ErrFastLoop) {
				loops.Add(1)
				return &Recovery{}
			}
			return nil
		}})
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Second)
	defer cancel()
	start := time.Now()
	var err error
	for err == nil {
		_, err = s.Next(ctx)
	}
	in4s, _ := ls.countSince(start, 4*time.Second)
	t.Logf("%d requests in 4 s, %d fast loops recovered by OnError", in4s, loops.Load())
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	// At most 9 requests per ≥1.5 s loop, plus the one in flight.
	if in4s > 30 || loops.Load() < 1 {
		t.Errorf("%d requests in 4 s, %d loops", in4s, loops.Load())
	}
}

// The backoff of the fast-loop guard ends with the context; the stream can
// be read again and carries on where it was.
func TestFastLoopBackoffRespectsContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	var cancelled atomic.Int64
	ls := &loopServer{}
	ls.first = func(w http.ResponseWriter, n int) bool {
		if n == 6 { // the second detection: a wait of 200–400 ms
			time.AfterFunc(20*time.Millisecond, func() {
				cancelled.Store(time.Now().UnixNano())
				cancel()
			})
		}
		return false
	}
	srv := httptest.NewServer(ls)
	defer srv.Close()
	s, _ := New(Options{URL: srv.URL + "/v1/shape", Params: Params{Table: "items"}})
	var err error
	for err == nil {
		_, err = s.Next(ctx)
	}
	returned := time.Now()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if d := returned.Sub(time.Unix(0, cancelled.Load())); d > 150*time.Millisecond {
		t.Errorf("Next returned %v after the context ended", d)
	}
	if _, n := ls.countSince(time.Time{}, 0); n != 6 {
		t.Errorf("%d requests before the cancel, want 6", n)
	}
	// A new context: the same loop goes on, and ends as it would have.
	for err = nil; err == nil; {
		_, err = s.Next(t.Context())
	}
	var fe *FastLoopError
	if !errors.As(err, &fe) || fe.Requests != 9 {
		t.Fatalf("err = %v", err)
	}
	if _, n := ls.countSince(time.Time{}, 0); n != 9 {
		t.Errorf("%d requests in all, want 9", n)
	}
}

// Each refetch delivers the snapshot again, then the next request gets a
// 409 (a shape evicted right after its snapshot): snapshot rows are not
// progress, so the loop is caught.
func TestFastLoopEvictedAfterSnapshot(t *testing.T) {
	t.Parallel()
	ls := &loopServer{}
	ls.first = func(w http.ResponseWriter, n int) bool {
		if n%2 == 0 {
			return false // 409
		}
		fr := ok("h"+strconv.Itoa(n), "0_0", "["+row1+"]")
		for k, v := range fr.header {
			w.Header().Set(k, v)
		}
		io.WriteString(w, fr.body)
		return true
	}
	srv := httptest.NewServer(ls)
	defer srv.Close()
	s, _ := New(Options{URL: srv.URL + "/v1/shape", Params: Params{Table: "items"}})
	ms, err := collect(t, s)
	var fe *FastLoopError
	if !errors.As(err, &fe) || fe.Offset != "0_0" {
		t.Fatalf("err = %v", err)
	}
	if got := keysOf(ms); got != "1R1R1R1R1R1R1R1R1R" {
		t.Errorf("messages %s", got)
	}
}

// warnCounter counts the fast-loop guard's warnings.
type warnCounter struct {
	slog.Handler
	n atomic.Int32
}

func (h *warnCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *warnCounter) Handle(_ context.Context, r slog.Record) error {
	if r.Message == "shape requests loop without progress; backing off" {
		h.n.Add(1)
	}
	return nil
}

// A few 409s in a row are normal, and an up-to-date in between starts the
// count again: no backoff.
func TestFastLoopProgressResets(t *testing.T) {
	t.Parallel()
	refetch := fakeResp{status: 409, header: map[string]string{"electric-handle": "h"}, body: `[{"headers":{"control":"must-refetch"}}]`}
	resp := []fakeResp{}
	for range 3 {
		resp = append(resp, refetch, refetch, refetch, refetch, ok("h", "0_0", "["+row1+"]"), ok("h", "0_inf", "["+utd+"]"))
	}
	_, u := startScripted(t, resp...)
	wc := &warnCounter{}
	s, _ := New(Options{URL: u, Live: true, Logger: slog.New(wc)})
	var ms []Message
	for range 3 * 6 {
		m, err := s.Next(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		ms = append(ms, m)
	}
	if got := keysOf(ms); got != "RRRR1URRRR1URRRR1U" {
		t.Errorf("messages %s", got)
	}
	if n := wc.n.Load(); n != 0 {
		t.Errorf("%d fast-loop detections, want none", n)
	}

	// Five in a row within 500 ms: one detection.
	_, u = startScripted(t, refetch, refetch, refetch, refetch, refetch, ok("h", "0_0", "["+row1+"]"), ok("h", "0_inf", "["+utd+"]"))
	wc = &warnCounter{}
	s, _ = New(Options{URL: u, Logger: slog.New(wc)})
	if ms, err := collect(t, s); err != nil || keysOf(ms) != "RRRRR1U" {
		t.Fatalf("messages %s, %v", keysOf(ms), err)
	}
	if n := wc.n.Load(); n != 1 {
		t.Errorf("%d fast-loop detections, want 1", n)
	}
}
