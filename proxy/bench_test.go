package proxy

import (
	"io"
	"net/http"
	"testing"
)

// BenchmarkOverhead compares a catch-up request (offset after the
// snapshot, a small response) sent to Electric directly and through the
// proxy (JWT verification, validation, forwarding, streaming).
func BenchmarkOverhead(b *testing.B) {
	e := newEnv(b, nil)
	tok := token(b, "alice", nil)
	off, handle, _ := e.initial("items", tok)
	get := func(b *testing.B, url string, auth bool) {
		req, _ := http.NewRequest("GET", url, nil)
		if auth {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			b.Fatalf("status %d", resp.StatusCode)
		}
	}
	direct := e.upURL + "/v1/shape?table=items&where=tenant_id+%3D+ANY%28%241%3A%3Atext%5B%5D%29&params%5B1%5D=%7B%22acme%22%7D&columns=%22id%22%2C%22tenant_id%22%2C%22title%22&secret=" + upSecret + "&offset=" + off + "&handle=" + handle
	b.Run("direct", func(b *testing.B) {
		for b.Loop() {
			get(b, direct, false)
		}
	})
	b.Run("proxy", func(b *testing.B) {
		for b.Loop() {
			get(b, e.url+"/v1/shapes/items?offset="+off+"&handle="+handle, true)
		}
	})
	e.rec.mu.Lock()
	e.rec.reqs = nil // the direct requests bypass the proxy on purpose
	e.rec.mu.Unlock()
}
