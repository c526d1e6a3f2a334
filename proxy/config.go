package proxy

import (
	"context"
	"crypto"
	"log/slog"
	"net/http"
	"time"
)

// Config configures a proxy. Upstream, Auth and at least one Shape are
// required.
type Config struct {
	// Upstream is Electric's base URL, e.g. http://electric:3000; the proxy
	// requests Upstream+"/v1/shape" and Upstream+"/v1/health".
	Upstream string
	// Secret is Electric's API secret (ELECTRIC_SECRET), added to every
	// upstream shape request. Clients never see it.
	Secret string

	Auth   AuthConfig
	Shapes []ShapeRule
	Limits Limits

	// AllowedOrigins lists the CORS origins answered with
	// Access-Control-Allow-Origin. Empty allows any origin ("*"): tokens
	// travel in the Authorization header, never in cookies.
	AllowedOrigins []string

	// Logger receives one audit line per request and upstream errors. Nil
	// discards them.
	Logger *slog.Logger

	// Transport makes upstream requests; nil clones http.DefaultTransport.
	Transport http.RoundTripper

	// Authorize, if set, is asked about every shape request once a rule
	// has matched it and the rule's own checks (roles, claims, columns)
	// have passed: each GET or HEAD of /v1/shapes/{name}, and each
	// upstream request of a WebSocket subscription (the check at
	// subscribe time counting as its first). An error refuses the request
	// with 403 (an error frame with status 403 on a WebSocket, which ends
	// the subscription); the client never sees the error's text, which
	// goes to the audit line; so does a panic, which refuses the request
	// too. It is called concurrently, before the request counts toward
	// Limits.MaxLivePerUser, and must not modify its arguments.
	Authorize func(ctx context.Context, id *Identity, req *Request) error

	// MetricsListen, if set, moves GET /metrics off the proxy's routes,
	// where anyone who reaches the proxy could read it: [Proxy.Serve]
	// serves it on a listener of its own at this address (such as
	// "127.0.0.1:9090"), and [Proxy.MetricsHandler] wherever it is
	// mounted. Empty serves it with the other routes.
	MetricsListen string
}

// Request is a shape request that a rule has matched, as [Config.Authorize]
// sees it: what the proxy is about to ask Electric for on behalf of the
// token's identity.
type Request struct {
	// Shape is the rule's name. Table, Where and Params are what the rule
	// resolved for the token: the table, the where clause ("" for none)
	// and the values of its $1..$n.
	Shape  string
	Table  string
	Where  string
	Params []string
	// Columns is the projection (rule's allowlist, or the client's
	// narrower choice), unquoted; nil for every column.
	Columns []string
	// Live is true for a live poll: an HTTP request with live=true, or a
	// WebSocket subscription past its first up-to-date.
	Live bool
	// WebSocket is true for a subscription of GET /v1/ws; HTTP is then
	// the upgrade request, else the shape request itself.
	WebSocket bool
	HTTP      *http.Request
}

// AuthConfig configures JWT verification (compact JWS in
// "Authorization: Bearer"). A key's type decides which algorithms it
// verifies: HMACKeys only HS* (HS384 and HS512 only with secrets of at
// least 48 and 64 bytes, RFC 7518 §3.2), RSA keys RS*/PS*, ECDSA keys ES*
// of their curve, Ed25519 keys EdDSA (or Ed25519). "none" is never
// accepted.
type AuthConfig struct {
	// Algorithms is the allowlist of JWS "alg" values, e.g. ["RS256"].
	// Required.
	Algorithms []string

	HMACKeys   []HMACKey
	PublicKeys []PublicKey

	// JWKSURL, if set, is fetched (with JWKSTimeout, default 5 s) on first
	// use and after JWKSMaxAge (default 1 h: the keys at hand serve while
	// it is refetched); a token with an unknown kid triggers a refetch at
	// most once per JWKSMinRefreshInterval (default 30 s). One fetch runs
	// at a time, and tokens with known keys never wait for it.
	// HTTPClient fetches it (nil: http.DefaultClient). Keys with a "use"
	// other than "sig", private and symmetric keys are ignored; a key
	// with an "alg" verifies that algorithm only.
	JWKSURL                string
	JWKSTimeout            time.Duration
	JWKSMaxAge             time.Duration
	JWKSMinRefreshInterval time.Duration
	HTTPClient             *http.Client

	// Issuer, if set, must equal the "iss" claim. Audience, if set, must
	// contain one of the "aud" values.
	Issuer   string
	Audience []string
	// Leeway tolerates clock skew in exp, nbf and iat. "exp" is required.
	Leeway time.Duration

	// Claim paths: a top-level claim name, or a dot-separated path into
	// nested objects ("app_metadata.roles"). Defaults: "sub", "roles",
	// "tenant_ids", "device_id". Roles and tenants may be arrays or
	// space-separated strings.
	UserClaim    string
	RolesClaim   string
	TenantsClaim string
	DeviceClaim  string
}

