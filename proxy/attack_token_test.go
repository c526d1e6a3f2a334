package proxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/json"
	"math/big"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// flipUnused sets an unused low bit of the last character of an unpadded
// base64url segment: the same bytes, another string; false when the
// segment has no unused bits.
func flipUnused(seg string) (string, bool) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	if len(seg)%4 == 0 {
		return "", false
	}
	last := strings.IndexByte(alphabet, seg[len(seg)-1])
	return seg[:len(seg)-1] + string(alphabet[last^1]), true
}

// TestAttackTokenVariants: a token is accepted in one form only. Each
// variant below carries a valid signature (go-jose alone accepts it, as
// checked) or, for the whitespace ones, the same token; all were accepted
// before, each under its own cache key. All are refused now, while the
// token itself is accepted, over HTTP and as a WebSocket's auth message.
// The one exception is ECDSA's other s, which issuers send as often as the
// low one: it is accepted as the same token, under the low-s form's cache
// key, with the very Identity of that entry, so it widens nothing.
func TestAttackTokenVariants(t *testing.T) {
	t.Parallel()
	e := newEnv(t, nil)
	c := claimsFor("alice", map[string]any{"roles": []string{"reader"}, "tenant_ids": []string{"acme"}})
	tok := tokenWithUnusedBits(t, c)
	seg := splitDots(tok)
	esTok := sign(t, "ES256", "ec", ecKey, c)
	highS := checkedHighS(t, esTok)
	variants := tokenVariants(t, tok, highS, c)
	// Whitespace and other characters around or in the token.
	headerVariants := map[string]string{
		"no-break space after":     "Bearer " + tok + "\u00a0",
		"ideographic space before": "Bearer \u3000" + tok,
		"em space after":           "Bearer " + tok + "\u2003",
		"next line after":          "Bearer " + tok + "\u0085",
		"tab between":              "Bearer\t" + tok,
		"no-break space between":   "Bearer\u00a0" + tok,
		"padding":                  "Bearer " + tok + "==",
		"dot after":                "Bearer " + tok + ".",
	}
	get := func(auth string) int {
		req, _ := http.NewRequest("GET", e.url+"/v1/shapes/items?offset=-1", nil)
		req.Header.Set("Authorization", auth)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		return resp.StatusCode
	}
	for _, good := range []string{tok, esTok} {
		for range 2 { // the second from the verified-token cache
			if st := get("Bearer " + good); st != 200 {
				t.Fatalf("the token itself: %d", st)
			}
		}
	}
	entries := cacheEntries(e.p.verifier)
	// The high-s form is the same token: accepted, from the low-s form's
	// entry (no new one), as the same Identity.
	if st := get("Bearer " + highS); st != 200 {
		t.Errorf("high s: %d, want 200", st)
	}
	idLow, errLow := e.p.verifier.Verify(t.Context(), esTok)
	idHigh, errHigh := e.p.verifier.Verify(t.Context(), highS)
	if errLow != nil || errHigh != nil || idLow != idHigh {
		t.Errorf("high s: identity %p (%v), low s: %p (%v): not one cache entry", idHigh, errHigh, idLow, errLow)
	}
	for name, v := range variants {
		if st := get("Bearer " + v.token); st != 401 {
			t.Errorf("%s: %d, want 401", name, st)
		}
	}
	for name, h := range headerVariants {
		if st := get(h); st != 401 {
			t.Errorf("header %s: %d, want 401", name, st)
		}
	}
	if n := cacheEntries(e.p.verifier); n != entries {
		t.Errorf("the variants made %d cache entries, want none", n-entries)
	}
	if st := get("Bearer   " + tok); st != 200 {
		t.Errorf("several spaces after Bearer (RFC 6750: 1*SP): %d", st)
	}
	// A WebSocket's auth message carries the token alone: nothing trimmed.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wsAuthRefused(t, ctx, e, map[string]string{
		"leading space":     " " + tok,
		"trailing newline":  tok + "\n",
		"line break inside": seg[0] + "." + seg[1][:10] + "\r\n" + seg[1][10:] + "." + seg[2],
		"unused bits":       variants["unused bits in the signature"].token,
	})
	// The high-s form authenticates a WebSocket as the same token.
	c2 := rawWS(t, ctx, e)
	defer c2.CloseNow()
	writeWS(t, ctx, c2, map[string]any{"type": "auth", "token": highS})
	if f := readFrame(t, ctx, c2); f.Type != "auth_ok" {
		t.Errorf("WebSocket auth, high s: %+v", f)
	}
	if n := cacheEntries(e.p.verifier); n != entries {
		t.Errorf("the variants made %d cache entries, want none", n-entries)
	}
}

// tokenWithUnusedBits signs c with RS256, padded so that every segment of
// the token has unused bits to flip.
func tokenWithUnusedBits(t *testing.T, c map[string]any) string {
	t.Helper()
	var tok string
	for pad := ""; ; pad += "x" {
		c["pad"] = pad
		tok = sign(t, "RS256", "rs", rsaKey, c)
		_, hasBits := flipUnused(splitDots(tok)[1])
		if hasBits {
			break
		}
	}
	if _, ok := flipUnused(splitDots(tok)[0]); !ok {
		t.Fatal("the header has no unused bits: change it")
	}
	return tok
}

