package electrictest

import (
	"crypto/rand"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Responses with a shape's log: snapshot chunks, catch-up and live long
// polls, and Server-Sent Events.

// cursorEpoch is the origin of electric-cursor time buckets.
var cursorEpoch = time.Date(2024, 10, 9, 0, 0, 0, 0, time.UTC)

// nextCursor computes electric-cursor: the end of the current long-poll
// interval, or a random step past the client's cursor so it never repeats.
func nextCursor(now time.Time, timeout time.Duration, prev string) string {
	t := int64(timeout / time.Second)
	if t == 0 {
		return "0"
	}
	d := int64(now.Sub(cursorEpoch) / time.Second)
	next := (d + t - 1) / t * t
	p, _ := strconv.ParseInt(prev, 10, 64)
	if next > p {
		return strconv.FormatInt(next, 10)
	}
	n, _ := rand.Int(rand.Reader, big.NewInt(3600))
	return strconv.FormatInt(p+1+n.Int64(), 10)
}

// serveLog answers a request for a shape's log: the snapshot chunk after
// the request's offset, the changes after it (waiting for some when live),
// or, with offset=now, just where the log ends.
func (s *Server) serveLog(w http.ResponseWriter, r *http.Request, sh *shape, req shapeRequest) {
	s.setLogHeaders(w.Header(), sh, req)
	lr := logResponse{w: w, r: r, handle: sh.handle, from: req.offset.String()}
	if req.now {
		_, _, latest, _, _ := sh.read(BeforeAll, 0)
		s.upToDateOnly(lr, latest, false)
		return
	}
	// The snapshot region: chunk k of the snapshot ends at offset 0_k.
	sh.mu.Lock()
	chunks := sh.chunks
	sh.mu.Unlock()
	next := -1
	if req.offset.IsBeforeAll() {
		next = 0
	} else if req.offset.Tx == 0 && req.offset.Op < uint64(len(chunks)-1) {
		next = int(req.offset.Op) + 1
	}
	if next >= 0 {
		if lr.start(Offset{Tx: 0, Op: uint64(next)}, true, false) {
			for _, seg := range chunks[next] {
				if _, err := w.Write(seg); err != nil {
					return
				}
			}
		}
		return
	}
	if req.sse {
		s.serveSSE(w, r, sh, req.offset)
		return
	}
	s.serveChanges(lr, sh, req)
}

// setLogHeaders sets the headers of a log response that do not depend on
// what it holds.
func (s *Server) setLogHeaders(h http.Header, sh *shape, req shapeRequest) {
	h.Set("electric-handle", sh.handle)
	h.Set("content-type", "application/json; charset=utf-8")
	if req.live {
		h.Set("electric-cursor", nextCursor(time.Now(), s.opts.LongPollTimeout, req.cursor))
	} else {
		h.Set("electric-schema", sh.schema)
	}
	switch {
	case req.offset.IsBeforeAll() && !req.now:
		h.Set("cache-control", "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746")
	case req.live && req.sse:
		h.Set("cache-control", "public, max-age="+strconv.Itoa(max(1, int(s.opts.SSETimeout/time.Second)-1)))
	case req.live:
		h.Set("cache-control", "public, max-age=5, stale-while-revalidate=5")
	default:
		h.Set("cache-control", "public, max-age=60, stale-while-revalidate=300")
	}
}

// A logResponse is the response to one request for a shape's log.
type logResponse struct {
	w      http.ResponseWriter
	r      *http.Request
	handle string
	from   string // the request's offset
}

// start writes the status and the headers of a response ending at off, and
// reports whether its body is to follow: not when the client's
// If-None-Match holds its etag (304). upToDate marks the response as
// reaching the end of the log.
func (lr logResponse) start(off Offset, hasData, upToDate bool) bool {
	h := lr.w.Header()
	etag := lr.handle + ":" + lr.from + ":" + off.String()
	if !hasData {
		etag += ":" + strconv.FormatInt(time.Now().UnixNano(), 10)
	}
	h.Set("electric-offset", off.String())
	h.Set("electric-has-data", strconv.FormatBool(hasData))
	h.Set("etag", `"`+etag+`"`)
	if upToDate {
		h.Set("electric-up-to-date", "")
	}
	if etagMatches(lr.r.Header.Get("If-None-Match"), etag) {
		h.Del("electric-schema") // only on 200s, as in Electric
		lr.w.WriteHeader(http.StatusNotModified)
		return false
	}
	lr.w.WriteHeader(http.StatusOK)
	return true
}

// finish writes a log response whose body is the messages in body.
func (lr logResponse) finish(off Offset, body []byte, hasData, upToDate bool) {
	if lr.start(off, hasData, upToDate) {
		lr.w.Write(body)
	}
}

// upToDateOnly answers with just an up-to-date message. Electric marks it
// as a no-change response (electric-has-data: false, a 4-part etag) only
// for offset=now and a live wait that timed out; a non-live catch-up that
// finds nothing new is an ordinary log response (has-data true, 3-part
// etag).
func (s *Server) upToDateOnly(lr logResponse, off Offset, hasData bool) {
	lr.finish(off, append(appendUpToDate([]byte{'['}, max(off.Tx, s.lastLSN.Load())), ']'), hasData, true)
}

// serveChanges answers with the changes after the request's offset. A live
// request with none waits for some until the long-poll timeout; an offset
// ahead of the log is waited for a while, then refused.
func (s *Server) serveChanges(lr logResponse, sh *shape, req shapeRequest) {
	ctx := lr.r.Context()
	var timeout <-chan time.Time
	deadline := time.Time{}
	for waited := false; ; waited = true {
		entries, end, latest, notify, gone := sh.read(req.offset, s.opts.ChunkBytes)
		if gone {
			if req.live && waited {
				// Rotated during a live wait: Electric's hold_until_change
				// learns of it without a replacement handle.
				s.mustRefetch(lr.w, "")
				return
			}
			s.mustRefetchDef(lr.w, ctx, req.def)
			return
		}
		if len(entries) > 0 {
			last := entries[len(entries)-1].off
			// A live response's up-to-date reports the LSN of its own
			// last change; a non-live one the server-wide LSN if later.
			lsn := last.Tx
			if !req.live {
				lsn = max(last.Tx, s.lastLSN.Load())
			}
			lr.finish(last, sh.render(req.offset, entries, end, lsn), true, end)
			return
		}
		if latest.Compare(req.offset) < 0 {
			// An offset ahead of the shape: wait a while for it to appear.
			if deadline.IsZero() {
				deadline = time.Now().Add(s.opts.LongPollTimeout / 2)
			}
			if !time.Now().Before(deadline) {
				invalidRequest(lr.w, map[string][]string{"offset": {"out of bounds for this shape"}})
				return
			}
		} else if !req.live {
			s.upToDateOnly(lr, latest, true)
			return
		}
		if timeout == nil {
			wait := s.opts.LongPollTimeout
			if !deadline.IsZero() {
				wait = time.Until(deadline)
			}
			t := time.NewTimer(wait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-notify:
		case <-timeout:
			if !deadline.IsZero() {
				continue
			}
			s.upToDateOnly(lr, maxOffset(latest, req.offset), false)
			return
		case <-ctx.Done():
			return
		}
	}
}

func maxOffset(a, b Offset) Offset {
	if a.Compare(b) >= 0 {
		return a
	}
	return b
}

func etagMatches(ifNoneMatch, etag string) bool {
	if ifNoneMatch == "" {
		return false
	}
	for _, part := range strings.Split(ifNoneMatch, ",") {
		part = strings.TrimPrefix(strings.TrimSpace(part), "W/")
		if strings.Trim(part, `"`) == etag {
			return true
		}
	}
	return false
}

// serveSSE streams changes as Server-Sent Events until the SSE timeout.
func (s *Server) serveSSE(w http.ResponseWriter, r *http.Request, sh *shape, off Offset) {
	h := w.Header()
	h.Set("content-type", "text/event-stream")
	h.Set("connection", "keep-alive")
	_, _, latest, _, _ := sh.read(off, 0)
	respOff := maxOffset(latest, off)
	// Electric's put_resp_headers applies to SSE responses too: an etag
	// for the response's offsets, electric-has-data (not a no-change
	// response) and electric-up-to-date (the offset is the shape's end).
	h.Set("electric-offset", respOff.String())
	h.Set("etag", `"`+sh.handle+":"+off.String()+":"+respOff.String()+`"`)
	h.Set("electric-has-data", "true")
	h.Set("electric-up-to-date", "")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	flush := func() {
		if flusher != nil {
			flusher.Flush()
		}
	}
	flush()
	end := time.NewTimer(s.opts.SSETimeout)
	defer end.Stop()
	keepAlive := time.NewTicker(s.opts.SSEKeepAlive)
	defer keepAlive.Stop()
	for immediate := true; ; immediate = false {
		entries, atEnd, _, notify, gone := sh.read(off, s.opts.ChunkBytes)
		if gone {
			return // the reconnect gets the 409
		}
		if len(entries) > 0 {
			var buf []byte
			for _, e := range entries {
				buf = append(buf, "data: "...)
				buf = append(buf, e.msg...)
				buf = append(buf, "\n\n"...)
			}
			off = entries[len(entries)-1].off
			if atEnd {
				buf = append(buf, "data: "...)
				buf = appendUpToDate(buf, off.Tx) // the batch end, as in Electric
				buf = append(buf, "\n\n"...)
			}
			if _, err := w.Write(buf); err != nil {
				return
			}
			flush()
			if immediate {
				return // data was there already: Electric sends it and ends the response
			}
			keepAlive.Reset(s.opts.SSEKeepAlive)
			continue
		}
		select {
		case <-notify:
		case <-keepAlive.C:
			if _, err := w.Write([]byte(": keep-alive\n\n")); err != nil {
				return
			}
			flush()
		case <-end.C:
			return
		case <-r.Context().Done():
			return
		}
	}
}
