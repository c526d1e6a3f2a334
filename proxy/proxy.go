package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Proxy is an authorizing proxy in front of Electric. It is an
// http.Handler serving, relative to where it is mounted:
//
//	GET|HEAD /v1/shapes/{name}  a shape rule (OPTIONS: CORS preflight)
//	GET /v1/ws                   many shapes over one WebSocket
//	GET /healthz                 the proxy and upstream health
//	GET /metrics                 Prometheus text metrics (unless Config.MetricsListen)
type Proxy struct {
	cfg      Config
	upstream *url.URL
	verifier *verifier
	rules    map[string]*rule
	limits   Limits
	limiter  *limiter
	metrics  *metrics
	client   *http.Client
	lean     *liveClient // shared live requests, when not nil (upstream.go)
	logger   *slog.Logger
	origins  map[string]bool
	ws       wsState                  // GET /v1/ws (ws.go)
	live     flightGroup[*liveResult] // coalesced HTTP live polls
	healthz  healthCache              // GET /healthz

	parkWriteTimeout time.Duration // parkedWriteTimeout
}

// New checks cfg and returns a Proxy.
func New(cfg Config) (*Proxy, error) {
	u, err := url.Parse(cfg.Upstream)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
		return nil, fmt.Errorf("proxy: Upstream %q must be an http(s) base URL without a query", cfg.Upstream)
	}
	u.Path = strings.TrimRight(u.Path, "/")
	v, err := newVerifier(cfg.Auth)
	if err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg, upstream: u, verifier: v, rules: map[string]*rule{},
		limits: cfg.Limits.withDefaults(), metrics: newMetrics(), logger: cfg.Logger, parkWriteTimeout: parkedWriteTimeout}
	if p.logger == nil {
		p.logger = slog.New(slog.DiscardHandler)
	}
	if len(cfg.Shapes) == 0 {
		return nil, errors.New("proxy: no Shapes configured")
	}
	for _, s := range cfg.Shapes {
		r, err := compileRule(s)
		if err != nil {
			return nil, err
		}
		if p.rules[r.Name] != nil {
			return nil, fmt.Errorf("proxy: shape %q defined twice", r.Name)
		}
		p.rules[r.Name] = r
	}
	p.limiter = newLimiter(p.limits)
	rt := cfg.Transport
	if rt == nil {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.MaxIdleConnsPerHost = 1024
		t.ResponseHeaderTimeout = p.limits.UpstreamTimeout
		// Per connection, and a held poll that is not coalesced holds one:
		// small buffers (default 4 KiB each). Requests are a line of
		// headers; bodies are copied in 32 KiB reads, which bypass the
		// read buffer.
		t.WriteBufferSize = 1 << 10
		t.ReadBufferSize = 2 << 10
		rt = t
		p.lean = newLiveClient(u, p.limits.UpstreamTimeout)
	}
	p.client = &http.Client{Transport: rt, CheckRedirect: func(*http.Request, []*http.Request) error {
		return http.ErrUseLastResponse
	}}
	if len(cfg.AllowedOrigins) > 0 {
		p.origins = map[string]bool{}
		for _, o := range cfg.AllowedOrigins {
			p.origins[o] = true
		}
	}
	return p, nil
}

// exposed are the response headers a browser client may read.
const exposed = "electric-cursor, electric-handle, electric-has-data, electric-offset, electric-schema, electric-up-to-date, electric-internal-known-error, electric-snapshot, etag, retry-after, x-request-id"

// validRequestID accepts a client's X-Request-Id: 1–64 of A–Z a–z 0–9 . _ -
func validRequestID(s string) bool {
	return allIn(s, 1, 64, func(c byte) bool { return isAlnum(c) || c == '.' || c == '_' || c == '-' })
}

