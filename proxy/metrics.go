package proxy

import (
	"cmp"
	"fmt"
	"io"
	rtmetrics "runtime/metrics"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

var latencyBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}

type histogram struct {
	counts []uint64 // per bucket, non-cumulative; last is +Inf
	sum    float64
	n      uint64
}

// metrics are kept by hand and written in the Prometheus text format.
type metrics struct {
	mu         sync.Mutex
	requests   map[[2]string]uint64 // shape, status
	latency    map[string]*histogram
	liveNow    atomic.Int64
	liveShared atomic.Int64 // coalesced upstream live requests (HTTP)
	parked     atomic.Int64 // live polls parked now (park.go)
	upErrors   atomic.Uint64
	bytesSent  atomic.Uint64

	ws wsMetrics
}

// wsMetrics are the figures of GET /v1/ws. Every label value comes from a
// fixed set (close reasons and codes the proxy chooses, configured shape
// names), never from a client, so the number of series stays bounded.
type wsMetrics struct {
	open        atomic.Int64  // connections upgraded and not yet finished
	framesSent  atomic.Uint64 // WebSocket messages written to clients
	bytesSent   atomic.Uint64 // their payload bytes
	slowCloses  atomic.Uint64 // connections closed with StatusSlowConsumer
	refreshOK   atomic.Uint64 // auth messages after the first, accepted
	refreshFail atomic.Uint64 // auth messages after the first, refused

	// Under metrics.mu.
	closed map[wsClose]uint64
	subs   map[string]int64 // active subscriptions by shape
}

// wsClose is why a WebSocket connection ended (see the wsReason constants)
// and the close code of its close frame: "1006" when none was exchanged,
// "other" for a code a client chose outside RFC 6455's 1000-1015.
type wsClose struct {
	reason string
	code   string
}

func newMetrics() *metrics {
	return &metrics{requests: map[[2]string]uint64{}, latency: map[string]*histogram{},
		ws: wsMetrics{closed: map[wsClose]uint64{}, subs: map[string]int64{}}}
}

// wsClosed counts a finished connection.
func (m *metrics) wsClosed(c wsClose) {
	m.mu.Lock()
	m.ws.closed[c]++
	m.mu.Unlock()
}

// wsSubs moves the active-subscription gauge of shape by delta.
func (m *metrics) wsSubs(shape string, delta int64) {
	m.mu.Lock()
	m.ws.subs[shape] += delta
	m.mu.Unlock()
}

func (m *metrics) observe(shape string, status int, d time.Duration) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.requests[[2]string{shape, strconv.Itoa(status)}]++
	h := m.latency[shape]
	if h == nil {
		h = &histogram{counts: make([]uint64, len(latencyBuckets)+1)}
		m.latency[shape] = h
	}
	s := d.Seconds()
	i, _ := slices.BinarySearch(latencyBuckets, s)
	h.counts[i]++
	h.sum += s
	h.n++
}

// header writes a metric's HELP and TYPE lines.
func header(w io.Writer, name, kind, help string) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
}

// single writes a metric without labels: its header and its value.
func single[V int64 | uint64](w io.Writer, name, kind, help string, v V) {
	header(w, name, kind, help)
	fmt.Fprintf(w, "%s %d\n", name, v)
}

func (m *metrics) write(w io.Writer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	header(w, "shapeseal_proxy_requests_total", "counter", "Requests by shape and status.")
	keys := make([][2]string, 0, len(m.requests))
	for k := range m.requests {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [2]string) int { return cmp.Or(cmp.Compare(a[0], b[0]), cmp.Compare(a[1], b[1])) })
	for _, k := range keys {
		fmt.Fprintf(w, "shapeseal_proxy_requests_total{shape=%q,status=%q} %d\n", k[0], k[1], m.requests[k])
	}
	header(w, "shapeseal_proxy_request_duration_seconds", "histogram", "Request latency by shape (to the end of the body).")
	shapes := make([]string, 0, len(m.latency))
	for s := range m.latency {
		shapes = append(shapes, s)
	}
	slices.Sort(shapes)
	for _, s := range shapes {
		h := m.latency[s]
		var cum uint64
		for i, le := range latencyBuckets {
			cum += h.counts[i]
			fmt.Fprintf(w, "shapeseal_proxy_request_duration_seconds_bucket{shape=%q,le=%q} %d\n", s, strconv.FormatFloat(le, 'g', -1, 64), cum)
		}
		cum += h.counts[len(latencyBuckets)]
		fmt.Fprintf(w, "shapeseal_proxy_request_duration_seconds_bucket{shape=%q,le=\"+Inf\"} %d\n", s, cum)
		fmt.Fprintf(w, "shapeseal_proxy_request_duration_seconds_sum{shape=%q} %g\n", s, h.sum)
		fmt.Fprintf(w, "shapeseal_proxy_request_duration_seconds_count{shape=%q} %d\n", s, h.n)
	}
	single(w, "shapeseal_proxy_live_requests", "gauge", "Live (long-poll) requests in flight.", m.liveNow.Load())
	single(w, "shapeseal_proxy_upstream_shared_live_requests", "gauge", "Upstream live requests shared by coalesced HTTP live polls.", m.liveShared.Load())
	single(w, "shapeseal_proxy_live_parked", "gauge", "Live polls parked off their handler, waiting on a shared upstream request (Proxy.Serve).", m.parked.Load())
	single(w, "shapeseal_proxy_upstream_errors_total", "counter", "Upstream requests that failed (network errors, timeouts, refused credentials).", m.upErrors.Load())
	single(w, "shapeseal_proxy_response_bytes_total", "counter", "Response body bytes sent to clients.", m.bytesSent.Load())
	m.writeWS(w)
	writeRuntime(w)
}

