package chain

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"os"
	"testing"
)

// seedEntries adds every entry and certificate of the vectors to the corpus.
func seedEntries(f *testing.F) (entries, certs [][]byte) {
	b, err := os.ReadFile(vectorsPath)
	if err != nil {
		f.Fatal(err)
	}
	var v vectors
	if err := json.Unmarshal(b, &v); err != nil {
		f.Fatal(err)
	}
	for _, l := range v.Logs {
		for _, e := range l.Entries {
			x, _ := hex.DecodeString(e.Hex)
			entries = append(entries, x)
		}
	}
	for _, c := range v.Invalid {
		x, _ := hex.DecodeString(c.Entry)
		entries = append(entries, x)
	}
	for _, c := range v.Certs {
		x, _ := hex.DecodeString(c.Hex)
		certs = append(certs, x)
	}
	return entries, certs
}

// FuzzParse: Parse never panics, and an entry it accepts re-encodes to the
// same bytes when signed again by the same key material is not at hand —
// so check the parsed fields encode back to the signed body.
func FuzzParse(f *testing.F) {
	entries, _ := seedEntries(f)
	for _, e := range entries {
		f.Add(e)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		e, err := Parse(b)
		if err != nil {
			return
		}
		body, err := e.body()
		if err != nil {
			t.Fatalf("accepted an entry whose fields do not encode: %v", err)
		}
		if !bytes.Equal(append(body, e.Signature...), b) {
			t.Fatal("accepted an entry that does not re-encode to itself")
		}
	})
}

// FuzzParseCert: the same for device certificates.
func FuzzParseCert(f *testing.F) {
	_, certs := seedEntries(f)
	for _, c := range certs {
		f.Add(c)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseCert(b)
		if err != nil {
			return
		}
		body, err := c.body()
		if err != nil || !bytes.Equal(append(body, c.Signature...), b) {
			t.Fatalf("accepted a certificate that does not re-encode to itself: %v", err)
		}
	})
}

// FuzzAppend signs fuzzed operations with an admin key and appends them to
// a valid log: Append never panics, and a refused entry leaves the head.
func FuzzAppend(f *testing.F) {
	entries, _ := seedEntries(f)
	for _, e := range entries {
		f.Add(e)
	}
	root, admin := seededKey(f, "root"), seededKey(f, "admin")
	f.Fuzz(func(t *testing.T, b []byte) {
		l := newLog(t, "acme", root)
		l.add(root, Op{Type: OpAdminAdd, Key: admin.Public()}, keysetOp(1, 1))
		head := l.state.Head()
		// Re-sign whatever ops parse out of b as the next entry of this log.
		e, err := Parse(b)
		if err != nil || len(e.Ops) == 0 {
			return
		}
		se, err := Sign(context.Background(), Entry{Tenant: "acme", Seq: 2, Prev: head, Ops: e.Ops}, admin)
		if err != nil {
			return
		}
		if _, err := l.state.Append(se.Bytes()); err != nil && l.state.broken == nil && l.state.Head() != head {
			t.Fatal("a refused entry moved the head")
		}
	})
}
