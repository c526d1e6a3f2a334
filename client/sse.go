package client

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"time"
)

// The quick-close fallback, as in the TypeScript client: an SSE connection
// that ends cleanly within sseMinDuration without having
// delivered an up-to-date message is short; after sseMaxShort short ones
// in a row (a proxy that buffers or closes event streams), the stream
// long-polls for the rest of its life. Before the next SSE request after a
// short one, it waits a random duration in
// [0, min(sseShortMax, sseShortBase·2ⁿ)).
const (
	sseMinDuration = time.Second
	sseMaxShort    = 3
	sseShortBase   = 100 * time.Millisecond
	sseShortMax    = 5 * time.Second
)

// sseReader splits a text/event-stream body into the data of its events:
// one JSON message each. Comments (keep-alives) and fields other than data
// are ignored; the data lines of an event are joined with "\n"; an event
// without data is skipped. An event cut off by the end of the body is
// dropped, as the SSE specification says.
type sseReader struct {
	br   *bufio.Reader
	data []byte
	line []byte
	pos  int64 // bytes consumed
	has  bool  // the event being read has a data field
}

func newSSEReader(r io.Reader) *sseReader {
	return &sseReader{br: bufio.NewReaderSize(r, 32<<10)}
}

// readLine returns the next line without its terminator (\n, \r\n). The
// slice is valid until the next call.
func (e *sseReader) readLine() ([]byte, error) {
	e.line = e.line[:0]
	for {
		chunk, err := e.br.ReadSlice('\n')
		e.pos += int64(len(chunk))
		if err == bufio.ErrBufferFull {
			if len(e.line)+len(chunk) > maxMessageBytes {
				return nil, &ParseError{Offset: e.pos, Msg: fmt.Sprintf("event larger than %d bytes", maxMessageBytes)}
			}
			e.line = append(e.line, chunk...)
			continue
		}
		if err != nil {
			// A line without its terminator at the end of the body
			// belongs to an event that was not finished.
			return nil, err
		}
		var l []byte
		if len(e.line) == 0 {
			l = chunk
		} else {
			e.line = append(e.line, chunk...)
			l = e.line
		}
		l = l[:len(l)-1]
		if n := len(l); n > 0 && l[n-1] == '\r' {
			l = l[:n-1]
		}
		return l, nil
	}
}

