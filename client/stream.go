package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"
)

const (
	defaultLiveRequestTimeout = 45 * time.Second
	maxRecoveries             = 50
	maxStaleRetries           = 3
	maxErrorBody              = 64 << 10
)

// ShapeStream follows one shape. Create it with New and read it with Next or
// Messages from one goroutine at a time; the getters (Offset, Handle,
// IsUpToDate, Schema) may be called from any goroutine.
type ShapeStream struct {
	opts    Options
	base    *url.URL
	client  *http.Client
	log     *slog.Logger
	bo      backoff
	dec     decoder
	params  Params
	header  http.Header
	refresh RefreshableTokenSource // nil if the token source cannot refresh

	mu       sync.Mutex // guards the fields below up to cancel
	offset   string
	handle   string
	cursor   string
	schema   Schema
	upToDate bool
	cancel   context.CancelFunc // aborts the request in flight

	resp    *response
	queue   []Message // synthetic messages to deliver before anything else
	partial *partial  // what an interrupted response had delivered
	done    bool      // non-live stream reached up-to-date
	closed  bool
	err     error // terminal error

	watchDone <-chan struct{} // Done channel that abort is registered on
	stopWatch func() bool
	aborted   atomic.Bool // abort cancelled the request in flight
	inNext    atomic.Bool // Next is running

	expiredHandle string // handle a 409 declared expired
	healed        string // expired handle forgotten once (self-healing)
	cacheBuster   string // one-shot cache-buster for the next request
	staleRetries  int
	refreshed     bool // the token was refreshed since the last success
	recoveries    int  // OnError recoveries since the last success
	retries       int  // retries since the last success
	loop          loopGuard
	furthest      pos // furthest log position of a delivered change
	hasFurthest   bool
	sseShort      int         // SSE connections in a row that closed quickly
	sseFallback   atomic.Bool // LiveSSE gave up: long-poll from now on

	tm    transformSlot
	xform func(context.Context, *Message) error   // the transform of one message; nil if none is set
	batch func(context.Context, []*Message) error // TransformBatch, if set
	ahead readAhead
	lazy  bool // leave values as JSON for a TypedShape
}

// New validates opts and returns a stream. It does not contact the server.
func New(opts Options) (*ShapeStream, error) {
	if opts.URL == "" {
		return nil, errors.New("client: Options.URL is required")
	}
	base, err := url.Parse(opts.URL)
	if err != nil {
		return nil, fmt.Errorf("client: Options.URL: %w", err)
	}
	if base.Scheme != "http" && base.Scheme != "https" {
		return nil, fmt.Errorf("client: Options.URL %q is not an http(s) URL", opts.URL)
	}
	for k := range base.Query() {
		if isReserved(k) {
			return nil, &ReservedParamError{Name: k}
		}
	}
	if err := opts.Params.validate(); err != nil {
		return nil, err
	}
	offset := opts.Offset
	if offset == "" {
		offset = "-1"
	}
	if offset != "-1" && offset != "now" && opts.Handle == "" {
		return nil, ErrMissingHandle
	}
	xform, err := transformFunc(opts.Transform, opts.TransformContext, opts.TransformBatch)
	if err != nil {
		return nil, err
	}
	s := &ShapeStream{
		xform:  xform,
		batch:  opts.TransformBatch,
		opts:   opts,
		base:   base,
		client: opts.HTTPClient,
		log:    opts.Logger,
		bo:     backoff{cfg: opts.Backoff.withDefaults()},
		params: opts.Params,
		header: opts.Header.Clone(),
		offset: offset,
		handle: opts.Handle,
	}
	if offset == "-1" || offset == "now" {
		s.handle = ""
	}
	if s.client == nil {
		s.client = http.DefaultClient
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.header == nil {
		s.header = http.Header{}
	}
	if r, ok := opts.TokenSource.(RefreshableTokenSource); ok {
		s.refresh = r
	}
	s.dec.parse = opts.Parse
	if opts.Parse {
		s.dec.parser = maps.Clone(DefaultParsers)
		maps.Copy(s.dec.parser, opts.Parsers)
	}
	return s, nil
}

// setLazy makes the stream leave change values as JSON, for a TypedShape
// that decodes them straight into structs, unless a transform needs them
// as rows.
func (s *ShapeStream) setLazy(sink valueSink) {
	s.dec.lazy = s.xform == nil
	if s.dec.lazy {
		s.dec.sink = sink
	}
}

// Offset returns the offset to resume from: the end of the last response
// read completely. Persist it together with Handle when an up-to-date
// message arrives, and pass both to Options to resume later.
func (s *ShapeStream) Offset() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.offset
}

