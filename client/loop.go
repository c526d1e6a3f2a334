package client

import (
	"math/rand/v2"
	"time"
)

// The fast-loop guard. Some answers make the stream re-request at once
// without having made progress: a 409 (the shape changed), a response
// carrying a handle that a 409 declared expired, a response that neither
// moves the offset nor ends in up-to-date, a must-refetch in a body, an
// up-to-date (or 204) that repeats the offset of a stream that was already
// up to date. One of them is normal; a server or proxy that answers every
// request so (shape eviction churn, a proxy or CDN that ignores query
// parameters or strips headers) would be hammered thousands of times a
// second.
//
// Loop detection, as in the TypeScript client: loopThreshold such requests
// within loopWindow, with no progress in between, is a fast loop. From then
// on, until progress, every further one is another detection and delays the
// next request by loopBase·2ⁿ (n-th detection, capped at loopMax, jittered
// in [½, 1) of that, so the delays are not all close to zero); the
// loopMaxDetections-th detection stops the stream with a *FastLoopError
// instead. Progress is an up-to-date message that the consumer can commit
// (the first since the stream started or refetched, or at a new offset) or
// a change at a log position beyond any delivered before. Snapshot rows are
// not progress: a shape evicted after each snapshot delivers the same rows
// again and again.
//
// Requests are counted whatever their offset and handle: with eviction
// churn, every 409 names a new handle, and the loop alternates between
// offset -1 and the first chunk. Retries of failed requests (network
// errors, 5xx, 429, cut bodies) are not counted: they have their own
// backoff.
const (
	loopThreshold     = 5
	loopWindow        = 500 * time.Millisecond
	loopBase          = 100 * time.Millisecond
	loopMax           = 5 * time.Second
	loopMaxDetections = 5
)

// loopGuard is the state of the fast-loop guard since the last progress.
type loopGuard struct {
	n          int                      // requests without progress
	first      time.Time                // end of the first of them
	ends       [loopThreshold]time.Time // ends of the last ones (a ring)
	detections int
	until      time.Time // no request before this
	err        error     // *FastLoopError to return instead of the next request
}

// progress forgets everything: the stream moved on.
func (g *loopGuard) progress() {
	if g.n != 0 {
		*g = loopGuard{}
	}
}

// cycle records a request that ended at now without progress and reports
// whether it is a detection.
func (g *loopGuard) cycle(now time.Time) bool {
	if g.n == 0 {
		g.first = now
	}
	g.ends[g.n%loopThreshold] = now
	g.n++
	oldest := g.ends[g.n%loopThreshold] // the first of the last loopThreshold
	if g.detections == 0 && (g.n < loopThreshold || now.Sub(oldest) > loopWindow) {
		return false
	}
	g.detections++
	return true
}

// loopDelay is the wait after the n-th detection: [c/2, c) with
// c = min(loopBase·2ⁿ, loopMax).
func loopDelay(n int) time.Duration {
	c := loopMax
	if n < 16 {
		c = min(loopBase<<n, loopMax)
	}
	return c/2 + time.Duration(rand.Int64N(int64(c/2)))
}

// noProgress records a request that ended without progress: what answered
// it (for the error), the redacted request URL and its offset. On a
// detection it delays the next request and gives it a cache-buster, or
// arms the *FastLoopError that the next request returns instead.
func (s *ShapeStream) noProgress(what, url, offset string) {
	g := &s.loop
	now := time.Now()
	if !g.cycle(now) {
		return
	}
	if g.detections >= loopMaxDetections {
		g.err = &FastLoopError{URL: url, Offset: offset, What: what, Requests: g.n, Elapsed: now.Sub(g.first)}
		return
	}
	wait := loopDelay(g.detections)
	g.until = now.Add(wait)
	s.cacheBuster = newCacheBuster()
	s.log.Warn("shape requests loop without progress; backing off",
		"url", url, "offset", offset, "answer", what, "requests", g.n, "detection", g.detections, "wait", wait)
}
