package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// requestURL builds the next request URL, with sorted query parameters.
func (s *ShapeStream) requestURL() *url.URL {
	q := s.base.Query()
	s.params.encode(q)
	if !q.Has("log") {
		// The server default, sent as the TypeScript client does so that
		// both share cache entries.
		q.Set("log", "full")
	}
	s.mu.Lock()
	offset, handle, cursor, upToDate := s.offset, s.handle, s.cursor, s.upToDate
	s.mu.Unlock()
	q.Set("offset", offset)
	if handle != "" {
		q.Set("handle", handle)
	}
	if upToDate && s.opts.Live {
		q.Set("live", "true")
		q.Set("cursor", cursor)
		if s.opts.LiveSSE && !s.sseFallback.Load() {
			q.Set("live_sse", "true")
		}
	}
	if s.expiredHandle != "" {
		q.Set("expired_handle", s.expiredHandle)
	}
	if s.cacheBuster != "" {
		q.Set("cache-buster", s.cacheBuster)
		s.cacheBuster = ""
	}
	u := *s.base
	u.RawQuery = q.Encode() // sorted by key
	return &u
}

func newCacheBuster() string {
	var b [6]byte
	rand.Read(b[:])
	return strconv.FormatInt(time.Now().UnixMilli(), 10) + "-" + hex.EncodeToString(b[:])
}

// request performs one request and prepares its body for reading.
func (s *ShapeStream) request(ctx context.Context) error {
	u := s.requestURL()
	q := u.Query()
	live := q.Get("live") == "true"
	sse := live && q.Get("live_sse") == "true"
	reqOffset := q.Get("offset")
	redacted := redactURL(u)

	hdr, token, err := s.requestHeader(ctx)
	if err != nil {
		return err
	}

	if sse {
		hdr.Set("Accept", "text/event-stream")
	}
	reqCtx, cancel, idle, timeout := s.requestContext(ctx, live, sse)
	req, err := http.NewRequestWithContext(reqCtx, http.MethodGet, u.String(), nil)
	if err != nil {
		cancel()
		return err
	}
	req.Header = hdr
	s.log.Debug("shape request", "url", redacted, "live", live, "sse", sse)
	start := time.Now()
	resp, err := s.client.Do(req)
	if err != nil {
		cancel()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return &retryable{err: fmt.Errorf("client: GET %s: %w", redacted, unwrapURLError(err))}
	}
	s.log.Debug("shape response", "url", redacted, "status", resp.StatusCode, "elapsed", time.Since(start))
	if resp.StatusCode != http.StatusUnauthorized {
		// The token got past authentication: a later 401 may refresh
		// again (even if this response fails for other reasons).
		s.refreshed = false
	}

	switch {
	case resp.StatusCode == http.StatusOK:
		if sse && isEventStream(resp.Header) {
			if idle != nil {
				resp.Body = &idleReader{r: resp.Body, t: idle, d: timeout}
			}
			return s.accept(resp, u, redacted, live, start, true, cancel)
		}
		return s.accept(resp, u, redacted, live, start, false, cancel)
	case resp.StatusCode == http.StatusNoContent:
		resp.Body.Close()
		cancel()
		return s.noContent(resp.Header, reqOffset, redacted)
	case resp.StatusCode == http.StatusConflict:
		body := readErrorBody(resp)
		cancel()
		s.mustRefetch(resp.Header.Get("electric-handle"), body)
		s.noProgress("409 must-refetch", redacted, reqOffset)
		return nil
	}

	herr := &HTTPError{
		StatusCode: resp.StatusCode,
		Status:     resp.Status,
		Body:       readErrorBody(resp),
		Header:     resp.Header,
		URL:        redacted,
	}
	cancel()
	return s.failed(ctx, herr, token)
}

// requestContext returns the context of a request, detached from ctx but
// ended by cancel, which s.cancel holds from now on so that abort can end
// the request. A live request is bounded by LiveRequestTimeout; for an SSE
// one (sse), idle is the watchdog and timeout its duration.
func (s *ShapeStream) requestContext(ctx context.Context, live, sse bool) (reqCtx context.Context, cancel context.CancelFunc, idle *time.Timer, timeout time.Duration) {
	reqCtx, cancel = context.WithCancel(context.WithoutCancel(ctx))
	timeout = s.opts.LiveRequestTimeout
	if timeout == 0 {
		timeout = defaultLiveRequestTimeout
	}
	if sse {
		// An SSE connection lasts as long as the server keeps it (a
		// minute for Electric): the watchdog bounds silence instead,
		// from the request until the headers, then between bytes.
		if timeout > 0 {
			idle = time.AfterFunc(timeout, cancel)
			c := cancel
			cancel = func() { idle.Stop(); c() }
		}
	} else if live && timeout > 0 {
		reqCtx, cancel = withTimeout(reqCtx, cancel, timeout)
	}
	s.mu.Lock()
	s.cancel = cancel
	s.mu.Unlock()
	s.aborted.Store(false)
	if ctx.Err() != nil { // ended before s.cancel was visible to abort
		cancel()
	}
	return reqCtx, cancel, idle, timeout
}

