// Package client is a Go client for the ElectricSQL Shape HTTP protocol
// (GET /v1/shape): it follows a shape from its initial snapshot through
// catch-up into live long polling, and never loses or duplicates a message
// across retries, 409 rotations, truncated bodies or token refreshes.
//
// # Streams
//
// A [ShapeStream] is a pull-based reader. Every call to [ShapeStream.Next]
// runs in the caller's goroutine: it reads the next message from the response
// in flight, or issues the next request. No goroutine is started in the
// background, so a stream that is not being read costs nothing, and a stream
// whose context is cancelled stops at once.
//
//	s, err := client.New(client.Options{
//		URL:    "http://localhost:3000/v1/shape",
//		Params: client.Params{Table: "items"},
//		Live:   true,
//	})
//	if err != nil { ... }
//	for m, err := range s.Messages(ctx) {
//		if err != nil { ... }
//		switch {
//		case m.IsChange():      // insert, update or delete of m.Key
//		case m.IsUpToDate():    // a consistent view: persist s.Offset(), s.Handle()
//		case m.IsMustRefetch(): // drop everything learnt so far
//		}
//	}
//
// Messages arrive one at a time as the response body is parsed, so memory does
// not grow with the size of a response. A consistent view of the shape is
// reached only at an up-to-date control message; [Shape] buffers changes and
// applies them whole at each up-to-date.
//
// # Protocol
//
// The stream mirrors the official TypeScript client (@electric-sql/client):
//   - offset=-1 starts an initial sync; the stream keeps requesting
//     (offset, handle) until a response ends in up-to-date, then, when
//     Options.Live is set, long-polls with live=true and the last cursor.
//   - Every request carries log=full (or Params.Log), as the TypeScript
//     client's do, so that both share cache entries.
//   - A 409 answers "the shape changed": the stream emits a synthetic
//     must-refetch message, resets to offset -1 with the handle the server
//     named, and adds expired_handle and a one-shot cache-buster so that no
//     cache returns the expired shape. A later response that still carries the
//     expired handle is a stale cached response and is re-requested with a
//     fresh cache-buster, three times. A fourth at offset -1 makes the stream
//     forget that the handle expired (once per handle: Electric may have
//     answered the 409 in a cleanup race, or a proxy drops the cache-buster)
//     and ask once more without expired_handle; a response at offset -1 is a
//     fresh start whatever its handle. Otherwise the fourth ends the stream
//     with a [*StaleResponseError].
//   - A 204 No Content (older servers, some proxies) means up to date:
//     the stream delivers a synthetic up-to-date message and goes live,
//     keeping its offset, handle and cursor.
//   - A fast-loop guard stops a server or proxy that makes the stream
//     re-request at once without progress (a 409 on every request, stale
//     responses, responses that leave the offset unchanged, up-to-dates that
//     repeat it). Five such requests within 500 ms are a fast loop: that
//     one and each further one until progress is a detection, and delays
//     the next request by 100 ms·2ⁿ after the n-th (jittered, capped at
//     5 s); the fifth detection ends in a [*FastLoopError] (errors.Is
//     [ErrFastLoop]), which goes to Options.OnError. Progress is an
//     up-to-date the consumer can commit or a change at a new log position.
//     A 409 on every request thus gets nine requests in 1.5–3 s, then the
//     error.
//   - Network errors, truncated bodies, 429, 5xx (and stray 3xx) are retried
//     with full-jitter exponential backoff (1 s, ×2, capped at 32 s by
//     default), honouring Retry-After. Other 4xx go to Options.OnError, which
//     may change params or headers and resume from the same offset, or stop.
//   - A 401 with a [RefreshableTokenSource] asks the source for a new token
//     and repeats the same request (same offset and handle). A second 401
//     with the fresh token ends in an [*AuthError].
//   - With Options.LiveSSE, live requests add live_sse=true and the server
//     answers with a text/event-stream of Server-Sent Events, one JSON
//     message per data event, kept open (a minute for Electric, with a
//     keep-alive comment every 21 s). Each batch of changes ends in an
//     up-to-date event, at which the stream commits the batch: the offset
//     becomes the log position (lsn_op_position) of its last change, and
//     the cursor and handle are the response's. When the connection ends,
//     the stream reconnects from there; when it is cut, it reconnects
//     after a backoff and skips what the cut connection had delivered. Errors
//     (409, 401, 5xx) arrive as ordinary responses to the reconnection.
//     Three connections in a row that end cleanly within a second without
//     an up-to-date (a proxy that buffers or closes event streams) switch
//     the stream to long polling for good: [ShapeStream.SSEFallback]
//     reports it, and a warning is logged.
//
// When a response is interrupted after some of its messages were delivered,
// the retry asks for the same (handle, offset) and skips what was already
// delivered: the shape log is append-only, so the retried response starts
// with the same messages. If the server answers the retry with a different
// handle, a must-refetch is emitted first.
//
// # Values
//
// Electric sends every column as a JSON string in Postgres text format, or
// null. By default a [Row] holds those strings (and nil for NULL) unchanged,
// which is lossless. With Options.Parse set, values are converted as the
// electric-schema header describes: int2/int4/int8 → int64,
// float4/float8 → float64, bool → bool, json/jsonb → json.RawMessage,
// arrays → []any, anything else stays a string. Options.Parsers overrides
// the conversion per Postgres type.
//
// # Typed rows
//
// A [TypedShape] decodes a shape into structs by column name, with the
// conversions of Options.Parse and NULL into pointers or sql.Null* (see
// [RowDecoder]; a field that does not fit is a *[FieldError]). Its
// [View]s are immutable snapshots sorted by key, and
// [TypedShape.Changes] reports what each batch inserted, updated and
// deleted:
//
//	type item struct {
//		ID    int64    `shape:"id"`
//		Title string   `shape:"title"`
//		Tags  []string `shape:"tags"`
//		Due   *time.Time `shape:"due"`
//	}
//	items, err := client.NewTypedShape[item](stream)
//	go items.Run(ctx)
//	v, err := items.Wait(ctx, nil) // the first consistent view
//	for key, it := range v.All() { ... }
//	for b := range items.Changes(ctx) { ... b.Inserted, b.Updated, b.Deleted }
//
// Without a Transform, values go from the wire straight into the structs.
// A [Stream] is either transport: a [*ShapeStream] or a [*WSStream].
//
// # WebSocket transport
//
// A [WSConn] is one WebSocket to a shapeseal proxy's /v1/ws endpoint
// (see package proxy for the message protocol) carrying any number of
// shape subscriptions, each read through a [WSStream] with the same
// semantics as a [ShapeStream]: messages one at a time, Offset and Handle to
// resume from after an up-to-date, a synthetic must-refetch message when the
// shape was rotated, and nothing lost or repeated across reconnections.
//
//	conn, err := client.DialWS(ctx, "wss://app.example/v1/ws", &client.WSOptions{TokenSource: tokens})
//	items, err := conn.Stream(ctx, "items", client.WSStreamOptions{Live: true})
//	for m, err := range items.Messages(ctx) { ... }
//
// The token is sent in the first WebSocket message, never in the URL. When
// the proxy reports that it expired, the connection sends a new one from
// the TokenSource (Refresh, for a RefreshableTokenSource). When the
// connection drops, it is redialled with backoff and every open stream is
// resubscribed from the offset and handle of the last batch it delivered
// whole; the messages of a batch it had delivered in part are skipped.
//
// Unlike a ShapeStream, a WSConn runs one goroutine that reads the
// connection and hands frames to its streams; frames wait in memory until
// their stream's Next reads them: read every stream you open, or Close it.
//
// # Errors
//
// Errors are typed for errors.As: [*HTTPError] (status, body, headers, URL),
// [*AuthError], [*MissingHeadersError], [*ParseError], [*StaleResponseError],
// [*FastLoopError], [*TransformError], [*FieldError]. A blocking Transform
// should be a TransformContext, which waits on the context of the Next
// that reads the message, or a TransformBatch, which takes the changes a
// response has already buffered at once. Query parameters named secret, api_secret, token and the
// like are redacted from URLs in errors and logs; tokens are never logged.
package client
