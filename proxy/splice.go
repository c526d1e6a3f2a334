package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Zero-copy pass-through of non-live bodies
//
// A snapshot or catch-up response is passed to the client unchanged: the
// proxy only filters its headers. Copied by net/http, each byte crosses
// into the proxy and out again (two copies between kernel and user space,
// and a chunk header, a write and a flush per read): on the snapshot of
// bench/proxy.sh part b that ran at about half the rate of going direct.
// When the Proxy serves through [Proxy.Serve] over plain TCP and talks
// plain HTTP to the upstream with its own client (liveClient), a non-live
// GET instead
//
//  1. makes its upstream request on a connection of the liveClient's
//     pool and reads the response header;
//  2. when the status is refused (401, 403, redirects) or has no body, or
//     the body is delimited by the connection's close, answers through
//     net/http as stream does;
//  3. otherwise hijacks the client connection, writes the status line and
//     the filtered headers (writeHeader, exactly as for any response), and
//     relays the body with splice(2) (Go's io.Copy from a *net.TCPConn to
//     a *net.TCPConn): the bytes move from the upstream socket to the
//     client's through a kernel pipe, never into the proxy. A body with a
//     Content-Length is spliced whole. A chunked body is re-framed: each
//     upstream chunk's size line is parsed strictly and written anew (its
//     extensions and the trailer dropped), its data spliced, or copied
//     through a buffer when small; the body ends with the proxy's own
//     last-chunk. An upstream that breaks off leaves the client's response
//     unterminated (the connection is closed), as stream's abort does;
//  4. gives the upstream connection back to the pool when its body was
//     read to the end, and the client connection back to the http.Server
//     (parkListener.handBack) for its next request.
//
// Limits.UpstreamTimeout bounds the whole exchange, as in stream; an
// http.Server WriteTimeout does not apply to the spliced body (the
// headers and small chunks are written with parkedWriter's per-write
// timeout). The client going away is seen at the next write, not while
// the upstream is silent: that is why only non-live requests, which the
// upstream answers at once, are relayed this way.
//
// Everything else (HEAD, live requests, TLS on either side, a Proxy used
// as a plain http.Handler, a configured Transport) goes through stream.

// spliceMin is the smallest rest of a chunk that is spliced; a shorter one
// is copied through relayBufs, with the chunk framing, in one write.
const spliceMin = 32 << 10

// relayBufs are the buffers of small chunks (copied, not spliced).
var relayBufs = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// maxChunkLine bounds a chunk-size line (and a trailer line).
const maxChunkLine = 4096

// upstreamConn is an upstream response whose body is still on c.
type upstreamConn struct {
	lc   *liveClient
	c    net.Conn
	br   *bufio.Reader // c, with what ReadResponse read ahead
	resp *http.Response
	stop func() bool // stops ctx's interruption of c
}

// release gives c back to the pool when its body was read to the end
// (reuse), or closes it.
func (u *upstreamConn) release(reuse bool) {
	if !u.stop() || !reuse || u.resp.Close || u.br.Buffered() > 0 {
		u.c.Close()
		return
	}
	u.c.SetDeadline(time.Time{})
	u.lc.put(u.c)
}

// open makes req (a GET without body) on an idle or new connection and
// reads the response header. ctx interrupts the connection when it ends,
// until release. Like start, it sends the request once more on a new
// connection when a reused one turns out closed.
func (lc *liveClient) open(ctx context.Context, req *http.Request) (*upstreamConn, error) {
	for mayReuse := true; ; mayReuse = false {
		c, reused := lc.take(mayReuse)
		if c == nil {
			var err error
			if c, err = lc.dial(ctx); err != nil {
				return nil, &url.Error{Op: "Get", URL: lc.errURL, Err: lc.fail(ctx, err, false)}
			}
		}
		stop := context.AfterFunc(ctx, func() { c.SetDeadline(aLongTimeAgo) })
		err := req.Write(c)
		var resp *http.Response
		var br *bufio.Reader
		if err == nil {
			br = bufio.NewReaderSize(c, 4096)
			resp, err = http.ReadResponse(br, req)
			if err == nil && resp.StatusCode < 200 {
				err = errors.New("unexpected informational response " + resp.Status)
			}
			if err == nil {
				return &upstreamConn{lc: lc, c: c, br: br, resp: resp, stop: stop}, nil
			}
		}
		stop()
		c.Close()
		err = lc.fail(ctx, err, reused)
		if errors.Is(err, errRetry) && mayReuse {
			continue
		}
		if errors.Is(err, errRetry) {
			err = io.ErrUnexpectedEOF
		}
		return nil, &url.Error{Op: "Get", URL: lc.errURL, Err: err}
	}
}

// spliceable returns the client's TCP connection when a non-live GET can
// be relayed by streamSpliced, or nil.
func (p *Proxy) spliceable(r *http.Request, info *reqInfo) (*parkConn, *net.TCPConn) {
	if p.lean == nil || p.lean.tlsConfig != nil || info.live || r.Method != http.MethodGet {
		return nil, nil
	}
	pc := parkConnOf(r)
	if pc == nil {
		return nil, nil
	}
	tc, ok := pc.Conn.(*net.TCPConn)
	if !ok {
		return nil, nil
	}
	return pc, tc
}

