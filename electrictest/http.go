package electrictest

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Version is what the electric-server header reports.
const Version = "ElectricSQL/1.7.12 (electrictest)"

const exposeHeaders = "electric-cursor,electric-handle,electric-has-data,electric-offset,electric-schema,electric-up-to-date,electric-internal-known-error,retry-after"

// ServeHTTP routes /v1/shape, /v1/health and / as Electric does.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("electric-server", Version)
	h.Set("x-request-id", s.reqPrefix+strconv.FormatUint(s.reqNo.Add(1), 36))
	// Route on the cleaned, decoded path, as Electric's router does, so
	// /v1//shape and /v1/%73hape are the shape endpoint too.
	switch p := path.Clean("/" + r.URL.Path); p {
	case "/v1/shape":
		s.serveShapeRoute(w, r)
	case "/v1/health":
		setCORS(w, r, "GET, HEAD")
		h.Set("cache-control", "no-cache, no-store, must-revalidate")
		status := "active"
		if s.replErr.Load() != nil {
			status = "starting"
			writeJSON(w, http.StatusAccepted, map[string]string{"status": status})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": status})
	case "/":
		setCORS(w, r, "GET, HEAD")
		w.WriteHeader(http.StatusOK)
	default:
		setCORS(w, r, "GET, HEAD")
		h.Set("content-type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusNotFound)
		w.Write([]byte("Not found"))
	}
}

func setCORS(w http.ResponseWriter, r *http.Request, methods string) {
	h := w.Header()
	origin := r.Header.Get("Origin")
	if origin == "" {
		origin = "*"
	}
	h.Set("access-control-allow-origin", origin)
	h.Set("access-control-allow-methods", methods)
	h.Set("access-control-expose-headers", exposeHeaders)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("content-type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	w.Write(b)
}

// dropLogHeaders removes what serveLog sets before it knows the outcome: an
// error response carries none of it. Electric builds error responses
// (Response.error) without the request's parameters or handle, so its
// put_cursor_headers, which needs live: true in them, adds no
// electric-cursor, and only a handle passed explicitly (a 409's) is sent.
func dropLogHeaders(h http.Header) {
	h.Del("electric-schema") // only on 200s
	h.Del("electric-cursor")
	h.Del("electric-handle")
}

func invalidRequest(w http.ResponseWriter, errs map[string][]string) {
	dropLogHeaders(w.Header())
	w.Header().Set("cache-control", "no-store")
	w.Header().Set("surrogate-control", "no-store")
	writeJSON(w, http.StatusBadRequest, map[string]any{"message": "Invalid request", "errors": errs})
}

func (s *Server) serveShapeRoute(w http.ResponseWriter, r *http.Request) {
	const methods = "GET, POST, HEAD, DELETE, OPTIONS"
	if r.Method == http.MethodOptions {
		setCORS(w, r, methods)
		h := w.Header()
		h.Set("access-control-max-age", "86400")
		var allowed []string
		for _, v := range r.Header.Values("Access-Control-Request-Headers") {
			if lv := strings.ToLower(strings.TrimSpace(v)); lv == "if-none-match" || lv == "traceparent" {
				allowed = append(allowed, v)
			}
		}
		if len(allowed) > 0 {
			h.Set("access-control-allow-headers", strings.Join(allowed, ", "))
		}
		h.Set("connection", "keep-alive")
		w.WriteHeader(http.StatusNoContent)
		return
	}
	q := r.URL.Query()
	if s.opts.Secret != "" {
		got := q.Get("secret")
		if got == "" {
			got = q.Get("api_secret")
		}
		if subtle.ConstantTimeCompare([]byte(got), []byte(s.opts.Secret)) != 1 {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"message": "Unauthorized - Invalid API secret"})
			return
		}
	}
	setCORS(w, r, methods)
	switch r.Method {
	case http.MethodGet, http.MethodHead:
		if !s.faults.before(w, r) {
			return
		}
		w = s.faults.wrap(w)
		s.serveShape(w, r, q)
	case http.MethodDelete:
		s.deleteShape(w, r, q)
	default:
		w.Header().Set("allow", methods)
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"message": "electrictest serves GET, HEAD, DELETE and OPTIONS on /v1/shape; POST subset snapshots are not supported"})
	}
}

