package proxy

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"
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
	id     string
	secret []byte           // HMAC
	pub    crypto.PublicKey // *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey
}

// algAllowed reports whether the key type supports alg.
func (k *verifyKey) algAllowed(alg string) bool {
	switch pk := k.pub.(type) {
	case nil:
		return k.secret != nil && strings.HasPrefix(alg, "HS")
	case *rsa.PublicKey:
		return strings.HasPrefix(alg, "RS") || strings.HasPrefix(alg, "PS")
	case *ecdsa.PublicKey:
		switch pk.Curve {
		case elliptic.P256():
			return alg == "ES256"
		case elliptic.P384():
			return alg == "ES384"
		case elliptic.P521():
			return alg == "ES512"
		}
	case ed25519.PublicKey:
		return alg == "EdDSA" || alg == "Ed25519"
	}
	return false
}

func hashFor(alg string) (crypto.Hash, func() hash.Hash) {
	switch alg[2:] {
	case "256":
		return crypto.SHA256, sha256.New
	case "384":
		return crypto.SHA384, sha512.New384
	case "512":
		return crypto.SHA512, sha512.New
	}
	return 0, nil
}

// verify checks sig over signed with the key and alg (which algAllowed
// has accepted).
func (k *verifyKey) verify(alg string, signed, sig []byte) bool {
	if alg == "EdDSA" || alg == "Ed25519" {
		pk, ok := k.pub.(ed25519.PublicKey)
		return ok && len(pk) == ed25519.PublicKeySize && ed25519.Verify(pk, signed, sig)
	}
	h, newHash := hashFor(alg)
	if newHash == nil {
		return false
	}
	switch alg[:2] {
	case "HS":
		m := hmac.New(newHash, k.secret)
		m.Write(signed)
		return hmac.Equal(m.Sum(nil), sig) // constant time
	case "RS", "PS":
		pk, ok := k.pub.(*rsa.PublicKey)
		if !ok {
			return false
		}
		d := newHash()
		d.Write(signed)
		if alg[0] == 'R' {
			return rsa.VerifyPKCS1v15(pk, h, d.Sum(nil), sig) == nil
		}
		return rsa.VerifyPSS(pk, h, d.Sum(nil), sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto}) == nil
	case "ES":
		pk, ok := k.pub.(*ecdsa.PublicKey)
		if !ok {
			return false
		}
		size := (pk.Curve.Params().BitSize + 7) / 8
		if len(sig) != 2*size {
			return false
		}
		d := newHash()
		d.Write(signed)
		r := new(big.Int).SetBytes(sig[:size])
		s := new(big.Int).SetBytes(sig[size:])
		return ecdsa.Verify(pk, d.Sum(nil), r, s)
	}
	return false
}

// Claims are the verified claims of a token.
type Claims map[string]any

// Identity is what the proxy learnt from a verified token.
type Identity struct {
	UserID   string
	DeviceID string
	Roles    []string
	Tenants  []string
	Claims   Claims
}

// verifier checks tokens against AuthConfig.
type verifier struct {
	cfg    AuthConfig
	algs   map[string]bool
	static []*verifyKey
	jwks   *jwksCache
	now    func() time.Time

	// cache holds recently verified tokens by their SHA-256, so that a
	// client's polls do not each pay for a signature check. An entry
	// lives at most verifiedTTL and never past the token's exp.
	cacheMu sync.Mutex
	cache   map[[32]byte]cachedIdentity
}

type cachedIdentity struct {
	id      *Identity
	exp     float64 // the token's exp claim
	expires time.Time
}

const (
	verifiedTTL     = time.Minute
	verifiedEntries = 10000
)

