package proxy

import (
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
)

// bigTransport answers every upstream request with a large log body made
// on the fly.
type bigTransport struct{ size int64 }

type zeroJSON struct{ left int64 }

func (z *zeroJSON) Read(p []byte) (int, error) {
	if z.left <= 0 {
		return 0, io.EOF
	}
	n := min(int64(len(p)), z.left)
	for i := range p[:n] {
		p[i] = ' '
	}
	z.left -= n
	return int(n), nil
}

func (bt bigTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	h := http.Header{"Content-Type": {"application/json"}, "Electric-Offset": {"0_0"}}
	return &http.Response{StatusCode: 200, Header: h, Body: io.NopCloser(&zeroJSON{bt.size}), ContentLength: -1, Request: r}, nil
}

// TestLargeBodyFlatMemory streams 64 MiB through the proxy and checks that
// the proxy does not buffer it.
func TestLargeBodyFlatMemory(t *testing.T) {
	testKeys(t)
	const size = 64 << 20
	p, err := New(Config{Upstream: "http://electric.invalid", Secret: upSecret, Auth: testAuth(), Shapes: testRules(),
		Transport: bigTransport{size}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(p)
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/v1/shapes/news?offset=-1", nil)
	req.Header.Set("Authorization", "Bearer "+token(t, "alice", nil))
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	var n int64
	for {
		k, err := resp.Body.Read(buf)
		n += int64(k)
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	resp.Body.Close()
	runtime.ReadMemStats(&after)
	if n != size {
		t.Fatalf("got %d bytes", n)
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	if alloc > size/4 {
		t.Fatalf("%d bytes allocated to stream %d: the body is buffered", alloc, size)
	}
	t.Logf("%d MiB streamed with %d KiB allocated (proxy and client)", size>>20, alloc>>10)
}