var paramsKey = regexp.MustCompile(`^params\[(.*)\]$`)

// shapeRequest is a validated GET /v1/shape request.
type shapeRequest struct {
	def    shapeDef
	offset Offset
	now    bool
	handle string
	live   bool
	sse    bool
	cursor string
}

func flag(q map[string][]string, name string) bool {
	v, ok := q[name]
	return ok && (len(v) == 0 || v[len(v)-1] != "false")
}

// parseDefinition validates the parameters that define a shape.
func parseDefinition(q map[string][]string, errs map[string][]string) shapeDef {
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[len(v)-1]
		}
		return ""
	}
	var def shapeDef
	if t := get("table"); t == "" {
		errs["table"] = append(errs["table"], "can't be blank")
	} else if rel, err := ParseRelation(t); err != nil {
		errs["table"] = append(errs["table"], err.Error())
	} else {
		def.rel = rel
	}
	def.where = get("where")
	// As with Ecto's casts in Electric, an empty value is an absent one.
	if c := get("columns"); c != "" {
		cols, err := ParseColumns(c)
		if err != nil {
			errs["columns"] = append(errs["columns"], err.Error())
		} else {
			def.columns = cols
		}
	}
	if c := get("queryable_columns"); c != "" {
		cols, err := ParseColumns(c)
		if err != nil {
			errs["queryable_columns"] = append(errs["queryable_columns"], err.Error())
		} else {
			def.queryable = cols
		}
	}
	switch def.replica = get("replica"); def.replica {
	case "":
		def.replica = "default"
	case "default", "full":
	default:
		errs["replica"] = append(errs["replica"], "is invalid")
	}
	switch get("log") {
	case "", "full":
	case "changes_only":
		def.changesOnly = true
	default:
		errs["log"] = append(errs["log"], "is invalid")
	}
	// Plug decodes params[k]=v into a map of k to v, which Ecto casts to a
	// map of strings: params=v (a string), params[]=v (a list) and
	// params[k][j]=v (a nested map) fail that cast whatever the rest of
	// the request says.
	invalid := false
	if _, ok := q["params"]; ok {
		invalid = true
	}
	// Electric's Shape.Validators.validate_parameters reads each key with
	// Elixir's Integer.parse, which takes a sign and leading zeros: "01"
	// and "+1" are the number 1. The sorted numbers must be exactly 1..n.
	// The where clause then looks $n up under the key "n" alone, so a value
	// given as params[01] passes the check but never reaches $1.
	var numbers []int
	byKey := map[string]string{}
	badKey := false
	for k, v := range q {
		m := paramsKey.FindStringSubmatch(k)
		if m == nil {
			// Only subset__* and subset[...] (Plug's "subset" map) make a
			// subset request; any other unknown parameter is ignored.
			if k == "subset" || strings.HasPrefix(k, "subset__") || strings.HasPrefix(k, "subset[") {
				errs["subset"] = append(errs["subset"], "subset snapshots are not supported by electrictest")
			}
			continue
		}
		if m[1] == "" || strings.Contains(m[1], "][") {
			invalid = true
			continue
		}
		n, ok := elixirInteger(m[1])
		if !ok {
			badKey = true
			continue
		}
		numbers = append(numbers, n)
		byKey[m[1]] = v[len(v)-1]
	}
	if invalid {
		errs["params"] = append(errs["params"], "is invalid")
		return def
	}
	// Electric checks the params (Shape.Validators) only for a where clause.
	if def.where == "" {
		return def
	}
	if badKey {
		errs["params"] = append(errs["params"], "Parameters can only use numbers as keys")
		return def
	}
	slices.Sort(numbers)
	for i, n := range numbers {
		if n != i+1 {
			errs["params"] = append(errs["params"], "Parameters must be numbered sequentially, starting from 1")
			return def
		}
	}
	// $1..$n in order, up to the first one given under another spelling:
	// from there the where clause reports "parameter $i was not provided"
	// when it uses $i.
	for i := 1; i <= len(numbers); i++ {
		v, ok := byKey[strconv.Itoa(i)]
		if !ok {
			break
		}
		def.params = append(def.params, v)
	}
	return def
}

