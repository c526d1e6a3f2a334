//go:build amd64 && !purego

package b64url

import (
	"unsafe"

	"golang.org/x/sys/cpu"
)

var useAVX2 = cpu.X86.HasAVX2

// decodeFast decodes the longest prefix of src made of 32-character
// blocks of valid base64url, the last of which may be partial, stopping at the
// first block with any other byte (including padding, CR and LF), or with a
// final partial block that the strict decoder refuses, or when dst has no
// room. It returns the characters consumed and the bytes written; the caller
// decodes the rest, and reports errors, with encoding/base64.
func decodeFast(dst []byte, src string) (consumed, written int) {
	if !useAVX2 {
		return 0, 0
	}
	if len(src) >= 32 {
		consumed = decodeAVX2(dst, src)
		written = consumed / 4 * 3
	}
	// A final partial block (which encoding/base64 would decode slowly) goes
	// through the vector loop padded with 'A' (zero bits); the padding must
	// decode to zero bits, which is the strict decoder's trailing-bits rule.
	if r := len(src) - consumed; r > 0 && r < 32 && r%4 != 1 {
		var in, out [32]byte
		copy(in[copy(in[:], src[consumed:]):], "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
		n := r * 3 / 4
		// in is only read, so it is passed as a string without a copy.
		if len(dst)-written >= n && decodeAVX2(out[:], unsafe.String(&in[0], len(in))) == 32 && (r%4 == 0 || out[n] == 0) {
			copy(dst[written:], out[:n])
			consumed, written = len(src), written+n
		}
	}
	return consumed, written
}

// decodeAVX2 is decodeFast's loop (Muła and Lemire's vectorized base64
// decoding, adapted to the URL alphabet). It returns the characters consumed,
// a multiple of 32, and writes 3/4 as many bytes to dst, plus up to 8 bytes
// of scratch past them.
//
//go:noescape
func decodeAVX2(dst []byte, src string) int

// encodeFast encodes the longest prefix of src made of whole 24-byte
// blocks that the vector loop can take (it reads 4 bytes past each block, so
// the last 4 bytes of src are left for the caller), as long as dst has room.
// It returns the bytes consumed and the characters written.
func encodeFast(dst, src []byte) (consumed, written int) {
	if !useAVX2 || len(src) < 28 {
		return 0, 0
	}
	consumed = encodeAVX2(dst, src)
	return consumed, consumed / 3 * 4
}

// encodeAVX2 is encodeFast's loop. It returns the bytes consumed, a
// multiple of 24, and writes 4/3 as many characters to dst.
//
//go:noescape
func encodeAVX2(dst, src []byte) int