func newVerifier(cfg AuthConfig) (*verifier, error) {
	v := &verifier{cfg: cfg, algs: map[string]bool{}, now: time.Now}
	if len(cfg.Algorithms) == 0 {
		return nil, errors.New("proxy: Auth.Algorithms must list the accepted JWS algorithms")
	}
	for _, a := range cfg.Algorithms {
		if !supportedAlgs[a] {
			return nil, fmt.Errorf("proxy: unsupported JWS algorithm %q", a)
		}
		v.algs[a] = true
	}
	for i, s := range cfg.HMACKeys {
		if len(s.Secret) < 32 {
			return nil, fmt.Errorf("proxy: Auth.HMACKeys[%d]: a secret needs at least 32 bytes", i)
		}
		v.static = append(v.static, &verifyKey{id: s.ID, secret: bytes.Clone(s.Secret)})
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
		v.static = append(v.static, &verifyKey{id: p.ID, pub: p.Key})
	}
	if cfg.JWKSURL != "" {
		v.jwks = newJWKSCache(cfg)
	}
	if len(v.static) == 0 && v.jwks == nil {
		return nil, errors.New("proxy: Auth needs HMACKeys, PublicKeys or a JWKSURL")
	}
	return v, nil
}

// Token errors. Every error Verify returns wraps ErrInvalidToken.
var (
	ErrInvalidToken = errors.New("invalid token")
	ErrNoToken      = fmt.Errorf("%w: no bearer token", ErrInvalidToken)
	ErrMalformed    = fmt.Errorf("%w: malformed", ErrInvalidToken)
	ErrAlgorithm    = fmt.Errorf("%w: algorithm not allowed", ErrInvalidToken)
	ErrUnknownKey   = fmt.Errorf("%w: no key for this token", ErrInvalidToken)
	ErrSignature    = fmt.Errorf("%w: bad signature", ErrInvalidToken)
	ErrExpired      = fmt.Errorf("%w: expired", ErrInvalidToken)
	ErrNotYetValid  = fmt.Errorf("%w: not yet valid", ErrInvalidToken)
	ErrIssuer       = fmt.Errorf("%w: wrong issuer", ErrInvalidToken)
	ErrAudience     = fmt.Errorf("%w: wrong audience", ErrInvalidToken)
	ErrClaims       = fmt.Errorf("%w: required claim missing or malformed", ErrInvalidToken)
)

var b64 = base64.RawURLEncoding

// Verify checks a compact JWS token and returns its identity. Errors wrap
// ErrInvalidToken and never contain the token.
func (v *verifier) Verify(ctx context.Context, token string) (*Identity, error) {
	if len(token) > 16<<10 {
		return nil, ErrMalformed
	}
	sum := sha256.Sum256([]byte(token))
	now := v.now()
	v.cacheMu.Lock()
	c, hit := v.cache[sum]
	v.cacheMu.Unlock()
	if hit && now.Before(c.expires) {
		if float64(now.UnixNano())/1e9 > c.exp+v.cfg.Leeway.Seconds() {
			return nil, ErrExpired
		}
		return c.id, nil
	}
	id, exp, err := v.verify(ctx, token)
	if err != nil {
		return nil, err
	}
	v.cacheMu.Lock()
	if v.cache == nil || len(v.cache) >= verifiedEntries {
		v.cache = map[[32]byte]cachedIdentity{} // crude but bounded
	}
	v.cache[sum] = cachedIdentity{id: id, exp: exp, expires: now.Add(verifiedTTL)}
	v.cacheMu.Unlock()
	return id, nil
}

