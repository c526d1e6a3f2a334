package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// Parked live polls
//
// A live poll spends nearly all its life waiting: Electric holds it until
// the shape changes or its long-poll timeout ends (20 s by default). Held
// by net/http, each waiting poll keeps its handler goroutine (whose stack
// has grown to the depth of authentication and rule resolution), the
// connection's 4 KiB read and 4 KiB write buffers, the response's 2 KiB
// buffer and a goroutine reading ahead on the connection: about 25 KB per
// poll, with a request in the heap besides.
//
// When the Proxy serves through [Proxy.Serve], a coalesced live poll (one
// waiting on a shared upstream request, see "Coalesced live polls" in the
// package doc) that is still waiting after parkAfter (100 ms: a poll that
// Electric answers at once is answered as an unparked one) is parked
// instead: the connection is hijacked, the handler returns (its goroutine
// and the buffers go), and what remains is a small record on the shared
// request and one goroutine on a fresh, minimal stack reading the
// connection, so that a client going away is seen at once, as net/http
// sees it, and leaves the shared request (the last one leaving cancels
// it). The shared request itself, when this poll started it, waits on a
// goroutine of the same kind (liveClient, upstream.go). When the upstream
// answers, the poll's goroutine writes the response, built by the same
// code as an unparked one: the same status, headers (request id, CORS,
// Vary, cache-control rules) and body, framed with Content-Length; then it
// records the metrics and audit line, waits for the client's next request
// (up to the server's idle timeout, as net/http does) and hands the
// connection back to the http.Server through the listener, so keep-alive
// works as before. With Electric's 20 s long polls, a held poll then costs
// about 4 KB (coalesced) to 9 KB (its own upstream request) of Go heap and
// stacks (bench/proxy.sh part c).
//
// Only plain HTTP/1.1 GETs are parked (not HTTP/1.0, "Connection: close",
// Expect, SSE, HEAD or HTTP/2), and only on a listener that Serve wraps; a
// Proxy mounted as a plain http.Handler answers every poll on its
// handler's goroutine.

// parkedWriteTimeout bounds each write of a parked poll's response
// (Proxy.parkWriteTimeout, which tests shorten).
const parkedWriteTimeout = 30 * time.Second

// maxParkedPrefix bounds what a client may send (a pipelined request)
// while its poll is parked; beyond it the connection is closed.
const maxParkedPrefix = 64 << 10

// Serve serves hs on ln with live-poll parking (see above): it wraps ln,
// sets hs.ConnContext (calling any ConnContext already set first), and
// calls hs.Serve. hs.Handler must be p, or a handler passing requests to
// it. Parked connections are hijacked, so hs.Shutdown does not wait for
// them: closing the listener (as Shutdown and Close do) closes them.
// Serve does not serve TLS.
//
// With Config.MetricsListen, Serve first listens there too (an error if it
// cannot) and serves GET /metrics on that listener until hs.Serve returns.
func (p *Proxy) Serve(hs *http.Server, ln net.Listener) error {
	if p.cfg.MetricsListen != "" {
		mln, err := net.Listen("tcp", p.cfg.MetricsListen)
		if err != nil {
			return fmt.Errorf("proxy: metrics listener: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", p.MetricsHandler())
		ms := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: time.Minute}
		go ms.Serve(mln)
		defer ms.Close()
		p.logger.Info("proxy: metrics listening", "url", "http://"+mln.Addr().String()+"/metrics")
	}
	pl := &parkListener{
		Listener: ln,
		idle:     hs.IdleTimeout,
		back:     make(chan net.Conn),
		acc:      make(chan accepted),
		closed:   make(chan struct{}),
		polls:    map[*parkedPoll]struct{}{},
	}
	if pl.idle <= 0 {
		pl.idle = hs.ReadTimeout
	}
	prev := hs.ConnContext
	hs.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		if prev != nil {
			ctx = prev(ctx, c)
		}
		if pc, ok := c.(*parkConn); ok && pc.l == pl {
			ctx = context.WithValue(ctx, parkConnKey{}, pc)
		}
		return ctx
	}
	go pl.acceptLoop()
	return hs.Serve(pl)
}