// writeWS writes the WebSocket figures; m.mu is held.
func (m *metrics) writeWS(w io.Writer) {
	ws := &m.ws
	single(w, "shapeseal_proxy_ws_connections", "gauge", "WebSocket connections open on /v1/ws.", ws.open.Load())
	header(w, "shapeseal_proxy_ws_connections_closed_total", "counter", "WebSocket connections ended, by reason and close code (1006: no close frame).")
	closes := make([]wsClose, 0, len(ws.closed))
	for k := range ws.closed {
		closes = append(closes, k)
	}
	slices.SortFunc(closes, func(a, b wsClose) int { return cmp.Or(cmp.Compare(a.reason, b.reason), cmp.Compare(a.code, b.code)) })
	for _, k := range closes {
		fmt.Fprintf(w, "shapeseal_proxy_ws_connections_closed_total{reason=%q,code=%q} %d\n", k.reason, k.code, ws.closed[k])
	}
	header(w, "shapeseal_proxy_ws_subscriptions", "gauge", "Active WebSocket shape subscriptions, by shape.")
	shapes := make([]string, 0, len(ws.subs))
	for s := range ws.subs {
		shapes = append(shapes, s)
	}
	slices.Sort(shapes)
	for _, s := range shapes {
		fmt.Fprintf(w, "shapeseal_proxy_ws_subscriptions{shape=%q} %d\n", s, ws.subs[s])
	}
	single(w, "shapeseal_proxy_ws_messages_sent_total", "counter", "WebSocket messages (frames of any type) written to clients.", ws.framesSent.Load())
	single(w, "shapeseal_proxy_ws_bytes_sent_total", "counter", "Payload bytes of the WebSocket messages written to clients.", ws.bytesSent.Load())
	single(w, "shapeseal_proxy_ws_slow_consumer_closes_total", "counter", "WebSocket connections closed with 4008 because their outbound queue overflowed.", ws.slowCloses.Load())
	header(w, "shapeseal_proxy_ws_token_refreshes_total", "counter", "Auth messages replacing a connection's token, by result (failed: invalid, another user, or rate-limited).")
	fmt.Fprintf(w, "shapeseal_proxy_ws_token_refreshes_total{result=\"failed\"} %d\n", ws.refreshFail.Load())
	fmt.Fprintf(w, "shapeseal_proxy_ws_token_refreshes_total{result=\"ok\"} %d\n", ws.refreshOK.Load())
}

// runtimeGauges are the Go runtime's own figures (runtime/metrics, read
// without stopping the world), under the names client_golang uses.
var runtimeGauges = []struct{ sample, name, help string }{
	{"/sched/goroutines:goroutines", "go_goroutines", "Goroutines that currently exist."},
	{"/memory/classes/heap/objects:bytes", "go_memstats_heap_alloc_bytes", "Heap bytes in objects, live or not yet swept."},
	{"/memory/classes/heap/stacks:bytes", "go_memstats_stack_inuse_bytes", "Heap bytes reserved for goroutine stacks."},
	{"/memory/classes/total:bytes", "go_memstats_sys_bytes", "Bytes of memory mapped by the Go runtime."},
}

func writeRuntime(w io.Writer) {
	samples := make([]rtmetrics.Sample, len(runtimeGauges))
	for i, g := range runtimeGauges {
		samples[i].Name = g.sample
	}
	rtmetrics.Read(samples)
	for i, g := range runtimeGauges {
		if samples[i].Value.Kind() != rtmetrics.KindUint64 {
			continue
		}
		single(w, g.name, "gauge", g.help, samples[i].Value.Uint64())
	}
}
