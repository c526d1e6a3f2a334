// Package b64url is the text encoding of shapeseal's encrypted cells:
// base64url without padding (RFC 4648 §5), strict, so that a value has
// exactly one encoding.
//
// It accepts and produces exactly what encoding/base64's
// RawURLEncoding.Strict() does — including that decoder's habit of skipping
// CR and LF, which callers that need canonical text must check for
// themselves (see keysync's cell parser). It exists for speed: opening a
// cell is dominated by decoding its text, and on amd64 with AVX2 this
// package decodes 32 characters per instruction sequence, several times
// faster than encoding/base64 (see BenchmarkDecode). Elsewhere, and with the
// purego build tag, it is encoding/base64.
//
// The vector code only ever handles whole blocks of valid characters; it
// hands everything else — errors included — to encoding/base64, and is
// tested byte for byte against it (TestDecode, FuzzDecode).
package b64url

import (
	"encoding/base64"
	"unsafe"
)

var std = base64.RawURLEncoding.Strict()

// EncodedLen is the length of the encoding of n bytes.
func EncodedLen(n int) int { return std.EncodedLen(n) }

// DecodedLen is the largest number of bytes that n characters decode to.
func DecodedLen(n int) int { return std.DecodedLen(n) }

// Decode decodes src into dst, which must hold DecodedLen(len(src)) bytes,
// and returns the number of bytes written. Its result and errors are those
// of base64.RawURLEncoding.Strict().Decode; a [base64.CorruptInputError]
// gives the offset in src.
func Decode(dst []byte, src string) (int, error) {
	i, n := decodeFast(dst, src)
	if i == len(src) {
		return n, nil // the usual case: a cell is all valid letters
	}
	// encoding/base64 only reads its input, so src is not copied.
	rest := unsafe.Slice(unsafe.StringData(src[i:]), len(src)-i)
	m, err := std.Decode(dst[n:], rest)
	if e, ok := err.(base64.CorruptInputError); ok {
		err = e + base64.CorruptInputError(i)
	}
	return n + m, err
}

// Encode encodes src into dst, which must hold EncodedLen(len(src)) bytes.
func Encode(dst, src []byte) {
	i, n := encodeFast(dst, src)
	std.Encode(dst[n:], src[i:])
}
