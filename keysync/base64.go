package keysync

// decodeBase64 decodes the strict, unpadded base64url src into dst, which
// must hold b64.DecodedLen(len(src)) bytes, and returns the number of bytes
// written. It accepts exactly what b64.Decode accepts and writes the same
// bytes; on amd64 with AVX2 it decodes 32 characters per step first (see
// base64_amd64.s), several times faster than encoding/base64.
func decodeBase64(dst []byte, src string) (int, error) {
	i, n := decodeBase64Fast(dst, src)
	m, err := b64.Decode(dst[n:], []byte(src[i:]))
	return n + m, err
}

// encodeBase64 encodes src as unpadded base64url into dst, which must hold
// b64.EncodedLen(len(src)) bytes, exactly as b64.Encode does.
func encodeBase64(dst, src []byte) {
	i, n := encodeBase64Fast(dst, src)
	b64.Encode(dst[n:], src[i:])
}
