package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// wsSub is one subscription of a WebSocket connection, with its place in
// the shape.
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

func (c *wsConn) subError(id string, status int, msg string) {
	c.send(map[string]any{"type": "error", "id": id, "status": status, "error": msg})
}

// subscribe handles a subscribe message: it checks it, and the rule, the
// Authorize hook and the user's limits, then follows the subscription.
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
	s, msg := newWSSub(m, rl)
	if s == nil {
		c.subError(m.ID, 400, msg)
		return
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
	c.follow(s)
}

// newWSSub reads the position, live flag and columns of a subscribe
// message for rule rl; nil and why (a 400) when they are invalid.
func newWSSub(m wsIn, rl *rule) (*wsSub, string) {
	s := &wsSub{id: m.ID, rule: rl, live: m.Live == nil || *m.Live, offset: m.Offset, handle: m.Handle}
	if s.offset == "" {
		s.offset = "-1"
	}
	if !validOffset(s.offset) || s.handle != "" && !validToken(s.handle) {
		return nil, "offset or handle has invalid format"
	}
	if s.offset != "-1" && s.offset != "now" && s.handle == "" {
		return nil, "handle is required with this offset"
	}
	if m.Columns != nil {
		if len(m.Columns) == 0 {
			// An empty list would drop the rule's projection.
			return nil, "columns: give at least one column, or omit columns"
		}
		s.columns = []string{}
		for _, col := range m.Columns {
			n, err := parseIdent(col)
			if err != nil {
				return nil, "columns: " + err.Error()
			}
			s.columns = append(s.columns, n)
		}
	}
	return s, ""
}

// follow adds s to the connection's subscriptions and runs it on a
// goroutine of its own; or, when its id is taken or the connection has
// too many, gives back its live slot and sends an error frame.
func (c *wsConn) follow(s *wsSub) {
	c.mu.Lock()
	switch {
	case c.subs[s.id] != nil:
		c.mu.Unlock()
		s.releaseLive()
		c.subError(s.id, 400, "id is already subscribed")
		return
	case len(c.subs) >= wsMaxSubscriptions:
		c.mu.Unlock()
		s.releaseLive()
		c.subError(s.id, 429, "too many subscriptions on this connection")
		return
	}
	s.ctx, s.cancel = context.WithCancel(c.ctx)
	c.subs[s.id] = s
	c.mu.Unlock()
	// Every subscription leaves c.subs exactly once: by unsubscribe or at
	// the end of run, each of which takes it off the gauge.
	c.p.metrics.wsSubs(s.rule.Name, 1)
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

// subRun is the state of a subscription's run beyond its position: its
// retries, and what its audit line reports.
type subRun struct {
	start       time.Time
	user        string
	polls, sent int // upstream requests made, frame bytes queued
	retry       int // upstream failures in a row
	reason      string
	status      int
}

// run follows one subscription until it ends or is cancelled.
func (c *wsConn) run(s *wsSub) {
	st := &subRun{start: time.Now(), status: 200}
	c.mu.Lock()
	st.user = c.user
	c.mu.Unlock()
	defer c.endRun(s, st)
	for s.ctx.Err() == nil {
		id, ok := c.identity(s.ctx)
		if !ok {
			return
		}
		q, req, err := s.rule.upstreamQuery(s.query(), id, c.p.cfg.Auth, c.p.cfg.Secret)
		if err != nil {
			st.reason, st.status = err.Error(), 403
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
		if s.authorized == s.def && st.polls == 0 {
			// Asked at subscribe.
		} else if !c.authorize(s.ctx, s, id, req) {
			st.reason, st.status = "refused by Config.Authorize", 403
			return
		}
		st.polls++
		var res *wsResult
		if s.following {
			res = c.p.wsLive(s.ctx, q)
		} else {
			res = c.p.wsFetch(s.ctx, q)
		}
		if s.ctx.Err() != nil || res == nil || !c.deliver(s, st, res) {
			return
		}
	}
}

// deliver handles one upstream response of a running subscription: it
// sends the messages frame and moves s on, restarts s after a 409, or
// waits before a retry; false when the subscription ends (st.reason and
// st.status say why, if not the connection).
func (c *wsConn) deliver(s *wsSub, st *subRun, res *wsResult) bool {
	switch {
	case res.err != nil || res.status >= 500 || res.status == 429:
		st.retry++
		wait := retryWait(st.retry, res.retryAfter)
		c.p.logger.Warn("proxy ws: upstream error, retrying", "shape", s.rule.Name, "status", res.status, "err", res.errText())
		select {
		case <-time.After(wait):
		case <-s.ctx.Done():
			return false
		}
		return true
	case res.status == http.StatusConflict:
		st.retry = 0
		s.offset, s.handle, s.cursor, s.following = "-1", res.handle, "", false
		if !validToken(s.handle) {
			s.handle = ""
		}
		c.send(map[string]any{"type": "must_refetch", "id": s.id, "handle": s.handle})
		return true
	case res.status == http.StatusUnauthorized || res.status == http.StatusForbidden:
		st.reason, st.status = "upstream refused the proxy's credentials", 502
		c.subError(s.id, 502, "the sync service refused the proxy")
		return false
	case res.status != http.StatusOK && res.status != http.StatusNoContent:
		st.reason, st.status = "upstream status "+strconv.Itoa(res.status), res.status
		c.subError(s.id, res.status, upstreamMessage(res.body))
		return false
	}
	st.retry = 0
	if res.handle == "" || res.offset == "" {
		st.reason, st.status = "upstream response without handle/offset", 502
		c.subError(s.id, 502, "the sync service sent an incomplete response")
		return false
	}
	frame := res.frame(s.id)
	st.sent += len(frame)
	if !c.sendRaw(frame) {
		return false
	}
	s.handle, s.offset, s.cursor = res.handle, res.offset, res.cursor
	if res.upToDate {
		if !s.live {
			c.send(map[string]any{"type": "done", "id": s.id})
			return false
		}
		s.following = true
	}
	return true
}

// retryWait is the backoff before a subscription's retry-th retry in a
// row: 1 s doubling up to 30 s, or the upstream's Retry-After (up to
// 300 s) when longer.
func retryWait(retry int, retryAfter string) time.Duration {
	wait := min(time.Duration(1<<min(retry-1, 5))*time.Second, 30*time.Second)
	if ra, err := strconv.Atoi(retryAfter); err == nil && ra > 0 {
		wait = max(wait, time.Duration(min(ra, 300))*time.Second)
	}
	return wait
}

// endRun ends a subscription's run: it gives back its live slot, takes
// it off c.subs and the gauge (unless an unsubscribe did) and writes its
// audit line.
func (c *wsConn) endRun(s *wsSub, st *subRun) {
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
	reason := st.reason
	if reason == "" && c.ctx.Err() != nil {
		reason = "connection closed"
	}
	attrs := []slog.Attr{slog.String("shape", s.rule.Name), slog.String("sub", s.id), slog.String("user", st.user),
		slog.Int("status", st.status), slog.Int("polls", st.polls), slog.Int("bytes", st.sent), slog.Duration("duration", time.Since(st.start))}
	if reason != "" {
		attrs = append(attrs, slog.String("reason", reason))
	}
	c.p.logger.LogAttrs(context.Background(), slog.LevelInfo, "proxy ws subscription", attrs...)
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
