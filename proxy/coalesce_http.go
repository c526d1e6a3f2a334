package proxy

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
)

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