type parkConnKey struct{}

// parkListener is the listener Serve gives the http.Server: its Accept
// returns new connections, and connections whose parked poll has been
// answered, for the server to read their next request.
type parkListener struct {
	net.Listener
	idle      time.Duration // how long an answered connection waits for its next request
	back      chan net.Conn // answered connections, back to the server
	acc       chan accepted // from the underlying listener
	closed    chan struct{}
	closeOnce sync.Once

	mu    sync.Mutex
	polls map[*parkedPoll]struct{} // parked or answered, not yet handed back
}

type accepted struct {
	c   net.Conn
	err error
}

func (l *parkListener) acceptLoop() {
	for {
		c, err := l.Listener.Accept()
		if c != nil {
			c = &parkConn{Conn: c, l: l}
		}
		select {
		case l.acc <- accepted{c, err}:
		case <-l.closed:
			if c != nil {
				c.Close()
			}
			return
		}
		if errors.Is(err, net.ErrClosed) {
			return
		}
	}
}

// Accept implements net.Listener.
func (l *parkListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.back:
		return c, nil
	case a := <-l.acc:
		return a.c, a.err
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

// Close closes the listener and every connection parked on it.
func (l *parkListener) Close() error {
	err := net.ErrClosed
	l.closeOnce.Do(func() {
		close(l.closed)
		err = l.Listener.Close()
		l.mu.Lock()
		for pp := range l.polls {
			pp.conn.Conn.Close()
		}
		l.mu.Unlock()
	})
	return err
}

func (l *parkListener) isClosed() bool {
	select {
	case <-l.closed:
		return true
	default:
		return false
	}
}

// track records a parked poll; false when the listener is closed.
func (l *parkListener) track(pp *parkedPoll) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.isClosed() {
		return false
	}
	l.polls[pp] = struct{}{}
	return true
}

func (l *parkListener) untrack(pp *parkedPoll) {
	l.mu.Lock()
	delete(l.polls, pp)
	l.mu.Unlock()
}

// handBack gives an answered connection back to the http.Server.
func (l *parkListener) handBack(c *parkConn) {
	select {
	case l.back <- c:
	case <-l.closed:
		c.Close()
	}
}

// parkConn is a connection accepted by a parkListener. prefix holds bytes
// read from it while its poll was parked (the start of the next request),
// which the server reads first.
type parkConn struct {
	net.Conn
	l      *parkListener
	prefix []byte
}

// CloseWrite shuts down the writing side, as net/http does on a TCP
// connection before closing it after an error.
func (c *parkConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.Conn.Close()
}

// Read implements net.Conn. The http.Server reads a connection from one
// goroutine at a time, and never while its poll is parked.
func (c *parkConn) Read(b []byte) (int, error) {
	if len(c.prefix) > 0 {
		n := copy(b, c.prefix)
		c.prefix = c.prefix[n:]
		if len(c.prefix) == 0 {
			c.prefix = nil
		}
		return n, nil
	}
	return c.Conn.Read(b)
}

// keepReadAhead keeps what the server had read ahead on c before it was
// hijacked (a pipelined request), for the server to read again when the
// connection comes back.
func (c *parkConn) keepReadAhead(br *bufio.Reader) {
	if n := br.Buffered(); n > 0 {
		ahead, _ := br.Peek(n)
		c.prefix = append(append([]byte(nil), ahead...), c.prefix...)
	}
}

// parkAfter is how long a coalesced live poll waits on its handler's
// goroutine before it is parked: a poll that Electric answers at once (the
// client was behind) is answered as an unparked one, without the cost of
// hijacking and handing the connection back.
const parkAfter = 100 * time.Millisecond

