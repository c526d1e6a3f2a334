package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// leanServer is a real HTTP server counting its connections, and a
// liveClient for it.
func leanServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *liveClient, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	lc := newLiveClient(u, time.Minute)
	if lc == nil {
		t.Skip("an HTTP proxy is configured for loopback in the environment")
	}
	return srv, lc, &conns
}

// leanGet makes one GET through lc with the query q.
func leanGet(t *testing.T, ctx context.Context, lc *liveClient, srvURL, q string) (*http.Response, string, error) {
	t.Helper()
	resp, body, err := lc.get(ctx, func(ctx context.Context) (*http.Request, error) {
		return http.NewRequestWithContext(ctx, "GET", srvURL+"/v1/shape?"+q, nil)
	}, 1<<10)
	return resp, string(body), err
}

// TestLiveClientFraming reads fixed-length, chunked and close-delimited
// responses, reuses a connection only when the response allows it, cuts a
// body over the limit, and resends a request whose idle connection the
// server had closed.
func TestLiveClientFraming(t *testing.T) {
	t.Parallel()
	srv, lc, conns := leanServer(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Electric-Offset", "0_1")
		switch r.URL.Query().Get("mode") {
		case "chunked":
			w.Write([]byte("[{"))
			w.(http.Flusher).Flush()
			w.Write([]byte(`"a":1}]`))
		case "close":
			w.Header().Set("Connection", "close")
			w.Write([]byte(`[]`))
		case "big":
			w.Write([]byte(strings.Repeat("x", 4<<10)))
		default:
			w.Write([]byte(`[{"a":1}]`))
		}
	})
	steps := []struct {
		mode, body string
		conns      int64 // connections made so far
	}{
		{"plain", `[{"a":1}]`, 1},
		{"chunked", `[{"a":1}]`, 1},
		{"plain", `[{"a":1}]`, 1},
		{"close", `[]`, 1},
		{"plain", `[{"a":1}]`, 2}, // the server closed the last one
		{"big", strings.Repeat("x", 1<<10+1), 2},
		{"plain", `[{"a":1}]`, 3}, // a cut body leaves the connection unusable
	}
	for i, s := range steps {
		resp, body, err := leanGet(t, context.Background(), lc, srv.URL, "mode="+s.mode)
		if err != nil || resp.StatusCode != 200 || body != s.body || resp.Header.Get("Electric-Offset") != "0_1" {
			t.Fatalf("step %d (%s): %v %q", i, s.mode, err, body)
		}
		if got := conns.Load(); got != s.conns {
			t.Fatalf("step %d (%s): %d connections, want %d", i, s.mode, got, s.conns)
		}
	}
	// The server drops its idle connections: the next request is resent
	// on a new one.
	srv.CloseClientConnections()
	if _, body, err := leanGet(t, context.Background(), lc, srv.URL, "mode=plain"); err != nil || body != `[{"a":1}]` {
		t.Fatalf("after the server closed: %v %q", err, body)
	}
	if got := conns.Load(); got != 4 {
		t.Fatalf("%d connections, want 4", got)
	}
}

// TestLiveClientCancelAndErrors: cancelling the request ends a waiting
// one at once; a response header that does not come in time is a timeout;
// errors are *url.Error, whose query (with the secret) redact drops.
func TestLiveClientCancelAndErrors(t *testing.T) {
	t.Parallel()
	got := make(chan struct{}, 1)
	srv, lc, _ := leanServer(t, func(w http.ResponseWriter, r *http.Request) {
		got <- struct{}{}
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, _, err := leanGet(t, ctx, lc, srv.URL, "secret=s3cr3t")
		errc <- err
	}()
	<-got
	cancel()
	err := <-errc
	var ue *url.Error
	if !errors.Is(err, context.Canceled) || !errors.As(err, &ue) {
		t.Fatalf("cancelled: %v", err)
	}
	if msg := redact(err); strings.Contains(msg, "s3cr3t") {
		t.Fatalf("the secret in %q", msg)
	}
	lc.timeout = 50 * time.Millisecond
	_, _, err = leanGet(t, context.Background(), lc, srv.URL, "secret=s3cr3t")
	<-got
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("header timeout: %v", err)
	}
}

// TestLiveClientIdleClosedWith408: a server that times out an idle
// connection with an unasked "408 Request Timeout" before closing it: the
// next request does not take that for its response; it goes out on a new
// connection.
func TestLiveClientIdleClosedWith408(t *testing.T) {
	t.Parallel()
	if !canPeekIdle {
		t.Skip("idle connections cannot be checked on this platform")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	send408 := make(chan struct{})
	wrote408 := make(chan struct{})
	dropped := make(chan struct{})
	var accepted atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			first := accepted.Add(1) == 1
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				if _, err := http.ReadRequest(br); err != nil {
					return
				}
				io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]")
				if first {
					<-send408 // once the response has been read
					io.WriteString(c, "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
					c.(*net.TCPConn).CloseWrite()
					close(wrote408)
					br.ReadByte() // returns when the client closes
					close(dropped)
				}
			}()
		}
	}()
	base := "http://" + ln.Addr().String()
	u, _ := url.Parse(base)
	lc := newLiveClient(u, time.Minute)
	if lc == nil {
		t.Skip("an HTTP proxy is configured for loopback in the environment")
	}
	for i := range 2 {
		resp, body, err := leanGet(t, context.Background(), lc, base, "n=1")
		if err != nil || resp.StatusCode != 200 || body != "[]" {
			t.Fatalf("request %d: %v %q", i, err, body)
		}
		if i == 0 {
			close(send408)
			<-wrote408 // on loopback, in the client's socket once written
		}
	}
	<-dropped
	if n := accepted.Load(); n != 2 {
		t.Fatalf("%d connections, want 2", n)
	}
}
