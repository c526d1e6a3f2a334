package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/url"
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

type wsSub struct {
	id      string
	rule    *rule
	columns []string
	live    bool
	ctx     context.Context
	cancel  context.CancelFunc
	release func() // a live subscription's slot of Limits.MaxLivePerUser

	authorized string // the definition Config.Authorize allowed at subscribe, for the first poll

	offset, handle, cursor string
	following              bool   // past the first up-to-date
	def                    string // the upstream shape definition last used
}

// shapeDefinition is q without its position parameters.
func shapeDefinition(q url.Values) string {
	d := url.Values{}
	for k, v := range q {
		if _, pos := positionParams[k]; !pos {
			d[k] = v
		}
	}
	return d.Encode()
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

func (c *wsConn) subError(id string, status int, msg string) {
	c.send(map[string]any{"type": "error", "id": id, "status": status, "error": msg})
}

func (c *wsConn) subscribe(m wsIn) {
	if !validSubID(m.ID) {
		c.subError(m.ID, 400, "id: use 1-64 of A-Z a-z 0-9 _ . : -")
		return
	}
	// Not c.identity: the read loop must not wait for a refresh it reads.
	c.mu.Lock()
	id := c.id
	c.mu.Unlock()
	if ok, _ := c.p.limiter.allow(id.UserID); !ok {
		c.subError(m.ID, 429, "request rate limit exceeded")
		return
	}
	rl := c.p.rules[m.Shape]
	if rl == nil {
		c.subError(m.ID, 404, "unknown shape")
		return
	}
	s := &wsSub{id: m.ID, rule: rl, live: m.Live == nil || *m.Live, offset: m.Offset, handle: m.Handle}
	if s.offset == "" {
		s.offset = "-1"
	}
	if !validOffset(s.offset) || s.handle != "" && !validToken(s.handle) {
		c.subError(m.ID, 400, "offset or handle has invalid format")
		return
	}
	if s.offset != "-1" && s.offset != "now" && s.handle == "" {
		c.subError(m.ID, 400, "handle is required with this offset")
		return
	}
	if m.Columns != nil {
		if len(m.Columns) == 0 {
			// An empty list would drop the rule's projection.
			c.subError(m.ID, 400, "columns: give at least one column, or omit columns")
			return
		}
		s.columns = []string{}
		for _, col := range m.Columns {
			n, err := parseIdent(col)
			if err != nil {
				c.subError(m.ID, 400, "columns: "+err.Error())
				return
			}
			s.columns = append(s.columns, n)
		}
	}
	// Check the rule now, so that a forbidden subscription fails at once.
	q, req, err := rl.upstreamQuery(s.query(), id, c.p.cfg.Auth, c.p.cfg.Secret)
	if err != nil {
		c.ruleError(s, err)
		return
	}
	if !c.authorize(c.ctx, s, id, req) {
		return
	}
	s.authorized = shapeDefinition(q)
	if s.live {
		// A live subscription holds a live poll for as long as it lasts:
		// it counts as one of the user's live requests.
		release, ok := c.p.limiter.acquireLive(id.UserID)
		if !ok {
			c.subError(m.ID, 429, "too many concurrent live requests")
			return
		}
		s.release = release
	}
	c.mu.Lock()
	switch {
	case c.subs[m.ID] != nil:
		c.mu.Unlock()
		s.releaseLive()
		c.subError(m.ID, 400, "id is already subscribed")
		return
	case len(c.subs) >= wsMaxSubscriptions:
		c.mu.Unlock()
		s.releaseLive()
		c.subError(m.ID, 429, "too many subscriptions on this connection")
		return
	}
	s.ctx, s.cancel = context.WithCancel(c.ctx)
	c.subs[m.ID] = s
	c.mu.Unlock()
	// Every subscription leaves c.subs exactly once: by unsubscribe or at
	// the end of run, each of which takes it off the gauge.
	c.p.metrics.wsSubs(rl.Name, 1)
	go c.run(s)
}

// releaseLive gives back a live subscription's slot.
func (s *wsSub) releaseLive() {
	if s.release != nil {
		s.release()
	}
}

// authorize asks Config.Authorize about a subscription's request; false
// (after an error frame) when it is refused.
func (c *wsConn) authorize(ctx context.Context, s *wsSub, id *Identity, req *Request) bool {
	if ctx.Err() != nil {
		return false // the subscription or connection is over
	}
	req.Live, req.WebSocket, req.HTTP = s.live && s.following, true, c.req
	err := c.p.authorize(ctx, id, req)
	if err == nil {
		return true
	}
	if ctx.Err() == nil {
		c.p.logger.Info("proxy ws: subscription refused", "shape", s.rule.Name, "sub", s.id, "user", id.UserID, "reason", err.Error())
		c.subError(s.id, 403, "forbidden")
	}
	return false
}

func (c *wsConn) ruleError(s *wsSub, err error) {
	var re *requestError
	switch {
	case errors.Is(err, errForbidden):
		c.subError(s.id, 403, err.Error())
	case errors.As(err, &re):
		c.subError(s.id, re.Status, re.Error())
	default:
		c.subError(s.id, 400, err.Error())
	}
}

func (s *wsSub) query() *clientQuery {
	q := &clientQuery{position: url.Values{}, columns: s.columns}
	q.position.Set("offset", s.offset)
	if s.handle != "" {
		q.position.Set("handle", s.handle)
	}
	if s.following {
		q.position.Set("live", "true")
		if s.cursor != "" {
			q.position.Set("cursor", s.cursor)
		}
	}
	return q
}

// run follows one subscription until it ends or is cancelled.
func (c *wsConn) run(s *wsSub) {
	start, polls, sent := time.Now(), 0, 0
	c.mu.Lock()
	user := c.user
	c.mu.Unlock()
	reason, status := "", 200
	defer func() {
		s.releaseLive()
		c.mu.Lock()
		mine := c.subs[s.id] == s
		if mine {
			delete(c.subs, s.id)
		}
		c.mu.Unlock()
		if mine {
			c.p.metrics.wsSubs(s.rule.Name, -1)
		}
		s.cancel()
		if reason == "" && c.ctx.Err() != nil {
			reason = "connection closed"
		}
		attrs := []slog.Attr{slog.String("shape", s.rule.Name), slog.String("sub", s.id), slog.String("user", user),
			slog.Int("status", status), slog.Int("polls", polls), slog.Int("bytes", sent), slog.Duration("duration", time.Since(start))}
		if reason != "" {
			attrs = append(attrs, slog.String("reason", reason))
		}
		c.p.logger.LogAttrs(context.Background(), slog.LevelInfo, "proxy ws subscription", attrs...)
	}()
	retry := 0
	for s.ctx.Err() == nil {
		id, ok := c.identity(s.ctx)
		if !ok {
			return
		}
		q, req, err := s.rule.upstreamQuery(s.query(), id, c.p.cfg.Auth, c.p.cfg.Secret)
		if err != nil {
			reason, status = err.Error(), 403
			c.ruleError(s, err)
			return
		}
		if def := shapeDefinition(q); def != s.def {
			if s.def != "" && (s.offset != "-1" || s.handle != "") {
				// A refreshed token changed the rule's parameters: this
				// is another shape, to be fetched from the start.
				s.offset, s.handle, s.cursor, s.following = "-1", "", "", false
				c.send(map[string]any{"type": "must_refetch", "id": s.id, "handle": ""})
			}
			s.def = def
			continue
		}
		if s.authorized == s.def && polls == 0 {
			// Asked at subscribe.
		} else if !c.authorize(s.ctx, s, id, req) {
			reason, status = "refused by Config.Authorize", 403
			return
		}
		polls++
		var res *wsResult
		if s.following {
			res = c.p.wsLive(s.ctx, q)
		} else {
			res = c.p.wsFetch(s.ctx, q)
		}
		if s.ctx.Err() != nil || res == nil {
			return
		}
		switch {
		case res.err != nil || res.status >= 500 || res.status == 429:
			retry++
			wait := min(time.Duration(1<<min(retry-1, 5))*time.Second, 30*time.Second)
			if ra, err := strconv.Atoi(res.retryAfter); err == nil && ra > 0 {
				wait = max(wait, time.Duration(min(ra, 300))*time.Second)
			}
			c.p.logger.Warn("proxy ws: upstream error, retrying", "shape", s.rule.Name, "status", res.status, "err", res.errText())
			select {
			case <-time.After(wait):
			case <-s.ctx.Done():
				return
			}
			continue
		case res.status == http.StatusConflict:
			retry = 0
			s.offset, s.handle, s.cursor, s.following = "-1", res.handle, "", false
			if !validToken(s.handle) {
				s.handle = ""
			}
			c.send(map[string]any{"type": "must_refetch", "id": s.id, "handle": s.handle})
			continue
		case res.status == http.StatusUnauthorized || res.status == http.StatusForbidden:
			reason, status = "upstream refused the proxy's credentials", 502
			c.subError(s.id, 502, "the sync service refused the proxy")
			return
		case res.status != http.StatusOK && res.status != http.StatusNoContent:
			reason, status = "upstream status "+strconv.Itoa(res.status), res.status
			c.subError(s.id, res.status, upstreamMessage(res.body))
			return
		}
		retry = 0
		if res.handle == "" || res.offset == "" {
			reason, status = "upstream response without handle/offset", 502
			c.subError(s.id, 502, "the sync service sent an incomplete response")
			return
		}
		frame := res.frame(s.id)
		sent += len(frame)
		if !c.sendRaw(frame) {
			return
		}
		s.handle, s.offset, s.cursor = res.handle, res.offset, res.cursor
		if res.upToDate {
			if !s.live {
				c.send(map[string]any{"type": "done", "id": s.id})
				return
			}
			s.following = true
		}
	}
}

func upstreamMessage(body []byte) string {
	var v struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &v) == nil && v.Message != "" {
		return v.Message
	}
	return "request refused by the sync service"
}

