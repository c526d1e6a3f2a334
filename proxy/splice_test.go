package proxy

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// spliceUpstream serves non-live shape responses of several framings, by
// offset, and counts its connections.
func spliceUpstream(t *testing.T, pieces [][]byte) (*httptest.Server, *atomic.Int64) {
	var conns atomic.Int64
	whole := bytes.Join(pieces, nil)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Electric-Offset", "5_0")
		h.Set("Electric-Handle", "h1")
		h.Set("Server", "electric/1.2.3")
		h.Set("Cache-Control", "public, max-age=60")
		switch r.URL.Query().Get("offset") {
		case "-1": // chunked, chunks of every size, and a trailer
			h.Set("Trailer", "X-Checksum")
			for _, p := range pieces {
				w.Write(p)
				w.(http.Flusher).Flush()
			}
			h.Set("X-Checksum", "dropped")
		case "0_0": // Content-Length
			h.Set("Content-Length", strconv.Itoa(len(whole)))
			w.Write(whole)
		case "0_1":
			w.WriteHeader(http.StatusNotModified)
		case "0_2", "0_3": // broken off: chunked, or short of its Content-Length
			if r.URL.Query().Get("offset") == "0_3" {
				h.Set("Content-Length", strconv.Itoa(len(whole)))
			}
			w.WriteHeader(200)
			w.Write(whole[:len(whole)/2])
			w.(http.Flusher).Flush()
			c, _, _ := http.NewResponseController(w).Hijack()
			c.Close()
		case "0_4":
			w.WriteHeader(http.StatusUnauthorized)
		case "0_5": // empty chunked body
			w.(http.Flusher).Flush()
		}
	}))
	srv.Config.ConnState = func(c net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

// TestSplicedBodies relays non-live bodies through Proxy.Serve, where they
// are spliced (splice.go): every framing arrives whole and well-framed,
// with the filtered headers, on kept-alive connections at both ends; a
// broken-off upstream body is seen truncated.
func TestSplicedBodies(t *testing.T) {
	testKeys(t)
	var pieces [][]byte
	for i, n := range []int{10, 100 << 10, 5, 1 << 20, 40 << 10, 1, spliceMin - 1, spliceMin, 3 << 20} {
		pieces = append(pieces, bytes.Repeat([]byte{'a' + byte(i)}, n))
	}
	whole := bytes.Join(pieces, nil)
	up, upConns := spliceUpstream(t, pieces)
	var logs syncBuffer
	p, err := New(Config{Upstream: up.URL, Secret: upSecret, Auth: testAuth(), Shapes: testRules(), Logger: newTestLogger(&logs)})
	if err != nil {
		t.Fatal(err)
	}
	base, _ := parkServer(t, p)
	tok := token(t, "alice", nil)
	var clientConns atomic.Int64
	c := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	get := func(offset string) (*http.Response, []byte, error) {
		t.Helper()
		trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) {
			if !i.Reused {
				clientConns.Add(1)
			}
		}}
		req, _ := http.NewRequestWithContext(httptrace.WithClientTrace(t.Context(), trace), "GET", base+"/v1/shapes/news?handle=h1&offset="+offset, nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := c.Do(req)
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp, b, err
	}
	for range 3 {
		for _, off := range []string{"-1", "0_0", "0_5", "0_1"} {
			resp, b, err := get(off)
			if err != nil {
				t.Fatalf("offset %s: %v", off, err)
			}
			want := whole
			switch off {
			case "0_1", "0_5":
				want = nil
			}
			if !bytes.Equal(b, want) {
				t.Fatalf("offset %s: %d %d bytes, want %d: %.200s", off, resp.StatusCode, len(b), len(want), b)
			}
			wantStatus := 200
			if off == "0_1" {
				wantStatus = 304
			}
			h := resp.Header
			if resp.StatusCode != wantStatus || h.Get("Server") != "" || h.Get("X-Checksum") != "" || len(resp.Trailer) > 0 ||
				h.Get("Electric-Offset") != "5_0" || h.Get("Vary") != "Authorization" || h.Get("X-Request-Id") == "" {
				t.Fatalf("offset %s: %d %v trailer %v", off, resp.StatusCode, h, resp.Trailer)
			}
			switch {
			case off == "0_0" && resp.ContentLength != int64(len(whole)):
				t.Fatalf("Content-Length %d, want %d", resp.ContentLength, len(whole))
			case off == "-1" && (resp.ContentLength != -1 || len(resp.TransferEncoding) != 1):
				t.Fatalf("chunked: Content-Length %d, Transfer-Encoding %v", resp.ContentLength, resp.TransferEncoding)
			}
		}
	}
	if n := clientConns.Load(); n != 1 {
		t.Errorf("%d client connections, want 1 (kept alive)", n)
	}
	if n := upConns.Load(); n != 1 {
		t.Errorf("%d upstream connections, want 1 (pooled)", n)
	}
	for _, off := range []string{"0_2", "0_3"} {
		resp, b, err := get(off)
		if err == nil || resp.StatusCode != 200 || len(b) >= len(whole) {
			t.Fatalf("offset %s, broken off upstream: %v, %d bytes: not truncated", off, err, len(b))
		}
	}
	resp, _, err := get("0_4")
	if err != nil || resp.StatusCode != http.StatusBadGateway {
		t.Fatalf("upstream 401: %v %v, want 502", resp, err)
	}
	out := logs.String()
	if !strings.Contains(out, `"bytes":`+strconv.Itoa(len(whole))) || !strings.Contains(out, "upstream body interrupted") {
		t.Errorf("audit lines:\n%s", out)
	}
}

func TestReadChunkSize(t *testing.T) {
	for line, want := range map[string]int64{"0\r\n": 0, "1a\r\n": 26, "FFff;ext=1\r\n": 0xffff, "10 ;x\r\n": 16,
		"\r\n": -1, "x\r\n": -1, "1\n": -1, "1 x\r\n": -1, "-1\r\n": -1, "1234567890abcdef\r\n": -1} {
		got, err := readChunkSize(bufio.NewReader(strings.NewReader(line)))
		if (err != nil) != (want < 0) || (err == nil && got != want) {
			t.Errorf("%q: %d %v, want %d", line, got, err, want)
		}
	}
}
