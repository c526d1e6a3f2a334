package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"syscall"
	"time"
)

// liveClient makes the shared upstream live requests (fetchShared): plain
// HTTP/1.1 GETs on keep-alive connections, each response read whole.
//
// Why not http.Transport: a live request waits up to Electric's long-poll
// timeout for its response, and while it waits a Transport connection
// keeps three goroutines (the caller in RoundTrip, the connection's read
// loop and its write loop) and its buffers: about 15 KB per request, and
// for distinct polls that is one per poll. Here the request is written
// from the caller's goroutine, then one new goroutine waits in a one-byte
// Read on a minimal stack (see start), and the read buffer is only made
// once the response has begun: about 3 KB per waiting request. Parsing
// is net/http's (Request.Write, ReadResponse), so the bytes on the wire
// are the Transport's. Like the Transport, it resends a request once on a
// new connection when a reused one turns out closed before any response,
// and it does not reuse an idle connection on which the server has
// written or closed (idleAlive).
//
// Used only when the Proxy builds its own transport (Config.Transport is
// nil) and no HTTP proxy is configured for the upstream in the
// environment; otherwise fetchShared uses the http.Client.
type liveClient struct {
	addr        string      // host:port
	errURL      string      // the upstream shape URL without query, for errors
	tlsConfig   *tls.Config // for https
	dialer      net.Dialer
	timeout     time.Duration // for the response header, as ResponseHeaderTimeout
	maxIdle     int
	idleTimeout time.Duration

	mu   sync.Mutex
	idle []*idleConn // most recently used last
}

type idleConn struct {
	c     net.Conn
	timer *time.Timer // closes it when idle too long
}

// newLiveClient returns a liveClient for the upstream base URL u, or nil
// when the http.Client must be used (an HTTP proxy is configured for u).
func newLiveClient(u *url.URL, timeout time.Duration) *liveClient {
	if pu, err := http.ProxyFromEnvironment(&http.Request{URL: u}); err != nil || pu != nil {
		return nil
	}
	lc := &liveClient{addr: u.Host, errURL: u.String() + "/v1/shape", timeout: timeout, maxIdle: 1024, idleTimeout: 90 * time.Second,
		dialer: net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}}
	port := "80"
	if u.Scheme == "https" {
		port = "443"
		lc.tlsConfig = &tls.Config{ServerName: u.Hostname(), NextProtos: []string{"http/1.1"}}
	}
	if u.Port() == "" {
		lc.addr = net.JoinHostPort(u.Hostname(), port)
	}
	return lc
}

// errRetry marks a failure on a reused connection before any response
// byte: the server closed it while idle, and the request may be sent again.
var errRetry = errors.New("reused connection closed before the response")

// liveDone receives the outcome of a request: the response (its Body
// already read into body) or an error.
type liveDone func(resp *http.Response, body []byte, err error)

// get makes the GET request that build returns (without body) and reads
// at most limit+1 bytes of the body. Errors are *url.Error, as
// http.Client's, without the query (which holds the secret).
func (lc *liveClient) get(ctx context.Context, build func(context.Context) (*http.Request, error), limit int64) (*http.Response, []byte, error) {
	type outcome struct {
		resp *http.Response
		body []byte
		err  error
	}
	ch := make(chan outcome, 1)
	// Sending on a goroutine of its own keeps this one's stack small
	// while it waits (see start).
	go lc.start(ctx, build, limit, func(resp *http.Response, body []byte, err error) { ch <- outcome{resp, body, err} })
	o := <-ch
	return o.resp, o.body, o.err
}

// start is get without waiting for the response: it builds the request,
// takes an idle connection or dials one and writes the request on the
// caller's goroutine, then returns, and done is called on another
// goroutine once the response is read or the request failed.
//
// The wait for the response happens on a new goroutine whose stack holds
// only that wait: a goroutine's stack grows with the deepest call it has
// made (dialing, TLS, URL parsing, formatting go deep) and the GC never
// shrinks a stack below twice what it uses, so a waiter that had done the
// rest would keep 4–8 KiB instead of the minimum 2 KiB for as long as
// Electric holds the poll.
func (lc *liveClient) start(ctx context.Context, build func(context.Context) (*http.Request, error), limit int64, done liveDone) {
	x := &exchange{lc: lc, ctx: ctx, build: build, limit: limit, done: done, mayReuse: true}
	x.send()
}