// wsResult is one upstream response, read whole.
type wsResult struct {
	status                                     int
	handle, offset, cursor, schema, retryAfter string
	upToDate                                   bool
	body                                       []byte
	err                                        error
}

func (r *wsResult) errText() string {
	if r.err == nil {
		return ""
	}
	return redact(r.err)
}

// frame renders a messages frame; the body (a JSON array) is embedded
// as is.
func (r *wsResult) frame(id string) []byte {
	var b bytes.Buffer
	b.Grow(len(r.body) + 256)
	b.WriteString(`{"type":"messages","id":`)
	writeJSONString(&b, id)
	b.WriteString(`,"handle":`)
	writeJSONString(&b, r.handle)
	b.WriteString(`,"offset":`)
	writeJSONString(&b, r.offset)
	b.WriteString(`,"cursor":`)
	writeJSONString(&b, r.cursor)
	b.WriteString(`,"up_to_date":`)
	b.WriteString(strconv.FormatBool(r.upToDate))
	if r.schema != "" && json.Valid([]byte(r.schema)) {
		b.WriteString(`,"schema":`)
		b.WriteString(r.schema)
	}
	b.WriteString(`,"messages":`)
	if len(r.body) == 0 {
		b.WriteString("[]")
	} else {
		b.Write(r.body)
	}
	b.WriteByte('}')
	return b.Bytes()
}