// auditWriter counts the status and body bytes of a response.
type auditWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *auditWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *auditWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *auditWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ServeHTTP implements http.Handler.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	reqID := r.Header.Get("X-Request-Id")
	if !validRequestID(reqID) {
		var b [12]byte
		rand.Read(b[:])
		reqID = hex.EncodeToString(b[:])
	}
	aw := &auditWriter{ResponseWriter: w}
	aw.Header().Set("X-Request-Id", reqID)
	p.cors(aw, r)
	info := &reqInfo{shape: "-", reqID: reqID, method: methodName(r.Method), start: start}
	defer func() {
		if !info.parked {
			info.endLive() // also when a handler panics
		}
	}()
	p.serve(aw, r, info)
	if info.parked {
		// The connection is parked (park.go): the response, metrics and
		// audit line come when the shared upstream request ends.
		return
	}
	if info.hijacked {
		// Answered on the connection itself (splice.go), which is closed
		// or back with the server.
		p.finish(r.Context(), info, int(info.status), info.bytes)
		return
	}
	p.finish(r.Context(), info, aw.status, aw.bytes)
	if info.abort {
		panic(http.ErrAbortHandler)
	}
}

// methodName returns m, as a constant when it is a known method: r.Method
// is a slice of the request line, which a parked poll would keep.
func methodName(m string) string {
	for _, k := range [...]string{http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodPost} {
		if m == k {
			return k
		}
	}
	return m
}

// finish ends a request: it releases its live slot, records its metrics
// and writes its audit line.
func (p *Proxy) finish(ctx context.Context, info *reqInfo, status int, bytes int64) {
	info.endLive()
	if status == 0 {
		status = http.StatusOK
	}
	d := time.Since(info.start)
	// /metrics may be public: a request is counted under its shape only
	// once its token is verified, so that anonymous callers cannot learn
	// there which shape names exist.
	label := "-"
	if info.user != "" {
		label = info.shape
	}
	p.metrics.observe(label, status, d)
	p.metrics.bytesSent.Add(uint64(bytes))
	attrs := []slog.Attr{
		slog.String("request_id", info.reqID),
		slog.String("method", info.method),
		slog.String("shape", info.shape),
		slog.String("user", info.user),
		slog.Int("status", status),
		slog.Int64("bytes", bytes),
		slog.Duration("duration", d),
		slog.Bool("live", info.live),
	}
	if info.reason != "" {
		attrs = append(attrs, slog.String("reason", info.reason))
	}
	p.logger.LogAttrs(ctx, slog.LevelInfo, "proxy request", attrs...)
}

// reqInfo is what the audit line reports about a request.
type reqInfo struct {
	reqID, method       string
	start               time.Time
	shape, user, reason string
	live, abort         bool
	parked              bool  // answered later from a parked connection (park.go)
	hijacked            bool  // answered on the hijacked connection (splice.go), with status and bytes
	status              int32 // (int32: the struct stays in its 128-byte size class, which parked polls keep)
	bytes               int64
	release             func() // ends a live request's limiter slot and gauge
}

// endLive releases the live slot of the request, once.
func (info *reqInfo) endLive() {
	if info.release != nil {
		info.release()
		info.release = nil
	}
}

func (p *Proxy) cors(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	origin := r.Header.Get("Origin")
	switch {
	case origin == "":
		return
	case p.origins == nil:
		h.Set("Access-Control-Allow-Origin", "*")
	case p.origins[origin]:
		h.Set("Access-Control-Allow-Origin", origin)
		h.Add("Vary", "Origin")
	default:
		return
	}
	h.Set("Access-Control-Expose-Headers", exposed)
}

