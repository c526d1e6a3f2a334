package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// response is a response body being read.
type response struct {
	body      io.ReadCloser
	ar        *arrayReader
	url       string
	reqOffset string
	handle    string
	offset    string
	cursor    string
	seen      int // messages (other than up-to-date) read so far
	skip      int // messages to skip: delivered by an interrupted attempt
	skipPos   pos // log position of the last skipped-over delivered change
	hasPos    bool
	committed bool

	// An SSE response: a connection that delivers batches, each ending in
	// up-to-date. reqOffset, seen and skip then describe the batch being
	// read: reqOffset is the offset committed at the last up-to-date.
	sse         *sseReader
	start       time.Time
	sawUpToDate bool
	lastPos     pos // log position of the last message with one, since reqOffset
	hasLastPos  bool
	afterPos    int // messages seen after lastPos (or since reqOffset without one)
}

// partial records how far an interrupted response got, so that its retry
// (same handle and offset) delivers nothing twice.
type partial struct {
	handle    string
	reqOffset string
	delivered int
	last      pos // position of the last delivered change, if any
	hasLast   bool
}

// accept checks a 200 response and makes it the response in flight.
//
// An SSE response (sse) is a connection that delivers batches of messages,
// each ending in up-to-date. Its electric-offset describes the shape's end
// when it opened, not the batches: the stream's offset advances at each
// up-to-date to the log position of the last message of the batch (see
// readSSE).
func (s *ShapeStream) accept(resp *http.Response, u *url.URL, redacted string, live bool, start time.Time, sse bool, cancel context.CancelFunc) error {
	h := resp.Header
	if missing := missingHeaders(h, live); len(missing) > 0 {
		resp.Body.Close()
		cancel()
		return &MissingHeadersError{Missing: missing, URL: redacted}
	}
	handle := h.Get("electric-handle")
	reqOffset := u.Query().Get("offset")
	if s.expiredHandle != "" && handle == s.expiredHandle {
		resp.Body.Close()
		cancel()
		return s.staleResponse(handle, reqOffset, redacted)
	}
	if !live && s.schema == nil {
		schema, err := ParseSchema(h.Get("electric-schema"))
		if err != nil {
			resp.Body.Close()
			cancel()
			return err
		}
		s.mu.Lock()
		s.schema = schema
		s.mu.Unlock()
		s.dec.schema = schema
	}
	r := &response{
		body:      resp.Body,
		url:       redacted,
		reqOffset: reqOffset,
		handle:    handle,
		offset:    h.Get("electric-offset"),
		cursor:    h.Get("electric-cursor"),
	}
	if sse {
		r.sse = newSSEReader(resp.Body)
		r.start = start
		r.offset = reqOffset
		if handle != s.Handle() {
			// Only a 409 changes the handle: the events that would
			// follow belong to another shape log, which the offset
			// does not point into. Start over, as after a 409.
			resp.Body.Close()
			cancel()
			s.mustRefetch(handle, nil)
			s.noProgress("an SSE response with another handle", redacted, reqOffset)
			return nil
		}
	} else {
		r.ar = newArrayReader(resp.Body)
	}
	if p := s.partial; p != nil && p.reqOffset == reqOffset {
		if p.handle == handle {
			r.skip = p.delivered
			r.skipPos, r.hasPos = p.last, p.hasLast
		} else {
			// What was delivered belongs to another shape: start over.
			s.queue = append(s.queue, mustRefetchMessage(""))
		}
		s.partial = nil
	}
	s.resp = r
	return nil
}

// missingHeaders returns the electric headers a 200 response must have and
// h lacks: the schema for a non-live request, the cursor for a live one.
func missingHeaders(h http.Header, live bool) []string {
	var missing []string
	need := []string{"electric-handle", "electric-offset", "electric-schema"}
	if live {
		need = []string{"electric-handle", "electric-offset", "electric-cursor"}
	}
	for _, k := range need {
		if _, ok := h[http.CanonicalHeaderKey(k)]; !ok {
			missing = append(missing, k)
		}
	}
	return missing
}

// staleResponse handles a response that still carries the handle a 409
// declared expired: a stale cached response, re-requested with a fresh
// cache-buster (errRetryNow) up to maxStaleRetries times, then once more
// without expired_handle at offset -1, else a *StaleResponseError.
func (s *ShapeStream) staleResponse(handle, reqOffset, redacted string) error {
	s.staleRetries++
	if s.staleRetries <= maxStaleRetries {
		s.log.Warn("stale cached response with an expired shape handle; retrying with a cache-buster",
			"url", redacted, "handle", handle, "attempt", s.staleRetries)
	} else if reqOffset == "-1" && s.healed != handle {
		// Self-healing, as the TypeScript client does: the handle
		// may not be expired at all (a 409 from Electric's cleanup
		// race), or a proxy drops the cache-buster. Forget that it
		// expired and ask once more without expired_handle. Only at
		// offset -1, where any handle's response is a fresh start.
		s.log.Warn("expired shape handle keeps coming back; retrying once without expired_handle",
			"url", redacted, "handle", handle)
		s.healed = handle
		s.expiredHandle = ""
		s.staleRetries = 0
	} else {
		return &StaleResponseError{Handle: handle, URL: redacted}
	}
	s.cacheBuster = newCacheBuster()
	s.noProgress("a response with expired handle "+handle, redacted, reqOffset)
	return errRetryNow
}

