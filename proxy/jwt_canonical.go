package proxy

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"strings"
	"unicode/utf8"
)

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
