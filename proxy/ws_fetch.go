package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strconv"
)

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
