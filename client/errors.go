package client

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ErrClosed is returned by Next after Close.
var ErrClosed = errors.New("client: stream closed")

// HTTPError is a response with a status the stream did not accept: a 4xx
// other than 401/409 (after OnError declined to recover), or a 429/5xx after
// the retries were exhausted.
type HTTPError struct {
	StatusCode int
	Status     string      // e.g. "400 Bad Request"
	Body       []byte      // the response body, at most 64 KiB
	Header     http.Header // the response headers
	URL        string      // the request URL, secrets redacted
}

func (e *HTTPError) Error() string {
	msg := strings.TrimSpace(string(e.Body))
	if len(msg) > 512 {
		msg = msg[:512] + "…"
	}
	if msg != "" {
		return fmt.Sprintf("client: %s from %s: %s", e.Status, e.URL, msg)
	}
	return fmt.Sprintf("client: %s from %s", e.Status, e.URL)
}

// AuthError is returned when the server refuses a token that the token
// source had just refreshed: asking again would loop.
type AuthError struct {
	Err *HTTPError // the second 401
}

func (e *AuthError) Error() string {
	return "client: token refused after refresh: " + e.Err.Error()
}

func (e *AuthError) Unwrap() error { return e.Err }

// MissingHeadersError is a 2xx response without the headers the protocol
// requires (electric-handle, electric-offset, and electric-schema for
// non-live or electric-cursor for live requests). It usually means a proxy
// strips headers. It is fatal: OnError cannot turn it into a retry.
type MissingHeadersError struct {
	Missing []string
	URL     string
}

func (e *MissingHeadersError) Error() string {
	return fmt.Sprintf("client: response from %s lacks required headers %s (a proxy must forward electric-* headers)",
		e.URL, strings.Join(e.Missing, ", "))
}

// ParseError is a response body, message or value that does not follow the
// protocol. Offset is the byte offset in the response body where the
// offending message starts (-1 when not applicable).
type ParseError struct {
	Offset int64
	Msg    string
	Err    error // an underlying error, if any
}

func (e *ParseError) Error() string {
	s := "client: parse error"
	if e.Offset >= 0 {
		s += fmt.Sprintf(" at body offset %d", e.Offset)
	}
	s += ": " + e.Msg
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *ParseError) Unwrap() error { return e.Err }

// ValueError is a column value that the schema-driven parser rejects, such
// as NULL in a NOT NULL column or "x" in an int8 column.
type ValueError struct {
	Column string
	Type   string
	Value  *string // nil for NULL
	Err    error
}

func (e *ValueError) Error() string {
	if e.Value == nil {
		return fmt.Sprintf("client: column %q (%s): NULL in a NOT NULL column", e.Column, e.Type)
	}
	return fmt.Sprintf("client: column %q (%s): cannot parse %q: %v", e.Column, e.Type, *e.Value, e.Err)
}

func (e *ValueError) Unwrap() error { return e.Err }

// StaleResponseError is returned when responses keep carrying a shape handle
// the server already declared expired (409), even with fresh cache-busters
// (three retries) and after the stream forgot, once, that the handle had
// expired: a cache in front of the server ignores part of the query string.
type StaleResponseError struct {
	Handle string
	URL    string
}

func (e *StaleResponseError) Error() string {
	return fmt.Sprintf("client: %s keeps serving expired shape handle %q: a cache ignores the query string", e.URL, e.Handle)
}

// ErrFastLoop is the sentinel of a [*FastLoopError]: errors.Is(err,
// ErrFastLoop) tells a stream stopped by the fast-loop guard.
var ErrFastLoop = errors.New("client: requests loop without progress")

// FastLoopError is returned when the server (or something in front of it)
// keeps answering requests in a way that makes the stream re-request at
// once without progress: a 409 on every request, responses with a handle
// that was declared expired, responses that do not move the offset. The
// stream backs off a few times first; see the package documentation. It
// goes to Options.OnError, which may resume (with other params or headers).
type FastLoopError struct {
	URL      string        // the last request URL, secrets redacted
	Offset   string        // its offset
	What     string        // what answered it, e.g. "409 must-refetch"
	Requests int           // requests without progress
	Elapsed  time.Duration // since the first of them
}

func (e *FastLoopError) Error() string {
	return fmt.Sprintf("client: %s: %d requests in %v without progress, the last answered by %s at offset %s "+
		"(a proxy or CDN that ignores query parameters, caches or rewrites responses or strips electric-* headers, "+
		"or a shape evicted as soon as it is created)",
		e.URL, e.Requests, e.Elapsed.Round(time.Millisecond), e.What, e.Offset)
}

func (e *FastLoopError) Unwrap() error { return ErrFastLoop }

// TransformError wraps an error returned by Options.Transform. The stream
// stops: the message that failed was not delivered.
type TransformError struct {
	Key string
	Err error
}

func (e *TransformError) Error() string {
	return fmt.Sprintf("client: transform of %s: %v", e.Key, e.Err)
}

func (e *TransformError) Unwrap() error { return e.Err }

// retryable marks an error the stream retries with backoff.
type retryable struct {
	err        error
	retryAfter time.Duration
}

func (e *retryable) Error() string { return e.err.Error() }
func (e *retryable) Unwrap() error { return e.err }

// sensitiveParams are redacted from URLs in errors and logs (the names
// Electric itself redacts).
var sensitiveParams = []string{"secret", "api_secret", "token", "access_token", "api_key", "password"}

func redactURL(u *url.URL) string {
	if u == nil {
		return ""
	}
	q := u.Query()
	changed := false
	for _, k := range sensitiveParams {
		if _, ok := q[k]; ok {
			q.Set(k, "REDACTED")
			changed = true
		}
	}
	if u.User != nil {
		changed = true
	}
	if !changed {
		return u.String()
	}
	c := *u
	c.User = nil
	c.RawQuery = q.Encode()
	return c.String()
}
