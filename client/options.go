package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Options configure a ShapeStream. Only URL is required.
type Options struct {
	// URL is the shape endpoint: Electric's /v1/shape, or a proxy path such
	// as https://app.example/api/shapes/items. Query parameters already in
	// the URL (a proxy's fixed parameters, Electric's secret) are kept.
	URL string

	// Params define the shape. A proxy usually pins them; leave them empty
	// then.
	Params Params

	// Header is sent with every request.
	Header http.Header
	// HeaderFunc, if set, is called before every request; the headers it
	// returns are added after Header (replacing same-named ones). An error
	// stops the stream (through OnError).
	HeaderFunc func(ctx context.Context) (http.Header, error)
	// TokenSource, if set, supplies "Authorization: Bearer <token>" for every
	// request. If it also implements RefreshableTokenSource, a 401 refreshes
	// the token and repeats the same request.
	TokenSource TokenSource

	// HTTPClient makes the requests; nil means http.DefaultClient. Its
	// Timeout, if any, must exceed the server's long-poll timeout (20 s).
	HTTPClient *http.Client

	// Backoff tunes retries of network errors, truncated bodies, 429 and 5xx.
	Backoff Backoff

	// OnError is called with an error the stream cannot handle by itself:
	// a 4xx response (as *HTTPError), an *AuthError, a *ParseError, a
	// *StaleResponseError, a *FastLoopError, retries exhausted, a
	// HeaderFunc or TokenSource error. Returning a non-nil
	// *Recovery resumes from the current offset and handle, after a backoff
	// delay, with the recovery's params and headers; nothing is refetched.
	// Returning nil stops the stream with err. A *MissingHeadersError or a
	// *TransformError always stops the stream; more than 50 recoveries in a
	// row without a successful response also do.
	OnError func(err error) *Recovery

	// Offset and Handle resume a stream where an earlier one stopped (both
	// as read from ShapeStream.Offset and ShapeStream.Handle after an
	// up-to-date message). Offset "" means "-1", the start of the log;
	// "now" skips the existing rows. Any other offset requires a Handle.
	Offset string
	Handle string

	// Live keeps following the shape after the first up-to-date message
	// with long-polling requests. Without Live, Next returns io.EOF after
	// the first up-to-date message.
	Live bool

	// LiveSSE makes live requests Server-Sent Events connections
	// (live=true&live_sse=true) instead of long polls: each connection
	// delivers batches of changes, each ending in up-to-date, for as long
	// as the server keeps it open (a minute for Electric), and the stream
	// reconnects from the offset of the last batch when it ends. Offsets,
	// handle and cursor advance at each up-to-date exactly as with long
	// polling, and nothing is lost or repeated when a connection is cut.
	// If three SSE connections in a row end within a second without an
	// up-to-date (a proxy that buffers or closes event streams), the
	// stream falls back to long polling for the rest of its life (see
	// ShapeStream.SSEFallback; a warning is logged). Ignored without Live.
	// HTTPClient.Timeout, if any, must exceed the server's SSE timeout.
	LiveSSE bool

	// LiveRequestTimeout bounds each live (long-poll) request; a request
	// that takes longer is abandoned and retried. With LiveSSE, it bounds
	// the silence of an SSE connection instead (Electric sends a comment
	// every 21 s). 0 means 45 s; a negative value disables the watchdog.
	LiveRequestTimeout time.Duration

	// Parse converts values by their electric-schema type (see the package
	// documentation). Parsers replace or add conversions per Postgres type
	// name and are used only when Parse is set.
	Parse   bool
	Parsers map[string]ParseFunc

	// Transform is called for every change message before it is delivered,
	// after value parsing. It may change m.Value and m.OldValue (decrypt
	// them, say). An error stops the stream with a *TransformError. m is
	// valid only during the call: the stream reuses the Message it points
	// to, so keep the maps or values, not the pointer.
	Transform func(m *Message) error

	// TransformContext is Transform with the context of the Next call that
	// delivers the message, so that a transform that blocks (a decrypter
	// waiting for a key) waits on the caller's context. Set Transform or
	// TransformContext, not both. When it returns an error after that
	// context ended, the error is not a *TransformError: Next returns
	// ctx.Err(), and the message is read again (the response is
	// re-requested from the same offset, without losing or repeating
	// anything) by the next call of Next.
	TransformContext func(ctx context.Context, m *Message) error

	// TransformBatch is TransformContext for several change messages at
	// once, so that a transform can spread its work over goroutines (as
	// keysync's Decrypter does). A batch holds a change message and those
	// that follow it in what the response has already buffered, in order,
	// up to 128; it never waits for the network, never holds a control
	// message and so never spans an up-to-date, and it is a batch of one
	// for a change that arrives alone (and for every change of an SSE
	// response). An error stops the stream with a *TransformError before
	// any message of the batch is delivered; after the context ended, the
	// whole batch is read again, as for TransformContext. The pointers are
	// valid only during the call. Set one of Transform, TransformContext
	// and TransformBatch.
	TransformBatch func(ctx context.Context, batch []*Message) error

	// Logger receives debug lines for requests and warnings for retries.
	// Nil discards them. URLs are logged with secrets redacted; headers and
	// tokens are never logged.
	Logger *slog.Logger
}