// exchange is one request under way (retried once on a fresh connection
// when a reused one turns out closed).
type exchange struct {
	lc       *liveClient
	ctx      context.Context
	build    func(context.Context) (*http.Request, error)
	limit    int64
	done     liveDone
	mayReuse bool
	c        net.Conn
	reused   bool
	stop     func() bool // stops ctx's interruption of c
}

// firstThen reads the byte await read, then c.
type firstThen struct {
	first byte
	done  bool
	c     net.Conn
}

func (f *firstThen) Read(p []byte) (int, error) {
	if f.done || len(p) == 0 {
		return f.c.Read(p)
	}
	f.done = true
	p[0] = f.first
	n, err := f.c.Read(p[1:])
	return n + 1, err
}

// readers and writers are the buffers of liveClient exchanges: a request
// is written, and a response header read, in one go, so that a waiting
// request holds neither.
var (
	readers = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4096) }}
	writers = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4096) }}
)

// writeRequest writes req to c through a pooled buffer.
func writeRequest(c net.Conn, req *http.Request) error {
	bw := writers.Get().(*bufio.Writer)
	bw.Reset(c)
	err := req.Write(bw) // does not flush a *bufio.Writer it is given
	if err == nil {
		err = bw.Flush()
	}
	bw.Reset(nil)
	writers.Put(bw)
	return err
}

// send builds the request, takes an idle connection (when mayReuse) or
// dials one, arranges for ctx to interrupt it, writes the request, and
// leaves the wait to a new goroutine; or calls done with the failure.
func (x *exchange) send() {
	lc, ctx := x.lc, x.ctx
	req, err := x.build(ctx)
	if err != nil {
		x.finish(nil, nil, err)
		return
	}
	c, reused := lc.take(x.mayReuse)
	if c == nil {
		if c, err = lc.dial(ctx); err != nil {
			x.finish(nil, nil, err)
			return
		}
	}
	x.c, x.reused = c, reused
	if !reused {
		// No retry on a fresh connection: what build holds (query,
		// headers) is not kept while waiting.
		x.build = nil
	}
	x.stop = context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo) })
	c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	if err := writeRequest(c, req); err != nil {
		x.stop()
		c.Close()
		x.retryOr(lc.fail(ctx, err, reused))
		return
	}
	c.SetWriteDeadline(time.Time{})
	if lc.timeout > 0 {
		c.SetReadDeadline(time.Now().Add(lc.timeout))
	}
	go x.await()
}

// await waits for the first byte of the response, on a fresh goroutine
// (see start), without buffers.
func (x *exchange) await() {
	var first [1]byte
	n, err := x.c.Read(first[:])
	x.received(n, first[0], err)
}

// received reads the rest of the response (or handles the failure).
func (x *exchange) received(n int, first byte, err error) {
	lc, ctx, c := x.lc, x.ctx, x.c
	if n > 0 {
		x.build = nil // the response has begun: no retry
	}
	if n == 0 {
		x.stop()
		c.Close()
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		x.retryOr(lc.fail(ctx, err, x.reused))
		return
	}
	br := readers.Get().(*bufio.Reader)
	br.Reset(&firstThen{first: first, c: c})
	resp, body, err := readLive(br, x.limit)
	// Reusable when the body was read to its end (not cut by limit),
	// nothing more was sent, neither side asked to close, and ctx did not
	// interrupt the connection.
	keep := err == nil && int64(len(body)) <= x.limit && !resp.Close && br.Buffered() == 0
	// Nothing of the response refers to br: its header and body are
	// copies.
	br.Reset(nil)
	readers.Put(br)
	if !x.stop() || !keep {
		c.Close()
	} else {
		c.SetDeadline(time.Time{})
		lc.put(c)
	}
	if err != nil {
		err = lc.fail(ctx, err, false)
	}
	x.finish(resp, body, err)
}

