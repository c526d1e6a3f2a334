package proxy

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// countingListener counts the bytes of every connection it accepted.
type countingListener struct {
	net.Listener
	bytes atomic.Int64
}

type countingConn struct {
	net.Conn
	n *atomic.Int64
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(int64(n))
	return n, err
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &countingConn{Conn: c, n: &l.bytes}, nil
}

func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapInuse
}

// BenchmarkWS100Shapes follows 100 shapes over one WebSocket ("ws") and
// over 100 HTTP long-polls ("http"); one op is a change to all 100 shapes
// reaching all 100 readers. Reported: wire bytes per op between the
// clients and the proxy, goroutines and heap held (clients, proxy and
// upstream, in this process) while the 100 shapes are live.
//
//	go run ./internal/pgtest/cmd/withpg -- go test -run '^$' -bench WS100Shapes -benchtime 10x ./proxy/
func BenchmarkWS100Shapes(b *testing.B) {
	for _, mode := range []string{"ws", "http"} {
		b.Run(mode, func(b *testing.B) { benchShapes(b, mode) })
	}
}

func benchShapes(b *testing.B, mode string) {
	const shapes = 100
	e := newEnv(b, func(c *Config) {
		for i := range shapes {
			c.Shapes = append(c.Shapes, ShapeRule{Name: fmt.Sprint("n", i), Table: "public_news", Where: fmt.Sprintf("id <> %d", -i-1)})
		}
	})
	cl := &countingListener{}
	srv := httptest.NewUnstartedServer(e.p)
	cl.Listener = srv.Listener
	srv.Listener = cl
	srv.Start()
	defer srv.Close()
	tok := token(b, "alice", nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	baseG, baseHeap := runtime.NumGoroutine(), heapInuse()
	ready := make(chan struct{}, shapes)
	got := make(chan string, 16*shapes)
	var wg sync.WaitGroup
	follow := func(next func(context.Context) (client.Message, error)) {
		defer wg.Done()
		first := true
		for {
			m, err := next(ctx)
			if err != nil {
				return
			}
			if m.IsUpToDate() && first {
				first = false
				ready <- struct{}{}
			}
			if m.IsChange() {
				got <- m.Key
			}
		}
	}
	conn, closeIdle := benchSubscribe(b, ctx, mode, srv.URL, tok, shapes, &wg, follow)
	defer closeIdle()
	for range shapes {
		<-ready
	}
	for range shapes { // the initial rows
		<-got
	}
	time.Sleep(200 * time.Millisecond) // every shape is in its live poll
	goroutines, heap := runtime.NumGoroutine()-baseG, int64(heapInuse())-int64(baseHeap)
	cl.bytes.Store(0)
	b.ResetTimer()
	for i := range b.N {
		pgtest.Exec(b, e.db, fmt.Sprintf(`INSERT INTO public_news VALUES (%d, 'x')`, 1000+i))
		for range shapes {
			<-got
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(cl.bytes.Load())/float64(b.N), "wire-B/op")
	b.ReportMetric(float64(goroutines), "goroutines")
	b.ReportMetric(float64(heap)/1024, "heap-KiB")
	cancel()
	if conn != nil {
		conn.Close()
	}
	srv.CloseClientConnections()
	wg.Wait()
	benchForgetUpstream(e)
}

// benchSubscribe subscribes with tok to the n shapes n0, n1, … of the
// server at url, over one WebSocket (mode "ws") or one long poll each
// (mode "http"), and follows each in a goroutine counted in wg. It
// returns the WebSocket, if any, and a func that closes the idle HTTP
// connections.
func benchSubscribe(b *testing.B, ctx context.Context, mode, url, tok string, n int, wg *sync.WaitGroup,
	follow func(next func(context.Context) (client.Message, error))) (conn *client.WSConn, closeIdle func()) {
	closeIdle = func() {}
	switch mode {
	case "ws":
		var err error
		conn, err = client.DialWS(ctx, "ws"+strings.TrimPrefix(url, "http")+"/v1/ws", &client.WSOptions{TokenSource: client.StaticToken(tok)})
		if err != nil {
			b.Fatal(err)
		}
		for i := range n {
			s, err := conn.Stream(ctx, fmt.Sprint("n", i), client.WSStreamOptions{Live: true})
			if err != nil {
				b.Fatal(err)
			}
			wg.Add(1)
			go follow(s.Next)
		}
	case "http":
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConnsPerHost = 2 * n
		hc := &http.Client{Transport: tr}
		closeIdle = tr.CloseIdleConnections
		for i := range n {
			s, err := client.New(client.Options{URL: url + "/v1/shapes/n" + fmt.Sprint(i), TokenSource: client.StaticToken(tok),
				Live: true, HTTPClient: hc})
			if err != nil {
				closeIdle()
				b.Fatal(err)
			}
			wg.Add(1)
			go follow(s.Next)
		}
	}
	return conn, closeIdle
}

// benchForgetUpstream: the bench's own rules are not those checkUpstream
// knows: forget their requests once none is in flight.
func benchForgetUpstream(e *env) {
	for i := 0; i < 100 && e.p.metrics.liveNow.Load() != 0; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	e.rec.mu.Lock()
	e.rec.reqs = nil
	e.rec.mu.Unlock()
}