// Params define a shape.
type Params struct {
	Table   string   // root table, "schema.table" or quoted identifiers
	Where   string   // SQL boolean expression, with $1..$n placeholders
	Params  []string // values for $1..$n, sent as params[1]..params[n]
	Columns []string // projection; every name is sent quoted, as the TS client does
	Replica string   // "default" or "full"; "" leaves the server default
	Log     string   // "full" or "changes_only"; "" sends log=full, the server default

	// Extra holds further query parameters (source_id, custom proxy
	// parameters). Names the protocol manages (offset, handle, live, cursor,
	// cache-buster, expired_handle, live_sse, subset__*) are refused, and so
	// are names of the fields above when those are set.
	Extra url.Values
}

// Recovery is what OnError returns to resume a stream.
type Recovery struct {
	// Params, if non-nil, replace the stream's shape params.
	Params *Params
	// Header values replace same-named values of Options.Header.
	Header http.Header
}

// Backoff configures retries. Zero fields take the defaults of the
// TypeScript client. The wait before retry n is a random duration in
// [0, min(Initial·Multiplier^(n-1), Max)) ("full jitter"), or the server's
// Retry-After if that is longer.
type Backoff struct {
	Initial    time.Duration // first delay ceiling; default 1 s
	Max        time.Duration // delay ceiling; default 32 s
	Multiplier float64       // default 2
	// MaxRetries bounds consecutive retries of one request; 0 means
	// unbounded. When exceeded, the last error goes to OnError.
	MaxRetries int
	// MaxRetryAfter caps a server's Retry-After; default 1 h.
	MaxRetryAfter time.Duration
}

func (b Backoff) withDefaults() Backoff {
	if b.Initial <= 0 {
		b.Initial = time.Second
	}
	if b.Max <= 0 {
		b.Max = 32 * time.Second
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	if b.Multiplier < 1 {
		b.Multiplier = 2
	}
	if b.MaxRetryAfter <= 0 {
		b.MaxRetryAfter = time.Hour
	}
	return b
}

// ReservedParamError reports a query parameter the stream manages itself.
type ReservedParamError struct{ Name string }

func (e *ReservedParamError) Error() string {
	return fmt.Sprintf("client: query parameter %q is managed by the stream", e.Name)
}

// ErrMissingHandle is returned by New for an Offset other than "-1" or
// "now" without a Handle.
var ErrMissingHandle = errors.New("client: resuming from an offset requires its shape handle")

var reservedParams = map[string]bool{
	"offset": true, "handle": true, "live": true, "cursor": true,
	"cache-buster": true, "expired_handle": true, "live_sse": true, "experimental_live_sse": true,
}

func isReserved(name string) bool {
	return reservedParams[name] || strings.HasPrefix(name, "subset__") || strings.HasPrefix(name, "subset[")
}

// validate checks p against reserved names.
func (p *Params) validate() error {
	for k := range p.Extra {
		if isReserved(k) {
			return &ReservedParamError{Name: k}
		}
		switch {
		case k == "table" && p.Table != "",
			k == "where" && p.Where != "",
			k == "columns" && len(p.Columns) > 0,
			k == "replica" && p.Replica != "",
			k == "log" && p.Log != "",
			strings.HasPrefix(k, "params") && len(p.Params) > 0:
			return fmt.Errorf("client: Params.Extra[%q] conflicts with the Params field of that name", k)
		}
	}
	return nil
}

// encode adds p to q.
func (p *Params) encode(q url.Values) {
	for k, vs := range p.Extra {
		q[k] = append([]string(nil), vs...)
	}
	if p.Table != "" {
		q.Set("table", p.Table)
	}
	if p.Where != "" {
		q.Set("where", p.Where)
	}
	for i, v := range p.Params {
		q.Set("params["+strconv.Itoa(i+1)+"]", v)
	}
	if len(p.Columns) > 0 {
		quoted := make([]string, len(p.Columns))
		for i, c := range p.Columns {
			quoted[i] = QuoteIdentifier(c)
		}
		q.Set("columns", strings.Join(quoted, ","))
	}
	if p.Replica != "" {
		q.Set("replica", p.Replica)
	}
	if p.Log != "" {
		q.Set("log", p.Log)
	}
}

// QuoteIdentifier quotes a Postgres identifier: "a""b" for a"b.
func QuoteIdentifier(name string) string {
	return `"` + strings.ReplaceAll(name, `"`, `""`) + `"`
}
