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
//	OPTIONS  /v1/shapes/{name}           CORS preflight (allows Authorization)
//	GET      /healthz                     200 when the upstream /v1/health is 200
//	GET      /metrics                     Prometheus text format
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
// secrets, RSA/ECDSA/Ed25519 public keys or a JWKS URL (see [AuthConfig]),
// with the standard library only. The key's type decides the algorithm
// family, so a public key can never be used as an HMAC secret, and only
// algorithms in AuthConfig.Algorithms are accepted ("none" never is). exp
// is required; exp, nbf and iat are checked with AuthConfig.Leeway;
// issuer and audience when configured. An invalid token gets 401 with
// WWW-Authenticate: Bearer error="invalid_token" and a short
// error_description; a missing one gets 401 with WWW-Authenticate: Bearer
// realm="shapeseal" (RFC 6750 §3.1). The token is never echoed or logged. A
// valid token without a role the rule requires, or without a claim the
// rule's where needs, gets 403. Verified tokens are remembered (by SHA-256)
// for up to a minute, never past their exp, so a key removed from a JWKS
// stops being accepted within a minute.
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
// claim), so a user only ever receives their own wrapped keys.
//
// # Responses
//
// Bodies are streamed with a flush after every read, so live responses
// and SSE events are not held back; a client that goes away cancels the
// upstream request. Electric's headers (electric-*, etag, cache-control,
// retry-after, content-type) are forwarded without hop-by-hop headers;
// Vary: Authorization is added. Shapes that depend on the token (claim
// parameters, required roles, tenant_keys) have cache-control rewritten from public to
// private (s-maxage dropped, surrogate-control: no-store), so no shared
// cache serves one user's rows to another. A 409 passes through with its
// headers and body. An unreachable upstream, or one that refuses the
// proxy's secret, gives 502 with a JSON body.
//
// # Configuration file
//
// [LoadConfig] reads the same settings from YAML (see [FileConfig]), with
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
package proxy
