package proxy

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"hash"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Test keys, generated once.
var (
	keysOnce  sync.Once
	rsaKey    *rsa.PrivateKey
	rsaKey2   *rsa.PrivateKey
	ecKey     *ecdsa.PrivateKey
	ec384Key  *ecdsa.PrivateKey
	edPub     ed25519.PublicKey
	edPriv    ed25519.PrivateKey
	hmacKey   = []byte("0123456789abcdef0123456789abcdef0123456789abcdef-test-secret-64b!") // long enough for HS512
	otherHMAC = []byte("ffffffffffffffffffffffffffffffff-other-secret")
)

func testKeys(t testing.TB) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if rsaKey2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		if ec384Key, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
			panic(err)
		}
		if edPub, edPriv, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
	})
}

var b64 = base64.RawURLEncoding

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

// sign makes a compact JWS with the standard library, independently of
// the go-jose the proxy verifies with. key is []byte for HS*, or a private
// key. ECDSA signatures are given their low s (highS makes the other form,
// which the proxy accepts as the same token).
func sign(t testing.TB, alg, kid string, key any, claims map[string]any) string {
	t.Helper()
	hdr := map[string]any{"alg": alg, "typ": "JWT"}
	if kid != "" {
		hdr["kid"] = kid
	}
	hb, _ := json.Marshal(hdr)
	cb, _ := json.Marshal(claims)
	return signRaw(t, alg, key, string(hb), string(cb))
}

// signRaw signs a header and payload given as raw JSON text, byte for byte.
func signRaw(t testing.TB, alg string, key any, hdr, payload string) string {
	t.Helper()
	return signInput(t, alg, key, b64.EncodeToString([]byte(hdr))+"."+b64.EncodeToString([]byte(payload)))
}

// signInput signs the signing input (the encoded header and payload) and
// appends the signature.
func signInput(t testing.TB, alg string, key any, signed string) string {
	t.Helper()
	var sig []byte
	if alg != "none" {
		h, newHash := hashFor(alg)
		if alg == "EdDSA" || alg == "Ed25519" {
			sig = ed25519.Sign(key.(ed25519.PrivateKey), []byte(signed))
		} else {
			switch alg[:2] {
			case "HS":
				m := hmac.New(newHash, key.([]byte))
				m.Write([]byte(signed))
				sig = m.Sum(nil)
			case "RS", "PS":
				d := newHash()
				d.Write([]byte(signed))
				var err error
				if alg[0] == 'R' {
					sig, err = rsa.SignPKCS1v15(rand.Reader, key.(*rsa.PrivateKey), h, d.Sum(nil))
				} else {
					sig, err = rsa.SignPSS(rand.Reader, key.(*rsa.PrivateKey), h, d.Sum(nil), nil)
				}
				if err != nil {
					t.Fatal(err)
				}
			case "ES":
				k := key.(*ecdsa.PrivateKey)
				d := newHash()
				d.Write([]byte(signed))
				r, s, err := ecdsa.Sign(rand.Reader, k, d.Sum(nil))
				if err != nil {
					t.Fatal(err)
				}
				if n := k.Curve.Params().N; s.Cmp(new(big.Int).Rsh(n, 1)) > 0 {
					s.Sub(n, s)
				}
				size := (k.Curve.Params().BitSize + 7) / 8
				sig = make([]byte, 2*size)
				r.FillBytes(sig[:size])
				s.FillBytes(sig[size:])
			}
		}
	}
	return signed + "." + b64.EncodeToString(sig)
}

