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
	"sync"
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
