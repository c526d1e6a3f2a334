package main

import (
	"io"
	"net"
	"sync"
	"time"
)

// A gate is a TCP relay between the proxies and the shape server that can
// stall or cut the responses in flight: faults a real network produces
// (a congested link, a reset) and the real parts cannot be asked for.
type gate struct {
	ln       net.Listener
	addr     string
	upstream string

	mu      sync.Mutex
	conns   map[*gateConn]struct{}
	stalled chan struct{} // closed when the stall ends; nil: not stalled
	cutTill time.Time     // until then, a response chunk is the last
}

type gateConn struct {
	down, up net.Conn
}

func newGate(upstream string) (*gate, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	g := &gate{ln: ln, addr: ln.Addr().String(), upstream: upstream, conns: map[*gateConn]struct{}{}}
	go g.serve()
	return g, nil
}

func (g *gate) serve() {
	for {
		down, err := g.ln.Accept()
		if err != nil {
			return
		}
		go g.relay(down)
	}
}

func (g *gate) relay(down net.Conn) {
	up, err := net.Dial("tcp", g.upstream)
	if err != nil {
		down.Close()
		return
	}
	c := &gateConn{down: down, up: up}
	g.mu.Lock()
	g.conns[c] = struct{}{}
	g.mu.Unlock()
	defer func() {
		g.mu.Lock()
		delete(g.conns, c)
		g.mu.Unlock()
		down.Close()
		up.Close()
	}()
	go func() {
		io.Copy(up, down)
		up.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := up.Read(buf)
		if n > 0 {
			stall, cut := g.state()
			if stall != nil {
				<-stall
			}
			if cut {
				// Half of this chunk, then the connection ends: a
				// response cut mid-body (or mid-header).
				down.Write(buf[:max(1, n/2)])
				return
			}
			if _, werr := down.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (g *gate) state() (stall chan struct{}, cut bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stalled, time.Now().Before(g.cutTill)
}

// stall holds every response byte from the shape server for d.
func (g *gate) stall(d time.Duration) {
	ch := make(chan struct{})
	g.mu.Lock()
	if g.stalled != nil {
		g.mu.Unlock()
		return
	}
	g.stalled = ch
	g.mu.Unlock()
	time.AfterFunc(d, func() {
		g.mu.Lock()
		g.stalled = nil
		g.mu.Unlock()
		close(ch)
	})
}

// cut ends, for d, every connection on its next response chunk, halfway
// through it.
func (g *gate) cut(d time.Duration) {
	g.mu.Lock()
	g.cutTill = time.Now().Add(d)
	g.mu.Unlock()
}

func (g *gate) close() {
	g.ln.Close()
	g.mu.Lock()
	defer g.mu.Unlock()
	for c := range g.conns {
		c.down.Close()
		c.up.Close()
	}
}
