package electrictest

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"net/http"
	"path"
	"strconv"
	"strings"
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

// serveShapeRoute serves /v1/shape: the CORS preflight, the secret check,
// then GET and HEAD (through the faults) and DELETE.
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

// serveShape answers GET /v1/shape: it finds or creates the shape of the
// request's definition, waits for its snapshot and serves its log.
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

// shapeError answers a request whose shape could not be had: 400 for an
// invalid definition, 503 otherwise.
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

// mustRefetch answers 409 must-refetch, with the handle to refetch when
// there is one.
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

// deleteShape serves DELETE /v1/shape when AllowDelete is set.
func (s *Server) deleteShape(w http.ResponseWriter, r *http.Request, q map[string][]string) {
	w.Header().Set("cache-control", "no-cache")
	if !s.opts.AllowDelete {
		writeJSON(w, http.StatusMethodNotAllowed, map[string]string{"message": "DELETE not allowed"})
		return
	}
	handle := lastValue(q, "handle")
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
