package client

// Tests against electrictest over a real Postgres with faults injected by
// the server (Retry-After, cut bodies, slow responses) and cancellation
// (helpers in electric_test.go).

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
)

func TestElectricRetryAfter(t *testing.T) {
	e := newEnv(t, electrictest.Options{})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items (id) VALUES (1)`)

	// A burst of 503s without Retry-After: retried with (fast) backoff.
	e.srv.FailNext(5, 503, 0)
	s, _ := New(Options{URL: e.url, Params: Params{Table: "items"}, HTTPClient: testClient(), Backoff: fastBackoff()})
	ms, err := collect(t, s)
	if err != nil || len(ms) < 2 {
		t.Fatalf("%d messages, %v", len(ms), err)
	}

	// Retry-After is honoured over a shorter backoff.
	e.srv.FailNext(1, 503, time.Second)
	s, _ = New(Options{URL: e.url, Params: Params{Table: "items"}, HTTPClient: testClient(),
		Backoff: Backoff{Initial: time.Millisecond}})
	start := time.Now()
	if _, err := collect(t, s); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < time.Second {
		t.Errorf("finished after %v, before the 1s Retry-After", el)
	}

	// 429 is retried too; a 400 is not.
	e.srv.FailNext(2, 429, 0)
	s, _ = New(Options{URL: e.url, Params: Params{Table: "items"}, HTTPClient: testClient(), Backoff: fastBackoff()})
	if _, err := collect(t, s); err != nil {
		t.Fatal(err)
	}
	s, _ = New(Options{URL: e.url, Params: Params{Table: "nope"}, HTTPClient: testClient(), Backoff: fastBackoff()})
	_, err = collect(t, s)
	var he *HTTPError
	if !errors.As(err, &he) || he.StatusCode != 400 || !strings.Contains(string(he.Body), "does not exist") {
		t.Errorf("unknown table: %v", err)
	}
}

// Bodies cut at every few bytes during a chunked initial sync: every row
// is delivered exactly once.
func TestElectricCutBodies(t *testing.T) {
	e := newEnv(t, electrictest.Options{ChunkBytes: 3000})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items (id, title) SELECT i, repeat('x', i % 50) FROM generate_series(1, 300) i`)
	for _, cut := range []int{0, 1, 57, 400, 1500, 2999} {
		e.srv.CutNext(3, cut)
		s, _ := New(Options{URL: e.url, Params: Params{Table: "items"}, HTTPClient: testClient(), Backoff: fastBackoff()})
		ms, err := collect(t, s)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for _, m := range ms {
			if m.IsChange() {
				seen[m.Key]++
			}
			if m.IsMustRefetch() {
				t.Fatalf("cut %d: unexpected must-refetch", cut)
			}
		}
		for k, n := range seen {
			if n != 1 {
				t.Fatalf("cut %d: %s delivered %d times", cut, k, n)
			}
		}
		if len(seen) != 300 {
			t.Fatalf("cut %d: %d rows", cut, len(seen))
		}
	}
}

func TestElectricSlowResponses(t *testing.T) {
	e := newEnv(t, electrictest.Options{LongPollTimeout: 5 * time.Second})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items (id) VALUES (1)`)
	e.srv.SetDelay(150 * time.Millisecond)
	s, _ := New(Options{URL: e.url, Params: Params{Table: "items"}, Live: true, HTTPClient: testClient(),
		Backoff: fastBackoff(), LiveRequestTimeout: 400 * time.Millisecond})
	sh, stop := runShape(t, s)
	if err := sh.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	e.srv.SetDelay(0)
	// Live polls now outlast the 400ms watchdog (server waits 5s): the
	// stream abandons and retries them, and still sees new rows promptly.
	time.Sleep(time.Second)
	e.exec(`INSERT INTO items (id) VALUES (2)`)
	waitEqual(t, e, sh, "items", 3*time.Second)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
}

// Cancelling the context stops a long poll at once, and no goroutine
// outlives the stream.
func TestElectricCancelStopsPromptly(t *testing.T) {
	e := newEnv(t, electrictest.Options{LongPollTimeout: 20 * time.Second})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	hc := testClient()
	base := runtime.NumGoroutine()

	s, _ := New(Options{URL: e.url, Params: Params{Table: "items"}, Live: true, HTTPClient: hc})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		for {
			if _, err := s.Next(ctx); err != nil {
				errc <- err
				return
			}
		}
	}()
	time.Sleep(300 * time.Millisecond) // now in a live long poll
	start := time.Now()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if el := time.Since(start); el > 200*time.Millisecond {
		t.Errorf("stopped after %v", el)
	}
	// The stream can be read again with a new context.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel2()
	if _, err := s.Next(ctx2); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second Next: %v", err)
	}
	s.Close()
	hc.CloseIdleConnections()
	waitGoroutines(t, base)
}

func waitGoroutines(t *testing.T, base int) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for runtime.NumGoroutine() > base {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Fatalf("%d goroutines, %d before:\n%s", runtime.NumGoroutine(), base, buf[:n])
		}
		time.Sleep(10 * time.Millisecond)
	}
}
