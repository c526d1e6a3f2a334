package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
)

// forward answers a shape request that passed every check: a coalesced
// live poll from its shared result, anything else (or a result too large
// to share) with a request of its own, spliced when it can be.
func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, rl *rule, q url.Values, info *reqInfo) {
	key := ""
	if info.live && r.Method == http.MethodGet {
		key = liveKey(q, r.Header)
	}
	if key != "" {
		// fetch (or start, for a poll that may be parked) runs only for
		// the first poll (the leader): the upstream request carries its
		// forwarded headers. They keep only what they need (not the
		// request), as the request may outlive a parked leader's handler
		// by minutes.
		rawQuery, fwd := q.Encode(), forwardedHeaders(r.Header)
		fetch := func(ctx context.Context) *liveResult {
			return p.fetchShared(ctx, rawQuery, fwd, info.reqID)
		}
		start := func(ctx context.Context, done func(*liveResult)) {
			p.fetchSharedAsync(ctx, rawQuery, fwd, info.reqID, done)
		}
		var res *liveResult
		var ok bool
		if pc := parkConnOf(r); pc != nil {
			// Served by Proxy.Serve: a poll still waiting after parkAfter
			// is parked (park.go).
			if res, ok = p.waitOrPark(w, r, pc, rl, info, key, start); info.parked {
				return
			}
		} else {
			res, ok = p.live.do(r.Context(), key, fetch)
		}
		if !ok {
			clientLeft(w, info)
			return
		}
		if p.replayShared(w, rl, info, res) {
			return
		}
		// Too large to share: this poll fetches it on its own.
	}
	if pc, tc := p.spliceable(r, info); pc != nil {
		p.streamSpliced(w, r, pc, tc, q.Encode(), rl, info)
		return
	}
	p.stream(r.Context(), w, r.Method, q.Encode(), r.Header, rl, info)
}

// stream makes its own upstream request and streams the response to w.
// ctx is the client's: when it has ended, a failed upstream request is
// the client going away, not a bad gateway.
func (p *Proxy) stream(ctx context.Context, w http.ResponseWriter, method, rawQuery string, hdr http.Header, rl *rule, info *reqInfo) {
	uctx, cancel := context.WithTimeout(ctx, p.limits.UpstreamTimeout)
	defer cancel()
	req, err := p.upstreamRequest(uctx, method, rawQuery, hdr, info.reqID)
	if err != nil {
		p.badGateway(w, info, err)
		return
	}
	resp, err := p.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			clientLeft(w, info)
			return
		}
		p.badGateway(w, info, err)
		return
	}
	defer resp.Body.Close()
	if !p.writeHeader(w, rl, info, resp.StatusCode, resp.Header, -1) {
		return
	}
	if method == http.MethodHead {
		return
	}
	// Send the headers at once: an SSE stream may wait long for its
	// first event.
	http.NewResponseController(w).Flush()
	if err := copyFlush(w, resp.Body); err != nil && ctx.Err() == nil {
		p.upstreamBodyFailed(rl, info, err)
	}
}

// copyBufs holds copyFlush's large buffers. They are large because every
// write to a chunked response costs net/http a chunk header, the data and
// the chunk's end, and a flush: relaying a 50 MB snapshot in 256 KiB reads
// instead of 32 KiB ones made it 1.3× faster (bench/proxy.sh part b), and
// the pool keeps that from costing a quarter MB per request. smallBufs
// hold the buffers every copy starts with: a response that trickles (an
// SSE stream, open for a minute, an event now and then) never fills one,
// and so never holds a large one for its whole life.
var (
	copyBufs  = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}
	smallBufs = sync.Pool{New: func() any { b := make([]byte, 8<<10); return &b }}
	bigCopies atomic.Int64 // copies that took a large buffer, for tests
)

// copyFlush streams src to w, flushing after every read so that a live
// response is not held back. It reads into a small buffer until a read
// fills it (a body arriving in bulk), then into a large one.
func copyFlush(w http.ResponseWriter, src io.Reader) error {
	rc := http.NewResponseController(w)
	bp, pool := smallBufs.Get().(*[]byte), &smallBufs
	defer func() { pool.Put(bp) }()
	buf := *bp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil // client went away
			}
			if ferr := rc.Flush(); ferr != nil && !errors.Is(ferr, http.ErrNotSupported) {
				return nil
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if n == len(buf) && pool == &smallBufs {
			smallBufs.Put(bp)
			bp, pool = copyBufs.Get().(*[]byte), &copyBufs
			buf = *bp
			bigCopies.Add(1)
		}
	}
}

// clientLeft records a request whose client went away before its answer.
func clientLeft(w http.ResponseWriter, info *reqInfo) {
	info.reason = "client went away"
	w.WriteHeader(499) // never seen by the client; recorded in the audit line
}

// badGateway records an upstream failure and answers 502.
func (p *Proxy) badGateway(w http.ResponseWriter, info *reqInfo, err error) {
	p.metrics.upErrors.Add(1)
	info.reason = "upstream: " + redact(err)
	p.logger.Warn("proxy: upstream error", "request_id", w.Header().Get("X-Request-Id"), "shape", info.shape, "err", info.reason)
	writeJSON(w, http.StatusBadGateway, map[string]any{"message": "Bad gateway", "error": "the sync service is unavailable"})
}

// redact removes the query (with the secret) from url errors.
func redact(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		u, perr := url.Parse(ue.URL)
		if perr == nil {
			u.RawQuery = ""
		}
		var op string
		if u != nil {
			op = u.String()
		}
		return ue.Op + " " + op + ": " + ue.Err.Error()
	}
	return err.Error()
}