// streamSpliced is stream for a request that spliceable accepted (see
// above).
func (p *Proxy) streamSpliced(w http.ResponseWriter, r *http.Request, pc *parkConn, client *net.TCPConn, rawQuery string, rl *rule, info *reqInfo) {
	ctx := r.Context()
	uctx, cancel := context.WithTimeout(ctx, p.limits.UpstreamTimeout)
	defer cancel()
	req, err := p.upstreamRequest(uctx, http.MethodGet, rawQuery, r.Header, info.reqID)
	if err != nil {
		p.badGateway(w, info, err)
		return
	}
	up, err := p.lean.open(uctx, req)
	if err != nil {
		if ctx.Err() != nil {
			clientLeft(w, info)
			return
		}
		p.badGateway(w, info, err)
		return
	}
	resp := up.resp
	upTCP, isTCP := up.c.(*net.TCPConn)
	chunked := len(resp.TransferEncoding) == 1 && resp.TransferEncoding[0] == "chunked"
	if !isTCP || refusedStatus(resp.StatusCode) != nil || !bodyAllowed(resp.StatusCode) || (!chunked && resp.ContentLength < 0) {
		// Through net/http, as stream does. A response without body
		// leaves the connection reusable.
		defer func() { up.release(!bodyAllowed(resp.StatusCode)) }()
		if !p.writeHeader(w, rl, info, resp.StatusCode, resp.Header, -1) {
			return
		}
		http.NewResponseController(w).Flush()
		if err := copyFlush(w, resp.Body); err != nil && ctx.Err() == nil {
			p.upstreamBodyFailed(rl, info, err)
		}
		return
	}
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		up.release(false)
		p.badGateway(w, info, err)
		return
	}
	pc.keepReadAhead(brw.Reader)
	_ = conn // pc, whose Conn is client
	info.hijacked, info.abort = true, false
	// The client connection, too, is interrupted when uctx ends (the
	// upstream timeout bounds the whole response, as in stream).
	stopClient := context.AfterFunc(uctx, func() { client.SetDeadline(aLongTimeAgo) })
	pw := &parkedWriter{conn: client, header: w.Header(), timeout: p.parkWriteTimeout}
	p.writeHeader(pw, rl, info, resp.StatusCode, resp.Header, -1)
	if chunked {
		pw.header.Del("Content-Length")
	} else {
		pw.header.Set("Content-Length", strconv.FormatInt(resp.ContentLength, 10))
	}
	pw.sendHeader(false)
	upErr := relayBody(pw, client, up, upTCP, chunked)
	up.release(upErr == nil && pw.err == nil)
	clientOK := stopClient() && pw.err == nil
	info.status, info.bytes = int32(pw.status), pw.bytes
	switch {
	case pw.err != nil:
		info.reason = "client went away"
	case upErr != nil:
		p.upstreamBodyFailed(rl, info, upErr)
	}
	if upErr != nil || !clientOK {
		client.Close()
		return
	}
	client.SetDeadline(time.Time{})
	pc.l.handBack(pc)
}

// relayBody relays the body of up, chunked or of its Content-Length, from
// upTCP (the connection of up) to the client, and ends a chunked one. The
// error is the upstream's; the client's is in pw.err.
func relayBody(pw *parkedWriter, client *net.TCPConn, up *upstreamConn, upTCP *net.TCPConn, chunked bool) error {
	var err error
	if chunked {
		err = relayChunked(pw, client, up.br, upTCP)
	} else {
		err = relayFixed(pw, client, up.br, upTCP, up.resp.ContentLength)
	}
	if err == nil && pw.err == nil && pw.chunked {
		pw.send([]byte("0\r\n\r\n"))
	}
	return err
}

// upstreamBodyFailed records an upstream body broken off after the status
// was sent. The response is aborted (after the audit line), so that the
// client sees it truncated rather than complete-looking.
func (p *Proxy) upstreamBodyFailed(rl *rule, info *reqInfo, err error) {
	info.reason = "upstream body: " + redact(err)
	p.metrics.upErrors.Add(1)
	p.logger.Warn("proxy: upstream body interrupted", "request_id", info.reqID, "shape", rl.Name, "err", info.reason)
	info.abort = true
}

// spliceError is a failed splice that is not the client's.
type spliceError struct{ err error }

func (e *spliceError) Error() string { return "splice: " + e.err.Error() }
func (e *spliceError) Unwrap() error { return e.err }