// requestHeader returns the header of the next request: the stream's, then
// HeaderFunc's, and the bearer token (also returned) from TokenSource.
func (s *ShapeStream) requestHeader(ctx context.Context) (hdr http.Header, token string, err error) {
	hdr = s.header.Clone()
	if s.opts.HeaderFunc != nil {
		h, err := s.opts.HeaderFunc(ctx)
		if err != nil {
			return nil, "", fmt.Errorf("client: HeaderFunc: %w", err)
		}
		for k, v := range h {
			hdr[k] = v
		}
	}
	if s.opts.TokenSource != nil {
		t, err := s.opts.TokenSource.Token(ctx)
		if err != nil {
			return nil, "", fmt.Errorf("client: TokenSource: %w", err)
		}
		token = t
		hdr.Set("Authorization", "Bearer "+t)
	}
	return hdr, token, nil
}

// failed handles an error status (other than 409) of a request sent with
// token: after a 401, it refreshes the token once and repeats the request
// (errRetryNow); 429, 5xx and stray 3xx are retryable; anything else is
// herr.
func (s *ShapeStream) failed(ctx context.Context, herr *HTTPError, token string) error {
	switch code := herr.StatusCode; {
	case code == http.StatusUnauthorized:
		if s.refresh == nil || token == "" {
			return herr
		}
		if s.refreshed {
			return &AuthError{Err: herr}
		}
		s.refreshed = true
		if _, err := s.refresh.Refresh(ctx, token); err != nil {
			return fmt.Errorf("client: refreshing token after 401: %w", err)
		}
		s.log.Debug("token refreshed after 401", "url", herr.URL)
		return errRetryNow
	case code == http.StatusTooManyRequests || code >= 500 || code < 400:
		return &retryable{err: herr, retryAfter: parseRetryAfter(herr.Header, time.Now())}
	default:
		return herr
	}
}

// noContent handles a 204: older servers (and some proxies) answer so,
// without a body, when there is nothing new. It means up to
// date: the stream delivers a synthetic up-to-date message, so that a
// consumer (a Shape) commits, and goes live. The offset, handle and cursor
// are kept, or taken from the response's headers where it has them.
func (s *ShapeStream) noContent(h http.Header, reqOffset, redacted string) error {
	s.mu.Lock()
	handle, offset, cursor, was := s.handle, s.offset, s.cursor, s.upToDate
	if v := h.Get("electric-handle"); v != "" {
		handle = v
	}
	if v := h.Get("electric-offset"); v != "" {
		offset = v
	}
	if v := h.Get("electric-cursor"); v != "" {
		cursor = v
	}
	if offset == "-1" || offset == "now" || handle == "" {
		s.mu.Unlock()
		// Nothing to be up to date with, and nothing to continue from:
		// the server never answers an initial request so.
		return &retryable{err: fmt.Errorf("client: 204 No Content from %s to a request at offset %s, without a handle and offset to continue from", redacted, reqOffset)}
	}
	s.handle, s.offset, s.cursor, s.upToDate = handle, offset, cursor, true
	s.mu.Unlock()
	s.success()
	if !s.opts.Live {
		s.done = true
	}
	s.queue = append(s.queue, upToDateMessage())
	if !was || offset != reqOffset {
		s.loop.progress()
	} else {
		s.noProgress("204 No Content", redacted, reqOffset)
	}
	return nil
}

func withTimeout(parent context.Context, cancelParent context.CancelFunc, d time.Duration) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(parent, d)
	return ctx, func() { cancel(); cancelParent() }
}

func unwrapURLError(err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		return ue.Err
	}
	return err
}

func readErrorBody(resp *http.Response) []byte {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
	resp.Body.Close()
	return b
}

func isEventStream(h http.Header) bool {
	ct := h.Get("Content-Type")
	return len(ct) >= 17 && strings.EqualFold(ct[:17], "text/event-stream")
}
