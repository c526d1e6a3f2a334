package proxy

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
)

// exposed are the response headers a browser client may read.
const exposed = "electric-cursor, electric-handle, electric-has-data, electric-offset, electric-schema, electric-up-to-date, electric-internal-known-error, electric-snapshot, etag, retry-after, x-request-id"

// cors sets the CORS response headers when the request's Origin is
// allowed.
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

// preflight answers a CORS preflight of a shape URL.
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