// verify checks a token fully and returns its identity and exp.
func (v *verifier) verify(ctx context.Context, token string) (*Identity, float64, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, 0, ErrMalformed
	}
	hb, err := b64.DecodeString(parts[0])
	if err != nil {
		return nil, 0, ErrMalformed
	}
	var hdr struct {
		Alg  string `json:"alg"`
		Kid  string `json:"kid"`
		Crit []any  `json:"crit"`
	}
	if err := json.Unmarshal(hb, &hdr); err != nil {
		return nil, 0, ErrMalformed
	}
	if hdr.Crit != nil {
		return nil, 0, ErrMalformed // no critical extensions are understood
	}
	if !supportedAlgs[hdr.Alg] || !v.algs[hdr.Alg] {
		return nil, 0, ErrAlgorithm
	}
	sig, err := b64.DecodeString(parts[2])
	if err != nil {
		return nil, 0, ErrMalformed
	}
	signed := []byte(parts[0] + "." + parts[1])
	if !v.checkSig(ctx, hdr.Alg, hdr.Kid, signed, sig) {
		if v.jwks != nil && hdr.Kid != "" && !v.jwks.has(hdr.Kid) {
			return nil, 0, ErrUnknownKey
		}
		return nil, 0, ErrSignature
	}
	pb, err := b64.DecodeString(parts[1])
	if err != nil {
		return nil, 0, ErrMalformed
	}
	dec := json.NewDecoder(bytes.NewReader(pb))
	dec.UseNumber()
	var claims Claims
	if err := dec.Decode(&claims); err != nil || claims == nil {
		return nil, 0, ErrMalformed
	}
	if err := v.checkClaims(claims); err != nil {
		return nil, 0, err
	}
	exp, _, _ := numClaim(claims, "exp")
	id, err := v.identity(claims)
	return id, exp, err
}

func (v *verifier) checkSig(ctx context.Context, alg, kid string, signed, sig []byte) bool {
	try := func(keys []*verifyKey) (matched bool, ok bool) {
		for _, k := range keys {
			if kid != "" && k.id != "" && k.id != kid {
				continue
			}
			if !k.algAllowed(alg) {
				continue
			}
			matched = true
			if k.verify(alg, signed, sig) {
				return true, true
			}
		}
		return matched, false
	}
	if _, ok := try(v.static); ok {
		return true
	}
	if v.jwks == nil {
		return false
	}
	keys := v.jwks.keys(ctx)
	matched, ok := try(keys)
	if ok {
		return true
	}
	if !matched && kid != "" {
		// Unknown kid: refresh (rate-limited) and try once more.
		if keys, refreshed := v.jwks.refreshForUnknown(ctx, kid); refreshed {
			_, ok = try(keys)
		}
	}
	return ok
}

