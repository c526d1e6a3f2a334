package b64url

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	mrand "math/rand/v2"
	"testing"
)

// check checks decodeBase64 against encoding/base64 on src.
func check(t *testing.T, src string) {
	t.Helper()
	n := std.DecodedLen(len(src))
	want := make([]byte, n)
	wn, werr := std.Decode(want, []byte(src))
	got := make([]byte, n)
	gn, gerr := Decode(got, src)
	if gerr != werr {
		t.Fatalf("Decode(%q): err %v, encoding/base64 says %v", src, gerr, werr)
	}
	if werr == nil && (gn != wn || !bytes.Equal(got[:gn], want[:wn])) {
		t.Fatalf("Decode(%q) = %x, want %x", src, got[:gn], want[:wn])
	}
}

func TestDecode(t *testing.T) {
	for size := range 300 {
		b := make([]byte, size)
		rand.Read(b)
		src := base64.RawURLEncoding.EncodeToString(b)
		check(t, src)
		// Every single-byte corruption at every position, for a few
		// interesting bytes, must be caught exactly as encoding/base64 does.
		if size == 0 {
			continue
		}
		for _, c := range []byte{'+', '/', '=', '\n', '\r', 0, 0x80, 0xff, '@', '[', '`', '{', ':', '.', ' ', 'A', '_', '-'} {
			i := mrand.IntN(len(src))
			s := []byte(src)
			s[i] = c
			check(t, string(s))
		}
	}
	// Every byte value in every position of a 32-byte block.
	base := base64.RawURLEncoding.EncodeToString(make([]byte, 48)) // 64 chars
	for i := range 64 {
		for c := range 256 {
			s := []byte(base)
			s[i] = byte(c)
			check(t, string(s))
		}
	}
}

func FuzzDecode(f *testing.F) {
	f.Add("")
	f.Add("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Add("_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_-_")
	f.Add("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
	f.Fuzz(func(t *testing.T, src string) {
		check(t, src)
	})
}

func TestFastPath(t *testing.T) {
	src := base64.RawURLEncoding.EncodeToString(make([]byte, 1024))
	dst := make([]byte, std.DecodedLen(len(src)))
	i, n := decodeFast(dst, src)
	t.Logf("fast path consumed %d of %d characters, wrote %d bytes", i, len(src), n)
	if useAVX2 && (i != len(src) || n != len(dst)) || i%32 != 0 && i != len(src) {
		t.Fatalf("decodeFast consumed %d, wrote %d", i, n)
	}
	raw := make([]byte, 1024)
	i, n = encodeFast(make([]byte, std.EncodedLen(len(raw))), raw)
	t.Logf("fast path encoded %d of %d bytes, wrote %d characters", i, len(raw), n)
	if i%24 != 0 || n != i/3*4 || i > len(raw)-4 {
		t.Fatalf("encodeFast consumed %d, wrote %d", i, n)
	}
}

func TestEncode(t *testing.T) {
	for size := range 600 {
		src := make([]byte, size)
		rand.Read(src)
		if size%7 == 0 {
			for i := range src {
				src[i] = 0xff // every index 63
			}
		}
		want := base64.RawURLEncoding.EncodeToString(src)
		dst := make([]byte, std.EncodedLen(size))
		Encode(dst, src)
		if string(dst) != want {
			t.Fatalf("Encode(%x) = %s, want %s", src, dst, want)
		}
	}
	// Every index value in every position.
	for _, b := range []byte{0x00, 0xff, 0xaa, 0x55, 0xf0, 0x0f} {
		src := bytes.Repeat([]byte{b}, 99)
		for i := range 256 {
			src[i%99] = byte(i)
			dst := make([]byte, std.EncodedLen(len(src)))
			Encode(dst, src)
			if want := base64.RawURLEncoding.EncodeToString(src); string(dst) != want {
				t.Fatalf("Encode(%x) = %s, want %s", src, dst, want)
			}
		}
	}
}

func FuzzEncode(f *testing.F) {
	f.Add([]byte("hello, world, this is more than twenty-eight bytes"))
	f.Fuzz(func(t *testing.T, src []byte) {
		dst := make([]byte, std.EncodedLen(len(src)))
		Encode(dst, src)
		if want := base64.RawURLEncoding.EncodeToString(src); string(dst) != want {
			t.Fatalf("Encode(%x) = %s, want %s", src, dst, want)
		}
	})
}

// BenchmarkDecode compares Decode with encoding/base64 on a 1 KB cell's
// text (1,057 bytes: a Tink ciphertext of 1 KB of plaintext).
func BenchmarkDecode(b *testing.B) {
	raw := make([]byte, 1<<10+33)
	rand.Read(raw)
	src := base64.RawURLEncoding.EncodeToString(raw)
	dst := make([]byte, len(raw))
	b.Run("encoding-base64", func(b *testing.B) {
		b.SetBytes(int64(len(src)))
		for b.Loop() {
			if _, err := std.Decode(dst, []byte(src)); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("b64url", func(b *testing.B) {
		b.SetBytes(int64(len(src)))
		for b.Loop() {
			if _, err := Decode(dst, src); err != nil {
				b.Fatal(err)
			}
		}
	})
}
