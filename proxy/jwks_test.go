package proxy

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

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