func (p *Proxy) serve(w http.ResponseWriter, r *http.Request, info *reqInfo) {
	// Paths are compared in their raw, escaped form: any encoding, empty
	// or dot segment, or trailing slash is refused rather than normalised.
	path := r.URL.EscapedPath()
	if r.URL.RawPath != "" || strings.Contains(path, "%") {
		writeJSONError(w, badRequest("path", "must not be percent-encoded"))
		return
	}
	switch path {
	case "/healthz":
		p.health(w, r)
		return
	case "/v1/ws":
		p.serveWS(w, r, info)
		return
	case "/metrics":
		if p.cfg.MetricsListen == "" {
			p.serveMetrics(w, r)
			return
		}
	}
	name, ok := strings.CutPrefix(path, "/v1/shapes/")
	if !ok || !validRuleName(name) {
		if canonicalPath(path) {
			writeJSON(w, http.StatusNotFound, map[string]any{"message": "Not found"})
		} else {
			writeJSONError(w, badRequest("path", "is not canonical"))
		}
		return
	}
	rl := p.rules[name]
	if rl != nil {
		info.shape = name // for the audit line; metrics use it once authenticated
	}
	if r.Method == http.MethodOptions {
		// The same answer for every name: a preflight carries no token,
		// and only an authenticated caller learns which shapes exist.
		p.preflight(w)
		return
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodPost:
		writeJSONError(w, badRequest("method", "POST (subset snapshots) is not allowed through the proxy"))
		return
	default:
		w.Header().Set("Allow", "GET, HEAD, OPTIONS")
		writeJSONError(w, &requestError{Status: 405, Field: "method", Msg: "not allowed"})
		return
	}
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		writeJSONError(w, badRequest("body", "a shape request has no body"))
		return
	}
	// Authenticate before looking at the query, so that an anonymous
	// caller learns nothing about the rules.
	id, err := p.authenticate(r)
	if err != nil {
		info.reason = err.Error()
		w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="`+strings.TrimPrefix(err.Error(), "invalid token: ")+`"`)
		if errors.Is(err, errNoToken) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="shapeseal"`)
		}
		writeJSON(w, http.StatusUnauthorized, map[string]any{"message": "Unauthorized", "error": err.Error()})
		return
	}
	info.user = id.UserID
	if ok, wait := p.limiter.allow(id.UserID); !ok {
		info.reason = "rate limit"
		tooMany(w, wait, "request rate limit exceeded")
		return
	}
	if rl == nil {
		// Only an authenticated caller learns which shapes exist.
		writeJSON(w, http.StatusNotFound, map[string]any{"message": "Unknown shape"})
		return
	}
	q, err := parseClientQuery(r.URL.RawQuery)
	if err != nil {
		info.reason = err.Error()
		writeJSONError(w, err)
		return
	}
	upQ, req, err := rl.upstreamQuery(q, id, p.cfg.Auth, p.cfg.Secret)
	if err != nil {
		info.reason = err.Error()
		if errors.Is(err, errForbidden) {
			writeJSON(w, http.StatusForbidden, map[string]any{"message": "Forbidden", "error": err.Error()})
			return
		}
		writeJSONError(w, err)
		return
	}
	req.Live, req.HTTP = q.live(), r
	if err := p.authorize(r.Context(), id, req); err != nil {
		info.reason = err.Error()
		writeJSON(w, http.StatusForbidden, map[string]any{"message": "Forbidden"})
		return
	}
	if q.live() {
		release, ok := p.limiter.acquireLive(id.UserID)
		if !ok {
			info.reason = "live limit"
			tooMany(w, time.Second, "too many concurrent live requests")
			return
		}
		info.live = true
		p.metrics.liveNow.Add(1)
		info.release = func() {
			release()
			p.metrics.liveNow.Add(-1)
		}
	}
	p.forward(w, r, rl, upQ, info)
}

func canonicalPath(p string) bool {
	return strings.HasPrefix(p, "/") && !strings.Contains(p, "//") && !strings.Contains(p, "/./") &&
		!strings.Contains(p, "/../") && !strings.HasSuffix(p, "/.") && !strings.HasSuffix(p, "/..") &&
		(p == "/" || !strings.HasSuffix(p, "/"))
}

func tooMany(w http.ResponseWriter, wait time.Duration, msg string) {
	secs := int((wait + time.Second - 1) / time.Second)
	if secs < 1 {
		secs = 1
	}
	w.Header().Set("Retry-After", strconv.Itoa(secs))
	writeJSON(w, http.StatusTooManyRequests, map[string]any{"message": msg})
}

