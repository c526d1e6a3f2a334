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
// A caller waits in one of two ways:
//
//   - do blocks its goroutine until the result is in. The first caller
//     (the leader) makes the request on its own goroutine, so a poll that
//     shares nothing costs no goroutine more than an unshared one.
//   - join registers a callback and returns at once: the waiter needs no
//     goroutine of its own (a parked HTTP poll, see park.go). When join
//     starts the flight, the request is only sent from the caller's
//     goroutine; its response is awaited by one goroutine on a minimal
//     stack (see liveClient.start).
//
// The request runs on a context of its own, not the leader's: a caller
// leaving does not cancel it while others wait; the last one leaving does
// (a leader whose client left still returns only when the request ends,
// which is then at once).
type flightGroup[T any] struct {
	mu      sync.Mutex
	flights map[string]*flight[T]
}

// flight is one shared upstream request.
type flight[T any] struct {
	key     string // the group's key; joined waiters keep this one copy
	done    chan struct{}
	res     T
	waiters int
	cancel  context.CancelFunc
	notify  []func(T) // joined waiters, called once the result is in
}

// leave drops a waiter, cancelling the request when it was the last.
func (g *flightGroup[T]) leave(f *flight[T]) {
	g.mu.Lock()
	defer g.mu.Unlock()
	f.waiters--
	if f.waiters == 0 {
		if g.flights[f.key] == f {
			delete(g.flights, f.key)
		}
		f.cancel()
	}
}

// run makes the request of f and hands its result to every waiter.
func (g *flightGroup[T]) run(f *flight[T], fctx context.Context, fetch func(context.Context) T) T {
	r := fetch(fctx)
	g.finish(f, r)
	return r
}

// finish hands the result of f to every waiter.
func (g *flightGroup[T]) finish(f *flight[T], r T) {
	g.mu.Lock()
	if g.flights[f.key] == f {
		delete(g.flights, f.key)
	}
	f.res = r
	notify := f.notify
	f.notify = nil
	g.mu.Unlock()
	close(f.done)
	f.cancel()
	for _, n := range notify {
		n(r)
	}
}

// newFlight starts a flight for key with its own cancellable context.
func (g *flightGroup[T]) newFlight(key string) (*flight[T], context.Context) {
	if g.flights == nil {
		g.flights = map[string]*flight[T]{}
	}
	fctx, cancel := context.WithCancel(context.Background())
	f := &flight[T]{key: key, done: make(chan struct{}), cancel: cancel, waiters: 1}
	g.flights[key] = f
	return f, fctx
}

// do returns the result of fetch for key, shared with every other caller
// of do or join with the same key while it runs. ok is false when ctx
// ended first.
func (g *flightGroup[T]) do(ctx context.Context, key string, fetch func(context.Context) T) (res T, ok bool) {
	if ctx.Err() != nil {
		return res, false
	}
	g.mu.Lock()
	if f := g.flights[key]; f != nil {
		f.waiters++
		g.mu.Unlock()
		select {
		case <-f.done:
			return f.res, true
		case <-ctx.Done():
			g.leave(f)
			return res, false
		}
	}
	f, fctx := g.newFlight(key)
	g.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { g.leave(f) })
	r := g.run(f, fctx, fetch)
	stop()
	if ctx.Err() != nil {
		return res, false
	}
	return r, true
}

// join is do without waiting: notify is called with the result, on the
// goroutine that ends the request. A waiter that goes away calls
// g.leave(f); its notify is still called when the request ends, and must
// then do nothing. notify must not block: it is called for every waiter in
// turn. When no request for key is in flight, join starts one with start
// on the caller's goroutine: start may send the request but must not wait
// for the response; it calls its done argument (once) with the result,
// from any goroutine.
func (g *flightGroup[T]) join(key string, start func(ctx context.Context, done func(T)), notify func(T)) *flight[T] {
	g.mu.Lock()
	if f := g.flights[key]; f != nil {
		f.waiters++
		f.notify = append(f.notify, notify)
		g.mu.Unlock()
		return f
	}
	f, fctx := g.newFlight(key)
	f.notify = append(f.notify, notify)
	g.mu.Unlock()
	start(fctx, func(r T) { g.finish(f, r) })
	return f
}

// inFlight is the number of shared requests under way (for tests).
func (g *flightGroup[T]) inFlight() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.flights)
}