// next returns the data of the next event and the byte offset where the
// event ends. It returns io.EOF when the body ends cleanly, or the read
// error.
func (e *sseReader) next() ([]byte, int64, error) {
	for {
		l, err := e.readLine()
		if err != nil {
			return nil, 0, err
		}
		if len(l) == 0 {
			if e.has {
				e.has = false
				d := e.data
				e.data = e.data[:0]
				if len(bytes.TrimSpace(d)) == 0 {
					continue
				}
				return d, e.pos, nil
			}
			continue
		}
		if l[0] == ':' {
			continue // a comment: keep-alive
		}
		name, value := l, []byte(nil)
		if i := bytes.IndexByte(l, ':'); i >= 0 {
			name, value = l[:i], l[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		if string(name) != "data" {
			continue
		}
		if e.has {
			e.data = append(e.data, '\n')
		}
		if len(e.data)+len(value) > maxMessageBytes {
			return nil, 0, &ParseError{Offset: e.pos, Msg: fmt.Sprintf("event larger than %d bytes", maxMessageBytes)}
		}
		e.data = append(e.data, value...)
		e.has = true
	}
}

// idleReader cancels its request when no byte arrived for d: the
// watchdog of an SSE connection, which lasts a minute and is kept alive by
// comments every 21 s.
type idleReader struct {
	r io.ReadCloser
	t *time.Timer
	d time.Duration
}

func (i *idleReader) Read(p []byte) (int, error) {
	n, err := i.r.Read(p)
	if n > 0 {
		i.t.Reset(i.d)
	}
	return n, err
}

func (i *idleReader) Close() error {
	i.t.Stop()
	return i.r.Close()
}

// SSEFallback reports whether the stream gave up on Server-Sent Events
// (Options.LiveSSE) and long-polls instead: three SSE connections in a row
// ended within a second without delivering an up-to-date message, which is
// what a proxy that buffers or cuts event streams does.
func (s *ShapeStream) SSEFallback() bool {
	return s.sseFallback.Load()
}

// sseClosed accounts for the clean end of an SSE connection for the
// quick-close fallback. (A connection cut by an error is retried with
// backoff, and counts neither way.)
func (s *ShapeStream) sseClosed(r *response) {
	if time.Since(r.start) >= sseMinDuration || r.sawUpToDate {
		s.sseShort = 0
		return
	}
	s.sseShort++
	if s.sseShort >= sseMaxShort {
		s.sseFallback.Store(true)
		s.log.Warn("SSE connections keep closing at once (a proxy that buffers or closes event streams?); falling back to long polling",
			"url", r.url, "connections", s.sseShort)
		return
	}
	c := min(sseShortMax, sseShortBase<<s.sseShort)
	wait := time.Duration(rand.Int64N(int64(c)))
	if until := time.Now().Add(wait); until.After(s.loop.until) {
		s.loop.until = until
	}
	s.log.Debug("SSE connection closed quickly; delaying the next one", "url", r.url, "short", s.sseShort, "wait", wait)
}

// readSSE reads the next message of an SSE response. Each up-to-date
// commits the batch before it: the offset becomes the log position of the
// batch's last change (kept if it has none), and the messages after that
// change (move-out events, move-in rows, which carry no position) count as
// delivered from the new offset, so that a connection that resumes there
// skips them. The connection ending cleanly is no error: the next call
// resumes from the committed offset, skipping what the connection
// delivered after it.
func (s *ShapeStream) readSSE(ctx context.Context) (Message, bool, error) {
	r := s.resp
	for {
		el, off, err := r.sse.next()
		if err == io.EOF {
			s.log.Debug("SSE connection ended", "url", r.url, "elapsed", time.Since(r.start))
			s.sseClosed(r)
			s.dropResponse()
			return Message{}, false, nil
		}
		if err != nil {
			return Message{}, false, readFailure(err, "reading events from", r.url)
		}
		m, err := s.dec.parseMessage(el, off)
		if err != nil {
			return Message{}, false, err
		}
		if m.IsUpToDate() {
			if !s.sseUpToDate(r) {
				continue
			}
			return m, true, nil
		}
		if m.IsMustRefetch() {
			s.finish(r)
			s.mustRefetch("", []byte("["+string(m.raw)+"]"))
			s.noProgress("a must-refetch message", r.url, r.reqOffset)
			return Message{}, false, nil
		}
		r.committed = false
		prevLast, prevHasLast, prevAfter := r.lastPos, r.hasLastPos, r.afterPos
		if p, ok := m.position(); ok {
			r.lastPos, r.hasLastPos, r.afterPos = p, true, 0
		} else {
			r.afterPos++
		}
		before := r.readMark()
		if !s.admit(r, &m) {
			continue // delivered by an interrupted connection (see read)
		}
		if m.IsChange() && s.xform != nil {
			if err := s.tm.apply(ctx, s.xform, &m); err != nil {
				if cerr := ctx.Err(); cerr != nil {
					r.unread(before)
					r.lastPos, r.hasLastPos, r.afterPos = prevLast, prevHasLast, prevAfter
					return Message{}, false, cerr
				}
				return Message{}, false, err
			}
		}
		return m, true, nil
	}
}

// sseUpToDate commits the batch that an up-to-date of the SSE response r
// ends (see readSSE) and reports whether to deliver the up-to-date.
func (s *ShapeStream) sseUpToDate(r *response) bool {
	r.sawUpToDate = true
	newOffset := r.reqOffset
	if r.hasLastPos {
		newOffset = strconv.FormatUint(r.lastPos.lsn, 10) + "_" + strconv.FormatInt(r.lastPos.op, 10)
	}
	remaining := max(r.skip-r.seen, 0)
	r.offset = newOffset
	r.committed = false
	s.commit(r)
	// The next batch continues from the new offset.
	prevOffset := r.reqOffset
	r.reqOffset = newOffset
	r.hasLastPos = false
	r.seen = r.afterPos
	r.skip = r.afterPos + remaining
	r.committed = r.skip == 0
	if remaining > 0 {
		// A replayed up-to-date: the consumer already has
		// messages of the batch after it, from an interrupted
		// connection, and gets the up-to-date at its end.
		return false
	}
	s.mu.Lock()
	was := s.upToDate
	s.upToDate = true
	s.mu.Unlock()
	if !was || newOffset != prevOffset {
		s.loop.progress()
	} else {
		s.noProgress("an up-to-date without new messages", r.url, prevOffset)
	}
	return true
}
