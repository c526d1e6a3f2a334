package main

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/shapeseal/shapeseal/bench/internal/benchenv"
)

// lbHost is the host name readers use for the proxies: their dialer
// (a lb) picks the proxy.
const lbHost = "proxies.soak"

// A lb is one reader's view of a load balancer in front of the two
// proxies: every connection goes to the reader's current proxy, or to the
// other when that one refuses (it was killed). switchProxy moves the
// reader to the other proxy and cuts its connections, as a balancer
// draining a backend would; the reader's streams resume at their offsets.
type lb struct {
	addrs [2]string

	mu    sync.Mutex
	cur   int
	conns map[net.Conn]struct{}
}

func newLB(addrs [2]string, first int) *lb {
	return &lb{addrs: addrs, cur: first, conns: map[net.Conn]struct{}{}}
}

// client returns an HTTP client whose connections the lb makes.
func (b *lb) client() *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:         b.dial,
		MaxIdleConnsPerHost: 8,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
	}}
}

func (b *lb) dial(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	b.mu.Lock()
	cur := b.cur
	b.mu.Unlock()
	c, err := d.DialContext(ctx, network, b.addrs[cur])
	if err != nil {
		// Failover: the other proxy, which becomes the current one.
		cur = 1 - cur
		if c, err = d.DialContext(ctx, network, b.addrs[cur]); err != nil {
			return nil, err
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cur = cur
	tc := &trackedConn{Conn: c, lb: b}
	b.conns[tc] = struct{}{}
	return tc, nil
}

// switchProxy moves the reader to the other proxy, cutting every
// connection it has open (requests in flight fail and are retried).
func (b *lb) switchProxy() {
	b.mu.Lock()
	other := 1 - b.cur
	b.mu.Unlock()
	b.moveTo(other)
}

// moveTo moves the reader to proxy i, cutting its connections if it was
// on the other.
func (b *lb) moveTo(i int) {
	b.mu.Lock()
	if b.cur == i {
		b.mu.Unlock()
		return
	}
	b.cur = i
	conns := make([]net.Conn, 0, len(b.conns))
	for c := range b.conns {
		conns = append(conns, c)
	}
	b.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}

type trackedConn struct {
	net.Conn
	lb   *lb
	once sync.Once
}

func (c *trackedConn) Close() error {
	c.once.Do(func() {
		c.lb.mu.Lock()
		delete(c.lb.conns, c)
		c.lb.mu.Unlock()
	})
	return c.Conn.Close()
}

// tokens is a reader's token source: tokens last an hour, unless expire
// replaced the current one with one that has expired, which the proxy
// refuses (401) and the stream then refreshes.
type tokens struct {
	key     []byte
	claims  map[string]any
	mu      sync.Mutex
	current string
}

func newTokens(key []byte, u *user) *tokens {
	t := &tokens{key: key, claims: map[string]any{"iss": "shapeseal-soak", "sub": u.name, "tenant_ids": u.tenants, "device_id": "d"}}
	t.current = t.mint(time.Hour)
	return t
}

func (t *tokens) mint(ttl time.Duration) string {
	c := map[string]any{"iat": time.Now().Unix(), "exp": time.Now().Add(ttl).Unix()}
	for k, v := range t.claims {
		c[k] = v
	}
	return benchenv.SignHS256(t.key, c)
}

func (t *tokens) Token(context.Context) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.current, nil
}

func (t *tokens) Refresh(_ context.Context, rejected string) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if rejected == t.current {
		t.current = t.mint(time.Hour)
	}
	return t.current, nil
}

// expire makes the current token one that expired two minutes ago (beyond
// any leeway).
func (t *tokens) expire() {
	tok := t.mint(-2 * time.Minute)
	t.mu.Lock()
	t.current = tok
	t.mu.Unlock()
}