func (a AuthConfig) claim(set, def string) string {
	if set != "" {
		return set
	}
	return def
}

// HMACKey is a shared secret for HS256/HS384/HS512: at least 32 bytes,
// and as long as the hash of the algorithms it verifies (HS384: 48,
// HS512: 64); New refuses a secret too short for every allowed HS
// algorithm. ID, if set, must equal the token's "kid" when it has one.
type HMACKey struct {
	ID     string
	Secret []byte
}

// PublicKey is an *rsa.PublicKey (2048 bits or more), *ecdsa.PublicKey or
// ed25519.PublicKey. ID, if set, must equal the token's "kid" when it has
// one.
type PublicKey struct {
	ID  string
	Key crypto.PublicKey
}

// Rule kinds.
const (
	// KindTable (the default) serves Table filtered by Where.
	KindTable = "table"
	// KindTenantKeys serves shapeseal_tenant_keys filtered to the token's
	// user (user_id = $1) and, when the token names a device, to that
	// device (AND device_id = $2). A device claim that is present but not
	// a non-empty string is refused (403), never read as "every device".
	// Table, Where and Params must be empty.
	KindTenantKeys = "tenant_keys"
)

// Cache modes.
const (
	// CacheAuto (the default) marks responses private when the shape
	// depends on the token (Where has claim parameters, Roles are
	// required, or tenant_keys) and leaves Electric's cache-control
	// otherwise.
	CacheAuto = ""
	// CachePrivate always rewrites cache-control to private.
	CachePrivate = "private"
	// CacheNone sends cache-control: no-store.
	CacheNone = "no-store"
)

// ShapeRule is one named shape, served at /v1/shapes/{Name}.
type ShapeRule struct {
	// Name: letters, digits, '_' and '-'.
	Name string
	Kind string // KindTable (default) or KindTenantKeys

	// Table is the root table ("items", "app.items", `"Mixed"`).
	Table string
	// Where is a fixed SQL filter; $1..$n refer to Params. It is sent to
	// Electric as written, so it may use what Electric's where accepts,
	// such as a membership subquery:
	// "tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id = $1)"
	// with Params ["$user"] (see "Rules" in the package documentation).
	Where string
	// Params are claim paths (as in AuthConfig) whose values fill $1..$n.
	// A string, number or boolean claim is sent as is; an array claim as
	// a Postgres array literal ({"a","b"}), for use as
	// "tenant_id = ANY($1::text[])". The special path "$tenants" is the
	// tenants claim (AuthConfig.TenantsClaim), "$user" the user id and
	// "$device" the device id. A missing claim → 403.
	Params []string

	// Roles, if set: the token must carry one of them, or 403.
	Roles []string
	// Columns is the allowed projection; empty allows all columns. The
	// client may narrow it with a columns parameter of allowed names,
	// quoted or not.
	Columns []string
	// Replica is pinned: "", "default" or "full".
	Replica string
	// Cache is CacheAuto, CachePrivate or CacheNone.
	Cache string
}

// Limits bound each user's use of the proxy. Zero values take defaults;
// negative values disable a limit.
type Limits struct {
	// RequestsPerSecond and Burst define a token bucket per user
	// (default 20/s, burst 100).
	RequestsPerSecond float64
	Burst             int
	// MaxLivePerUser bounds a user's concurrent live requests (default
	// 32): live HTTP polls, WebSocket connections, and each live
	// subscription of a WebSocket.
	MaxLivePerUser int
	// UpstreamTimeout bounds an upstream request (default 5 min; live
	// polls take 20 s, SSE 60 s).
	UpstreamTimeout time.Duration
}

func (l Limits) withDefaults() Limits {
	if l.RequestsPerSecond == 0 {
		l.RequestsPerSecond = 20
	}
	if l.Burst == 0 {
		l.Burst = 100
	}
	if l.MaxLivePerUser == 0 {
		l.MaxLivePerUser = 32
	}
	if l.UpstreamTimeout <= 0 {
		l.UpstreamTimeout = 5 * time.Minute
	}
	return l
}