func writeJSONString(b *bytes.Buffer, s string) {
	e, _ := json.Marshal(s)
	b.Write(e)
}

// wsFetch makes one upstream request and reads it whole.
func (p *Proxy) wsFetch(ctx context.Context, q url.Values) *wsResult {
	ctx, cancel := context.WithTimeout(ctx, p.limits.UpstreamTimeout)
	defer cancel()
	u := *p.upstream
	u.Path += "/v1/shape"
	u.RawQuery = q.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return &wsResult{err: err}
	}
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := p.client.Do(req)
	if err != nil {
		if ctx.Err() == nil {
			p.metrics.upErrors.Add(1)
		}
		return &wsResult{err: err}
	}
	defer resp.Body.Close()
	res := &wsResult{status: resp.StatusCode, handle: resp.Header.Get("electric-handle"),
		offset: resp.Header.Get("electric-offset"), cursor: resp.Header.Get("electric-cursor"),
		schema: resp.Header.Get("electric-schema"), retryAfter: resp.Header.Get("Retry-After")}
	_, res.upToDate = resp.Header["Electric-Up-To-Date"]
	res.body, err = io.ReadAll(io.LimitReader(resp.Body, wsMaxBody+1))
	switch {
	case err != nil:
		res.err = err
	case len(res.body) > wsMaxBody:
		res.err = errors.New("upstream response too large for a WebSocket frame")
	case resp.StatusCode == http.StatusOK && len(res.body) > 0 && (res.body[0] != '[' || !json.Valid(res.body)):
		res.err = errors.New("upstream body is not a JSON array")
	}
	if res.err != nil {
		p.metrics.upErrors.Add(1)
	}
	return res
}

