package proxy

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
)

// closeListener reports on closed every accepted connection the server
// closes (hijacked ones included).
type closeListener struct {
	net.Listener
	closed chan struct{}
}

func (l *closeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &closeConn{Conn: c, closed: l.closed}, nil
}

type closeConn struct {
	net.Conn
	once   sync.Once
	closed chan struct{}
}

func (c *closeConn) Close() error {
	c.once.Do(func() { c.closed <- struct{}{} })
	return c.Conn.Close()
}

// TestWSClosesLostConnections: a WebSocket whose client vanishes (no close
// frame: a reset, a load balancer draining it) is closed by the proxy.
// Before, its descriptor stayed open in CLOSE_WAIT until the garbage
// collector finalised the connection (the soak, bench/soak, found proxies
// gaining descriptors as readers moved between them).
func TestWSClosesLostConnections(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	srv := httptest.NewUnstartedServer(e.p)
	cl := &closeListener{Listener: srv.Listener, closed: make(chan struct{}, 16)}
	srv.Listener = cl
	srv.Start()
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var mu sync.Mutex
	var raw net.Conn
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		mu.Lock()
		raw = c
		mu.Unlock()
		return c, err
	}}}
	c, _, err := websocket.Dial(ctx, "ws"+strings.TrimPrefix(srv.URL, "http")+"/v1/ws", &websocket.DialOptions{HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	writeWS(t, ctx, c, map[string]any{"type": "auth", "token": token(t, "alice", nil)})
	if f := readFrame(t, ctx, c); f.Type != "auth_ok" {
		t.Fatalf("first frame %+v, want auth_ok", f)
	}
	mu.Lock()
	raw.Close() // the client vanishes
	mu.Unlock()
	select {
	case <-cl.closed:
	case <-time.After(10 * time.Second):
		t.Fatal("10 s after its client vanished, the proxy still holds the WebSocket's connection")
	}
}
