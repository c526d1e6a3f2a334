package keysync

import "unsafe"

// decodeBase64 decodes the strict, unpadded base64url src into dst, which
// must hold b64.DecodedLen(len(src)) bytes, and returns the number of bytes
// written. It reads src in place: b64.Decode only reads its input.
func decodeBase64(dst []byte, src string) (int, error) {
	return b64.Decode(dst, unsafe.Slice(unsafe.StringData(src), len(src)))
}

// encodeBase64 encodes src as unpadded base64url into dst, which must hold
// b64.EncodedLen(len(src)) bytes.
func encodeBase64(dst, src []byte) { b64.Encode(dst, src) }
