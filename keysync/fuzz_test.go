package keysync

import (
	"bytes"
	"encoding/base64"
	"errors"
	"os"
	"testing"
)

// FuzzOpen feeds arbitrary cells and places to Open with the vector keyset.
// Open must not panic, must return either a plaintext or an *OpenError that
// wraps exactly one of the cell sentinels, and must only succeed on a cell
// whose text is canonical (re-encoding its bytes gives it back).
func FuzzOpen(f *testing.F) {
	vf := loadVectorFile(f)
	for _, v := range vf.Vectors {
		rk := ""
		if len(v.Context.RowKey) > 0 {
			rk = v.Context.RowKey[0]
		}
		f.Add(v.Cell, v.Context.Column, rk, len(v.Context.RowKey) > 0)
	}
	h := vectorHandle(f, vf.Keyset)
	ks, err := newKeyset("tenant-a", 1, h)
	if err != nil {
		f.Fatal(err)
	}
	sentinels := []error{ErrNotEncrypted, ErrMalformedCell, ErrNoKey, ErrAuth, ErrInvalidContext}
	f.Fuzz(func(t *testing.T, cell, column, rowKey string, bound bool) {
		c := CellContext{Table: "public.items", Column: column, Tenant: "tenant-a"}
		if bound {
			c.RowKey = []string{rowKey}
		}
		pt, err := Open(ks, c, cell)
		if err == nil {
			raw := make([]byte, base64.RawURLEncoding.DecodedLen(len(cell)-len(CellPrefix)))
			n, derr := base64.RawURLEncoding.Strict().Decode(raw, []byte(cell[len(CellPrefix):]))
			if derr != nil || CellPrefix+base64.RawURLEncoding.EncodeToString(raw[:n]) != cell {
				t.Fatalf("Open accepted a non-canonical cell %q", cell)
			}
			if len(pt) != n-minCellLen {
				t.Fatalf("plaintext of %d bytes from a %d-byte cell", len(pt), n)
			}
			return
		}
		if _, ok := errors.AsType[*OpenError](err); !ok {
			t.Fatalf("error %T %v is not an *OpenError", err, err)
		}
		matched := 0
		for _, s := range sentinels {
			if errors.Is(err, s) {
				matched++
			}
		}
		if matched != 1 {
			t.Fatalf("error %v matches %d sentinels", err, matched)
		}
	})
}

// FuzzParsePayload feeds arbitrary bytes to the wrapped-payload parser. It
// must not panic, must refuse with ErrMalformedPayload (or, for format v1,
// ErrUntrustedKeyset), and whatever it accepts must encode back to the same
// bytes (one encoding per payload).
func FuzzParsePayload(f *testing.F) {
	vf := loadVectorFile(f)
	h := vectorHandle(f, vf.Keyset)
	ks, err := newKeyset("tenant-a", 7, h)
	if err != nil {
		f.Fatal(err)
	}
	material, err := ks.marshalKeyset()
	if err != nil {
		f.Fatal(err)
	}
	good := signedPayload(f, &payload{tenant: "tenant-a", generation: 7, recipient: "age1example", keyset: material}, testSigner)
	f.Add(good)
	f.Add(good[:len(good)-1])
	f.Add(append(bytes.Clone(good), 0))
	f.Add([]byte(payloadMagic))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parsePayload(b)
		if err != nil {
			if !errors.Is(err, ErrMalformedPayload) && !(errors.Is(err, ErrUntrustedKeyset) && bytes.HasPrefix(b, []byte(payloadMagicV1))) {
				t.Fatalf("error %v is not ErrMalformedPayload", err)
			}
			return
		}
		if !bytes.Equal(append(p.body(), p.signature...), b) || !bytes.Equal(p.signed, p.body()) {
			t.Fatalf("payload does not round-trip")
		}
		// The keyset inside may still be rejected, but must not panic.
		unmarshalKeyset(p.tenant, p.generation, p.keyset)
	})
}

func loadVectorFile(tb testing.TB) *vectorFile {
	b, err := os.ReadFile(vectorsPath)
	if err != nil {
		tb.Fatal(err)
	}
	var vf vectorFile
	if err := jsonUnmarshal(b, &vf); err != nil {
		tb.Fatal(err)
	}
	return &vf
}
