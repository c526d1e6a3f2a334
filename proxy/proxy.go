package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
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

// serve routes a request: the fixed endpoints, or a shape URL.
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
	p.serveShape(w, r, info, name)
}

// serveShape answers a request of /v1/shapes/{name}: it authenticates the
// caller, checks its limits, resolves the rule and forwards the request.
func (p *Proxy) serveShape(w http.ResponseWriter, r *http.Request, info *reqInfo, name string) {
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
	if !shapeMethodAllowed(w, r) {
		return
	}
	// Authenticate before looking at the query, so that an anonymous
	// caller learns nothing about the rules.
	id, err := p.authenticate(r)
	if err != nil {
		unauthorized(w, info, err)
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
	if q.live() && !p.takeLiveSlot(w, info, id.UserID) {
		return
	}
	p.forward(w, r, rl, upQ, info)
}

// shapeMethodAllowed refuses (and answers) a shape request other than a
// GET or HEAD without a body.
func shapeMethodAllowed(w http.ResponseWriter, r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodPost:
		writeJSONError(w, badRequest("method", "POST (subset snapshots) is not allowed through the proxy"))
		return false
	default:
		w.Header().Set("Allow", "GET, HEAD, OPTIONS")
		writeJSONError(w, &requestError{Status: 405, Field: "method", Msg: "not allowed"})
		return false
	}
	if r.ContentLength != 0 || len(r.TransferEncoding) > 0 {
		writeJSONError(w, badRequest("body", "a shape request has no body"))
		return false
	}
	return true
}

// unauthorized answers 401 for a missing or invalid token (RFC 6750 §3.1).
func unauthorized(w http.ResponseWriter, info *reqInfo, err error) {
	info.reason = err.Error()
	w.Header().Set("WWW-Authenticate", `Bearer error="invalid_token", error_description="`+strings.TrimPrefix(err.Error(), "invalid token: ")+`"`)
	if errors.Is(err, errNoToken) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="shapeseal"`)
	}
	writeJSON(w, http.StatusUnauthorized, map[string]any{"message": "Unauthorized", "error": err.Error()})
}

// takeLiveSlot takes one of the user's live-request slots for a live
// request, released by info.endLive; false (after a 429) when the user
// holds too many.
func (p *Proxy) takeLiveSlot(w http.ResponseWriter, info *reqInfo, user string) bool {
	release, ok := p.limiter.acquireLive(user)
	if !ok {
		info.reason = "live limit"
		tooMany(w, time.Second, "too many concurrent live requests")
		return false
	}
	info.live = true
	p.metrics.liveNow.Add(1)
	info.release = func() {
		release()
		p.metrics.liveNow.Add(-1)
	}
	return true
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