func numClaim(c Claims, name string) (float64, bool, error) {
	raw, ok := c[name]
	if !ok {
		return 0, false, nil
	}
	n, isNum := raw.(json.Number)
	if !isNum {
		return 0, true, ErrClaims
	}
	f, err := n.Float64()
	if err != nil {
		return 0, true, ErrClaims
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
		return ErrClaims // exp is required
	}
	if now > exp+leeway {
		return ErrExpired
	}
	if nbf, ok, err := numClaim(c, "nbf"); err != nil {
		return err
	} else if ok && now+leeway < nbf {
		return ErrNotYetValid
	}
	if iat, ok, err := numClaim(c, "iat"); err != nil {
		return err
	} else if ok && now+leeway < iat {
		return ErrNotYetValid
	}
	if v.cfg.Issuer != "" {
		iss, _ := c["iss"].(string)
		if iss != v.cfg.Issuer {
			return ErrIssuer
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
			return ErrAudience
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
		return nil, ErrClaims
	}
	if id.UserID, ok = scalarString(raw); !ok || id.UserID == "" {
		return nil, ErrClaims
	}
	if raw, ok := lookup(c, v.cfg.claim(v.cfg.DeviceClaim, "device_id")); ok {
		if id.DeviceID, ok = scalarString(raw); !ok {
			return nil, ErrClaims
		}
	}
	if raw, ok := lookup(c, v.cfg.claim(v.cfg.RolesClaim, "roles")); ok {
		if id.Roles, ok = stringList(raw); !ok {
			return nil, ErrClaims
		}
	}
	if raw, ok := lookup(c, v.cfg.claim(v.cfg.TenantsClaim, "tenant_ids")); ok {
		if id.Tenants, ok = stringList(raw); !ok {
			return nil, ErrClaims
		}
	}
	return id, nil
}

// jwksCache holds the keys of a JWKS URL. It is fetched on first use,
// again after MaxAge, and on an unknown kid at most once per
// MinRefreshInterval.
type jwksCache struct {
	url         string
	client      *http.Client
	timeout     time.Duration
	maxAge      time.Duration
	minInterval time.Duration

	mu        sync.Mutex
	set       []*verifyKey
	fetchedAt time.Time
	triedAt   time.Time
}

func newJWKSCache(cfg AuthConfig) *jwksCache {
	c := &jwksCache{url: cfg.JWKSURL, client: cfg.HTTPClient, timeout: cfg.JWKSTimeout,
		maxAge: cfg.JWKSMaxAge, minInterval: cfg.JWKSMinRefreshInterval}
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

func (c *jwksCache) keys(ctx context.Context) []*verifyKey {
	c.mu.Lock()
	defer c.mu.Unlock()
	if (c.set == nil || time.Since(c.fetchedAt) > c.maxAge) && time.Since(c.triedAt) >= c.minInterval {
		c.refreshLocked(ctx)
	}
	return c.set
}

func (c *jwksCache) refreshForUnknown(ctx context.Context, kid string) ([]*verifyKey, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if time.Since(c.triedAt) < c.minInterval {
		return c.set, false
	}
	c.refreshLocked(ctx)
	return c.set, true
}

// refreshLocked fetches the set; on failure the old keys stay.
func (c *jwksCache) refreshLocked(ctx context.Context) {
	c.triedAt = time.Now()
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return
	}
	keys, err := parseJWKS(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return
	}
	c.set, c.fetchedAt = keys, time.Now()
}

// parseJWKS reads RSA, EC and OKP (Ed25519) public keys; symmetric ("oct")
// and private material are ignored.
func parseJWKS(r io.Reader) ([]*verifyKey, error) {
	var set struct {
		Keys []struct {
			Kty string `json:"kty"`
			Kid string `json:"kid"`
			Use string `json:"use"`
			Crv string `json:"crv"`
			N   string `json:"n"`
			E   string `json:"e"`
			X   string `json:"x"`
			Y   string `json:"y"`
			D   string `json:"d"`
		} `json:"keys"`
	}
	if err := json.NewDecoder(r).Decode(&set); err != nil {
		return nil, err
	}
	keys := []*verifyKey{}
	for _, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" || k.D != "" {
			continue
		}
		var pub crypto.PublicKey
		switch k.Kty {
		case "RSA":
			n, err1 := b64.DecodeString(k.N)
			e, err2 := b64.DecodeString(k.E)
			if err1 != nil || err2 != nil || len(e) > 4 || len(e) == 0 {
				continue
			}
			pk := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
			if pk.N.BitLen() < 2048 {
				continue
			}
			pub = pk
		case "EC":
			var curve elliptic.Curve
			switch k.Crv {
			case "P-256":
				curve = elliptic.P256()
			case "P-384":
				curve = elliptic.P384()
			case "P-521":
				curve = elliptic.P521()
			default:
				continue
			}
			x, err1 := b64.DecodeString(k.X)
			y, err2 := b64.DecodeString(k.Y)
			size := (curve.Params().BitSize + 7) / 8
			if err1 != nil || err2 != nil || len(x) != size || len(y) != size {
				continue
			}
			raw := append([]byte{4}, append(x, y...)...)
			pk, err := ecdsa.ParseUncompressedPublicKey(curve, raw)
			if err != nil {
				continue
			}
			pub = pk
		case "OKP":
			x, err := b64.DecodeString(k.X)
			if k.Crv != "Ed25519" || err != nil || len(x) != ed25519.PublicKeySize {
				continue
			}
			pub = ed25519.PublicKey(x)
		default:
			continue
		}
		keys = append(keys, &verifyKey{id: k.Kid, pub: pub})
	}
	return keys, nil
}
