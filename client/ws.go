package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// WSOptions configure a WSConn.
type WSOptions struct {
	// TokenSource supplies the token sent in the first message of every
	// connection, and again when the proxy asks for a new one
	// (RefreshableTokenSource.Refresh, if it implements it). Required: the
	// proxy refuses a connection without a token.
	TokenSource TokenSource
	// HTTPClient makes the WebSocket handshake; nil means
	// http.DefaultClient.
	HTTPClient *http.Client
	// Header is sent with the handshake (a cookie, say). The token is never
	// sent in it, nor in the URL.
	Header http.Header
	// Backoff tunes redialling after the connection dropped; zero fields
	// mean 250 ms initially, doubling, capped at 10 s.
	Backoff Backoff
}

// WSError is an error frame of the proxy: the subscription was refused
// (400, 403, 404, 429) or the proxy cannot reach the shape (502), or the
// connection's token was refused (401).
type WSError struct {
	Status int
	Msg    string
}

func (e *WSError) Error() string {
	return "client: websocket: " + strconv.Itoa(e.Status) + ": " + e.Msg
}

// WSConn is a WebSocket connection to a proxy's /v1/ws. Its methods are
// safe for concurrent use.
type WSConn struct {
	url     string
	ts      TokenSource
	dial    *websocket.DialOptions
	bo      Backoff
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	closing atomic.Bool

	mu      sync.Mutex
	ws      *websocket.Conn
	token   string
	streams map[string]*WSStream
	live    int // live streams in streams
	next    int
	err     error
}

// DialWS connects to url (ws:// or wss://, a proxy's /v1/ws) and
// authenticates with a token from opts.TokenSource (nil opts means the
// defaults, which have no token source: the proxy requires one). ctx
// bounds the dial and the authentication only; the connection lives until
// Close.
func DialWS(ctx context.Context, url string, opts *WSOptions) (*WSConn, error) {
	if opts == nil {
		opts = &WSOptions{}
	}
	if opts.TokenSource == nil {
		return nil, errors.New("client: DialWS needs WSOptions.TokenSource")
	}
	bo := opts.Backoff
	if bo.Initial <= 0 {
		bo.Initial = 250 * time.Millisecond
	}
	if bo.Max <= 0 {
		bo.Max = 10 * time.Second
	}
	c := &WSConn{url: url, ts: opts.TokenSource, bo: bo.withDefaults(), streams: map[string]*WSStream{}, done: make(chan struct{}),
		dial: &websocket.DialOptions{HTTPClient: opts.HTTPClient, HTTPHeader: opts.Header.Clone()}}
	ws, err := c.connect(ctx, false)
	if _, ok := errors.AsType[*WSError](err); ok {
		// As a ShapeStream does after a 401: one more try, with the
		// refused token refreshed.
		ws, err = c.connect(ctx, true)
	}
	if err != nil {
		return nil, err
	}
	c.ws = ws
	c.ctx, c.cancel = context.WithCancel(context.Background())
	go c.loop(ws)
	return c, nil
}

// connect dials and authenticates; with refresh, it first asks a
// RefreshableTokenSource to replace the token last sent (refused, or
// expired). The token sent is remembered as c.token, refused or not.
func (c *WSConn) connect(ctx context.Context, refresh bool) (*websocket.Conn, error) {
	var tok string
	var err error
	c.mu.Lock()
	old := c.token
	c.mu.Unlock()
	if r, ok := c.ts.(RefreshableTokenSource); ok && refresh && old != "" {
		tok, err = r.Refresh(ctx, old)
	} else {
		tok, err = c.ts.Token(ctx)
	}
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.token = tok
	c.mu.Unlock()
	ws, _, err := websocket.Dial(ctx, c.url, c.dial)
	if err != nil {
		return nil, fmt.Errorf("client: websocket dial: %w", err)
	}
	ws.SetReadLimit(-1) // one frame is one whole upstream response
	if err := wsWrite(ctx, ws, map[string]string{"type": "auth", "token": tok}); err != nil {
		ws.CloseNow()
		return nil, err
	}
	_, b, err := ws.Read(ctx)
	if err != nil {
		ws.CloseNow()
		if websocket.CloseStatus(err) == websocket.StatusPolicyViolation {
			return nil, &WSError{Status: 401, Msg: "token refused"}
		}
		return nil, fmt.Errorf("client: websocket auth: %w", err)
	}
	var f wsFrame
	if json.Unmarshal(b, &f) != nil || f.Type != "auth_ok" {
		ws.CloseNow()
		return nil, fmt.Errorf("client: websocket auth: unexpected %.100q", b)
	}
	return ws, nil
}

