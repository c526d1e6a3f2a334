package proxy

import (
	"net"
	"net/http"
	"strconv"
	"time"
)

// parkedWriter is the http.ResponseWriter of a parked poll's answer, on
// the hijacked connection. The answer is buffered and written with a
// Content-Length when it ends; after a Flush (a large response streamed by
// Proxy.stream) it is sent as it comes, chunked unless the upstream gave
// a Content-Length.
type parkedWriter struct {
	conn      net.Conn
	timeout   time.Duration // for each write
	header    http.Header
	status    int
	body      []byte // buffered, until end or Flush
	streaming bool   // the header is sent
	chunked   bool
	bytes     int64 // body bytes accepted
	err       error // the first write error: the client went away
}

func (w *parkedWriter) Header() http.Header { return w.header }

func (w *parkedWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
}

// bodyAllowed reports whether a response with status may have a body.
func bodyAllowed(status int) bool {
	return status >= 200 && status != http.StatusNoContent && status != http.StatusNotModified
}

func (w *parkedWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	if w.err != nil {
		return 0, w.err
	}
	w.bytes += int64(len(b))
	if !w.streaming {
		w.body = append(w.body, b...)
		return len(b), nil
	}
	w.writeBody(b)
	return len(b), w.err
}

// FlushError sends the header and what is buffered (for
// http.ResponseController).
func (w *parkedWriter) FlushError() error {
	if !w.streaming && w.err == nil {
		w.sendHeader(false)
		if body := w.body; len(body) > 0 {
			w.body = nil
			w.writeBody(body)
		}
	}
	return w.err
}

// writeBody sends b, as a chunk when the response is chunked.
func (w *parkedWriter) writeBody(b []byte) {
	if len(b) == 0 {
		return
	}
	if w.chunked {
		w.send(strconv.AppendInt(nil, int64(len(b)), 16), []byte("\r\n"), b, []byte("\r\n"))
		return
	}
	w.send(b)
}

// sendHeader writes the status line and header; with final, the body
// buffered so far is the whole body.
func (w *parkedWriter) sendHeader(final bool) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	h := w.header
	h.Del("Transfer-Encoding")
	switch {
	case !bodyAllowed(w.status):
		if w.status != http.StatusNotModified {
			h.Del("Content-Length")
		}
	case final:
		h.Set("Content-Length", strconv.Itoa(len(w.body)))
	case h.Get("Content-Length") == "":
		h.Set("Transfer-Encoding", "chunked")
		w.chunked = true
	}
	if _, ok := h["Date"]; !ok {
		h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	}
	b := make([]byte, 0, 512+len(w.body))
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(w.status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(w.status)...)
	b = append(b, "\r\n"...)
	hb := &appendWriter{b}
	h.Write(hb)
	b = append(hb.b, "\r\n"...)
	if final {
		b = append(b, w.body...)
		w.body = nil
	}
	w.streaming = true
	w.send(b)
}

// end finishes the response; aborted leaves a chunked body unterminated,
// so that the client sees it truncated.
func (w *parkedWriter) end(aborted bool) {
	switch {
	case !w.streaming:
		w.sendHeader(true)
	case w.chunked && !aborted:
		w.send([]byte("0\r\n\r\n"))
	}
}

// send writes bufs with the write timeout; after a failed write (w.err)
// nothing more is sent.
func (w *parkedWriter) send(bufs ...[]byte) {
	if w.err != nil {
		return
	}
	w.conn.SetWriteDeadline(time.Now().Add(w.timeout))
	nb := net.Buffers(bufs)
	if _, err := nb.WriteTo(w.conn); err != nil {
		w.err = err
	}
}

// appendWriter is an io.Writer appending to b (for http.Header.Write).
type appendWriter struct{ b []byte }

func (a *appendWriter) Write(p []byte) (int, error) {
	a.b = append(a.b, p...)
	return len(p), nil
}