// authenticate verifies the request's "Authorization: Bearer <token>"
// (RFC 6750 §2.1: the scheme, one or more spaces, the token). Nothing else
// is trimmed: the token must be exactly a canonical compact JWS.
func (p *Proxy) authenticate(r *http.Request) (*Identity, error) {
	vals := r.Header.Values("Authorization")
	if len(vals) == 0 {
		return nil, errNoToken
	}
	if len(vals) > 1 {
		return nil, errMalformed
	}
	scheme, token, ok := strings.Cut(vals[0], " ")
	token = strings.TrimLeft(token, " ")
	if !ok || len(scheme) != len("Bearer") || !strings.EqualFold(scheme, "Bearer") || token == "" {
		return nil, errMalformed
	}
	return p.verifier.Verify(r.Context(), token)
}

// authorize asks Config.Authorize about a request a rule has matched. Its
// error goes to the audit line only. A hook that panics refuses the
// request (a WebSocket subscription runs on its own goroutine, where a
// panic would end the process).
func (p *Proxy) authorize(ctx context.Context, id *Identity, req *Request) (err error) {
	if p.cfg.Authorize == nil {
		return nil
	}
	defer func() {
		if v := recover(); v != nil {
			err = fmt.Errorf("Config.Authorize panicked: %v", v)
		}
	}()
	if err := p.cfg.Authorize(ctx, id, req); err != nil {
		return fmt.Errorf("refused by Config.Authorize: %w", err)
	}
	return nil
}

func (p *Proxy) preflight(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
	h.Set("Access-Control-Allow-Headers", "Authorization, If-None-Match, Traceparent, X-Request-Id")
	h.Set("Access-Control-Max-Age", "86400")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusNoContent)
}

// hopHeaders are never forwarded in either direction.
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

// isHopHeader reports whether k (canonical) is one of hopHeaders.
func isHopHeader(k string) bool { return slices.Contains(hopHeaders, k) }

// internalHeaders describe the servers behind the proxy (their software
// and version): never forwarded to clients.
var internalHeaders = map[string]bool{"Electric-Server": true, "Server": true, "Via": true,
	"X-Powered-By": true, "X-Request-Id": true, "Set-Cookie": true}

// forwardedRequestHeaders are the client headers passed upstream.
var forwardedRequestHeaders = []string{"Accept", "Accept-Encoding", "If-None-Match", "Traceparent", "Tracestate"}

// liveShareMax is the largest live response that is shared between
// coalesced polls; a larger one is fetched again by each of them.
const liveShareMax = 1 << 20

// liveResult is one upstream live response, read whole, for coalesced
// HTTP polls.
type liveResult struct {
	status   int
	header   http.Header
	body     []byte
	err      error
	tooLarge bool // over liveShareMax: not shared
}

// upstreamRequest builds the upstream request for rawQuery (encoded) with
// the client's forwarded headers from hdr.
func (p *Proxy) upstreamRequest(ctx context.Context, method string, rawQuery string, hdr http.Header, reqID string) (*http.Request, error) {
	u := *p.upstream
	u.Path += "/v1/shape"
	u.RawQuery = rawQuery
	req, err := http.NewRequestWithContext(ctx, method, u.String(), nil)
	if err != nil {
		return nil, err
	}
	for _, h := range forwardedRequestHeaders {
		for _, v := range hdr.Values(h) {
			req.Header.Add(h, v)
		}
	}
	if req.Header.Get("Accept-Encoding") == "" {
		// Keep the transport from decompressing behind our back.
		req.Header.Set("Accept-Encoding", "identity")
	}
	req.Header.Set("X-Request-Id", reqID)
	return req, nil
}

// forwardedHeaders are the forwardedRequestHeaders of hdr (nil if none).
func forwardedHeaders(hdr http.Header) http.Header {
	var out http.Header
	for _, h := range forwardedRequestHeaders {
		if vs := hdr.Values(h); len(vs) > 0 {
			if out == nil {
				out = http.Header{}
			}
			// A copy: vs shares its array with every other header value
			// of the request, the token included.
			out[h] = append([]string(nil), vs...)
		}
	}
	return out
}

// liveKey is the coalescing key of a live GET: the rule-resolved upstream
// URL (cursor included) and the forwarded headers that change the
// response; "" when the request is not shared (SSE streams).
func liveKey(q url.Values, hdr http.Header) string {
	if q.Get("live_sse") != "" || q.Get("experimental_live_sse") != "" {
		return ""
	}
	var b strings.Builder
	b.WriteString(q.Encode())
	for _, h := range liveKeyHeaders {
		b.WriteByte('\n')
		b.WriteString(strings.Join(hdr.Values(h), "\x00"))
	}
	return b.String()
}