// parkedPoll states.
const (
	stHandler      int32 = iota // waiting on the handler's goroutine
	stHandlerReady              // the result came to the handler (pp.wake closed)
	stParking                   // the handler is hijacking the connection
	stParked                    // parked, waiting for the result
	stReady                     // parked (or parking), and the result is in pp.res
	stGone                      // the client went away first
)

// parkedPoll is a coalesced live poll on a parkListener connection,
// first waiting on its handler's goroutine, then, after parkAfter, parked:
// what remains of it then is this record and its watcher goroutine.
type parkedPoll struct {
	p     *Proxy
	conn  *parkConn
	f     *flight[*liveResult]
	rl    *rule
	info  *reqInfo
	hdr   http.Header   // response headers set before parking (request id, CORS)
	wake  chan struct{} // closed when the result comes while the handler waits
	res   *liveResult
	state atomic.Int32
	one   [1]byte
}

// aLongTimeAgo is a read deadline that makes a blocked Read return at once.
var aLongTimeAgo = time.Unix(1, 0)

// parkConnOf returns the parkListener connection of r when r may be parked:
// a plain HTTP/1.1 request (keep-alive, no Expect) on a listener of
// Proxy.Serve that is still open.
func parkConnOf(r *http.Request) *parkConn {
	pc, _ := r.Context().Value(parkConnKey{}).(*parkConn)
	if pc == nil || r.ProtoMajor != 1 || r.ProtoMinor != 1 || r.Close || r.Header.Get("Expect") != "" || pc.l.isClosed() {
		return nil
	}
	return pc
}

// waitOrPark joins the shared request for key (starting it with start if
// there is none) and waits for its result on the handler's goroutine for
// parkAfter, then parks the poll (info.parked: the handler must return
// and leave w alone). Otherwise it returns the result, or ok false when
// the client went away first.
func (p *Proxy) waitOrPark(w http.ResponseWriter, r *http.Request, pc *parkConn, rl *rule, info *reqInfo, key string,
	start func(context.Context, func(*liveResult))) (res *liveResult, ok bool) {
	pp := &parkedPoll{p: p, conn: pc, rl: rl, info: info, wake: make(chan struct{})}
	pp.f = p.live.join(key, start, pp.ready)
	timer := time.NewTimer(parkAfter)
	defer timer.Stop()
	for {
		select {
		case <-pp.wake:
			return pp.res, true
		case <-r.Context().Done():
			if pp.state.CompareAndSwap(stHandler, stGone) {
				p.live.leave(pp.f)
				return nil, false
			}
			// The result came meanwhile: pp.wake is closed.
		case <-timer.C:
			if pp.park(w) {
				return nil, false
			}
			// Not parked: go on waiting here.
		}
	}
}

// park hijacks the connection of a poll waiting on its handler and leaves
// it to a watcher goroutine; false when it did not (the result came first,
// or the connection cannot be hijacked).
func (pp *parkedPoll) park(w http.ResponseWriter) bool {
	p, pc, info := pp.p, pp.conn, pp.info
	if !pp.state.CompareAndSwap(stHandler, stParking) {
		return false
	}
	_, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		if !pp.state.CompareAndSwap(stParking, stHandler) {
			// The result came while hijacking (stReady): to the handler.
			pp.state.Store(stHandlerReady)
			close(pp.wake)
		}
		return false
	}
	pc.keepReadAhead(brw.Reader) // and the buffers go
	pp.hdr = w.Header()
	info.parked = true
	if !pc.l.track(pp) {
		// The listener closed meanwhile.
		pp.state.Store(stGone)
		p.live.leave(pp.f)
		pc.Conn.Close()
		info.reason = "server closing"
		p.finish(context.Background(), info, 499, 0)
		return true
	}
	p.metrics.parked.Add(1)
	pp.state.CompareAndSwap(stParking, stParked) // or stReady: watch answers at once
	go pp.watch()
	return true
}

