package proxy

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

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