func wsWrite(ctx context.Context, ws *websocket.Conn, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return ws.Write(ctx, websocket.MessageText, b)
}

type wsFrame struct {
	Type     string            `json:"type"`
	ID       string            `json:"id"`
	Handle   string            `json:"handle"`
	Offset   string            `json:"offset"`
	UpToDate bool              `json:"up_to_date"`
	Schema   json.RawMessage   `json:"schema"`
	Messages []json.RawMessage `json:"messages"`
	Status   int               `json:"status"`
	Error    string            `json:"error"`
}

// loop reads frames and reconnects until Close.
func (c *WSConn) loop(ws *websocket.Conn) {
	defer close(c.done)
	bo := backoff{cfg: c.bo}
	for {
		c.read(ws)
		ws.CloseNow()
		if c.ctx.Err() != nil || c.closing.Load() {
			return
		}
		authFails := 0
		for {
			if err := sleep(c.ctx, bo.next(0)); err != nil {
				return
			}
			ctx, cancel := context.WithTimeout(c.ctx, 30*time.Second)
			nws, err := c.connect(ctx, authFails > 0)
			cancel()
			if err == nil {
				ws = nws
				break
			}
			var we *WSError
			if errors.As(err, &we) {
				if authFails++; authFails > 2 {
					c.fail(err)
					return
				}
			}
		}
		bo.reset()
		c.mu.Lock()
		c.ws = ws
		streams := make([]*WSStream, 0, len(c.streams))
		for _, s := range c.streams {
			streams = append(streams, s)
		}
		c.mu.Unlock()
		for _, s := range streams {
			s.resubscribe(ws)
		}
	}
}

// read dispatches frames until the connection fails.
func (c *WSConn) read(ws *websocket.Conn) {
	for {
		// A live stream hears from the proxy at least once per upstream
		// long poll (20 s): a silent connection is presumed dead.
		ctx, cancel := c.ctx, context.CancelFunc(func() {})
		if c.hasLive() {
			ctx, cancel = context.WithTimeout(c.ctx, wsSilenceTimeout)
		}
		_, b, err := ws.Read(ctx)
		cancel()
		if err != nil {
			return
		}
		var f wsFrame
		if err := json.Unmarshal(b, &f); err != nil {
			continue
		}
		switch f.Type {
		case "auth_required":
			go c.reauth(c.ctx, ws, true)
			continue
		case "auth_ok":
			continue
		}
		if f.ID == "" {
			continue
		}
		c.mu.Lock()
		s := c.streams[f.ID]
		c.mu.Unlock()
		if s != nil {
			s.push(&f)
		}
	}
}

// wsSilenceTimeout is how long a connection with live streams may stay
// silent before it is redialled.
const wsSilenceTimeout = 90 * time.Second

func (c *WSConn) hasLive() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.live > 0
}

// reauth sends a token: a refreshed one when refresh is set and the
// source can refresh.
func (c *WSConn) reauth(ctx context.Context, ws *websocket.Conn, refresh bool) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c.mu.Lock()
	old := c.token
	c.mu.Unlock()
	var tok string
	var err error
	if r, ok := c.ts.(RefreshableTokenSource); ok && refresh {
		tok, err = r.Refresh(ctx, old)
	} else {
		tok, err = c.ts.Token(ctx)
	}
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.token = tok
	c.mu.Unlock()
	return wsWrite(ctx, ws, map[string]string{"type": "auth", "token": tok})
}

// Reauth sends the token source's current token on the connection, for
// example ahead of the old token's expiry. The proxy applies it to the
// polls that follow. ctx bounds getting the token and sending it (and at
// most 30 s); Close ends it too.
func (c *WSConn) Reauth(ctx context.Context) error {
	c.mu.Lock()
	ws := c.ws
	c.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(c.ctx, cancel)
	defer stop()
	return c.reauth(ctx, ws, false)
}

func (c *WSConn) fail(err error) {
	c.mu.Lock()
	c.err = err
	streams := maps.Clone(c.streams)
	c.mu.Unlock()
	for _, s := range streams {
		s.mu.Lock()
		if s.err == nil {
			s.err = err
		}
		s.mu.Unlock()
		s.wakeUp()
	}
}

// Close closes the connection and all its streams.
func (c *WSConn) Close() error {
	if c.closing.Swap(true) {
		return nil
	}
	c.mu.Lock()
	ws := c.ws
	c.mu.Unlock()
	ws.Close(websocket.StatusNormalClosure, "") // best effort: the peer may be gone
	c.cancel()
	<-c.done
	c.fail(ErrClosed)
	return nil
}