// fetchShared makes a coalesced live request and reads it whole (up to
// liveShareMax).
func (p *Proxy) fetchShared(ctx context.Context, rawQuery string, hdr http.Header, reqID string) *liveResult {
	p.metrics.liveShared.Add(1)
	defer p.metrics.liveShared.Add(-1)
	ctx, cancel := context.WithTimeout(ctx, p.limits.UpstreamTimeout)
	defer cancel()
	if p.lean != nil {
		return leanResult(p.lean.get(ctx, p.sharedRequest(rawQuery, hdr, reqID), liveShareMax))
	}
	req, err := p.upstreamRequest(ctx, http.MethodGet, rawQuery, hdr, reqID)
	if err != nil {
		return &liveResult{err: err}
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return &liveResult{err: err}
	}
	defer resp.Body.Close()
	res := &liveResult{status: resp.StatusCode, header: resp.Header}
	res.body, err = io.ReadAll(io.LimitReader(resp.Body, liveShareMax+1))
	switch {
	case err != nil:
		res.err = err
	case len(res.body) > liveShareMax:
		res.tooLarge, res.body = true, nil
	}
	return res
}

// fetchSharedAsync is fetchShared without waiting for the response (for
// flightGroup.join): it returns once the request is sent and calls done
// with the result, from another goroutine. With the liveClient, no
// goroutine waits on a grown stack while the upstream holds the request
// (see liveClient.start).
func (p *Proxy) fetchSharedAsync(ctx context.Context, rawQuery string, hdr http.Header, reqID string, done func(*liveResult)) {
	if p.lean == nil {
		go func() { done(p.fetchShared(ctx, rawQuery, hdr, reqID)) }()
		return
	}
	p.metrics.liveShared.Add(1)
	ctx, cancel := context.WithTimeout(ctx, p.limits.UpstreamTimeout)
	p.lean.start(ctx, p.sharedRequest(rawQuery, hdr, reqID), liveShareMax, func(resp *http.Response, body []byte, err error) {
		cancel()
		p.metrics.liveShared.Add(-1)
		done(leanResult(resp, body, err))
	})
}

// sharedRequest returns the builder of a shared live request.
func (p *Proxy) sharedRequest(rawQuery string, hdr http.Header, reqID string) func(context.Context) (*http.Request, error) {
	return func(ctx context.Context) (*http.Request, error) {
		return p.upstreamRequest(ctx, http.MethodGet, rawQuery, hdr, reqID)
	}
}

// leanResult is the liveResult of a liveClient request.
func leanResult(resp *http.Response, body []byte, err error) *liveResult {
	switch {
	case err != nil:
		return &liveResult{err: err}
	case len(body) > liveShareMax:
		return &liveResult{status: resp.StatusCode, header: resp.Header, tooLarge: true}
	}
	return &liveResult{status: resp.StatusCode, header: resp.Header, body: body}
}

// liveKeyHeaders are the forwarded request headers that are part of a
// live poll's coalescing key.
var liveKeyHeaders = [...]string{"Accept", "Accept-Encoding", "If-None-Match"}

// splitLiveKey is the inverse of liveKey: the encoded upstream query and
// the key's request headers (a parked poll keeps only its flight's key).
func splitLiveKey(key string) (rawQuery string, hdr http.Header) {
	parts := strings.Split(key, "\n")
	hdr = http.Header{}
	for i, h := range liveKeyHeaders {
		if i+1 < len(parts) && parts[i+1] != "" {
			hdr[h] = strings.Split(parts[i+1], "\x00")
		}
	}
	return parts[0], hdr
}

