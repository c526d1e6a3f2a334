package client

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"iter"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"strconv"
	"strings"
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

// requestURL builds the next request URL, with sorted query parameters.
func (s *ShapeStream) requestURL() *url.URL {
	q := s.base.Query()
	s.params.encode(q)
	if !q.Has("log") {
		// The server default, sent as the TypeScript client does so that
		// both share cache entries.
		q.Set("log", "full")
	}
	s.mu.Lock()
	offset, handle, cursor, upToDate := s.offset, s.handle, s.cursor, s.upToDate
	s.mu.Unlock()
	q.Set("offset", offset)
	if handle != "" {
		q.Set("handle", handle)
	}
	if upToDate && s.opts.Live {
		q.Set("live", "true")
		q.Set("cursor", cursor)
		if s.opts.LiveSSE && !s.sseFallback.Load() {
			q.Set("live_sse", "true")
		}
	}
	if s.expiredHandle != "" {
		q.Set("expired_handle", s.expiredHandle)
	}
	if s.cacheBuster != "" {
		q.Set("cache-buster", s.cacheBuster)
		s.cacheBuster = ""
	}
	u := *s.base
	u.RawQuery = q.Encode() // sorted by key
	return &u
}

func newCacheBuster() string {
	var b [6]byte
	rand.Read(b[:])
	return strconv.FormatInt(time.Now().UnixMilli(), 10) + "-" + hex.EncodeToString(b[:])
}

// request performs one request and prepares its body for reading.
func (s *ShapeStream) request(ctx context.Context) error {
	u := s.requestURL()
	q := u.Query()
	live := q.Get("live") == "true"
	sse := live && q.Get("live_sse") == "true"
	reqOffset := q.Get("offset")
	redacted := redactURL(u)

	hdr := s.header.Clone()
	if s.opts.HeaderFunc != nil {
		h, err := s.opts.HeaderFunc(ctx)
		if err != nil {
			return fmt.Errorf("client: HeaderFunc: %w", err)
		}
		for k, v := range h {
			hdr[k] = v
		}
	}
	var token string
	if s.opts.TokenSource != nil {
		t, err := s.opts.TokenSource.Token(ctx)
		if err != nil {
			return fmt.Errorf("client: TokenSource: %w", err)
		}
		token = t
		hdr.Set("Authorization", "Bearer "+t)
	}

	reqCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	timeout := s.opts.LiveRequestTimeout
	if timeout == 0 {
		timeout = defaultLiveRequestTimeout
	}
	var idle *time.Timer
	if sse {
		// An SSE connection lasts as long as the server keeps it (a
		// minute for Electric): the watchdog bounds silence instead,
		// from the request until the headers, then between bytes.
		hdr.Set("Accept", "text/event-stream")
		if timeout > 0 {
			idle = time.AfterFunc(timeout, cancel)
			c := cancel
			cancel = func() { idle.Stop(); c() }
		}
	} else if live && timeout > 0 {
		reqCtx, cancel = withTimeout(reqCtx, cancel, timeout)
	}
	s.mu.Lock()
	s.cancel = cancel
	s.mu.Unlock()
	s.aborted.Store(false)
	if ctx.Err() != nil { // ended before s.cancel was visible to abort
		cancel()
	}
	req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, u.String(), nil)
	if err != nil {
		cancel()
		return err
	}
	req.Header = hdr
	s.log.Debug("shape request", "url", redacted, "live", live, "sse", sse)
	start := time.Now()
	resp, err := s.client.Do(req)
	if err != nil {
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &retryable{err: fmt.Errorf("client: GET %s: %w", redacted, unwrapURLError(err))}
	}
	s.log.Debug("shape response", "url", redacted, "status", resp.StatusCode, "elapsed", time.Since(start))
	if resp.StatusCode != http.StatusUnauthorized {
		// The token got past authentication: a later 401 may refresh
		// again (even if this response fails for other reasons).
		s.refreshed = false
	}

	switch {
	case resp.StatusCode == http.StatusOK:
		if sse && isEventStream(resp.Header) {
			if idle != nil {
				resp.Body = &idleReader{r: resp.Body, t: idle, d: timeout}
			}
			return s.accept(resp, u, redacted, live, start, true, cancel)
		}
		return s.accept(resp, u, redacted, live, start, false, cancel)
	case resp.StatusCode == http.StatusNoContent:
		resp.Body.Close()
		cancel()
		return s.noContent(resp.Header, reqOffset, redacted)
	case resp.StatusCode == http.StatusConflict:
		body := readErrorBody(resp)
		cancel()
		s.mustRefetch(resp.Header.Get("electric-handle"), body)
		s.noProgress("409 must-refetch", redacted, reqOffset)
		return nil
	}

	herr := &HTTPError{
		StatusCode: resp.StatusCode,
		Status:     resp.Status,
		Body:       readErrorBody(resp),
		Header:     resp.Header,
		URL:        redacted,
	}
	cancel()
	switch {
	case resp.StatusCode == http.StatusUnauthorized:
		if s.refresh == nil || token == "" {
			return herr
		}
		if s.refreshed {
			return &AuthError{Err: herr}
		}
		s.refreshed = true
		if _, err := s.refresh.Refresh(ctx, token); err != nil {
			return fmt.Errorf("client: refreshing token after 401: %w", err)
		}
		s.log.Debug("token refreshed after 401", "url", redacted)
		return errRetryNow
	case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 ||
		resp.StatusCode < 400:
		return &retryable{err: herr, retryAfter: parseRetryAfter(resp.Header, time.Now())}
	default:
		return herr
	}
}

