package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// StatusSlowConsumer is the close code of a WebSocket whose outbound queue
// overflowed.
const StatusSlowConsumer websocket.StatusCode = 4008

// Why a WebSocket connection ended, as counted by
// shapeseal_proxy_ws_connections_closed_total (with the close code).
const (
	wsReasonClient       = "client"          // the client sent a close frame (its code)
	wsReasonLost         = "connection_lost" // reading failed without a close frame (1006)
	wsReasonTooBig       = "message_too_big" // a client message over wsMaxClientFrame (1009)
	wsReasonAuthTimeout  = "auth_timeout"    // no auth message in time (1008)
	wsReasonNoAuth       = "no_auth"         // the first message was not auth (1008)
	wsReasonBadMessage   = "bad_message"     // a message that is not JSON text (1008)
	wsReasonInvalidToken = "invalid_token"   // the first auth message was refused (1008)
	wsReasonLiveLimit    = "live_limit"      // the user's live-request limit (1013)
	wsReasonSlowConsumer = "slow_consumer"   // the outbound queue overflowed (4008)
	wsReasonWriteFailed  = "write_failed"    // a write failed or timed out (1006)
)

// statusNoClose is the code reported for a connection that ended without a
// close frame (RFC 6455 §7.1.5 reserves 1006 for this; it is never sent).
const statusNoClose = 1006

const (
	wsMaxSubscriptions = 1000
	wsMaxClientFrame   = 64 << 10
	wsMaxBody          = 64 << 20
)

// wsState is the proxy's WebSocket state: the live-poll coalescer and
// tunables (tests shrink them).
type wsState struct {
	flights flightGroup[*wsResult]

	authTimeout  time.Duration
	writeTimeout time.Duration
	queueFrames  int
	queueBytes   int
}

func (s *wsState) defaults() (authTimeout, writeTimeout time.Duration, frames, size int) {
	authTimeout, writeTimeout, frames, size = 10*time.Second, 30*time.Second, 256, 16<<20
	if s.authTimeout > 0 {
		authTimeout = s.authTimeout
	}
	if s.writeTimeout > 0 {
		writeTimeout = s.writeTimeout
	}
	if s.queueFrames > 0 {
		frames = s.queueFrames
	}
	if s.queueBytes > 0 {
		size = s.queueBytes
	}
	return
}

// validSubID accepts a subscription id: 1–64 of A–Z a–z 0–9 _ . : -
func validSubID(s string) bool { return len(s) <= 64 && validToken(s) }

type wsIn struct {
	Type    string   `json:"type"`
	ID      string   `json:"id"`
	Token   string   `json:"token"`
	Shape   string   `json:"shape"`
	Offset  string   `json:"offset"`
	Handle  string   `json:"handle"`
	Columns []string `json:"columns"`
	Live    *bool    `json:"live"`
}

type wsConn struct {
	p      *Proxy
	ws     *websocket.Conn
	ctx    context.Context
	cancel context.CancelFunc
	info   *reqInfo
	req    *http.Request // the upgrade request (Request.HTTP for Config.Authorize)

	mu       sync.Mutex
	id       *Identity
	user     string
	release  func() // the live-limit slot, once authenticated
	exp      time.Time
	authed   chan struct{} // closed when the identity is replaced
	asked    bool          // auth_required sent for the current token
	subs     map[string]*wsSub
	queue    [][]byte
	queued   int
	slow     bool
	notify   chan struct{}
	frames   int
	maxBytes int
	closed   wsClose // why the connection ended; the first cause recorded wins
}

func (p *Proxy) serveWS(w http.ResponseWriter, r *http.Request, info *reqInfo) {
	if r.URL.RawQuery != "" {
		info.reason = "query on /v1/ws"
		writeJSONError(w, badRequest("query", "/v1/ws takes no query: send the token in the first message"))
		return
	}
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		writeJSONError(w, &requestError{Status: 405, Field: "method", Msg: "not allowed"})
		return
	}
	authTimeout, writeTimeout, frames, size := p.ws.defaults()
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{
		InsecureSkipVerify: p.origins == nil, // as for HTTP: no cookies, any origin
		OriginPatterns:     p.cfg.AllowedOrigins,
	})
	if err != nil {
		info.reason = "upgrade: " + err.Error()
		return
	}
	// The library closes the connection after a close handshake, not
	// after a read error (a client that vanished): close it, whatever
	// ended the session.
	defer ws.CloseNow()
	ws.SetReadLimit(wsMaxClientFrame)
	ctx, cancel := context.WithCancel(context.Background())
	c := &wsConn{p: p, ws: ws, ctx: ctx, cancel: cancel, info: info, req: r, subs: map[string]*wsSub{},
		notify: make(chan struct{}, 1), frames: frames, maxBytes: size, authed: make(chan struct{})}
	defer cancel()
	p.metrics.ws.open.Add(1)
	defer func() {
		c.mu.Lock()
		closed := c.closed
		c.mu.Unlock()
		p.metrics.wsClosed(closed)
		p.metrics.ws.open.Add(-1)
	}()
	go c.writer(writeTimeout)
	timer := time.AfterFunc(authTimeout, func() {
		c.mu.Lock()
		ok := c.id != nil
		c.mu.Unlock()
		if !ok {
			c.close(wsReasonAuthTimeout, websocket.StatusPolicyViolation, "no auth message")
		}
	})
	defer timer.Stop()
	c.readLoop()
	if c.release != nil {
		c.release()
	}
	c.mu.Lock()
	for _, s := range c.subs {
		s.cancel()
	}
	if c.slow {
		info.reason = "slow consumer"
	}
	c.mu.Unlock()
}