// readLive reads a response and at most limit+1 bytes of its body.
func readLive(br *bufio.Reader, limit int64) (*http.Response, []byte, error) {
	resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodGet})
	if err != nil {
		return nil, nil, err
	}
	if resp.StatusCode < 200 {
		return nil, nil, errors.New("unexpected informational response " + resp.Status)
	}
	var body []byte
	if n := resp.ContentLength; n >= 0 && n <= limit {
		// The size is known: one allocation. (What the server sends
		// beyond it stays in br, and the connection is not reused.)
		body = make([]byte, n)
		_, err = io.ReadFull(resp.Body, body)
	} else {
		body, err = io.ReadAll(io.LimitReader(resp.Body, limit+1))
	}
	if err != nil {
		return nil, nil, err
	}
	resp.Body = http.NoBody
	return resp, body, nil
}

// retryOr sends the request again on a new connection when err is
// errRetry (the first time), or ends the exchange with err.
func (x *exchange) retryOr(err error) {
	if errors.Is(err, errRetry) && x.mayReuse {
		x.mayReuse, x.c, x.stop = false, nil, nil
		x.send()
		return
	}
	if errors.Is(err, errRetry) {
		err = io.ErrUnexpectedEOF
	}
	x.finish(nil, nil, err)
}

func (x *exchange) finish(resp *http.Response, body []byte, err error) {
	if err != nil {
		err = &url.Error{Op: "Get", URL: x.lc.errURL, Err: err}
	}
	x.done(resp, body, err)
}

// fail turns an error into the context's when it ended, or into errRetry
// for a reused connection that failed before any response byte.
func (lc *liveClient) fail(ctx context.Context, err error, reused bool) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	var ne net.Error
	if reused && !(errors.As(err, &ne) && ne.Timeout()) {
		return errRetry
	}
	return err
}

// idleAlive reports whether an idle plain-TCP connection is still usable:
// the server has neither closed it nor sent anything unasked (a server
// timing out an idle connection may write "408 Request Timeout" before
// closing, which would otherwise be read as the next request's response).
// It peeks at the socket without blocking (peekIdle), where the platform
// allows; TLS connections are not checked (a server's late TLS records
// would look like data), and rely on the retry of get.
func idleAlive(c net.Conn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return true
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	alive := true
	if err := rc.Read(func(fd uintptr) bool {
		alive = peekIdle(fd)
		return true
	}); err != nil {
		return false
	}
	return alive
}

func (lc *liveClient) dial(ctx context.Context) (net.Conn, error) {
	c, err := lc.dialer.DialContext(ctx, "tcp", lc.addr)
	if err != nil || lc.tlsConfig == nil {
		return c, err
	}
	tc := tls.Client(c, lc.tlsConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return tc, nil
}

// take returns the most recently used idle connection, if any.
func (lc *liveClient) take(mayReuse bool) (net.Conn, bool) {
	if !mayReuse {
		return nil, false
	}
	lc.mu.Lock()
	defer lc.mu.Unlock()
	for len(lc.idle) > 0 {
		ic := lc.idle[len(lc.idle)-1]
		lc.idle[len(lc.idle)-1] = nil
		lc.idle = lc.idle[:len(lc.idle)-1]
		if !ic.timer.Stop() {
			continue // its timer fired: it is being closed
		}
		if !idleAlive(ic.c) {
			ic.c.Close()
			continue
		}
		return ic.c, true
	}
	return nil, false
}

// put keeps c for reuse, or closes it when enough are kept.
func (lc *liveClient) put(c net.Conn) {
	lc.mu.Lock()
	defer lc.mu.Unlock()
	if len(lc.idle) >= lc.maxIdle {
		c.Close()
		return
	}
	ic := &idleConn{c: c}
	ic.timer = time.AfterFunc(lc.idleTimeout, func() { lc.expire(ic) })
	lc.idle = append(lc.idle, ic)
}

func (lc *liveClient) expire(ic *idleConn) {
	lc.mu.Lock()
	for i, x := range lc.idle {
		if x == ic {
			lc.idle = append(lc.idle[:i], lc.idle[i+1:]...)
			break
		}
	}
	lc.mu.Unlock()
	ic.c.Close()
}