// noContent handles a 204: older servers (and some proxies) answer so,
// without a body, when there is nothing new. It means up to
// date: the stream delivers a synthetic up-to-date message, so that a
// consumer (a Shape) commits, and goes live. The offset, handle and cursor
// are kept, or taken from the response's headers where it has them.
func (s *ShapeStream) noContent(h http.Header, reqOffset, redacted string) error {
	s.mu.Lock()
	handle, offset, cursor, was := s.handle, s.offset, s.cursor, s.upToDate
	if v := h.Get("electric-handle"); v != "" {
		handle = v
	}
	if v := h.Get("electric-offset"); v != "" {
		offset = v
	}
	if v := h.Get("electric-cursor"); v != "" {
		cursor = v
	}
	if offset == "-1" || offset == "now" || handle == "" {
		s.mu.Unlock()
		// Nothing to be up to date with, and nothing to continue from:
		// the server never answers an initial request so.
		return &retryable{err: fmt.Errorf("client: 204 No Content from %s to a request at offset %s, without a handle and offset to continue from", redacted, reqOffset)}
	}
	s.handle, s.offset, s.cursor, s.upToDate = handle, offset, cursor, true
	s.mu.Unlock()
	s.success()
	if !s.opts.Live {
		s.done = true
	}
	s.queue = append(s.queue, upToDateMessage())
	if !was || offset != reqOffset {
		s.loop.progress()
	} else {
		s.noProgress("204 No Content", redacted, reqOffset)
	}
	return nil
}

func withTimeout(parent context.Context, cancelParent context.CancelFunc, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(parent, d)
	return ctx, func() { cancel(); cancelParent() }
}

func unwrapURLError(err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		return ue.Err
	}
	return err
}

func readErrorBody(resp *http.Response) []byte {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
	return b
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
	if len(missing) > 0 {
		resp.Body.Close()
		cancel()
		return &MissingHeadersError{Missing: missing, URL: redacted}
	}
	handle := h.Get("electric-handle")
	reqOffset := u.Query().Get("offset")
	if s.expiredHandle != "" && handle == s.expiredHandle {
		resp.Body.Close()
		cancel()
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

func isEventStream(h http.Header) bool {
	ct := h.Get("Content-Type")
	return len(ct) >= 17 && strings.EqualFold(ct[:17], "text/event-stream")
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
