package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"math/big"
	"testing"
	"time"
)

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
