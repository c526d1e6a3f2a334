package client

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestSharedTokenSourceSingleFlight(t *testing.T) {
	var fetches atomic.Int32
	release := make(chan struct{})
	ts := NewSharedTokenSource(func(ctx context.Context) (string, error) {
		n := fetches.Add(1)
		if n > 1 {
			<-release
		}
		return "t" + strconv.Itoa(int(n)), nil
	})
	tok, err := ts.Token(t.Context())
	if err != nil || tok != "t1" {
		t.Fatal(tok, err)
	}
	if tok, _ := ts.Token(t.Context()); tok != "t1" || fetches.Load() != 1 {
		t.Fatalf("cached token not reused: %s, %d fetches", tok, fetches.Load())
	}

	// 50 goroutines report t1 rejected at once: one fetch.
	var wg sync.WaitGroup
	got := make([]string, 50)
	for i := range got {
		wg.Go(func() {
			tok, err := ts.Refresh(t.Context(), "t1")
			if err != nil {
				t.Error(err)
			}
			got[i] = tok
		})
	}
	time.Sleep(20 * time.Millisecond)
	close(release)
	wg.Wait()
	for _, g := range got {
		if g != "t2" {
			t.Fatalf("got %q, want t2", g)
		}
	}
	if fetches.Load() != 2 {
		t.Errorf("%d fetches, want 2", fetches.Load())
	}
	// A late report of the old token does not refresh again.
	if tok, _ := ts.Refresh(t.Context(), "t1"); tok != "t2" || fetches.Load() != 2 {
		t.Errorf("stale refresh: %s, %d fetches", tok, fetches.Load())
	}
	// Rejecting the current token does.
	if tok, _ := ts.Refresh(t.Context(), "t2"); tok != "t3" {
		t.Errorf("refresh of current token: %s", tok)
	}
}

func TestSharedTokenSourceLeaderCancelled(t *testing.T) {
	started := make(chan struct{})
	var fetches atomic.Int32
	ts := NewSharedTokenSource(func(ctx context.Context) (string, error) {
		if fetches.Add(1) == 1 {
			close(started)
			<-ctx.Done()
			return "", ctx.Err()
		}
		return "ok", nil
	})
	lctx, cancel := context.WithCancel(t.Context())
	errc := make(chan error)
	go func() { _, err := ts.Token(lctx); errc <- err }()
	<-started
	res := make(chan string)
	go func() { tok, _ := ts.Token(t.Context()); res <- tok }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Errorf("leader: %v", err)
	}
	if tok := <-res; tok != "ok" {
		t.Errorf("follower got %q; it should take over the fetch", tok)
	}
}

func TestSharedTokenSourceError(t *testing.T) {
	boom := errors.New("boom")
	calls := 0
	ts := NewSharedTokenSource(func(ctx context.Context) (string, error) {
		calls++
		if calls == 1 {
			return "", boom
		}
		return "t", nil
	})
	if _, err := ts.Token(t.Context()); !errors.Is(err, boom) {
		t.Fatal(err)
	}
	if tok, err := ts.Token(t.Context()); err != nil || tok != "t" {
		t.Fatal(tok, err)
	}
}