// Handle returns the current shape handle ("" before the first response).
func (s *ShapeStream) Handle() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.handle
}

// IsUpToDate reports whether an up-to-date message has been delivered
// since the stream started or last had to refetch.
func (s *ShapeStream) IsUpToDate() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.upToDate
}

// Schema returns the shape's schema from the electric-schema header, or nil
// before the first non-live response.
func (s *ShapeStream) Schema() Schema {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.schema
}

// Messages returns an iterator over the stream's messages. It ends after
// the first up-to-date message unless Options.Live is set, or with a
// single error. Breaking out of the loop abandons the response in flight;
// a later Next or Messages resumes without losing or repeating messages.
func (s *ShapeStream) Messages(ctx context.Context) iter.Seq2[Message, error] {
	return func(yield func(Message, error) bool) {
		for {
			m, err := s.Next(ctx)
			if err == io.EOF {
				return
			}
			if err != nil {
				yield(Message{}, err)
				return
			}
			if !yield(m, nil) {
				s.dropResponse()
				return
			}
		}
	}
}

// Close abandons the response in flight. Next then returns ErrClosed.
// Close must not be called while Next runs; cancel Next's context instead.
func (s *ShapeStream) Close() error {
	s.unwatch()
	s.dropResponse()
	s.closed = true
	return nil
}

// Next returns the next message. It returns io.EOF once a non-live stream
// has delivered its up-to-date message, ctx.Err() when ctx ends (the stream
// can be read again with another context), and otherwise an error that ends
// the stream: later calls return it again.
//
// Between two calls the response being read stays open; Close releases it
// (Messages does so when its loop ends). A stream is not safe for
// concurrent calls of Next.
func (s *ShapeStream) Next(ctx context.Context) (Message, error) {
	if s.closed {
		return Message{}, ErrClosed
	}
	if s.err != nil {
		return Message{}, s.err
	}
	s.inNext.Store(true)
	defer s.inNext.Store(false)
	s.watch(ctx)
	for {
		if err := ctx.Err(); err != nil {
			s.dropResponse()
			return Message{}, err
		}
		if m, ok := s.ahead.pop(); ok {
			return m, nil
		}
		if len(s.queue) > 0 {
			m := s.queue[0]
			s.queue = s.queue[1:]
			return m, nil
		}
		var err error
		if s.resp != nil {
			var m Message
			var ok bool
			m, ok, err = s.read(ctx)
			if err == nil && ok {
				return m, nil
			}
		} else {
			if s.done {
				s.unwatch()
				return Message{}, io.EOF
			}
			if err = s.beforeRequest(ctx); err == nil {
				err = s.request(ctx)
			}
		}
		if err != nil {
			if err := s.handleError(ctx, err); err != nil {
				if s.err != nil {
					s.unwatch()
				}
				return Message{}, err
			}
		}
	}
}

// watch makes sure that ctx ending aborts the request in flight. The
// registration is kept while Next is called with contexts sharing one Done
// channel (the usual loop), so that reading a message costs no allocation.
func (s *ShapeStream) watch(ctx context.Context) {
	done := ctx.Done()
	if done == s.watchDone {
		return
	}
	s.unwatch()
	if done != nil {
		s.watchDone = done
		s.stopWatch = context.AfterFunc(ctx, s.abort)
	}
}