// wsLive makes a live upstream request, shared with every other caller
// asking for the same upstream URL at the same time. It returns nil when
// ctx ends first; the shared request is cancelled when no caller waits.
func (p *Proxy) wsLive(ctx context.Context, q url.Values) *wsResult {
	res, _ := p.ws.flights.do(ctx, q.Encode(), func(fctx context.Context) *wsResult {
		p.metrics.liveNow.Add(1)
		defer p.metrics.liveNow.Add(-1)
		return p.wsFetch(fctx, q)
	})
	return res
}

// send queues a JSON frame.
func (c *wsConn) send(v any) bool {
	b, err := json.Marshal(v)
	if err != nil {
		return false
	}
	return c.sendRaw(b)
}

// sendRaw queues a frame; false when the connection is closing. A queue
// that overflows marks the consumer slow: the queue is dropped and the
// writer closes the connection with StatusSlowConsumer.
func (c *wsConn) sendRaw(b []byte) bool {
	c.mu.Lock()
	if c.slow || c.ctx.Err() != nil {
		c.mu.Unlock()
		return false
	}
	if len(c.queue) > 0 && (len(c.queue) >= c.frames || c.queued+len(b) > c.maxBytes) {
		c.slow = true
		c.queue, c.queued = nil, 0
		for _, s := range c.subs {
			s.cancel()
		}
		c.mu.Unlock()
		c.wake()
		return false
	}
	c.queue = append(c.queue, b)
	c.queued += len(b)
	c.mu.Unlock()
	c.wake()
	return true
}

func (c *wsConn) wake() {
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// writer sends queued frames in order.
func (c *wsConn) writer(timeout time.Duration) {
	for {
		select {
		case <-c.notify:
		case <-c.ctx.Done():
			return
		}
		for {
			c.mu.Lock()
			if c.slow {
				c.mu.Unlock()
				c.p.metrics.ws.slowCloses.Add(1)
				c.close(wsReasonSlowConsumer, StatusSlowConsumer, "slow consumer")
				c.cancel()
				return
			}
			if len(c.queue) == 0 {
				c.mu.Unlock()
				break
			}
			b := c.queue[0]
			c.queue[0] = nil
			c.queue = c.queue[1:]
			c.queued -= len(b)
			c.mu.Unlock()
			ctx, cancel := context.WithTimeout(c.ctx, timeout)
			err := c.ws.Write(ctx, websocket.MessageText, b)
			cancel()
			if err != nil {
				c.setClosed(wsReasonWriteFailed, statusNoClose)
				c.cancel()
				return
			}
			c.p.metrics.bytesSent.Add(uint64(len(b)))
			c.p.metrics.ws.framesSent.Add(1)
			c.p.metrics.ws.bytesSent.Add(uint64(len(b)))
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