func (c *wsConn) readLoop() {
	for {
		typ, b, err := c.ws.Read(c.ctx)
		if err != nil {
			s := websocket.CloseStatus(err)
			if s != -1 && c.info.reason == "" {
				c.info.reason = "closed " + strconv.Itoa(int(s))
			}
			switch {
			case s != -1:
				c.setClosed(wsReasonClient, int(s))
			case errors.Is(err, websocket.ErrMessageTooBig):
				c.setClosed(wsReasonTooBig, int(websocket.StatusMessageTooBig))
			default:
				c.setClosed(wsReasonLost, statusNoClose)
			}
			return
		}
		var m wsIn
		if typ != websocket.MessageText || json.Unmarshal(b, &m) != nil {
			c.close(wsReasonBadMessage, websocket.StatusPolicyViolation, "messages are JSON text")
			return
		}
		c.mu.Lock()
		authed := c.id != nil
		c.mu.Unlock()
		if !authed && m.Type != "auth" {
			c.info.reason = "no auth message"
			c.close(wsReasonNoAuth, websocket.StatusPolicyViolation, "the first message must be auth")
			return
		}
		switch m.Type {
		case "auth":
			if !c.auth(m.Token, authed) {
				return
			}
		case "subscribe":
			c.subscribe(m)
		case "unsubscribe":
			c.mu.Lock()
			s := c.subs[m.ID]
			delete(c.subs, m.ID)
			c.mu.Unlock()
			if s != nil {
				c.p.metrics.wsSubs(s.rule.Name, -1)
				s.cancel()
				c.send(map[string]any{"type": "done", "id": m.ID})
			}
		default:
			c.send(map[string]any{"type": "error", "status": 400, "error": "unknown message type"})
		}
	}
}

// auth verifies a token; false closes the connection.
func (c *wsConn) auth(token string, refresh bool) bool {
	if refresh {
		c.mu.Lock()
		user := c.user
		c.mu.Unlock()
		if ok, _ := c.p.limiter.allow(user); !ok {
			c.p.metrics.ws.refreshFail.Add(1)
			c.send(map[string]any{"type": "error", "status": 429, "error": "request rate limit exceeded"})
			return true
		}
	}
	id, err := c.p.verifier.Verify(c.ctx, token)
	if err == nil {
		c.mu.Lock()
		if c.id != nil && c.id.UserID != id.UserID {
			err = errors.New("a refreshed token must name the same user")
		}
		c.mu.Unlock()
	}
	if err != nil {
		if !refresh {
			c.info.reason = err.Error()
			c.close(wsReasonInvalidToken, websocket.StatusPolicyViolation, "invalid token")
			return false
		}
		c.p.metrics.ws.refreshFail.Add(1)
		c.send(map[string]any{"type": "error", "status": 401, "error": err.Error()})
		return true
	}
	if !refresh {
		// A WebSocket counts as one of its user's live requests.
		release, ok := c.p.limiter.acquireLive(id.UserID)
		if !ok {
			c.info.reason = "live limit"
			c.close(wsReasonLiveLimit, websocket.StatusTryAgainLater, "too many concurrent live requests")
			return false
		}
		c.release = release
	} else {
		c.p.metrics.ws.refreshOK.Add(1)
	}
	var exp time.Time
	if e, ok, _ := numClaim(id.Claims, "exp"); ok {
		exp = time.Unix(int64(e), 0).Add(c.p.cfg.Auth.Leeway)
	}
	c.mu.Lock()
	c.id, c.exp, c.asked, c.user = id, exp, false, id.UserID
	close(c.authed)
	c.authed = make(chan struct{})
	c.mu.Unlock()
	c.info.user = id.UserID
	c.send(map[string]any{"type": "auth_ok", "exp": exp.Unix()})
	return true
}

// identity returns the connection's identity, waiting for a refresh while
// the token is expired.
func (c *wsConn) identity(ctx context.Context) (*Identity, bool) {
	for {
		c.mu.Lock()
		id, exp, ch := c.id, c.exp, c.authed
		if exp.IsZero() || time.Now().Before(exp) {
			c.mu.Unlock()
			return id, true
		}
		ask := !c.asked
		c.asked = true
		c.mu.Unlock()
		if ask {
			c.send(map[string]any{"type": "auth_required"})
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, false
		}
	}
}

// setClosed records why the connection ends, unless a cause is already
// recorded: the first one is the cause, what follows (the read loop seeing
// the closed connection) its consequence.
func (c *wsConn) setClosed(reason string, code int) {
	label := "other" // a client's own code: kept out of the label values
	if code >= 1000 && code <= 1015 || reason != wsReasonClient {
		label = strconv.Itoa(code)
	}
	c.mu.Lock()
	if c.closed.reason == "" {
		c.closed = wsClose{reason: reason, code: label}
	}
	c.mu.Unlock()
}

// close records why the server ends the connection, then closes it with
// code and text.
func (c *wsConn) close(reason string, code websocket.StatusCode, text string) {
	c.setClosed(reason, int(code))
	c.ws.Close(code, text)
}