func (p *Proxy) forward(w http.ResponseWriter, r *http.Request, rl *rule, q url.Values, info *reqInfo) {
	key := ""
	if info.live && r.Method == http.MethodGet {
		key = liveKey(q, r.Header)
	}
	if key != "" {
		// fetch (or start, for a poll that may be parked) runs only for
		// the first poll (the leader): the upstream request carries its
		// forwarded headers. They keep only what they need (not the
		// request), as the request may outlive a parked leader's handler
		// by minutes.
		rawQuery, fwd := q.Encode(), forwardedHeaders(r.Header)
		fetch := func(ctx context.Context) *liveResult {
			return p.fetchShared(ctx, rawQuery, fwd, info.reqID)
		}
		start := func(ctx context.Context, done func(*liveResult)) {
			p.fetchSharedAsync(ctx, rawQuery, fwd, info.reqID, done)
		}
		var res *liveResult
		var ok bool
		if pc := parkConnOf(r); pc != nil {
			// Served by Proxy.Serve: a poll still waiting after parkAfter
			// is parked (park.go).
			if res, ok = p.waitOrPark(w, r, pc, rl, info, key, start); info.parked {
				return
			}
		} else {
			res, ok = p.live.do(r.Context(), key, fetch)
		}
		if !ok {
			info.reason = "client went away"
			w.WriteHeader(499) // never seen by the client; recorded in the audit line
			return
		}
		if p.replayShared(w, rl, info, res) {
			return
		}
		// Too large to share: this poll fetches it on its own.
	}
	if pc, tc := p.spliceable(r, info); pc != nil {
		p.streamSpliced(w, r, pc, tc, q.Encode(), rl, info)
		return
	}
	p.stream(r.Context(), w, r.Method, q.Encode(), r.Header, rl, info)
}

// replayShared answers a coalesced live poll from its shared result; false
// when the result was too large to share.
func (p *Proxy) replayShared(w http.ResponseWriter, rl *rule, info *reqInfo, res *liveResult) bool {
	if res.tooLarge {
		return false
	}
	if res.err != nil {
		p.badGateway(w, info, res.err)
		return true
	}
	if p.writeHeader(w, rl, info, res.status, res.header, int64(len(res.body))) {
		w.Write(res.body)
		if _, parked := w.(*parkedWriter); !parked {
			// Sent now (framed by its Content-Length), before the
			// audit line and metrics; a parked answer is sent whole
			// by parkedWriter.end.
			http.NewResponseController(w).Flush()
		}
	}
	return true
}

// stream makes its own upstream request and streams the response to w.
// ctx is the client's: when it has ended, a failed upstream request is
// the client going away, not a bad gateway.
func (p *Proxy) stream(ctx context.Context, w http.ResponseWriter, method, rawQuery string, hdr http.Header, rl *rule, info *reqInfo) {
	uctx, cancel := context.WithTimeout(ctx, p.limits.UpstreamTimeout)
	defer cancel()
	req, err := p.upstreamRequest(uctx, method, rawQuery, hdr, info.reqID)
	if err != nil {
		p.badGateway(w, info, err)
		return
	}
	resp, err := p.client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			info.reason = "client went away"
			w.WriteHeader(499) // never seen by the client; recorded in the audit line
			return
		}
		p.badGateway(w, info, err)
		return
	}
	defer resp.Body.Close()
	if !p.writeHeader(w, rl, info, resp.StatusCode, resp.Header, -1) {
		return
	}
	if method == http.MethodHead {
		return
	}
	// Send the headers at once: an SSE stream may wait long for its
	// first event.
	http.NewResponseController(w).Flush()
	if err := copyFlush(w, resp.Body); err != nil && ctx.Err() == nil {
		p.upstreamBodyFailed(rl, info, err)
	}
}