// elixirInteger parses s as Elixir's Integer.parse/1 does when it consumes
// the whole string: an optional + or -, then ASCII digits. Numbers too large
// for an int are reported as -1, which is never a valid parameter number.
func elixirInteger(s string) (int, bool) {
	digits := strings.TrimLeft(s, "+-")
	if len(s)-len(digits) > 1 || digits == "" || strings.Trim(digits, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	if err != nil || s[0] == '-' && n != 0 {
		return -1, true
	}
	return n, true
}

func parseShapeRequest(q map[string][]string) (shapeRequest, map[string][]string) {
	errs := map[string][]string{}
	req := shapeRequest{def: parseDefinition(q, errs)}
	get := func(k string) string {
		if v := q[k]; len(v) > 0 {
			return v[len(v)-1]
		}
		return ""
	}
	switch off := get("offset"); off {
	case "":
		errs["offset"] = append(errs["offset"], "can't be blank")
	case "now":
		req.now = true
	default:
		o, err := ParseOffset(off)
		if err != nil {
			errs["offset"] = append(errs["offset"], err.Error())
		}
		req.offset = o
	}
	req.live = flag(q, "live")
	req.sse = flag(q, "live_sse") || (q["live_sse"] == nil && flag(q, "experimental_live_sse"))
	req.cursor = get("cursor")
	if !req.now && !req.offset.IsBeforeAll() && len(errs["offset"]) == 0 {
		req.handle = get("handle")
		if req.handle == "" {
			errs["handle"] = append(errs["handle"], "can't be blank when offset != -1")
		}
	}
	if req.now && req.live {
		errs["live"] = append(errs["live"], "can't be true when offset is 'now'")
	}
	if req.live && req.offset.IsBeforeAll() && len(errs["offset"]) == 0 && !req.now {
		errs["live"] = append(errs["live"], "can't be true when offset == -1")
	}
	if req.sse && !req.live {
		errs["live_sse"] = append(errs["live_sse"], "can't be true unless live is also true")
	}
	return req, errs
}

func (s *Server) serveShape(w http.ResponseWriter, r *http.Request, q map[string][]string) {
	req, errs := parseShapeRequest(q)
	if len(errs) > 0 {
		invalidRequest(w, errs)
		return
	}
	ctx := r.Context()
	for attempt := 0; ; attempt++ {
		sh, err := s.shapeFor(ctx, req.def)
		if err != nil {
			s.shapeError(w, err)
			return
		}
		if req.handle != "" && req.handle != sh.handle {
			s.mustRefetch(w, sh.handle)
			return
		}
		select {
		case <-sh.ready:
		case <-ctx.Done():
			return
		}
		if sh.readyErr != nil {
			s.shapeError(w, sh.readyErr)
			return
		}
		sh.mu.Lock()
		gone := sh.gone
		sh.mu.Unlock()
		if gone {
			if req.handle == "" && attempt < 3 {
				continue // the shape went while we waited for it: start over
			}
			s.mustRefetchDef(w, ctx, req.def)
			return
		}
		s.serveLog(w, r, sh, req)
		return
	}
}

func (s *Server) shapeError(w http.ResponseWriter, err error) {
	var re *requestError
	var we *whereError
	var ce *configError
	switch {
	case errors.As(err, &re):
		invalidRequest(w, map[string][]string{re.field: {re.msg}})
	case errors.As(err, &we):
		invalidRequest(w, map[string][]string{"where": {we.msg}})
	case errors.As(err, &ce):
		s.logger.Warn("electrictest: shape request failed", "err", err)
		w.Header().Set("retry-after", "10")
		w.Header().Set("cache-control", "no-store")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"message": ce.msg})
	case errors.Is(err, errUnavailable):
		w.Header().Set("retry-after", "10")
		w.Header().Set("cache-control", "no-store")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"code": "database_unreachable", "error": "Database is unreachable"})
	default:
		s.logger.Error("electrictest: shape request failed", "err", err)
		w.Header().Set("retry-after", "1")
		w.Header().Set("cache-control", "no-store")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"message": "Unable to create the shape. Please try again later."})
	}
}

