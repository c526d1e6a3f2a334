// Package proxy is shapeseal's authorizing proxy in front of Electric: it
// verifies a JWT, decides the shape from a named rule, and streams
// Electric's response back. Clients never choose a table, a where clause
// or its parameters, and never see the Electric secret.
//
// # Endpoints
//
// A [Proxy] is an http.Handler; mount it at the root of a server or under
// a prefix with http.StripPrefix. Relative to the mount point it serves:
//
//	GET|HEAD /v1/shapes/{name}?offset=…  the shape rule called name
//	OPTIONS  /v1/shapes/{name}           CORS preflight (allows Authorization; alike for every name)
//	GET      /v1/ws                       a WebSocket carrying many shapes (below)
//	GET      /healthz                     200 when the upstream /v1/health is 200 (checked at most once a second)
//	GET      /metrics                     Prometheus text format (elsewhere with Config.MetricsListen)
//
// A shape URL is used by the Go client (client.Options.URL) or the
// TypeScript client exactly as Electric's /v1/shape would be, with no
// table, where or params.
//
// # What a client may send
//
// Only the protocol's position parameters: offset, handle, live, cursor,
// live_sse, experimental_live_sse, expired_handle, cache-buster and log,
// each once and with a value of the expected form; and columns, naming
// columns from the rule's allowlist, quoted or not (the proxy canonicalises
// and sends them quoted). Everything else is answered with 400 and a JSON
// body and is never forwarded: table, where, params[n], secret,
// api_secret, replica, subset parameters, unknown or repeated parameters,
// percent-encoded parameter names (keys are compared before decoding),
// percent-encoded, dot-segment, double-slash or trailing-slash paths, POST
// (whose body Electric would merge over the query) and any request body.
// The upstream query is built from scratch out of the validated values and
// the rule: table, where, params[n], columns, replica and secret.
//
// # Authentication
//
// "Authorization: Bearer <JWS>" is verified with the configured HMAC
// secrets, RSA/ECDSA/Ed25519 public keys or a JWKS URL (see [AuthConfig]);
// go-jose (github.com/go-jose/go-jose/v4) parses the JWS and JWKs and
// checks signatures. The key's type decides the algorithm family, so a
// public key can never be used as an HMAC secret, and only algorithms in
// AuthConfig.Algorithms are accepted ("none" never is). exp is required;
// exp, nbf and iat are checked with AuthConfig.Leeway; issuer and audience
// when configured. An invalid token gets 401 with WWW-Authenticate: Bearer
// error="invalid_token" and a short error_description; a missing one gets
// 401 with WWW-Authenticate: Bearer realm="shapeseal" (RFC 6750 §3.1). The
// token is never echoed or logged. A valid token without a role the rule
// requires, or without a claim the rule's where needs, gets 403. Verified
// tokens are remembered (by SHA-256) for up to a minute, never past their
// exp, so a key removed from a JWKS stops being accepted within a minute
// of the JWKS being refetched.
//
// A token is accepted only in its canonical form, so that one signed token
// has one key in that cache (and in a deny list): "Bearer", one or more
// spaces and the token, nothing trimmed from it (a WebSocket's auth message
// carries it alone); three segments of unpadded base64url without set
// unused bits, line breaks or other characters; an ECDSA signature with
// either s — (r, s) and (r, n−s) both verify, and are one token, keyed by
// the low-s form; a header and claims that are each exactly one JSON
// object in UTF-8, with no key twice and nothing after it; no "crit" or
// "b64" header. Anything else is "malformed".
//
// # Rules
//
// A [ShapeRule] pins a table, a where template whose $1..$n come from
// claims (ShapeRule.Params: claim paths, or "$user", "$device",
// "$tenants"; array claims become Postgres array literals such as
// {"acme","globex"}, to be used as "tenant_id = ANY($1::text[])"), the
// allowed columns, the replica mode and the cache mode. The
// [KindTenantKeys] rule serves shapeseal_tenant_keys with
// "user_id = $1" (and "AND device_id = $2" when the token has a device
// claim), so a user only ever receives their own wrapped keys. A device
// claim that is empty or not a string gets 403 on such a rule: it never
// falls back to every device's keys.
//
// Membership-based authorization: the where may test membership with a
// subquery, its parameters filled from claims like any other, e.g.
//
//	{Name: "items", Table: "items", Params: []string{"$user"},
//	 Where: "tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id = $1)"}
//
// serves the items of the tenants the token's user is a member of, as the
// memberships table says now rather than as a claim said when the token
// was issued. The proxy sends the where as written, so it takes what
// Electric (and electrictest, with its narrower grammar: one
// "col IN (SELECT col FROM t [WHERE ...])", alone or ANDed with simple
// conditions) accepts; an unsupported one is Electric's 400 on every
// request of the rule. As with every rule the client chooses none of it:
// where, params, table or a column outside the allowlist is refused with
// 400 before anything reaches Electric. Live streams follow the inner
// table: when a membership row is deleted Electric sends a move-out event
// (not deletes) for the rows that leave, and when one is added a move-in
// event followed by the rows, as inserts; the proxy passes both through
// unchanged, over HTTP and WebSocket, and client.Shape applies them (rows
// carry tags for that). The Shape class of the official TypeScript client
// (@electric-sql/client 1.5.26) does not: it ignores the events, so rows
// of a tenant the user has left stay in its rows (the user's view, not
// new data: nothing about them is sent after the move-out); a TypeScript
// application must apply move-out events from the ShapeStream itself
// (see TestTypeScriptClientSubqueryRule). The inner table is read with the rule's where
// only: its rows are never sent, and a subquery without claim parameters
// is the same shape for every user. Keep the subquery's table writable
// only by trusted code: whoever can insert a membership row can grant
// themselves a tenant.
//
// # Authorization hook
//
// [Config.Authorize], if set, is called for every request a rule has
// matched (after the rule's roles, claims and columns are checked), with
// the token's [Identity] and the resolved [Request]: table, where, params
// and columns as they will be sent upstream. An error refuses the request
// with 403 and a body that says only "Forbidden"; the error goes to the
// audit line. On a WebSocket it is asked at subscribe and before each
// upstream request of the subscription.
//
// # Responses
//
// Bodies are streamed with a flush after every read, so live responses
// and SSE events are not held back; a client that goes away cancels the
// upstream request. Served with [Proxy.Serve] over plain HTTP at both
// ends, a non-live GET's body (a snapshot, a catch-up) is passed through
// without entering the proxy: the client connection is hijacked once the
// filtered headers are written and the body is moved between the two
// sockets with splice(2), chunked bodies re-framed chunk by chunk (see
// splice.go); both connections are then kept alive. A shared live
// response is sent with its Content-Length before the audit line is
// written. Electric's headers (electric-*, etag, cache-control,
// retry-after, content-type) are forwarded without hop-by-hop headers and
// without those naming the servers behind the proxy (electric-server,
// server, via, x-powered-by); Vary: Authorization is added. Shapes that depend on the token (claim
// parameters, required roles, tenant_keys) have cache-control rewritten from public to
// private (s-maxage dropped, surrogate-control: no-store), so no shared
// cache serves one user's rows to another. A 409 passes through with its
// headers and body. An unreachable upstream, or one that refuses the
// proxy's secret, gives 502 with a JSON body.
//
// # Coalesced live polls
//
// Live GETs (live=true, not SSE) whose upstream request would be identical
// share one upstream request, as Electric's docs advise collapsing live
// requests: the key is the rule-resolved upstream query (table, where,
// params, columns, replica, handle, offset, live and cursor) plus the
// forwarded Accept, Accept-Encoding and If-None-Match. Because where
// params come from claims, polls of a per-user or per-tenant rule are
// shared only among users whose resolved params are the same. The cursor
// is part of the key: Electric answers every poll of a shape within a
// cursor interval with the same cursor, so clients in step share it, and a
// client is never handed a cursor computed for another's request (which
// could equal its own and defeat a CDN's cache busting). The response
// (status, headers, body up to 1 MiB) is read whole and replayed to every
// waiter, each with its own Vary, cache-control rewrite, request id,
// audit line and metrics; a larger body is not shared, and each waiter
// then fetches and streams it on its own. The shared request runs apart
// from any client: one leaving does not cancel it while others wait; the
// last one leaving does. The WebSocket subscriptions below use the same
// mechanism.
//
// Served with [Proxy.Serve] (as `shapeseal proxy` does) instead of as a
// plain handler, a coalesced poll still waiting after 100 ms is parked:
// its connection leaves net/http's handler, buffers and goroutines, and is
// answered from the shared request, then handed back for keep-alive. A
// parked poll costs a few KB instead of about 25 (see park.go).
//
// # WebSocket multiplexing
//
// One WebSocket carries many shape subscriptions, each following a shape
// rule exactly as GET /v1/shapes/{name} would (same roles, pinned table,
// where, params and columns). Every frame is a JSON text message with a
// "type".
//
// The URL carries no query: a token in the URL (or any query) is answered
// with 400 before the upgrade. The first client message must be
//
//	{"type":"auth","token":"<JWS>"}
//
// verified like an Authorization header; the connection then counts as one
// of the user's concurrent live requests (Limits.MaxLivePerUser; beyond it
// the connection is closed with 1013), and so does each of its live
// subscriptions while it lasts (beyond the limit, the subscribe gets a
// 429 error frame); every subscribe and refresh takes a token from the
// user's request-rate bucket (else a 429 error frame). Until the auth message arrives nothing else is
// accepted; a connection that sends anything else first, an invalid token,
// or nothing within 10 s is closed with 1008 (policy violation). The server
// answers {"type":"auth_ok","exp":<unix seconds>}. A later auth message
// replaces the token on the connection (it must name the same user; a
// failed refresh is answered with {"type":"error","status":401,...} and the
// old token stays; a new token whose claims change a rule's parameters
// turns that rule's subscriptions into a must_refetch with an empty handle).
// When the current token expires, no new upstream poll
// starts: the server sends {"type":"auth_required"} once and every
// subscription waits, keeping its position, until a valid auth arrives.
//
// Client → server:
//
//	{"type":"subscribe","id":"s1","shape":"items","offset":"-1","handle":"",
//	 "columns":["id","title"],"live":true}
//	{"type":"unsubscribe","id":"s1"}
//
// id is 1–64 of [A-Za-z0-9_.:-], unique among the connection's active
// subscriptions. offset is -1 (default), "now" or an offset from an earlier
// messages frame, which then needs its handle. columns narrows the rule's
// allowlist. live (default true) keeps long-polling after the first
// up-to-date; with live false the subscription ends after it.
//
// Server → client, per subscription:
//
//	{"type":"messages","id":"s1","handle":"…","offset":"…","cursor":"…",
//	 "up_to_date":true,"schema":{…},"messages":[…Electric's messages…]}
//	{"type":"must_refetch","id":"s1","handle":"<new handle>"}
//	{"type":"error","id":"s1","status":403,"error":"…"}
//	{"type":"done","id":"s1"}
//
// A messages frame is one upstream response, whole: its handle and offset
// are where to resume (subscribe again with them) once all its messages are
// processed. After must_refetch the subscription restarts from offset -1
// with the new handle: discard what it delivered before. An error frame
// ends the subscription (400, 403, 404 for the request; 429 for the rate
// or live limit; 502 when the upstream refuses the proxy); upstream outages are
// retried with backoff and are not reported. done follows the first
// up-to-date of a non-live subscription, and an unsubscribe.
//
// Identical live polls — the same rule-resolved upstream URL (table, where,
// params, columns, handle, offset, cursor) — from any connections share one
// upstream request whose response is fanned out; the request is cancelled
// when its last waiter goes away (see Coalesced live polls; WebSocket
// polls and HTTP polls are coalesced separately).
//
// Each connection has a bounded outbound queue (256 frames or 16 MiB
// waiting behind the frame being written; one frame is one upstream
// response of at most 64 MiB). A consumer that lets it overflow is closed
// with code 4008 "slow consumer" and its queue dropped; a frame whose write
// takes over 30 s closes the connection.
//
// # Configuration file
//
// [LoadConfig] reads the same settings from YAML, with
// secrets from the environment: ELECTRIC_URL, ELECTRIC_SECRET, JWT_SECRET,
// JWT_PUBLIC_KEY, JWKS_URL, or per-key secret_env names.
// testdata/example.yaml is a commented sample. `shapeseal proxy --config
// FILE [--listen ADDR]` serves it (no write timeout, so live polls are
// held; graceful shutdown on SIGINT/SIGTERM), printing one line
// `shapeseal proxy ready {"proxy_url":…}` and JSON audit lines on stderr.
//
// # Operations
//
// One slog line per request (request id, method, shape, user, status,
// bytes, duration, live, reason) — never tokens, secrets or query
// strings. Each user has a token-bucket request rate and a bound on
// concurrent live requests ([Limits]); beyond them, 429 with Retry-After.
//
// # Metrics
//
// GET /metrics writes the Prometheus text format, next to the shapes or,
// with [Config.MetricsListen], only on a listener of its own
// ([Proxy.Serve]) or wherever [Proxy.MetricsHandler] is mounted. Label
// values are shape rule names, status and close codes and the fixed
// reasons below, never anything a client chose, so the series stay few. A
// request is labelled with its shape only once its token is verified:
// anonymous requests (401s, preflights) count under "-", so the page never
// tells which shape names exist.
//
// HTTP (a WebSocket upgrade counts here too, as one request with status
// 101 lasting as long as its connection):
//
//	shapeseal_proxy_requests_total{shape,status}        counter   requests by shape rule ("-" for other paths) and status
//	shapeseal_proxy_request_duration_seconds{shape}     histogram to the end of the body
//	shapeseal_proxy_live_requests                       gauge     live upstream polls in flight (HTTP and WebSocket)
//	shapeseal_proxy_upstream_shared_live_requests       gauge     upstream live requests shared by coalesced HTTP polls
//	shapeseal_proxy_live_parked                         gauge     coalesced live polls parked off their handler (Proxy.Serve)
//	shapeseal_proxy_upstream_errors_total               counter   upstream failures: network, timeouts, refused credentials, bad bodies
//	shapeseal_proxy_response_bytes_total                counter   body bytes sent to clients, WebSocket frames included
//
// WebSocket (/v1/ws):
//
//	shapeseal_proxy_ws_connections                      gauge     connections upgraded and not yet ended
//	shapeseal_proxy_ws_connections_closed_total{reason,code}
//	                                                    counter   connections ended, by why and by close code
//	shapeseal_proxy_ws_subscriptions{shape}             gauge     subscriptions being followed
//	shapeseal_proxy_ws_messages_sent_total              counter   WebSocket messages written (every frame type)
//	shapeseal_proxy_ws_bytes_sent_total                 counter   their payload bytes
//	shapeseal_proxy_ws_slow_consumer_closes_total       counter   connections closed with 4008
//	shapeseal_proxy_ws_token_refreshes_total{result}    counter   later auth messages: "ok", or "failed" (invalid, another user, rate-limited)
//
// The close reasons, each with the code it comes with: client (the code
// the client sent, or "other" for one outside 1000–1015), connection_lost (1006: the connection broke without a
// close frame), message_too_big (1009: a client message over 64 KiB),
// auth_timeout, no_auth (the first message was not auth), bad_message (not
// JSON text) and invalid_token (all 1008), live_limit (1013),
// slow_consumer (4008) and write_failed (1006: a write failed or took over
// 30 s). A subscription leaves the gauge on unsubscribe, on its error or
// done frame, and when its connection ends. A refusal of the first auth
// message is not a refresh: it is an invalid_token close.
//
// Go runtime gauges follow (go_goroutines and go_memstats_* heap, stack
// and total bytes).
package proxy
