package proxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	jose "github.com/go-jose/go-jose/v4"
)

// Supported JWS algorithms. "none" is never accepted.
var supportedAlgs = map[string]bool{
	"HS256": true, "HS384": true, "HS512": true,
	"RS256": true, "RS384": true, "RS512": true,
	"PS256": true, "PS384": true, "PS512": true,
	"ES256": true, "ES384": true, "ES512": true,
	"EdDSA": true, "Ed25519": true, // RFC 9864's fully specified name
}

// A verifyKey is a configured or fetched key; its type alone decides which
// algorithms it verifies, so an RSA public key can never act as an HMAC
// secret (no algorithm confusion).
type verifyKey struct {
	id  string
	alg string // a JWK's "alg": then it verifies that algorithm only
	key any    // []byte (HMAC), *rsa.PublicKey, *ecdsa.PublicKey or ed25519.PublicKey
}

// hashBits is the digest size of alg ("HS384" → 384).
func hashBits(alg string) int {
	n, _ := strconv.Atoi(alg[2:])
	return n
}

// algAllowed reports whether the key verifies alg.
func (k *verifyKey) algAllowed(alg string) bool {
	if k.alg != "" && k.alg != alg {
		return false
	}
	switch pk := k.key.(type) {
	case []byte:
		// RFC 7518 §3.2: a key at least as long as the hash output.
		return strings.HasPrefix(alg, "HS") && len(pk)*8 >= hashBits(alg)
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		return ecCurve(alg) == pk.Curve
	case ed25519.PublicKey:
		return alg == "EdDSA" || alg == "Ed25519"
	}
	return false
}

// joseKey is the key as go-jose takes it to verify alg.
func (k *verifyKey) joseKey(alg string) any {
	if pk, ok := k.key.(ed25519.PublicKey); ok && alg == "Ed25519" {
		return ed25519Alias(pk)
	}
	return k.key
}

// ed25519Alias verifies RFC 9864's "Ed25519", the fully specified name of
// what go-jose knows only as "EdDSA".
type ed25519Alias ed25519.PublicKey

func (k ed25519Alias) VerifyPayload(payload, sig []byte, alg jose.SignatureAlgorithm) error {
	if alg != "Ed25519" || !ed25519.Verify(ed25519.PublicKey(k), payload, sig) {
		return errSignature
	}
	return nil
}

// ecCurve is the curve of an ES* algorithm, or nil.
func ecCurve(alg string) elliptic.Curve {
	switch alg {
	case "ES256":
		return elliptic.P256()
	case "ES384":
		return elliptic.P384()
	case "ES512":
		return elliptic.P521()
	}
	return nil
}

// Claims are the verified claims of a token: JSON values, with numbers as
// json.Number.
type Claims map[string]any

// Identity is what the proxy learnt from a verified token. The proxy
// shares it between the requests of a token: read it, never modify it.
type Identity struct {
	UserID   string
	DeviceID string
	Roles    []string
	Tenants  []string
	Claims   Claims
}

// verifier checks tokens against AuthConfig.
type verifier struct {
	cfg      AuthConfig
	algs     map[string]bool
	joseAlgs []jose.SignatureAlgorithm
	static   []*verifyKey
	jwks     *jwksCache
	now      func() time.Time // the clock of exp, nbf, iat, the cache and JWKS ages

	// cache holds recently verified tokens by their tokenKey, so that a
	// client's polls do not each pay for a signature check. An entry
	// lives at most verifiedTTL and never past the token's exp. Only
	// canonical tokens get here, and the two ECDSA forms of one token
	// share its key, so a token has one entry.
	cacheMu sync.Mutex
	cache   map[[32]byte]cachedIdentity
}

type cachedIdentity struct {
	id      *Identity
	exp     float64 // the token's exp claim
	alg     string  // the algorithm the signature was verified with
	expires time.Time
}

const (
	verifiedTTL     = time.Minute
	verifiedEntries = 10000
	maxTokenLen     = 16 << 10
)

