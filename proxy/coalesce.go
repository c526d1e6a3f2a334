package proxy

import (
	"context"
	"sync"
)

// flightGroup coalesces identical upstream live polls: callers asking for
// the same key while a request for it is in flight share that request and
// its result. It serves both the HTTP shape endpoint (liveResult) and the
// WebSocket subscriptions (wsResult).
//
// The first caller (the leader) makes the request on its own goroutine, so
// a poll that shares nothing costs no goroutine more than an unshared one;
// the others wait for its result. The request runs on a context of its
// own, not the leader's: a caller leaving does not cancel it while others
// wait; the last one leaving does (a leader whose client left still
// returns only when the request ends, which is then at once).
type flightGroup[T any] struct {
	mu      sync.Mutex
	flights map[string]*flight[T]
}

// flight is one shared upstream request.
type flight[T any] struct {
	done    chan struct{}
	res     T
	waiters int
	cancel  context.CancelFunc
}

// leave drops a waiter, cancelling the request when it was the last.
func (g *flightGroup[T]) leave(key string, f *flight[T]) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f.waiters--
	if f.waiters == 0 {
		if g.flights[key] == f {
			delete(g.flights, key)
		}
		f.cancel()
	}
}

// do returns the result of fetch for key, shared with every other caller
// of do with the same key while it runs. ok is false when ctx ended first.
func (g *flightGroup[T]) do(ctx context.Context, key string, fetch func(context.Context) T) (res T, ok bool) {
	if ctx.Err() != nil {
		return res, false
	}
	g.mu.Lock()
	if g.flights == nil {
		g.flights = map[string]*flight[T]{}
	}
	f := g.flights[key]
	if f != nil {
		f.waiters++
		g.mu.Unlock()
		select {
		case <-f.done:
			return f.res, true
		case <-ctx.Done():
			g.leave(key, f)
			return res, false
		}
	}
	fctx, cancel := context.WithCancel(context.Background())
	f = &flight[T]{done: make(chan struct{}), cancel: cancel, waiters: 1}
	g.flights[key] = f
	g.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { g.leave(key, f) })
	r := fetch(fctx)
	stop()
	g.mu.Lock()
	if g.flights[key] == f {
		delete(g.flights, key)
	}
	f.res = r
	g.mu.Unlock()
	close(f.done)
	cancel()
	if ctx.Err() != nil {
		return res, false
	}
	return r, true
}

// inFlight is the number of shared requests under way (for tests).
func (g *flightGroup[T]) inFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.flights)
}