func (s *ShapeStream) unwatch() {
	if s.stopWatch != nil {
		s.stopWatch()
	}
	s.stopWatch, s.watchDone = nil, nil
}

// abort cancels the request in flight when the context of a running Next
// ends. Between calls it does nothing: with a context per call
// (ctx, cancel := context.WithTimeout(...); s.Next(ctx); cancel()), the
// response being read must survive to the next call.
func (s *ShapeStream) abort() {
	if !s.inNext.Load() {
		return
	}
	s.mu.Lock()
	c := s.cancel
	s.mu.Unlock()
	if c != nil {
		s.aborted.Store(true)
		c()
	}
}

// dropResponse closes the response in flight, remembering how much of it
// was delivered.
func (s *ShapeStream) dropResponse() {
	r := s.resp
	if r == nil {
		return
	}
	s.resp = nil
	s.ahead.drop(r)
	if !r.committed {
		p := &partial{handle: r.handle, reqOffset: r.reqOffset, delivered: max(r.seen, r.skip)}
		if r.hasPos {
			p.last, p.hasLast = r.skipPos, true
		}
		if s.partial != nil && s.partial.hasLast && !p.hasLast {
			p.last, p.hasLast = s.partial.last, true
		}
		s.partial = p
	}
	r.body.Close()
	s.mu.Lock()
	if s.cancel != nil {
		s.cancel()
		s.cancel = nil
	}
	s.mu.Unlock()
}

// handleError decides what to do with err: retry after a backoff (nil),
// recover through OnError (nil), or stop (the error to return).
func (s *ShapeStream) handleError(ctx context.Context, err error) error {
	s.dropResponse()
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if errors.Is(err, errRetryNow) {
		return nil
	}
	if s.aborted.Swap(false) {
		// A context of an earlier Next ended while a response was open:
		// not a failure of the server, re-request at once.
		return nil
	}
	if re, ok := errors.AsType[*retryable](err); ok {
		if s.bo.cfg.MaxRetries <= 0 || s.retries < s.bo.cfg.MaxRetries {
			wait := s.bo.next(re.retryAfter)
			s.retries++
			s.log.Warn("shape request failed; retrying", "err", re.err, "attempt", s.retries, "wait", wait)
			return sleep(ctx, wait)
		}
		err = re.err
	}
	if _, ok := errors.AsType[*MissingHeadersError](err); ok {
		s.err = err
		return err
	}
	if _, ok := errors.AsType[*TransformError](err); ok {
		s.err = err
		return err
	}
	if s.opts.OnError != nil && s.recoveries < maxRecoveries {
		if rec := s.opts.OnError(err); rec != nil {
			s.recoveries++
			if rec.Params != nil {
				if verr := rec.Params.validate(); verr != nil {
					s.err = verr
					return verr
				}
				s.params = *rec.Params
			}
			for k, v := range rec.Header {
				s.header[k] = v
			}
			s.refreshed = false
			s.retries = 0
			s.loop = loopGuard{}
			s.log.Warn("shape stream recovering after error", "err", err, "recovery", s.recoveries)
			wait := recoveryDelay(s.bo.cfg, s.recoveries)
			return sleep(ctx, wait)
		}
	}
	s.err = err
	return err
}

// recoveryDelay is the full-jitter wait before the n-th OnError recovery.
func recoveryDelay(cfg Backoff, n int) time.Duration {
	b := backoff{cfg: cfg}
	var d time.Duration
	for range n {
		d = b.next(0)
	}
	return d
}

var errRetryNow = errors.New("retry now")

// beforeRequest applies the fast-loop guard: it returns the armed
// *FastLoopError, or waits out the delay of the last detection (which
// survives a ctx that ends during the wait).
func (s *ShapeStream) beforeRequest(ctx context.Context) error {
	if err := s.loop.err; err != nil {
		s.loop.err = nil
		return err
	}
	if s.loop.until.IsZero() {
		return nil
	}
	if err := sleep(ctx, time.Until(s.loop.until)); err != nil {
		return err
	}
	s.loop.until = time.Time{}
	return nil
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