func newVerifier(cfg AuthConfig) (*verifier, error) {
	v := &verifier{cfg: cfg, algs: map[string]bool{}, now: time.Now}
	if len(cfg.Algorithms) == 0 {
		return nil, errors.New("proxy: Auth.Algorithms must list the accepted JWS algorithms")
	}
	hsBits := 0 // the shortest hash of the allowed HS algorithms
	for _, a := range cfg.Algorithms {
		if !supportedAlgs[a] {
			return nil, fmt.Errorf("proxy: unsupported JWS algorithm %q", a)
		}
		if !v.algs[a] {
			v.algs[a] = true
			v.joseAlgs = append(v.joseAlgs, jose.SignatureAlgorithm(a))
		}
		if strings.HasPrefix(a, "HS") && (hsBits == 0 || hashBits(a) < hsBits) {
			hsBits = hashBits(a)
		}
	}
	for i, s := range cfg.HMACKeys {
		if len(s.Secret) < 32 {
			return nil, fmt.Errorf("proxy: Auth.HMACKeys[%d]: a secret needs at least 32 bytes", i)
		}
		if hsBits > 0 && len(s.Secret)*8 < hsBits {
			return nil, fmt.Errorf("proxy: Auth.HMACKeys[%d]: HS%d needs a secret of at least %d bytes", i, hsBits, hsBits/8)
		}
		v.static = append(v.static, &verifyKey{id: s.ID, key: bytes.Clone(s.Secret)})
	}
	for i, p := range cfg.PublicKeys {
		switch k := p.Key.(type) {
		case *rsa.PublicKey:
			if k == nil || k.N == nil || k.N.BitLen() < 2048 {
				return nil, fmt.Errorf("proxy: Auth.PublicKeys[%d]: RSA keys need at least 2048 bits", i)
			}
		case *ecdsa.PublicKey:
			if k == nil || k.Curve == nil {
				return nil, fmt.Errorf("proxy: Auth.PublicKeys[%d]: nil ECDSA key", i)
			}
		case ed25519.PublicKey:
			if len(k) != ed25519.PublicKeySize {
				return nil, fmt.Errorf("proxy: Auth.PublicKeys[%d]: bad Ed25519 key", i)
			}
		default:
			return nil, fmt.Errorf("proxy: Auth.PublicKeys[%d]: unsupported key type %T", i, p.Key)
		}
		v.static = append(v.static, &verifyKey{id: p.ID, key: p.Key})
	}
	if cfg.JWKSURL != "" {
		v.jwks = newJWKSCache(cfg, func() time.Time { return v.now() })
	}
	if len(v.static) == 0 && v.jwks == nil {
		return nil, errors.New("proxy: Auth needs HMACKeys, PublicKeys or a JWKSURL")
	}
	return v, nil
}

// Token errors. Every error Verify returns wraps errInvalidToken; their
// text (after "invalid token: ") is the error_description of the 401.
var (
	errInvalidToken = errors.New("invalid token")
	errNoToken      = fmt.Errorf("%w: no bearer token", errInvalidToken)
	errMalformed    = fmt.Errorf("%w: malformed", errInvalidToken)
	errAlgorithm    = fmt.Errorf("%w: algorithm not allowed", errInvalidToken)
	errUnknownKey   = fmt.Errorf("%w: no key for this token", errInvalidToken)
	errSignature    = fmt.Errorf("%w: bad signature", errInvalidToken)
	errExpired      = fmt.Errorf("%w: expired", errInvalidToken)
	errNotYetValid  = fmt.Errorf("%w: not yet valid", errInvalidToken)
	errIssuer       = fmt.Errorf("%w: wrong issuer", errInvalidToken)
	errAudience     = fmt.Errorf("%w: wrong audience", errInvalidToken)
	errClaims       = fmt.Errorf("%w: required claim missing or malformed", errInvalidToken)
)

// Verify checks a compact JWS token and returns its identity. Errors wrap
// errInvalidToken and never contain the token.
func (v *verifier) Verify(ctx context.Context, token string) (*Identity, error) {
	if len(token) > maxTokenLen {
		return nil, errMalformed
	}
	key, esAlg := tokenKey(token)
	now := v.now()
	v.cacheMu.Lock()
	c, hit := v.cache[key]
	v.cacheMu.Unlock()
	// An entry answers for another string of its token (the other s) only
	// if go-jose verified it with the ES* algorithm tokenKey read.
	if hit && now.Before(c.expires) && (esAlg == "" || c.alg == esAlg) {
		if float64(now.UnixNano())/1e9 > c.exp+v.cfg.Leeway.Seconds() {
			return nil, errExpired
		}
		return c.id, nil
	}
	id, exp, alg, err := v.verify(ctx, token)
	if err != nil {
		return nil, err
	}
	v.cacheMu.Lock()
	if v.cache == nil || len(v.cache) >= verifiedEntries {
		v.cache = map[[32]byte]cachedIdentity{} // crude but bounded
	}
	v.cache[key] = cachedIdentity{id: id, exp: exp, alg: alg, expires: now.Add(verifiedTTL)}
	v.cacheMu.Unlock()
	return id, nil
}

