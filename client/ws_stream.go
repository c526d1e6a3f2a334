package client

import (
	"context"
	"encoding/json"
	"io"
	"iter"
	"maps"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// WSStreamOptions configure a WSStream.
type WSStreamOptions struct {
	// Offset and Handle resume from an earlier stream's Offset and Handle
	// (as with Options). Offset "" means "-1".
	Offset string
	Handle string
	// Columns narrows the proxy rule's allowed columns; each name is sent
	// quoted, as ShapeStream does.
	Columns []string
	// Live keeps following the shape after the first up-to-date; without
	// it, Next returns io.EOF after the first up-to-date message.
	Live bool
	// Parse, Parsers, Transform and TransformContext are as in Options.
	// A TransformContext that fails because the context of Next ended
	// leaves the message to be delivered by the next call of Next.
	Parse            bool
	Parsers          map[string]ParseFunc
	Transform        func(m *Message) error
	TransformContext func(ctx context.Context, m *Message) error
}

// Stream subscribes to the proxy's shape rule called shape. ctx bounds
// sending the subscription (a failed send is retried when the connection
// is redialled); the stream lives until it or the connection is closed.
func (c *WSConn) Stream(ctx context.Context, shape string, opts WSStreamOptions) (*WSStream, error) {
	xform, err := transformFunc(opts.Transform, opts.TransformContext, nil)
	if err != nil {
		return nil, err
	}
	offset := opts.Offset
	if offset == "" {
		offset = "-1"
	}
	if offset != "-1" && offset != "now" && opts.Handle == "" {
		return nil, ErrMissingHandle
	}
	s := &WSStream{c: c, shape: shape, opts: opts, xform: xform, offset: offset, handle: opts.Handle, wake: make(chan struct{}, 1)}
	if offset == "-1" || offset == "now" {
		s.handle = ""
	}
	s.dec.parse = opts.Parse
	if opts.Parse {
		s.dec.parser = maps.Clone(DefaultParsers)
		maps.Copy(s.dec.parser, opts.Parsers)
	}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.next++
	s.id = "s" + strconv.Itoa(c.next)
	c.streams[s.id] = s
	if opts.Live {
		c.live++
	}
	ws := c.ws
	c.mu.Unlock()
	s.subscribe(ctx, ws)
	return s, nil
}

// WSStream follows one shape over a WSConn. Read it with Next or Messages
// from one goroutine at a time; the getters may be called from any
// goroutine.
type WSStream struct {
	c     *WSConn
	id    string
	shape string
	opts  WSStreamOptions
	xform func(context.Context, *Message) error
	dec   decoder
	wake  chan struct{}

	mu         sync.Mutex
	offset     string
	handle     string
	schema     Schema
	upToDate   bool
	queue      []*wsFrame
	cur        *wsFrame // batch being delivered
	idx        int      // messages of cur delivered (or skipped)
	skip       int      // messages of the next batch already delivered
	skipHandle string   // the handle of the batch they came from
	done       bool
	closed     bool
	err        error
	retry      json.RawMessage // a message whose transform the caller's context cut short

	tm transformSlot
}

// resubscribe resends the subscription, after a reconnection, from the
// last whole batch.
func (s *WSStream) resubscribe(ws *websocket.Conn) { s.subscribe(s.c.ctx, ws) }

// subscribe (re)sends the subscription from the last whole batch.
func (s *WSStream) subscribe(ctx context.Context, ws *websocket.Conn) {
	s.mu.Lock()
	if s.closed || s.done {
		s.mu.Unlock()
		return
	}
	if s.cur != nil {
		s.skip, s.skipHandle = s.idx, s.cur.Handle
		s.cur, s.idx = nil, 0
	}
	s.queue = nil
	msg := map[string]any{"type": "subscribe", "id": s.id, "shape": s.shape, "offset": s.offset,
		"handle": s.handle, "live": s.opts.Live}
	if len(s.opts.Columns) > 0 {
		quoted := make([]string, len(s.opts.Columns))
		for i, col := range s.opts.Columns {
			quoted[i] = QuoteIdentifier(col) // as ShapeStream sends them
		}
		msg["columns"] = quoted
	}
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(s.c.ctx, cancel) // Close ends the write
	defer stop()
	wsWrite(ctx, ws, msg) // a failed write is retried by the reconnection
}

func (s *WSStream) push(f *wsFrame) {
	s.mu.Lock()
	s.queue = append(s.queue, f)
	s.mu.Unlock()
	s.wakeUp()
}

func (s *WSStream) wakeUp() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// setLazy is ShapeStream.setLazy.
func (s *WSStream) setLazy(sink valueSink) {
	s.mu.Lock()
	s.dec.lazy = s.xform == nil
	if s.dec.lazy {
		s.dec.sink = sink
	}
	s.mu.Unlock()
}

// Offset returns the offset to resume from (see ShapeStream.Offset).
func (s *WSStream) Offset() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.offset
}