// checkedHighS is highS of esTok (ES256, signed with ecKey), checked to
// verify with crypto/ecdsa and with go-jose: (r, n-s) is as valid as
// (r, s).
func checkedHighS(t *testing.T, esTok string) string {
	t.Helper()
	hs := highS(esTok)
	es := splitDots(hs)
	sig, _ := b64.DecodeString(es[2])
	digest := sha256.Sum256([]byte(es[0] + "." + es[1]))
	if !ecdsa.Verify(&ecKey.PublicKey, digest[:], new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])) {
		t.Fatal("the high-s variant does not verify: the test is wrong")
	}
	if jws, err := jose.ParseSignedCompact(hs, []jose.SignatureAlgorithm{jose.ES256}); err != nil {
		t.Fatalf("high s: not a valid variant (go-jose: %v): the test is wrong", err)
	} else if _, err := jws.Verify(&ecKey.PublicKey); err != nil {
		t.Fatalf("high s: not a valid variant (go-jose: %v): the test is wrong", err)
	}
	return hs
}

// tokenVariant is another string of a token, or a token signed by the
// issuer's key that is not canonical.
type tokenVariant struct {
	token   string
	joseKey any // when set, go-jose verifies the variant with it
}

// tokenVariants are the variants of tok (RS256, every segment with unused
// bits), of highS and of tokens with the claims c that the proxy must
// refuse. Those with a joseKey are checked to verify with go-jose.
func tokenVariants(t *testing.T, tok, highS string, c map[string]any) map[string]tokenVariant {
	t.Helper()
	variants := map[string]tokenVariant{}
	seg := splitDots(tok)
	for i, name := range []string{"header", "payload", "signature"} {
		s := slices.Clone(seg)
		s[i], _ = flipUnused(s[i])
		variants["unused bits in the "+name] = tokenVariant{strings.Join(s, "."), &rsaKey.PublicKey}
	}
	// High s is accepted as the same token (see the test), not refused;
	// with unused bits as well it is not canonical.
	variants["high s with unused bits in the signature"] = tokenVariant{token: setUnusedBit(highS)}
	// Signed by the issuer's key, but not one JSON object each.
	hdr := `{"alg":"RS256","kid":"rs"}`
	body, _ := json.Marshal(c)
	for name, hp := range map[string][2]string{
		"duplicate claim":           {hdr, strings.TrimSuffix(string(body), "}") + `,"sub":"mallory"}`},
		"duplicate nested claim":    {hdr, strings.TrimSuffix(string(body), "}") + `,"app":{"role":"a","role":"b"}}`},
		"data after the claims":     {hdr, string(body) + `{"sub":"mallory"}`},
		"space after the claims":    {hdr, string(body) + ` `},
		"newline after the claims":  {hdr, string(body) + "\n"},
		"space before the claims":   {hdr, " " + string(body)},
		"claims not UTF-8":          {hdr, strings.TrimSuffix(string(body), "}") + `,"x":"` + "\xff" + `"}`},
		"duplicate header key":      {`{"alg":"RS256","kid":"rs","kid":"other"}`, string(body)},
		"data after the header":     {hdr + ` `, string(body)},
		"critical header extension": {`{"alg":"RS256","kid":"rs","crit":["exp"],"exp":1}`, string(body)},
		"unencoded payload (b64)":   {`{"alg":"RS256","kid":"rs","b64":false,"crit":["b64"]}`, string(body)},
	} {
		variants[name] = tokenVariant{token: signRaw(t, "RS256", rsaKey, hp[0], hp[1])}
	}
	for name, v := range variants {
		if v.joseKey == nil {
			continue
		}
		jws, err := jose.ParseSignedCompact(v.token, []jose.SignatureAlgorithm{jose.RS256, jose.ES256})
		if err == nil {
			_, err = jws.Verify(v.joseKey)
		}
		if err != nil {
			t.Fatalf("%s: not a valid variant (go-jose: %v): the test is wrong", name, err)
		}
	}
	return variants
}

// wsAuthRefused checks that each token, as a WebSocket's first auth
// message, closes the connection with 1008.
func wsAuthRefused(t *testing.T, ctx context.Context, e *env, tokens map[string]string) {
	t.Helper()
	for name, bad := range tokens {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c := rawWS(t, ctx, e)
		writeWS(t, ctx, c, map[string]any{"type": "auth", "token": bad})
		if st, _ := readUntilClose(ctx, c); st != 1008 {
			t.Errorf("WebSocket auth, %s: closed with %v, want 1008", name, st)
		}
		c.CloseNow()
		cancel()
	}
}

// cacheEntries is the number of tokens in v's verified-token cache.
func cacheEntries(v *verifier) int {
	v.cacheMu.Lock()
	defer v.cacheMu.Unlock()
	return len(v.cache)
}