// read reads the next message of the response in flight. ok is false when
// the response ended without a message to deliver.
func (s *ShapeStream) read(ctx context.Context) (m Message, ok bool, err error) {
	r := s.resp
	if r.sse != nil {
		return s.readSSE(ctx)
	}
	for {
		el, off, err := r.ar.next()
		if err == io.EOF {
			s.commit(r)
			s.finish(r)
			if r.offset == r.reqOffset {
				s.noProgress("a response without up-to-date that left the offset unchanged", r.url, r.reqOffset)
			}
			return Message{}, false, nil
		}
		if err != nil {
			return Message{}, false, readFailure(err, "reading response from", r.url)
		}
		m, err := s.dec.parseMessage(el, off)
		if err != nil {
			return Message{}, false, err
		}
		if m.IsUpToDate() {
			s.commit(r)
			s.mu.Lock()
			was := s.upToDate
			s.upToDate = true
			s.mu.Unlock()
			if !was || r.offset != r.reqOffset {
				s.loop.progress()
			} else {
				s.noProgress("an up-to-date without new messages", r.url, r.reqOffset)
			}
			if !s.opts.Live {
				s.done = true
			}
			// Drain the closing bracket so the connection can be reused;
			// the response is complete whatever happens now.
			for {
				if _, _, err := r.ar.next(); err != nil {
					break
				}
			}
			s.finish(r)
			return m, true, nil
		}
		if m.IsMustRefetch() {
			// Only SSE bodies carry it, but honour it anywhere: the
			// queued message is delivered by Next.
			s.finish(r)
			s.mustRefetch("", []byte("["+string(m.raw)+"]"))
			s.noProgress("a must-refetch message", r.url, r.reqOffset)
			return Message{}, false, nil
		}
		before := r.readMark()
		if !s.admit(r, &m) {
			continue
		}
		if m.IsChange() && s.batch != nil {
			return s.transformAhead(ctx, r, m, before)
		}
		if m.IsChange() && s.xform != nil {
			if err := s.tm.apply(ctx, s.xform, &m); err != nil {
				if cerr := ctx.Err(); cerr != nil {
					// The transform gave up because the caller's context
					// ended: the message was not delivered. Dropping the
					// response (handleError does) records what was, so
					// the next Next re-requests and reads it again.
					r.unread(before)
					return Message{}, false, cerr
				}
				return Message{}, false, err
			}
		}
		return m, true, nil
	}
}

// admit counts a message read from r, other than up-to-date, and reports
// whether to deliver it: not if an interrupted attempt delivered it.
func (s *ShapeStream) admit(r *response, m *Message) bool {
	r.seen++
	if r.seen <= r.skip {
		// Delivered by an interrupted attempt. Make sure the log
		// replays identically; if a change lies beyond what was
		// delivered, stop skipping rather than lose it.
		if p, ok := m.position(); !ok || r.hasPos && !p.after(r.skipPos) {
			return false
		}
		r.skip = 0
	}
	if p, ok := m.position(); ok {
		r.skipPos, r.hasPos = p, true
		if !s.hasFurthest || p.after(s.furthest) {
			s.furthest, s.hasFurthest = p, true
			s.loop.progress()
		}
	}
	return true
}

// A readMark is how much of a response was read before a message: what
// r.unread restores when the message is not delivered after all.
type readMark struct {
	seen    int
	skipPos pos
	hasPos  bool
}

func (r *response) readMark() readMark { return readMark{r.seen, r.skipPos, r.hasPos} }

// unread gives the messages read since m back to r: they count as not
// delivered, so a retry of the response delivers them.
func (r *response) unread(m readMark) {
	r.seen, r.skipPos, r.hasPos = m.seen, m.skipPos, m.hasPos
}

// commit makes the response's offset the stream's.
func (s *ShapeStream) commit(r *response) {
	if r.committed {
		return
	}
	r.committed = true
	s.mu.Lock()
	s.handle = r.handle
	s.offset = r.offset
	if r.cursor != "" {
		s.cursor = r.cursor
	}
	s.mu.Unlock()
	s.partial = nil
	s.success()
}

// success resets the retry state after a good response.
func (s *ShapeStream) success() {
	s.bo.reset()
	s.retries = 0
	s.recoveries = 0
	s.refreshed = false
	s.staleRetries = 0
}

// finish closes the response in flight after it was read.
func (s *ShapeStream) finish(r *response) {
	r.body.Close()
	s.resp = nil
	s.mu.Lock()
	if s.cancel != nil {
		s.cancel()
		s.cancel = nil
	}
	s.mu.Unlock()
}

// mustRefetch resets the stream after a 409 (or a must-refetch in a body)
// and queues the must-refetch message for the consumer.
func (s *ShapeStream) mustRefetch(newHandle string, body []byte) {
	s.mu.Lock()
	old := s.handle
	s.handle = newHandle
	s.offset = "-1"
	s.cursor = ""
	s.schema = nil
	s.upToDate = false
	s.mu.Unlock()
	s.dec.schema = nil
	if old != "" && old != newHandle {
		s.expiredHandle = old
	}
	s.cacheBuster = newCacheBuster()
	s.partial = nil
	s.done = false
	s.success()
	s.log.Debug("shape must be refetched", "expired_handle", old, "new_handle", newHandle)

	msg := mustRefetchMessage("")
	if len(body) > 0 {
		ar := newArrayReader(bytes.NewReader(body))
		if el, off, err := ar.next(); err == nil {
			if m, err := s.dec.parseMessage(el, off); err == nil && m.IsMustRefetch() {
				msg = m
			}
		}
	}
	s.queue = append(s.queue, msg)
}

// readFailure classifies an error reading a response body: a malformed
// body ends the stream (*ParseError); anything else — a cut connection, a
// timeout — is retried from the last committed position.
func readFailure(err error, what, url string) error {
	if _, ok := errors.AsType[*ParseError](err); ok {
		return err
	}
	return &retryable{err: fmt.Errorf("client: %s %s: %w", what, url, err)}
}