// writeHeader checks the upstream status and sends it with the upstream
// headers (hop-by-hop and CORS headers dropped) and the proxy's own;
// false when it answered 502 instead. bodyLen, when not -1, is the length
// of the whole body, about to be written (Content-Length).
func (p *Proxy) writeHeader(w http.ResponseWriter, rl *rule, info *reqInfo, status int, up http.Header, bodyLen int64) bool {
	if err := refusedStatus(status); err != nil {
		p.badGateway(w, info, err)
		return false
	}
	h := w.Header()
	// Headers that the upstream's Connection header names are hop-by-hop
	// too (rare: a map only then).
	var named map[string]bool
	for _, c := range up.Values("Connection") {
		for _, f := range strings.Split(c, ",") {
			if named == nil {
				named = map[string]bool{}
			}
			named[http.CanonicalHeaderKey(strings.TrimSpace(f))] = true
		}
	}
	// The values are copied (up may be a shared live result's header,
	// and h's values are appended to), into one array, each key's slice
	// capped so that an append never reaches the next key's values.
	n := 0
	for _, vs := range up {
		n += len(vs)
	}
	vals := make([]string, 0, n)
	for k, vs := range up {
		if isHopHeader(k) || named[k] || internalHeaders[k] || strings.HasPrefix(k, "Access-Control-") {
			continue
		}
		i := len(vals)
		vals = append(vals, vs...)
		h[k] = vals[i:len(vals):len(vals)]
	}
	h.Add("Vary", "Authorization")
	p.cacheHeaders(h, rl)
	if bodyLen >= 0 && bodyAllowed(status) {
		h.Set("Content-Length", strconv.FormatInt(bodyLen, 10))
	}
	w.WriteHeader(status)
	return true
}

// refusedStatus returns why an upstream status is answered with 502, or
// nil.
func refusedStatus(status int) error {
	switch {
	case status == http.StatusUnauthorized || status == http.StatusForbidden:
		// The upstream refused the proxy's secret: a configuration error,
		// not the client's (whose 401 would make it refresh its token).
		return fmt.Errorf("upstream refused the proxy's credentials (%d)", status)
	case status >= 300 && status < 400 && status != http.StatusNotModified:
		// Electric never redirects; a Location would reveal the upstream.
		return fmt.Errorf("unexpected upstream status %d", status)
	}
	return nil
}

// cacheHeaders applies the rule's cache mode.
func (p *Proxy) cacheHeaders(h http.Header, rl *rule) {
	mode := rl.Cache
	if mode == CacheAuto && rl.perUser {
		mode = CachePrivate
	}
	switch mode {
	case CacheNone:
		h.Set("Cache-Control", "no-store")
		h.Del("Surrogate-Control")
	case CachePrivate:
		cc := h.Get("Cache-Control")
		if cc == "" {
			return
		}
		var out []string
		for _, d := range strings.Split(cc, ",") {
			d = strings.TrimSpace(d)
			name, _, _ := strings.Cut(strings.ToLower(d), "=")
			switch name {
			case "public", "s-maxage", "private", "proxy-revalidate":
				continue
			}
			out = append(out, d)
		}
		h.Set("Cache-Control", strings.Join(append([]string{"private"}, out...), ", "))
		h.Set("Surrogate-Control", "no-store")
	}
}

// copyBufs holds copyFlush's large buffers. They are large because every
// write to a chunked response costs net/http a chunk header, the data and
// the chunk's end, and a flush: relaying a 50 MB snapshot in 256 KiB reads
// instead of 32 KiB ones made it 1.3× faster (bench/proxy.sh part b), and
// the pool keeps that from costing a quarter MB per request. smallBufs
// hold the buffers every copy starts with: a response that trickles (an
// SSE stream, open for a minute, an event now and then) never fills one,
// and so never holds a large one for its whole life.
var (
	copyBufs  = sync.Pool{New: func() any { b := make([]byte, 256<<10); return &b }}
	smallBufs = sync.Pool{New: func() any { b := make([]byte, 8<<10); return &b }}
	bigCopies atomic.Int64 // copies that took a large buffer, for tests
)

// copyFlush streams src to w, flushing after every read so that a live
// response is not held back. It reads into a small buffer until a read
// fills it (a body arriving in bulk), then into a large one.
func copyFlush(w http.ResponseWriter, src io.Reader) error {
	rc := http.NewResponseController(w)
	bp, pool := smallBufs.Get().(*[]byte), &smallBufs
	defer func() { pool.Put(bp) }()
	buf := *bp
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil // client went away
			}
			if ferr := rc.Flush(); ferr != nil && !errors.Is(ferr, http.ErrNotSupported) {
				return nil
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if n == len(buf) && pool == &smallBufs {
			smallBufs.Put(bp)
			bp, pool = copyBufs.Get().(*[]byte), &copyBufs
			buf = *bp
			bigCopies.Add(1)
		}
	}
}