// ready is the flight's notification: it hands the result to the handler
// or, once parked, wakes the watcher (blocked in Read) with a past read
// deadline.
func (pp *parkedPoll) ready(res *liveResult) {
	pp.res = res
	for {
		switch s := pp.state.Load(); s {
		case stHandler:
			if pp.state.CompareAndSwap(s, stHandlerReady) {
				close(pp.wake)
				return
			}
		case stParking:
			if pp.state.CompareAndSwap(s, stReady) {
				return
			}
		case stParked:
			if pp.state.CompareAndSwap(s, stReady) {
				pp.conn.Conn.SetReadDeadline(aLongTimeAgo)
				return
			}
		default: // stGone
			return
		}
	}
}

// watch is the parked poll's goroutine: it reads the connection until the
// result is in (then answers) or the client goes away (then leaves the
// shared request).
func (pp *parkedPoll) watch() {
	c := pp.conn
	for {
		if pp.state.Load() == stReady {
			pp.p.metrics.parked.Add(-1)
			pp.answer()
			return
		}
		n, _ := c.Conn.Read(pp.one[:])
		if n > 0 {
			// A pipelined request: kept for the server.
			if len(c.prefix) >= maxParkedPrefix {
				pp.p.metrics.parked.Add(-1)
				pp.gone("pipelined too much while parked")
				return
			}
			c.prefix = append(c.prefix, pp.one[0])
			continue
		}
		if pp.state.CompareAndSwap(stParked, stGone) {
			pp.p.metrics.parked.Add(-1)
			pp.gone("client went away")
			return
		}
		// The result came meanwhile (stReady): answered at the loop's top.
	}
}

// gone ends a parked poll whose client left.
func (pp *parkedPoll) gone(reason string) {
	pp.state.Store(stGone)
	pp.p.live.leave(pp.f)
	pp.conn.Conn.Close()
	pp.conn.l.untrack(pp)
	pp.info.reason = reason
	pp.p.finish(context.Background(), pp.info, 499, 0) // never seen by the client; recorded in the audit line
}

// answer writes the response of a parked poll, then hands its connection
// back to the server when the client sends its next request.
func (pp *parkedPoll) answer() {
	p, c, info := pp.p, pp.conn, pp.info
	c.Conn.SetReadDeadline(time.Time{})
	pw := &parkedWriter{conn: c.Conn, header: pp.hdr, timeout: p.parkWriteTimeout}
	if !p.replayShared(pw, pp.rl, info, pp.res) {
		// Too large to share: this poll fetches it on its own, as an
		// unparked one does, with the flight's query and key headers.
		rawQuery, hdr := splitLiveKey(pp.f.key)
		p.stream(context.Background(), pw, http.MethodGet, rawQuery, hdr, pp.rl, info)
	}
	pw.end(info.abort)
	p.finish(context.Background(), info, pw.status, pw.bytes)
	pp.f, pp.res, pp.hdr, pp.info = nil, nil, nil, nil
	if pw.err != nil || info.abort {
		c.Conn.Close()
		c.l.untrack(pp)
		return
	}
	// The server sets its own write deadlines (or none): ours must not
	// outlive this response.
	c.Conn.SetWriteDeadline(time.Time{})
	// Wait for the next request, as net/http waits on an idle
	// connection, so that an idle client costs no server goroutine and
	// buffers; the server then reads the request with its usual timeouts.
	if len(c.prefix) == 0 {
		if c.l.idle > 0 {
			c.Conn.SetReadDeadline(time.Now().Add(c.l.idle))
		}
		n, _ := c.Conn.Read(pp.one[:])
		if n == 0 {
			c.Conn.Close()
			c.l.untrack(pp)
			return
		}
		c.Conn.SetReadDeadline(time.Time{})
		c.prefix = append(c.prefix, pp.one[0])
	}
	c.l.untrack(pp)
	c.l.handBack(c)
}