func (s *Server) mustRefetch(w http.ResponseWriter, handle string) {
	h := w.Header()
	dropLogHeaders(h)
	if handle != "" {
		h.Set("electric-handle", handle)
		h.Set("cache-control", "public, max-age=60, must-revalidate")
	} else {
		h.Set("cache-control", "public, max-age=1, must-revalidate")
	}
	h.Set("content-type", "application/json; charset=utf-8")
	w.WriteHeader(http.StatusConflict)
	w.Write([]byte(`[{"headers":{"control":"must-refetch"}}]`))
}

// mustRefetchDef answers 409 with the handle of the definition's current
// shape, creating one if needed.
func (s *Server) mustRefetchDef(w http.ResponseWriter, ctx context.Context, def shapeDef) {
	sh, err := s.shapeFor(ctx, def)
	if err != nil {
		s.mustRefetch(w, "")
		return
	}
	s.mustRefetch(w, sh.handle)
}

// cursorEpoch is the origin of electric-cursor time buckets.
var cursorEpoch = time.Date(2024, 10, 9, 0, 0, 0, 0, time.UTC)

// nextCursor computes electric-cursor: the end of the current long-poll
// interval, or a random step past the client's cursor so it never repeats.
func nextCursor(now time.Time, timeout time.Duration, prev string) string {
	t := int64(timeout / time.Second)
	if t == 0 {
		return "0"
	}
	d := int64(now.Sub(cursorEpoch) / time.Second)
	next := (d + t - 1) / t * t
	p, _ := strconv.ParseInt(prev, 10, 64)
	if next > p {
		return strconv.FormatInt(next, 10)
	}
	n, _ := rand.Int(rand.Reader, big.NewInt(3600))
	return strconv.FormatInt(p+1+n.Int64(), 10)
}