func (p *Proxy) badGateway(w http.ResponseWriter, info *reqInfo, err error) {
	p.metrics.upErrors.Add(1)
	info.reason = "upstream: " + redact(err)
	p.logger.Warn("proxy: upstream error", "request_id", w.Header().Get("X-Request-Id"), "shape", info.shape, "err", info.reason)
	writeJSON(w, http.StatusBadGateway, map[string]any{"message": "Bad gateway", "error": "the sync service is unavailable"})
}

// redact removes the query (with the secret) from url errors.
func redact(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		u, perr := url.Parse(ue.URL)
		if perr == nil {
			u.RawQuery = ""
		}
		var op string
		if u != nil {
			op = u.String()
		}
		return ue.Op + " " + op + ": " + ue.Err.Error()
	}
	return err.Error()
}

// healthTTL is how long an answer of GET /healthz is reused: the endpoint
// is public, and must not let anyone make upstream requests at will.
const healthTTL = time.Second

// healthCache holds the last upstream health check.
type healthCache struct {
	mu       sync.Mutex
	at       time.Time // of status and body; zero: none yet
	status   int
	body     map[string]any
	checking chan struct{} // closed when the check in flight ends
}

func (p *Proxy) health(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	status, body := p.healthState(r.Context())
	writeJSON(w, status, body)
}

// healthState returns the upstream health, checked at most once per
// healthTTL: concurrent callers share one check.
func (p *Proxy) healthState(ctx context.Context) (int, map[string]any) {
	h := &p.healthz
	h.mu.Lock()
	for {
		if !h.at.IsZero() && time.Since(h.at) < healthTTL {
			defer h.mu.Unlock()
			return h.status, h.body
		}
		if h.checking == nil {
			break
		}
		ch := h.checking
		h.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return http.StatusServiceUnavailable, map[string]any{"status": "upstream unavailable"}
		}
		h.mu.Lock()
	}
	ch := make(chan struct{})
	h.checking = ch
	h.mu.Unlock()
	// Apart from ctx: the check is shared with whoever waits for it.
	status, body := p.checkHealth(context.WithoutCancel(ctx))
	h.mu.Lock()
	h.at, h.status, h.body, h.checking = time.Now(), status, body, nil
	h.mu.Unlock()
	close(ch)
	return status, body
}

// checkHealth asks the upstream's /v1/health.
func (p *Proxy) checkHealth(ctx context.Context) (int, map[string]any) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	u := *p.upstream
	u.Path += "/v1/health"
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	resp, err := p.client.Do(req)
	if err != nil {
		p.metrics.upErrors.Add(1)
		return http.StatusServiceUnavailable, map[string]any{"status": "upstream unavailable"}
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
	}
	json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&body)
	if resp.StatusCode != http.StatusOK {
		return http.StatusServiceUnavailable, map[string]any{"status": "upstream not ready", "upstream": body.Status}
	}
	return http.StatusOK, map[string]any{"status": "ok", "upstream": body.Status}
}

// MetricsHandler serves the proxy's metrics in the Prometheus text format
// (GET or HEAD, at any path), for mounting apart from the proxy's routes
// (see Config.MetricsListen).
func (p *Proxy) MetricsHandler() http.Handler { return http.HandlerFunc(p.serveMetrics) }

func (p *Proxy) serveMetrics(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeJSONError(w, &requestError{Status: 405, Field: "method", Msg: "not allowed"})
		return
	}
	w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	p.metrics.write(w)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	h := w.Header()
	h.Set("Content-Type", "application/json; charset=utf-8")
	if status >= 400 {
		h.Set("Cache-Control", "no-store")
	}
	h.Del("Content-Length")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeJSONError(w http.ResponseWriter, err error) {
	var re *requestError
	if !errors.As(err, &re) {
		re = &requestError{Status: 400, Field: "request", Msg: err.Error()}
	}
	writeJSON(w, re.Status, map[string]any{"message": "Invalid request", "errors": map[string][]string{re.Field: {re.Msg}}})
}