// Handle returns the current shape handle.
func (s *WSStream) Handle() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.handle
}

// IsUpToDate reports whether an up-to-date message was delivered since the
// stream started or last had to refetch.
func (s *WSStream) IsUpToDate() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.upToDate
}

// Schema returns the shape's schema once known.
func (s *WSStream) Schema() Schema {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.schema
}

// Close unsubscribes. Next then returns ErrClosed.
func (s *WSStream) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	s.wakeUp()
	c := s.c
	c.mu.Lock()
	if c.streams[s.id] == s && s.opts.Live {
		c.live--
	}
	delete(c.streams, s.id)
	ws := c.ws
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c.ctx.Err() != nil {
		return nil
	}
	return wsWrite(ctx, ws, map[string]string{"type": "unsubscribe", "id": s.id})
}

// Messages returns an iterator over Next's results, ending at io.EOF or
// after the first error.
func (s *WSStream) Messages(ctx context.Context) iter.Seq2[Message, error] {
	return func(yield func(Message, error) bool) {
		for {
			m, err := s.Next(ctx)
			if err == io.EOF {
				return
			}
			if !yield(m, err) || err != nil {
				return
			}
		}
	}
}

// Next returns the next message. It returns io.EOF after the first
// up-to-date message when WSStreamOptions.Live is not set, ErrClosed after
// Close, and a *WSError when the proxy refused the subscription.
func (s *WSStream) Next(ctx context.Context) (Message, error) {
	for {
		s.mu.Lock()
		switch {
		case s.closed:
			s.mu.Unlock()
			return Message{}, ErrClosed
		case s.retry != nil || s.cur != nil && s.idx < len(s.cur.Messages):
			var el json.RawMessage
			skipped := false
			if s.retry != nil {
				el, s.retry = s.retry, nil
			} else {
				el = s.cur.Messages[s.idx]
				s.idx++
				skipped = s.skip > 0
				if skipped {
					s.skip--
				}
				if s.idx == len(s.cur.Messages) {
					s.commit()
				}
			}
			s.mu.Unlock()
			if skipped {
				continue
			}
			m, err := s.dec.parseMessage(el, 0)
			if err != nil {
				s.setErr(err)
				return Message{}, err
			}
			if m.IsUpToDate() {
				s.mu.Lock()
				s.upToDate = true
				if !s.opts.Live {
					s.done = true
				}
				s.mu.Unlock()
			}
			if m.IsChange() && s.xform != nil {
				if err := s.tm.apply(ctx, s.xform, &m); err != nil {
					if cerr := ctx.Err(); cerr != nil {
						// Not delivered: the next Next parses it again.
						s.mu.Lock()
						s.retry = el
						s.mu.Unlock()
						return Message{}, cerr
					}
					s.setErr(err)
					return Message{}, err
				}
			}
			return m, nil
		case s.err != nil:
			err := s.err
			s.mu.Unlock()
			return Message{}, err
		case s.done:
			s.mu.Unlock()
			return Message{}, io.EOF
		case len(s.queue) > 0:
			f := s.queue[0]
			s.queue[0] = nil
			s.queue = s.queue[1:]
			m, ok := s.frame(f)
			s.mu.Unlock()
			if ok {
				return m, nil
			}
			continue
		}
		s.mu.Unlock()
		select {
		case <-s.wake:
		case <-ctx.Done():
			return Message{}, ctx.Err()
		}
	}
}

// commit makes the batch being delivered the resume point.
func (s *WSStream) commit() {
	s.offset, s.handle = s.cur.Offset, s.cur.Handle
	s.cur, s.idx = nil, 0
}

func (s *WSStream) setErr(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
}

// frame takes a frame off the queue (s.mu held); it returns a message to
// deliver at once, if any.
func (s *WSStream) frame(f *wsFrame) (Message, bool) {
	switch f.Type {
	case "messages":
		if s.skip > 0 && f.Handle != s.skipHandle {
			// Not the batch that was cut: the shape changed meanwhile.
			s.handle, s.offset, s.upToDate, s.schema, s.dec.schema = f.Handle, "-1", false, nil, nil
			s.skip, s.done = 0, false
			s.queue = append([]*wsFrame{f}, s.queue...)
			return mustRefetchMessage(""), true
		}
		if len(f.Schema) > 0 {
			if sch, err := ParseSchema(string(f.Schema)); err == nil {
				s.schema, s.dec.schema = sch, sch
			}
		}
		s.cur, s.idx = f, 0
		if len(f.Messages) == 0 {
			s.commit()
		}
	case "must_refetch":
		s.handle, s.offset, s.upToDate, s.schema, s.dec.schema = f.Handle, "-1", false, nil, nil
		s.skip, s.cur, s.idx, s.done = 0, nil, 0, false
		return mustRefetchMessage(""), true
	case "error":
		s.err = &WSError{Status: f.Status, Msg: f.Error}
	}
	return Message{}, false
}