func (s *Server) serveLog(w http.ResponseWriter, r *http.Request, sh *shape, req shapeRequest) {
	h := w.Header()
	h.Set("electric-handle", sh.handle)
	h.Set("content-type", "application/json; charset=utf-8")
	if req.live {
		h.Set("electric-cursor", nextCursor(time.Now(), s.opts.LongPollTimeout, req.cursor))
	} else {
		h.Set("electric-schema", sh.schema)
	}
	reqOffset := req.offset.String()
	switch {
	case req.offset.IsBeforeAll() && !req.now:
		h.Set("cache-control", "public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746")
	case req.live && req.sse:
		h.Set("cache-control", "public, max-age="+strconv.Itoa(max(1, int(s.opts.SSETimeout/time.Second)-1)))
	case req.live:
		h.Set("cache-control", "public, max-age=5, stale-while-revalidate=5")
	default:
		h.Set("cache-control", "public, max-age=60, stale-while-revalidate=300")
	}

	// finish writes a log response: body is the messages, upToDate adds the
	// up-to-date control message.
	finish := func(off Offset, body []byte, hasData, upToDate bool) {
		etag := sh.handle + ":" + reqOffset + ":" + off.String()
		if !hasData {
			etag += ":" + strconv.FormatInt(time.Now().UnixNano(), 10)
		}
		h.Set("electric-offset", off.String())
		h.Set("electric-has-data", strconv.FormatBool(hasData))
		h.Set("etag", `"`+etag+`"`)
		if upToDate {
			h.Set("electric-up-to-date", "")
		}
		if etagMatches(r.Header.Get("If-None-Match"), etag) {
			h.Del("electric-schema") // only on 200s, as in Electric
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.WriteHeader(http.StatusOK)
		w.Write(body)
	}
	// noChange answers with just an up-to-date message. Electric marks
	// it as a no-change response (electric-has-data: false, a 4-part
	// etag) only for offset=now and a live wait that timed out; a
	// non-live catch-up that finds nothing new is an ordinary log
	// response (has-data true, 3-part etag).
	noChange := func(off Offset, hasData bool) {
		finish(off, append(appendUpToDate([]byte{'['}, max(off.Tx, s.lastLSN.Load())), ']'), hasData, true)
	}

	if req.now {
		_, _, latest, _, _ := sh.read(BeforeAll, 0)
		noChange(latest, false)
		return
	}
	// The snapshot region: chunk k of the snapshot ends at offset 0_k.
	sh.mu.Lock()
	chunks := sh.chunks
	sh.mu.Unlock()
	next := -1
	if req.offset.IsBeforeAll() {
		next = 0
	} else if req.offset.Tx == 0 && req.offset.Op < uint64(len(chunks)-1) {
		next = int(req.offset.Op) + 1
	}
	if next >= 0 {
		off := Offset{Tx: 0, Op: uint64(next)}
		etag := sh.handle + ":" + reqOffset + ":" + off.String()
		h.Set("electric-offset", off.String())
		h.Set("electric-has-data", "true")
		h.Set("etag", `"`+etag+`"`)
		if etagMatches(r.Header.Get("If-None-Match"), etag) {
			h.Del("electric-schema") // only on 200s, as in Electric
			w.WriteHeader(http.StatusNotModified)
			return
		}
		w.WriteHeader(http.StatusOK)
		for _, seg := range chunks[next] {
			if _, err := w.Write(seg); err != nil {
				return
			}
		}
		return
	}

	if req.sse {
		s.serveSSE(w, r, sh, req.offset)
		return
	}
	ctx := r.Context()
	var timeout <-chan time.Time
	deadline := time.Time{}
	for waited := false; ; waited = true {
		entries, end, latest, notify, gone := sh.read(req.offset, s.opts.ChunkBytes)
		if gone {
			if req.live && waited {
				// Rotated during a live wait: Electric's hold_until_change
				// learns of it without a replacement handle.
				s.mustRefetch(w, "")
				return
			}
			s.mustRefetchDef(w, ctx, req.def)
			return
		}
		if len(entries) > 0 {
			last := entries[len(entries)-1].off
			// A live response's up-to-date reports the LSN of its own
			// last change; a non-live one the server-wide LSN if later.
			lsn := last.Tx
			if !req.live {
				lsn = max(last.Tx, s.lastLSN.Load())
			}
			finish(last, sh.render(req.offset, entries, end, lsn), true, end)
			return
		}
		if latest.Compare(req.offset) < 0 {
			// An offset ahead of the shape: wait a while for it to appear.
			if deadline.IsZero() {
				deadline = time.Now().Add(s.opts.LongPollTimeout / 2)
			}
			if !time.Now().Before(deadline) {
				invalidRequest(w, map[string][]string{"offset": {"out of bounds for this shape"}})
				return
			}
		} else if !req.live {
			noChange(latest, true)
			return
		}
		if timeout == nil {
			wait := s.opts.LongPollTimeout
			if !deadline.IsZero() {
				wait = time.Until(deadline)
			}
			t := time.NewTimer(wait)
			defer t.Stop()
			timeout = t.C
		}
		select {
		case <-notify:
		case <-timeout:
			if !deadline.IsZero() {
				continue
			}
			noChange(maxOffset(latest, req.offset), false)
			return
		case <-ctx.Done():
			return
		}
	}
}

func maxOffset(a, b Offset) Offset {
	if a.Compare(b) >= 0 {
		return a
	}
	return b
}

func etagMatches(ifNoneMatch, etag string) bool {
	if ifNoneMatch == "" {
		return false
	}
	for _, part := range strings.Split(ifNoneMatch, ",") {
		part = strings.TrimPrefix(strings.TrimSpace(part), "W/")
		if strings.Trim(part, `"`) == etag {
			return true
		}
	}
	return false
}

// serveSSE streams changes as Server-Sent Events until the SSE timeout.
func (s *Server) serveSSE(w http.ResponseWriter, r *http.Request, sh *shape, off Offset) {
	h := w.Header()
	h.Set("content-type", "text/event-stream")
	h.Set("connection", "keep-alive")
	_, _, latest, _, _ := sh.read(off, 0)
	respOff := maxOffset(latest, off)
	// Electric's put_resp_headers applies to SSE responses too: an etag
	// for the response's offsets, electric-has-data (not a no-change
	// response) and electric-up-to-date (the offset is the shape's end).
	h.Set("electric-offset", respOff.String())
	h.Set("etag", `"`+sh.handle+":"+off.String()+":"+respOff.String()+`"`)
	h.Set("electric-has-data", "true")
	h.Set("electric-up-to-date", "")
	w.WriteHeader(http.StatusOK)
	flusher, _ := w.(http.Flusher)
	flush := func() {
		if flusher != nil {
			flusher.Flush()
		}
	}
	flush()
	end := time.NewTimer(s.opts.SSETimeout)
	defer end.Stop()
	keepAlive := time.NewTicker(s.opts.SSEKeepAlive)
	defer keepAlive.Stop()
	for immediate := true; ; immediate = false {
		entries, atEnd, _, notify, gone := sh.read(off, s.opts.ChunkBytes)
		if gone {
			return // the reconnect gets the 409
		}
		if len(entries) > 0 {
			var buf []byte
			for _, e := range entries {
				buf = append(buf, "data: "...)
				buf = append(buf, e.msg...)
				buf = append(buf, "\n\n"...)
			}
			off = entries[len(entries)-1].off
			if atEnd {
				buf = append(buf, "data: "...)
				buf = appendUpToDate(buf, off.Tx) // the batch end, as in Electric
				buf = append(buf, "\n\n"...)
			}
			if _, err := w.Write(buf); err != nil {
				return
			}
			flush()
			if immediate {
				return // data was there already: Electric sends it and ends the response
			}
			keepAlive.Reset(s.opts.SSEKeepAlive)
			continue
		}
		select {
		case <-notify:
		case <-keepAlive.C:
			if _, err := w.Write([]byte(": keep-alive\n\n")); err != nil {
				return
			}
			flush()
		case <-end.C:
			return
		case <-r.Context().Done():
			return
		}
	}
}

// deleteShape serves DELETE /v1/shape when AllowDelete is set.
func (s *Server) deleteShape(w http.ResponseWriter, r *http.Request, q map[string][]string) {
	w.Header().Set("cache-control", "no-cache")
	if !s.opts.AllowDelete {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"message": "DELETE not allowed"})
		return
	}
	handle := ""
	if v := q["handle"]; len(v) > 0 {
		handle = v[len(v)-1]
	}
	var sh *shape
	if _, hasTable := q["table"]; hasTable {
		errs := map[string][]string{}
		def := parseDefinition(q, errs)
		if len(errs) > 0 {
			invalidRequest(w, errs)
			return
		}
		s.mu.Lock()
		sh = s.shapes[def.key()]
		s.mu.Unlock()
		if sh != nil && handle != "" && handle != sh.handle {
			invalidRequest(w, map[string][]string{"handle": {"The specified shape definition and handle do not match. Please ensure the shape definition is correct or omit the shape handle from the request to obtain a new one."}})
			return
		}
	} else if handle == "" {
		invalidRequest(w, map[string][]string{"handle": {"can't be blank when shape definition is missing"}})
		return
	} else {
		s.mu.Lock()
		sh = s.handles[handle]
		s.mu.Unlock()
	}
	if sh == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"message": "No existing shape found"})
		return
	}
	s.dropShape(sh)
	w.WriteHeader(http.StatusAccepted)
}