// verify checks a token fully and returns its identity, its exp and the
// algorithm of its signature.
func (v *verifier) verify(ctx context.Context, token string) (*Identity, float64, string, error) {
	if !canonicalCompact(token) {
		return nil, 0, "", errMalformed
	}
	jws, err := jose.ParseSignedCompact(token, v.joseAlgs)
	if err != nil {
		if _, ok := errors.AsType[*jose.ErrUnexpectedSignatureAlgorithm](err); ok {
			return nil, 0, "", errAlgorithm
		}
		return nil, 0, "", errMalformed
	}
	sig := jws.Signatures[0]
	alg, kid := sig.Header.Algorithm, sig.Header.KeyID
	if !v.algs[alg] {
		return nil, 0, "", errAlgorithm
	}
	for _, h := range []jose.HeaderKey{"crit", "b64"} {
		if _, ok := sig.Header.ExtraHeaders[h]; ok {
			return nil, 0, "", errMalformed // no extension is understood, and claims are base64url
		}
	}
	payload, ok := v.checkSig(ctx, jws, alg, kid)
	if !ok {
		if v.jwks != nil && kid != "" && !v.jwks.has(kid) {
			return nil, 0, "", errUnknownKey
		}
		return nil, 0, "", errSignature
	}
	if !strictJSONObject(payload) {
		return nil, 0, "", errMalformed
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var claims Claims
	if err := dec.Decode(&claims); err != nil || claims == nil {
		return nil, 0, "", errMalformed
	}
	if err := v.checkClaims(claims); err != nil {
		return nil, 0, "", err
	}
	exp, _, _ := numClaim(claims, "exp")
	id, err := v.identity(claims)
	return id, exp, alg, err
}

// canonicalCompact reports whether token is a compact JWS in its one
// canonical form, so that no two strings carry the same signed token (and
// the verified-token cache has one key for it) but for the two s of an
// ECDSA signature, which tokenKey maps to one key: three segments of
// unpadded base64url with no unused bits set, nothing else (no
// whitespace, no line breaks); a header that is one JSON object, in UTF-8,
// without duplicate keys or anything after it. (The signing input covers
// the header and payload as text, but go-jose re-encodes the decoded bytes
// to check it, so their encoding must be checked here.)
func canonicalCompact(token string) bool {
	segs := strings.Split(token, ".")
	if len(segs) != 3 {
		return false
	}
	var hdr []byte
	for i, s := range segs {
		for j := 0; j < len(s); j++ {
			if c := s[j]; !isAlnum(c) && c != '-' && c != '_' {
				return false
			}
		}
		b, err := canonicalB64.DecodeString(s)
		if err != nil {
			return false
		}
		if i == 0 {
			hdr = b
		}
	}
	return strictJSONObject(hdr)
}

// canonicalB64 refuses set unused bits (it still skips CR and LF, which
// canonicalCompact refuses first).
var canonicalB64 = base64.RawURLEncoding.Strict()

// maxJSONDepth bounds the nesting of a token's header and claims.
const maxJSONDepth = 32

// strictJSONObject reports whether b is exactly one JSON object: valid
// UTF-8, no key twice in any object, nothing (not even whitespace) before
// or after it.
func strictJSONObject(b []byte) bool {
	if len(b) == 0 || b[0] != '{' || !utf8.Valid(b) {
		return false
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return strictJSONValue(dec, 0) && dec.InputOffset() == int64(len(b))
}

func strictJSONValue(dec *json.Decoder, depth int) bool {
	t, err := dec.Token()
	if err != nil || depth > maxJSONDepth {
		return false
	}
	switch t {
	case json.Delim('{'):
		seen := map[string]bool{}
		for dec.More() {
			k, err := dec.Token()
			key, ok := k.(string)
			if err != nil || !ok || seen[key] {
				return false
			}
			seen[key] = true
			if !strictJSONValue(dec, depth+1) {
				return false
			}
		}
		_, err = dec.Token()
		return err == nil
	case json.Delim('['):
		for dec.More() {
			if !strictJSONValue(dec, depth+1) {
				return false
			}
		}
		_, err = dec.Token()
		return err == nil
	}
	return true
}

// tokenKey is a token's identity: the SHA-256 of its canonical form, the
// key of the verified-token cache (and what anything that names tokens,
// such as a deny list, must use). canonicalCompact gives a token one
// string, except that ECDSA signatures are malleable: (r, n−s) verifies
// wherever (r, s) does, and issuers that do not normalise s (Go's
// crypto/ecdsa, OpenSSL, WebCrypto) send either form. Both are accepted;
// the canonical form is the one with the low s (s ≤ n/2), so a token whose
// signature segment is canonical base64url of an ES* signature with
// n/2 < s < n has the key of the same string with n−s. Any other token is
// its own canonical form (or not canonical at all, and refused by
// verify).
//
// esAlg is the ES* algorithm tokenKey read from the header when the
// signature was a candidate for that mapping, "" otherwise (the key is
// then the token's own SHA-256). A cache entry answers for a token only
// when it was verified with esAlg, so that a header read differently here
// and by go-jose can never let another string share a verified entry.
func tokenKey(token string) (key [32]byte, esAlg string) {
	key = sha256.Sum256([]byte(token))
	h, i := strings.IndexByte(token, '.'), strings.LastIndexByte(token, '.')
	if h < 0 || h == i {
		return key, ""
	}
	seg := token[i+1:]
	var alg string
	switch len(seg) { // unpadded base64url of 2×32, 2×48 and 2×66 bytes
	case 86:
		alg = "ES256"
	case 128:
		alg = "ES384"
	case 176:
		alg = "ES512"
	default:
		return key, ""
	}
	if headerAlg(token[:h]) != alg {
		return key, ""
	}
	sig, err := canonicalB64.DecodeString(seg)
	if err != nil || canonicalB64.EncodeToString(sig) != seg {
		return key, ""
	}
	n := ecCurve(alg).Params().N
	size := len(sig) / 2
	s := new(big.Int).SetBytes(sig[size:])
	if s.Cmp(new(big.Int).Rsh(n, 1)) <= 0 || s.Cmp(n) >= 0 {
		return key, alg // already low (or invalid: verify refuses it)
	}
	s.Sub(n, s).FillBytes(sig[size:])
	return sha256.Sum256([]byte(token[:i+1] + canonicalB64.EncodeToString(sig))), alg
}

// headerAlg is the "alg" of an encoded header, "" if there is none.
func headerAlg(seg string) string {
	b, err := canonicalB64.DecodeString(seg)
	if err != nil {
		return ""
	}
	var hdr map[string]json.RawMessage // keys compared exactly, as go-jose does
	var alg string
	if json.Unmarshal(b, &hdr) != nil || json.Unmarshal(hdr["alg"], &alg) != nil {
		return ""
	}
	return alg
}

// checkSig verifies jws with the first key that matches its kid and alg
// and returns the payload: the configured keys, then the JWKS, refreshed
// (rate-limited) once when the kid is unknown.
func (v *verifier) checkSig(ctx context.Context, jws *jose.JSONWebSignature, alg, kid string) ([]byte, bool) {
	try := func(keys []*verifyKey) (payload []byte, matched, ok bool) {
		for _, k := range keys {
			if kid != "" && k.id != "" && k.id != kid || !k.algAllowed(alg) {
				continue
			}
			matched = true
			if p, err := jws.Verify(k.joseKey(alg)); err == nil {
				return p, true, true
			}
		}
		return nil, matched, false
	}
	if p, _, ok := try(v.static); ok {
		return p, true
	}
	if v.jwks == nil {
		return nil, false
	}
	p, matched, ok := try(v.jwks.keys(ctx))
	if !ok && !matched && kid != "" {
		// Unknown kid: refresh (rate-limited) and try once more.
		if keys, refreshed := v.jwks.refreshForUnknown(ctx); refreshed {
			p, _, ok = try(keys)
		}
	}
	return p, ok
}

func numClaim(c Claims, name string) (float64, bool, error) {
	raw, ok := c[name]
	if !ok {
		return 0, false, nil
	}
	n, isNum := raw.(json.Number)
	if !isNum {
		return 0, true, errClaims
	}
	f, err := n.Float64()
	if err != nil {
		return 0, true, errClaims
	}
	return f, true, nil
}

func (v *verifier) checkClaims(c Claims) error {
	now := float64(v.now().UnixNano()) / 1e9
	leeway := v.cfg.Leeway.Seconds()
	exp, ok, err := numClaim(c, "exp")
	if err != nil {
		return err
	}
	if !ok {
		return errClaims // exp is required
	}
	if now > exp+leeway {
		return errExpired
	}
	if nbf, ok, err := numClaim(c, "nbf"); err != nil {
		return err
	} else if ok && now+leeway < nbf {
		return errNotYetValid
	}
	if iat, ok, err := numClaim(c, "iat"); err != nil {
		return err
	} else if ok && now+leeway < iat {
		return errNotYetValid
	}
	if v.cfg.Issuer != "" {
		iss, _ := c["iss"].(string)
		if iss != v.cfg.Issuer {
			return errIssuer
		}
	}
	if len(v.cfg.Audience) > 0 {
		var auds []string
		switch a := c["aud"].(type) {
		case string:
			auds = []string{a}
		case []any:
			for _, x := range a {
				if s, ok := x.(string); ok {
					auds = append(auds, s)
				}
			}
		}
		found := false
		for _, want := range v.cfg.Audience {
			for _, got := range auds {
				if got == want {
					found = true
				}
			}
		}
		if !found {
			return errAudience
		}
	}
	return nil
}

// lookup finds a claim by path: an exact top-level key first, then a
// dot-separated path through nested objects.
func lookup(c Claims, path string) (any, bool) {
	if v, ok := c[path]; ok {
		return v, true
	}
	var cur any = map[string]any(c)
	for _, p := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[p]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// scalarString renders a string, number or boolean claim.
func scalarString(v any) (string, bool) {
	switch x := v.(type) {
	case string:
		return x, true
	case json.Number:
		return x.String(), true
	case bool:
		if x {
			return "true", true
		}
		return "false", true
	}
	return "", false
}

// stringList reads a claim that is a list of scalars, or one scalar (a
// space-separated string is split, as OAuth scope claims are).
func stringList(v any) ([]string, bool) {
	switch x := v.(type) {
	case []any:
		out := make([]string, 0, len(x))
		for _, e := range x {
			s, ok := scalarString(e)
			if !ok {
				return nil, false
			}
			out = append(out, s)
		}
		return out, true
	case string:
		return strings.Fields(x), true
	}
	if s, ok := scalarString(v); ok {
		return []string{s}, true
	}
	return nil, false
}

func (v *verifier) identity(c Claims) (*Identity, error) {
	id := &Identity{Claims: c}
	raw, ok := lookup(c, v.cfg.claim(v.cfg.UserClaim, "sub"))
	if !ok {
		return nil, errClaims
	}
	if id.UserID, ok = scalarString(raw); !ok || id.UserID == "" {
		return nil, errClaims
	}
	if raw, ok := lookup(c, v.cfg.claim(v.cfg.DeviceClaim, "device_id")); ok {
		if id.DeviceID, ok = scalarString(raw); !ok {
			return nil, errClaims
		}
	}
	if raw, ok := lookup(c, v.cfg.claim(v.cfg.RolesClaim, "roles")); ok {
		if id.Roles, ok = stringList(raw); !ok {
			return nil, errClaims
		}
	}
	if raw, ok := lookup(c, v.cfg.claim(v.cfg.TenantsClaim, "tenant_ids")); ok {
		if id.Tenants, ok = stringList(raw); !ok {
			return nil, errClaims
		}
	}
	return id, nil
}

// jwksCache holds the keys of a JWKS URL. It is fetched on first use,
// again after MaxAge, and on an unknown kid at most once per
// MinRefreshInterval. A fetch runs on its own goroutine, one at a time,
// never under mu: verifications with a known key go on with the keys at
// hand meanwhile; only the first use and an unknown kid wait for it. Ages
// are measured with the verifier's clock.
type jwksCache struct {
	url         string
	client      *http.Client
	timeout     time.Duration
	maxAge      time.Duration
	minInterval time.Duration
	now         func() time.Time

	mu        sync.Mutex
	set       []*verifyKey
	fetchedAt time.Time     // of set
	triedAt   time.Time     // when the last fetch started (zero: never)
	fetching  chan struct{} // closed when the fetch in flight ends; nil when none
}

func newJWKSCache(cfg AuthConfig, now func() time.Time) *jwksCache {
	c := &jwksCache{url: cfg.JWKSURL, client: cfg.HTTPClient, timeout: cfg.JWKSTimeout,
		maxAge: cfg.JWKSMaxAge, minInterval: cfg.JWKSMinRefreshInterval, now: now}
	if c.client == nil {
		c.client = http.DefaultClient
	}
	if c.timeout <= 0 {
		c.timeout = 5 * time.Second
	}
	if c.maxAge <= 0 {
		c.maxAge = time.Hour
	}
	if c.minInterval <= 0 {
		c.minInterval = 30 * time.Second
	}
	return c
}

func (c *jwksCache) has(kid string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range c.set {
		if k.id == kid {
			return true
		}
	}
	return false
}

// keys returns the current keys. A set older than maxAge is refreshed in
// the background (its keys are used meanwhile); before the first set,
// keys waits for the first fetch.
func (c *jwksCache) keys(ctx context.Context) []*verifyKey {
	c.mu.Lock()
	now := c.now()
	if (c.set == nil || now.Sub(c.fetchedAt) > c.maxAge) && c.fetching == nil && c.mayTry(now) {
		c.startLocked(ctx, now)
	}
	ch := c.fetching
	set := c.set
	c.mu.Unlock()
	if set == nil && ch != nil {
		return c.wait(ctx, ch)
	}
	return set
}

// refreshForUnknown refetches the set for a kid it lacks, unless a fetch
// started less than minInterval ago; refreshed is false then. A fetch in
// flight is waited for rather than repeated.
func (c *jwksCache) refreshForUnknown(ctx context.Context) (keys []*verifyKey, refreshed bool) {
	c.mu.Lock()
	if c.fetching == nil {
		now := c.now()
		if !c.mayTry(now) {
			set := c.set
			c.mu.Unlock()
			return set, false
		}
		c.startLocked(ctx, now)
	}
	ch := c.fetching
	c.mu.Unlock()
	return c.wait(ctx, ch), true
}

func (c *jwksCache) mayTry(now time.Time) bool {
	return c.triedAt.IsZero() || now.Sub(c.triedAt) >= c.minInterval
}

// wait waits for the fetch that closes ch (or ctx) and returns the keys.
func (c *jwksCache) wait(ctx context.Context, ch chan struct{}) []*verifyKey {
	select {
	case <-ch:
	case <-ctx.Done():
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.set
}

// startLocked starts a fetch; on failure the old keys stay. It runs apart
// from ctx's cancellation: the caller going away leaves it to others.
func (c *jwksCache) startLocked(ctx context.Context, now time.Time) {
	ch := make(chan struct{})
	c.triedAt, c.fetching = now, ch
	ctx = context.WithoutCancel(ctx)
	go func() {
		keys, err := c.fetch(ctx)
		c.mu.Lock()
		if err == nil {
			c.set, c.fetchedAt = keys, c.now()
		}
		c.fetching = nil
		c.mu.Unlock()
		close(ch)
	}()
}

func (c *jwksCache) fetch(ctx context.Context) ([]*verifyKey, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS: status %d", resp.StatusCode)
	}
	return parseJWKS(io.LimitReader(resp.Body, 1<<20))
}

// parseJWKS reads the signature keys of a JWK set with go-jose: RSA (2048
// bits or more), EC and OKP (Ed25519) public keys. Symmetric ("oct") and
// private keys, keys for encryption, and keys go-jose cannot read are
// skipped, each on its own.
func parseJWKS(r io.Reader) ([]*verifyKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.NewDecoder(r).Decode(&set); err != nil {
		return nil, err
	}
	keys := []*verifyKey{}
	for _, raw := range set.Keys {
		var k jose.JSONWebKey
		if k.UnmarshalJSON(raw) != nil || !k.Valid() || !k.IsPublic() || k.Use != "" && k.Use != "sig" {
			continue
		}
		if pk, ok := k.Key.(*rsa.PublicKey); ok && pk.N.BitLen() < 2048 {
			continue
		}
		if k.Algorithm != "" && !supportedAlgs[k.Algorithm] {
			continue
		}
		keys = append(keys, &verifyKey{id: k.KeyID, alg: k.Algorithm, key: k.Key})
	}
	return keys, nil
}