func claimsFor(user string, extra map[string]any) map[string]any {
	now := time.Now().Unix()
	c := map[string]any{"sub": user, "iss": "https://issuer.test", "aud": "shapeseal",
		"iat": now, "nbf": now, "exp": now + 600}
	for k, v := range extra {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

func testAuth() AuthConfig {
	return AuthConfig{
		Algorithms: []string{"HS256", "HS384", "HS512", "RS256", "RS512", "PS256", "ES256", "ES384", "EdDSA", "Ed25519"},
		HMACKeys:   []HMACKey{{ID: "hs", Secret: hmacKey}},
		PublicKeys: []PublicKey{
			{ID: "rs", Key: &rsaKey.PublicKey},
			{ID: "ec", Key: &ecKey.PublicKey},
			{ID: "ec384", Key: &ec384Key.PublicKey},
			{ID: "ed", Key: edPub},
		},
		Issuer:   "https://issuer.test",
		Audience: []string{"shapeseal"},
		Leeway:   5 * time.Second,
	}
}

func TestVerifyAlgorithms(t *testing.T) {
	testKeys(t)
	v, err := newVerifier(testAuth())
	if err != nil {
		t.Fatal(err)
	}
	c := claimsFor("alice", map[string]any{"roles": []string{"reader"}, "tenant_ids": "acme globex", "device_id": "laptop"})
	for _, tc := range []struct {
		alg, kid string
		key      any
	}{
		{"HS256", "hs", hmacKey}, {"HS384", "", hmacKey}, {"HS512", "hs", hmacKey},
		{"RS256", "rs", rsaKey}, {"RS512", "", rsaKey}, {"PS256", "rs", rsaKey},
		{"ES256", "ec", ecKey}, {"ES384", "ec384", ec384Key}, {"ES256", "", ecKey},
		{"EdDSA", "ed", edPriv}, {"Ed25519", "ed", edPriv},
	} {
		id, err := v.Verify(context.Background(), sign(t, tc.alg, tc.kid, tc.key, c))
		if err != nil {
			t.Errorf("%s kid=%q: %v", tc.alg, tc.kid, err)
			continue
		}
		if id.UserID != "alice" || id.DeviceID != "laptop" || len(id.Roles) != 1 || len(id.Tenants) != 2 {
			t.Errorf("%s: identity %+v", tc.alg, id)
		}
	}
}

// rejectCases are tokens every verifier with testAuth must refuse.
func rejectCases(t testing.TB) map[string]struct {
	token string
	want  error
} {
	testKeys(t)
	now := time.Now().Unix()
	good := claimsFor("alice", nil)
	pubDER, _ := x509.MarshalPKIXPublicKey(&rsaKey.PublicKey)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	noneTok := sign(t, "none", "", nil, good)
	// alg "none" with a signature copied from a valid token.
	valid := sign(t, "RS256", "rs", rsaKey, good)
	noneSig := noneTok + valid[lastDot(valid):]
	type rc = struct {
		token string
		want  error
	}
	return map[string]rc{
		"alg none":                     {noneTok, errAlgorithm},
		"alg none with signature":      {noneSig, errAlgorithm},
		"alg None":                     {sign(t, "none", "", nil, good)[:0] + signHeader(t, `{"alg":"None"}`, good), errAlgorithm},
		"HS256 with RSA public PEM":    {sign(t, "HS256", "rs", pubPEM, good), errSignature},
		"HS256 with RSA PEM, no kid":   {sign(t, "HS256", "", pubPEM, good), errSignature},
		"HS256 with RSA DER":           {sign(t, "HS256", "", pubDER, good), errSignature},
		"HS256 with Ed25519 key":       {sign(t, "HS256", "ed", []byte(edPub), good), errSignature},
		"RS256 with other RSA key":     {sign(t, "RS256", "rs", rsaKey2, good), errSignature},
		"ES256 signed by ES384 key":    {sign(t, "ES384", "ec", ec384Key, good), errSignature},
		"HS256 other secret":           {sign(t, "HS256", "hs", otherHMAC, good), errSignature},
		"alg not in allowlist (RS384)": {sign(t, "RS384", "rs", rsaKey, good), errAlgorithm},
		"expired":                      {sign(t, "RS256", "rs", rsaKey, claimsFor("alice", map[string]any{"exp": now - 60})), errExpired},
		"no exp":                       {sign(t, "RS256", "rs", rsaKey, claimsFor("alice", map[string]any{"exp": nil})), errClaims},
		"exp as string":                {sign(t, "RS256", "rs", rsaKey, claimsFor("alice", map[string]any{"exp": "9999999999"})), errClaims},
		"not yet valid":                {sign(t, "RS256", "rs", rsaKey, claimsFor("alice", map[string]any{"nbf": now + 60})), errNotYetValid},
		"issued in the future":         {sign(t, "RS256", "rs", rsaKey, claimsFor("alice", map[string]any{"iat": now + 60})), errNotYetValid},
		"wrong issuer":                 {sign(t, "RS256", "rs", rsaKey, claimsFor("alice", map[string]any{"iss": "https://evil.test"})), errIssuer},
		"no issuer":                    {sign(t, "RS256", "rs", rsaKey, claimsFor("alice", map[string]any{"iss": nil})), errIssuer},
		"wrong audience":               {sign(t, "RS256", "rs", rsaKey, claimsFor("alice", map[string]any{"aud": []string{"other"}})), errAudience},
		"unknown kid":                  {sign(t, "RS256", "nope", rsaKey, good), errSignature},
		"no subject":                   {sign(t, "RS256", "rs", rsaKey, claimsFor("", nil)), errClaims},
		"garbage":                      {"not.a.token", errMalformed},
		"two parts":                    {"abc.def", errMalformed},
		"tampered payload":             {tamper(valid), errSignature},
		"high-s ECDSA, unused bits":    {setUnusedBit(highS(sign(t, "ES256", "ec", ecKey, good))), errMalformed},
		"HS512 with n-s as its half":   {highS(sign(t, "HS512", "hs", hmacKey, good)), errSignature},
		"unused bits set":              {setUnusedBit(valid), errMalformed},
		"padded":                       {valid + "==", errMalformed},
		"duplicate claim":              {signRaw(t, "RS256", rsaKey, `{"alg":"RS256","kid":"rs"}`, `{"sub":"bob","sub":"alice","exp":9999999999}`), errMalformed},
		"data after the claims":        {signRaw(t, "RS256", rsaKey, `{"alg":"RS256","kid":"rs"}`, `{"sub":"alice","exp":9999999999} `), errMalformed},
	}
}

// highS replaces the s of an ES* token's signature with n-s: a signature
// as valid, in the form many issuers send (Go's crypto/ecdsa, OpenSSL and
// WebCrypto do not normalise s). It treats any 64, 96 or 132-byte
// signature as ES256, ES384 or ES512.
func highS(tok string) string {
	seg := splitDots(tok)
	sig, _ := b64.DecodeString(seg[2])
	half := len(sig) / 2
	n := map[int]elliptic.Curve{32: elliptic.P256(), 48: elliptic.P384(), 66: elliptic.P521()}[half].Params().N
	new(big.Int).Sub(n, new(big.Int).SetBytes(sig[half:])).FillBytes(sig[half:])
	return seg[0] + "." + seg[1] + "." + b64.EncodeToString(sig)
}

// setUnusedBit sets an unused bit of a token's signature segment.
func setUnusedBit(tok string) string {
	i := lastDot(tok)
	s, ok := flipUnused(tok[i:])
	if !ok {
		panic("no unused bits in " + tok[i:])
	}
	return tok[:i] + s
}

func lastDot(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '.' {
			return i + 1
		}
	}
	return 0
}

// signHeader builds an unsigned token with a raw header.
func signHeader(t testing.TB, hdr string, claims map[string]any) string {
	cb, _ := json.Marshal(claims)
	return b64.EncodeToString([]byte(hdr)) + "." + b64.EncodeToString(cb) + "."
}

// tamper changes the subject of a token, keeping its signature.
func tamper(tok string) string {
	parts := splitDots(tok)
	pb, _ := b64.DecodeString(parts[1])
	var c map[string]any
	json.Unmarshal(pb, &c)
	c["sub"] = "bob"
	nb, _ := json.Marshal(c)
	return parts[0] + "." + b64.EncodeToString(nb) + "." + parts[2]
}

func splitDots(s string) []string {
	var out []string
	start := 0
	for i := 0; i < len(s); i++ {
		if s[i] == '.' {
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

func TestVerifyRejects(t *testing.T) {
	testKeys(t)
	v, err := newVerifier(testAuth())
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range rejectCases(t) {
		_, err := v.Verify(context.Background(), tc.token)
		if !errors.Is(err, tc.want) || !errors.Is(err, errInvalidToken) {
			t.Errorf("%s: got %v, want %v", name, err, tc.want)
		}
	}
}

func TestVerifyLeeway(t *testing.T) {
	testKeys(t)
	v, _ := newVerifier(testAuth())
	now := time.Now().Unix()
	tok := sign(t, "RS256", "rs", rsaKey, claimsFor("alice", map[string]any{"exp": now - 2, "nbf": now + 2}))
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("within leeway: %v", err)
	}
}

func TestNewVerifierConfig(t *testing.T) {
	testKeys(t)
	for name, cfg := range map[string]AuthConfig{
		"no algorithms":         {HMACKeys: []HMACKey{{Secret: hmacKey}}},
		"none allowed":          {Algorithms: []string{"none"}, HMACKeys: []HMACKey{{Secret: hmacKey}}},
		"short secret":          {Algorithms: []string{"HS256"}, HMACKeys: []HMACKey{{Secret: []byte("short")}}},
		"no keys":               {Algorithms: []string{"HS256"}},
		"private key":           {Algorithms: []string{"RS256"}, PublicKeys: []PublicKey{{Key: rsaKey}}},
		"nil EC key":            {Algorithms: []string{"ES256"}, PublicKeys: []PublicKey{{Key: (*ecdsa.PublicKey)(nil)}}},
		"nil RSA key":           {Algorithms: []string{"RS256"}, PublicKeys: []PublicKey{{Key: (*rsa.PublicKey)(nil)}}},
		"short Ed key":          {Algorithms: []string{"EdDSA"}, PublicKeys: []PublicKey{{Key: ed25519.PublicKey{1}}}},
		"small RSA key":         {Algorithms: []string{"RS256"}, PublicKeys: []PublicKey{{Key: &rsa.PublicKey{N: big.NewInt(1 << 40), E: 65537}}}},
		"HS512, 32-byte secret": {Algorithms: []string{"HS512"}, HMACKeys: []HMACKey{{Secret: hmacKey[:32]}}},
		"HS384, 47-byte secret": {Algorithms: []string{"HS384", "HS512"}, HMACKeys: []HMACKey{{Secret: hmacKey[:47]}}},
	} {
		if _, err := newVerifier(cfg); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestClaimPaths(t *testing.T) {
	testKeys(t)
	a := testAuth()
	a.UserClaim, a.RolesClaim, a.TenantsClaim, a.DeviceClaim = "app.uid", "https://x.test/roles", "app.orgs", "dev"
	v, _ := newVerifier(a)
	tok := sign(t, "HS256", "hs", hmacKey, claimsFor("ignored", map[string]any{
		"app":                  map[string]any{"uid": 42, "orgs": []string{"a", "b"}},
		"https://x.test/roles": []string{"admin"},
		"dev":                  "phone",
	}))
	id, err := v.Verify(context.Background(), tok)
	if err != nil {
		t.Fatal(err)
	}
	if id.UserID != "42" || id.DeviceID != "phone" || id.Roles[0] != "admin" || len(id.Tenants) != 2 {
		t.Fatalf("identity %+v", id)
	}
}

func jwk(t testing.TB, kid string, pub crypto.PublicKey) map[string]any {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return map[string]any{"kty": "RSA", "kid": kid, "use": "sig", "n": b64.EncodeToString(k.N.Bytes()),
			"e": b64.EncodeToString(big.NewInt(int64(k.E)).Bytes())}
	case *ecdsa.PublicKey:
		raw, _ := k.Bytes()
		size := (len(raw) - 1) / 2
		return map[string]any{"kty": "EC", "kid": kid, "crv": k.Curve.Params().Name, "x": b64.EncodeToString(raw[1 : 1+size]), "y": b64.EncodeToString(raw[1+size:])}
	case ed25519.PublicKey:
		return map[string]any{"kty": "OKP", "kid": kid, "crv": "Ed25519", "x": b64.EncodeToString(k)}
	}
	t.Fatalf("jwk: %T", pub)
	return nil
}

func TestJWKS(t *testing.T) {
	testKeys(t)
	var fetches atomic.Int32
	var mu sync.Mutex
	keys := []any{jwk(t, "k1", &rsaKey.PublicKey), jwk(t, "e1", &ecKey.PublicKey), jwk(t, "d1", edPub),
		map[string]any{"kty": "oct", "kid": "sym", "k": b64.EncodeToString(hmacKey)}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		mu.Lock()
		defer mu.Unlock()
		json.NewEncoder(w).Encode(map[string]any{"keys": keys})
	}))
	defer srv.Close()
	v, err := newVerifier(AuthConfig{Algorithms: []string{"RS256", "ES256", "EdDSA", "HS256"}, JWKSURL: srv.URL,
		JWKSMinRefreshInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c := claimsFor("alice", nil)
	for _, tok := range []string{sign(t, "RS256", "k1", rsaKey, c), sign(t, "ES256", "e1", ecKey, c), sign(t, "EdDSA", "d1", edPriv, c)} {
		if _, err := v.Verify(ctx, tok); err != nil {
			t.Fatal(err)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Fatalf("%d fetches, want 1 (cached)", n)
	}
	// A symmetric JWK is never used: HS256 signed with its secret fails.
	if _, err := v.Verify(ctx, sign(t, "HS256", "sym", hmacKey, c)); !errors.Is(err, errInvalidToken) {
		t.Fatalf("oct key accepted: %v", err)
	}
	// Unknown kids trigger at most one refetch per interval.
	time.Sleep(250 * time.Millisecond)
	before := fetches.Load()
	for range 20 {
		if _, err := v.Verify(ctx, sign(t, "RS256", "k2", rsaKey2, c)); !errors.Is(err, errUnknownKey) {
			t.Fatalf("unknown kid: %v", err)
		}
	}
	if n := fetches.Load() - before; n != 1 {
		t.Fatalf("%d refetches for unknown kids, want 1", n)
	}
	// Key rotation: the new key appears and is found after the interval.
	mu.Lock()
	keys = append(keys, jwk(t, "k2", &rsaKey2.PublicKey))
	mu.Unlock()
	time.Sleep(250 * time.Millisecond)
	if _, err := v.Verify(ctx, sign(t, "RS256", "k2", rsaKey2, c)); err != nil {
		t.Fatalf("rotated key: %v", err)
	}
}

// FuzzVerify: no input panics, and nothing but a token signed by a
// configured key is accepted.
func FuzzVerify(f *testing.F) {
	testKeys(f)
	v, err := newVerifier(testAuth())
	if err != nil {
		f.Fatal(err)
	}
	for _, tc := range rejectCases(f) {
		f.Add(tc.token)
	}
	f.Add(sign(f, "RS256", "rs", rsaKey, claimsFor("alice", nil)))
	f.Fuzz(func(t *testing.T, tok string) {
		id, err := v.Verify(context.Background(), tok)
		if err == nil && (id == nil || id.UserID == "") {
			t.Fatalf("accepted without identity")
		}
		if err != nil && !errors.Is(err, errInvalidToken) {
			t.Fatalf("untyped error %v", err)
		}
	})
}

func TestVerifiedCacheHonoursExp(t *testing.T) {
	testKeys(t)
	v, _ := newVerifier(testAuth())
	now := time.Now()
	tok := sign(t, "ES256", "ec", ecKey, claimsFor("alice", map[string]any{"exp": now.Unix() + 3}))
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Verify(context.Background(), tok); err != nil {
		t.Fatalf("cached: %v", err)
	}
	v.now = func() time.Time { return now.Add(10 * time.Second) }
	if _, err := v.Verify(context.Background(), tok); !errors.Is(err, errExpired) {
		t.Fatalf("cached token past exp: %v", err)
	}
	v.now = func() time.Time { return now.Add(2 * time.Minute) }
	if _, err := v.Verify(context.Background(), tok); !errors.Is(err, errExpired) {
		t.Fatalf("token past exp after cache expiry: %v", err)
	}
}

// TestHMACKeyLength: a secret verifies only the HS algorithms it is long
// enough for (RFC 7518 §3.2).
func TestHMACKeyLength(t *testing.T) {
	testKeys(t)
	short := hmacKey[:32]
	v, err := newVerifier(AuthConfig{Algorithms: []string{"HS256", "HS512"}, HMACKeys: []HMACKey{{Secret: short}}})
	if err != nil {
		t.Fatal(err)
	}
	c := claimsFor("alice", nil)
	if _, err := v.Verify(context.Background(), sign(t, "HS256", "", short, c)); err != nil {
		t.Errorf("HS256: %v", err)
	}
	if _, err := v.Verify(context.Background(), sign(t, "HS512", "", short, c)); !errors.Is(err, errSignature) {
		t.Errorf("HS512 with a 32-byte secret: %v", err)
	}
}

// gatedJWKS serves a JWK set; every fetch after the first waits for its
// gate to open.
type gatedJWKS struct {
	mu      sync.Mutex
	keys    []any
	fetches atomic.Int32
	gate    chan struct{}
}

func (g *gatedJWKS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if g.fetches.Add(1) > 1 {
		<-g.gate
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	json.NewEncoder(w).Encode(map[string]any{"keys": g.keys})
}

// TestJWKSFetchOutsideLock: a JWKS refetch (for an unknown kid) runs
// once however many tokens ask for it, and while it is slow, tokens with
// known keys are verified without waiting for it.
func TestJWKSFetchOutsideLock(t *testing.T) {
	testKeys(t)
	g := &gatedJWKS{keys: []any{jwk(t, "k1", &rsaKey.PublicKey)}, gate: make(chan struct{})}
	srv := httptest.NewServer(g)
	defer srv.Close()
	defer close(g.gate)
	v, err := newVerifier(AuthConfig{Algorithms: []string{"RS256"}, JWKSURL: srv.URL, JWKSTimeout: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := v.Verify(ctx, sign(t, "RS256", "k1", rsaKey, claimsFor("alice", nil))); err != nil {
		t.Fatal(err)
	}
	// Past the unknown-kid rate limit, tokens of a new key arrive: the
	// refetch hangs.
	v.now = func() time.Time { return time.Now().Add(31 * time.Second) }
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := range 10 {
		wg.Go(func() {
			_, err := v.Verify(ctx, sign(t, "RS256", "k2", rsaKey2, claimsFor("user"+strconv.Itoa(i), nil)))
			errs <- err
		})
	}
	waitFor(t, "the refetch", func() bool { return g.fetches.Load() == 2 })
	// Meanwhile, new tokens of the known key are verified at once.
	for i := range 5 {
		done := make(chan error, 1)
		go func() {
			_, err := v.Verify(ctx, sign(t, "RS256", "k1", rsaKey, claimsFor("known"+strconv.Itoa(i), nil)))
			done <- err
		}()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("a token with a known key waits for the JWKS fetch")
		}
	}
	// The fetch ends with the new key: every waiting token is accepted,
	// after one fetch for all of them.
	g.mu.Lock()
	g.keys = append(g.keys, jwk(t, "k2", &rsaKey2.PublicKey))
	g.mu.Unlock()
	g.gate <- struct{}{}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("token of the new key: %v", err)
		}
	}
	if n := g.fetches.Load(); n != 2 {
		t.Errorf("%d fetches, want 2", n)
	}
}

// TestJWKSVerifierClock: the JWKS ages (JWKSMaxAge, the unknown-kid rate
// limit) are measured with the verifier's clock, like exp.
func TestJWKSVerifierClock(t *testing.T) {
	testKeys(t)
	var fetches atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		json.NewEncoder(w).Encode(map[string]any{"keys": []any{jwk(t, "k1", &rsaKey.PublicKey)}})
	}))
	defer srv.Close()
	v, err := newVerifier(AuthConfig{Algorithms: []string{"RS256"}, JWKSURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	var clock atomic.Int64 // the verifier's time, UnixNano
	clock.Store(time.Now().UnixNano())
	v.now = func() time.Time { return time.Unix(0, clock.Load()) }
	advance := func(d time.Duration) time.Time { return time.Unix(0, clock.Add(int64(d))) }
	now := v.now()
	tokenAt := func(at time.Time, kid string) string {
		return sign(t, "RS256", kid, rsaKey, map[string]any{"sub": "alice", "iat": at.Unix(), "exp": at.Add(10 * time.Minute).Unix()})
	}
	ctx := context.Background()
	if _, err := v.Verify(ctx, tokenAt(now, "k1")); err != nil {
		t.Fatal(err)
	}
	// Two hours later by the verifier's clock (a second by the wall's):
	// past JWKSMaxAge (1 h), the set is refetched, in the background.
	now = advance(2 * time.Hour)
	if _, err := v.Verify(ctx, tokenAt(now, "k1")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the refetch after JWKSMaxAge", func() bool { return fetches.Load() == 2 })
	// The unknown-kid rate limit (30 s) runs on the same clock.
	now = advance(10 * time.Second)
	if _, err := v.Verify(ctx, tokenAt(now, "k9")); !errors.Is(err, errUnknownKey) {
		t.Fatal(err)
	}
	if n := fetches.Load(); n != 2 {
		t.Fatalf("refetched %v after the last fetch: %d fetches", 10*time.Second, n)
	}
	now = advance(30 * time.Second)
	if _, err := v.Verify(ctx, tokenAt(now, "k8")); !errors.Is(err, errUnknownKey) {
		t.Fatal(err)
	}
	if n := fetches.Load(); n != 3 {
		t.Fatalf("no refetch for an unknown kid 40 s after the last: %d fetches", n)
	}
}

// TestJWKSKeyAlg: a JWK that names its algorithm verifies that one only;
// keys go-jose cannot read are skipped, the others kept.
func TestJWKSKeyAlg(t *testing.T) {
	testKeys(t)
	k1 := jwk(t, "k1", &rsaKey.PublicKey)
	k1["alg"] = "RS512"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(map[string]any{"keys": []any{k1,
			map[string]any{"kty": "OKP", "crv": "X25519", "kid": "x", "x": b64.EncodeToString(make([]byte, 32))},
			map[string]any{"kty": "EC", "crv": "P-256", "kid": "bad", "x": "AAAA", "y": "AAAA"},
			jwk(t, "e1", &ecKey.PublicKey)}})
	}))
	defer srv.Close()
	v, err := newVerifier(AuthConfig{Algorithms: []string{"RS256", "RS512", "ES256"}, JWKSURL: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c := claimsFor("alice", nil)
	if _, err := v.Verify(ctx, sign(t, "RS512", "k1", rsaKey, c)); err != nil {
		t.Errorf("RS512: %v", err)
	}
	if _, err := v.Verify(ctx, sign(t, "RS256", "k1", rsaKey, c)); !errors.Is(err, errSignature) {
		t.Errorf("RS256 with an RS512 key: %v", err)
	}
	if _, err := v.Verify(ctx, sign(t, "ES256", "e1", ecKey, c)); err != nil {
		t.Errorf("ES256 next to unreadable keys: %v", err)
	}
}

// TestVerifyHighS: an ECDSA signature is accepted with its high s as with
// its low one (both verify), and the two strings are one token: one
// tokenKey, one entry of the verified-token cache, one *Identity. The
// second form is answered from the first's entry without a signature
// check (the keys are gone by then), whichever form came first, for each
// curve; the cache never spares a variant the canonical-form checks.
func TestVerifyHighS(t *testing.T) {
	testKeys(t)
	p521, err := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		alg string
		key *ecdsa.PrivateKey
	}{{"ES256", ecKey}, {"ES384", ec384Key}, {"ES512", p521}} {
		for _, highFirst := range []bool{false, true} {
			name := tc.alg + map[bool]string{false: ", low s first", true: ", high s first"}[highFirst]
			v, err := newVerifier(AuthConfig{Algorithms: []string{tc.alg}, PublicKeys: []PublicKey{{ID: "ec", Key: &tc.key.PublicKey}}})
			if err != nil {
				t.Fatal(err)
			}
			low := sign(t, tc.alg, "ec", tc.key, claimsFor("alice", nil))
			high := highS(low)
			if low == high {
				t.Fatalf("%s: highS changed nothing", name)
			}
			kl, al := tokenKey(low)
			kh, ah := tokenKey(high)
			if kl != kh || kl != sha256.Sum256([]byte(low)) || al != tc.alg || ah != tc.alg {
				t.Fatalf("%s: tokenKey: low %x %q, high %x %q", name, kl[:4], al, kh[:4], ah)
			}
			first, second := low, high
			if highFirst {
				first, second = high, low
			}
			id1, err := v.Verify(context.Background(), first)
			if err != nil {
				t.Fatalf("%s: first form: %v", name, err)
			}
			v.static = nil // from here on, only the cache can accept a token
			if _, err := v.Verify(context.Background(), sign(t, tc.alg, "ec", tc.key, claimsFor("bob", nil))); !errors.Is(err, errSignature) {
				t.Fatalf("%s: a new token without keys: %v", name, err)
			}
			id2, err := v.Verify(context.Background(), second)
			if err != nil {
				t.Fatalf("%s: second form not answered from the cache: %v", name, err)
			}
			if id1 != id2 || id1.UserID != "alice" {
				t.Errorf("%s: two identities %p %p", name, id1, id2)
			}
			if n := len(v.cache); n != 1 {
				t.Errorf("%s: %d cache entries, want 1", name, n)
			}
			// Still one form only in every other respect: unused bits
			// set, padding, whitespace miss the cache and are refused.
			bads := map[string]string{"padding": second + "==", "trailing newline": second + "\n", "space before": " " + second}
			if seg := second[lastDot(second):]; len(seg)%4 != 0 { // ES384 and ES512 signatures have no unused bits
				bads["unused bits"] = setUnusedBit(second)
			}
			for what, bad := range bads {
				if _, err := v.Verify(context.Background(), bad); !errors.Is(err, errMalformed) {
					t.Errorf("%s: %s: %v", name, what, err)
				}
			}
		}
	}
	// Other tokens are their own key; a 64-byte HS512 or EdDSA signature
	// is not read as ECDSA.
	for _, tok := range []string{sign(t, "HS512", "hs", hmacKey, claimsFor("alice", nil)),
		sign(t, "EdDSA", "ed", edPriv, claimsFor("alice", nil)), sign(t, "RS256", "rs", rsaKey, claimsFor("alice", nil))} {
		if k, alg := tokenKey(tok); k != sha256.Sum256([]byte(tok)) || alg != "" {
			t.Errorf("tokenKey of %s...: %q", tok[:20], alg)
		}
	}
}

// TestVerifyHighSCacheAlg: a cache entry answers for the other s of its
// token only if it was verified with the ES* algorithm tokenKey read: an
// entry of another algorithm under the same key (a header go-jose read
// otherwise) is a miss.
func TestVerifyHighSCacheAlg(t *testing.T) {
	testKeys(t)
	v, err := newVerifier(testAuth())
	if err != nil {
		t.Fatal(err)
	}
	low := sign(t, "ES256", "ec", ecKey, claimsFor("alice", nil))
	key, _ := tokenKey(low)
	v.cache = map[[32]byte]cachedIdentity{key: {id: &Identity{UserID: "mallory"}, exp: float64(time.Now().Unix() + 600),
		alg: "HS512", expires: time.Now().Add(time.Minute)}}
	v.static = nil
	if id, err := v.Verify(context.Background(), highS(low)); !errors.Is(err, errSignature) {
		t.Fatalf("an entry of another algorithm answered: %+v, %v", id, err)
	}
}