// splice moves n bytes from src to dst (both TCP: splice(2) through a
// pipe). A failure is the upstream's (returned) unless it is the client's
// connection (pw.err is then set).
func splice(pw *parkedWriter, dst, src *net.TCPConn, n int64) error {
	if pw.err != nil {
		return nil
	}
	dst.SetWriteDeadline(time.Time{}) // the upstream timeout bounds it (see streamSpliced)
	lr := &io.LimitedReader{R: src, N: n}
	k, err := dst.ReadFrom(lr)
	pw.bytes += k
	switch {
	case err != nil && clientGone(err):
		pw.err = err
		return nil
	case err != nil:
		return &spliceError{err}
	case k < n:
		return io.ErrUnexpectedEOF
	}
	return nil
}

// clientGone reports whether a splice error is the client's connection
// breaking (the upstream's would be a reset or a deadline).
func clientGone(err error) bool {
	return errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET)
}

// relayFixed relays a body of n bytes: what br holds, then the rest
// spliced from src.
func relayFixed(pw *parkedWriter, dst *net.TCPConn, br *bufio.Reader, src *net.TCPConn, n int64) error {
	if k := min(int64(br.Buffered()), n); k > 0 {
		b, _ := br.Peek(int(k))
		pw.bytes += k
		pw.send(b)
		br.Discard(int(k))
		n -= k
	}
	if n == 0 {
		return nil
	}
	return splice(pw, dst, src, n)
}

// relayChunked relays a chunked body, re-framed: every chunk's size line
// is parsed (strictly) and written anew; data in br or in chunks smaller
// than spliceMin is copied, the rest spliced. The trailer is read and
// dropped; the caller writes the last chunk.
func relayChunked(pw *parkedWriter, dst *net.TCPConn, br *bufio.Reader, src *net.TCPConn) error {
	bp := relayBufs.Get().(*[]byte)
	out := (*bp)[:0]
	defer func() {
		*bp = out[:0]
		relayBufs.Put(bp)
	}()
	flush := func() {
		if len(out) > 0 {
			pw.send(out)
			out = out[:0]
		}
	}
	for pw.err == nil {
		if br.Buffered() == 0 {
			flush() // about to wait for the upstream
		}
		size, err := readChunkSize(br)
		if err != nil {
			return err
		}
		if size == 0 {
			flush()
			return readTrailer(br)
		}
		out = strconv.AppendUint(out, uint64(size), 16)
		out = append(out, "\r\n"...)
		pw.bytes += size
		left := size
		// What br holds, and the rest of a small chunk: copied.
		for left > 0 && (br.Buffered() > 0 || left < spliceMin) {
			if br.Buffered() == 0 {
				flush() // about to wait for the upstream
			}
			if len(out) == cap(out) {
				flush()
			}
			room := int(min(int64(cap(out)-len(out)), left))
			var k int
			if n := br.Buffered(); n > 0 {
				k = min(room, n)
				b, _ := br.Peek(k)
				out = append(out, b...)
				br.Discard(k)
			} else {
				k, err = br.Read(out[len(out) : len(out)+room])
				out = out[:len(out)+k]
				if err != nil {
					return unexpectedEOF(err)
				}
			}
			left -= int64(k)
		}
		if left > 0 { // at least spliceMin, none of it in br
			flush()
			pw.bytes -= left // counted by splice
			if err := splice(pw, dst, src, left); err != nil || pw.err != nil {
				return err
			}
		}
		if err := readCRLF(br); err != nil {
			return err
		}
		out = append(out, "\r\n"...)
		if len(out) >= cap(out)/2 {
			flush()
		}
	}
	return nil
}

func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

var errChunk = errors.New("malformed chunked encoding")

// readChunkSize reads a chunk-size line: hex digits (at most 15), an
// optional extension after ';', CRLF.
func readChunkSize(br *bufio.Reader) (int64, error) {
	line, err := readLine(br)
	if err != nil {
		return 0, err
	}
	var size int64
	i := 0
	for ; i < len(line); i++ {
		c := line[i]
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			goto rest
		}
		if i >= 15 {
			return 0, errChunk
		}
		size = size<<4 | int64(d)
	}
rest:
	if i == 0 {
		return 0, errChunk
	}
	for ; i < len(line) && (line[i] == ' ' || line[i] == '\t'); i++ {
	}
	if i < len(line) && line[i] != ';' {
		return 0, errChunk
	}
	return size, nil
}

// readLine reads a CRLF-terminated line (without it) of at most
// maxChunkLine bytes.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err == bufio.ErrBufferFull || len(line) > maxChunkLine {
		return nil, errChunk
	}
	if err != nil {
		return nil, unexpectedEOF(err)
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, errChunk
	}
	return line[:len(line)-2], nil
}

func readCRLF(br *bufio.Reader) error {
	line, err := readLine(br)
	if err != nil {
		return err
	}
	if len(line) != 0 {
		return errChunk
	}
	return nil
}

// readTrailer reads the trailer fields after the last chunk, up to the
// empty line (at most 64 lines), and drops them.
func readTrailer(br *bufio.Reader) error {
	for range 64 {
		line, err := readLine(br)
		if err != nil {
			return err
		}
		if len(line) == 0 {
			return nil
		}
	}
	return fmt.Errorf("%w: trailer too long", errChunk)
}
