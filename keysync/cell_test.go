package keysync

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/tink-crypto/tink-go/v2/aead"
)

func newTestKeyset(t testing.TB, tenant string) *Keyset {
	t.Helper()
	ks, err := NewKeyset(tenant)
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

var testContext = CellContext{
	Table:  "public.items",
	Column: "title",
	Tenant: "acme",
	RowKey: []string{"0b6c3f0e-6c4d-4b8e-9d3c-2f6f4c1d7a10"},
}

func mustSeal(t testing.TB, ks *Keyset, c CellContext, pt string) string {
	t.Helper()
	cell, err := Seal(ks, c, []byte(pt))
	if err != nil {
		t.Fatal(err)
	}
	return cell
}

func TestSealOpen(t *testing.T) {
	ks := newTestKeyset(t, "acme")
	for _, pt := range []string{"", "x", "quarterly numbers", strings.Repeat("é", 1000), "\x00\xff binary"} {
		cell := mustSeal(t, ks, testContext, pt)
		if !strings.HasPrefix(cell, CellPrefix) {
			t.Fatalf("cell %q lacks the prefix", cell)
		}
		if len(pt) > 8 && strings.Contains(cell, pt) {
			t.Fatalf("cell contains its plaintext")
		}
		if want := len(CellPrefix) + base64.RawURLEncoding.EncodedLen(minCellLen+len(pt)); len(cell) != want {
			t.Errorf("len(cell) = %d, want %d", len(cell), want)
		}
		got, err := Open(ks, testContext, cell)
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != pt {
			t.Fatalf("Open = %q, want %q", got, pt)
		}
		if cell2 := mustSeal(t, ks, testContext, pt); cell2 == cell {
			t.Fatal("two seals of the same plaintext are equal: nonce reuse")
		}
	}
}

func TestSealNamesPrimaryKey(t *testing.T) {
	ks := newTestKeyset(t, "acme")
	cell := mustSeal(t, ks, testContext, "v")
	raw, err := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(cell, CellPrefix))
	if err != nil {
		t.Fatal(err)
	}
	want := cellKeyPrefix(ks.PrimaryKeyID())
	if !bytes.Equal(raw[:5], want[:]) {
		t.Fatalf("cell prefix %x, want %x", raw[:5], want)
	}
}

// TestTinkInterop checks that cells are exactly Tink AEAD ciphertexts: Tink's
// own AEAD primitive opens what Seal makes, and Open opens what Tink makes.
func TestTinkInterop(t *testing.T) {
	ks := newTestKeyset(t, "acme")
	ks, err := ks.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	a, err := aead.New(ks.handle)
	if err != nil {
		t.Fatal(err)
	}
	ad, err := testContext.AssociatedData()
	if err != nil {
		t.Fatal(err)
	}

	cell := mustSeal(t, ks, testContext, "from keysync")
	raw, _ := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(cell, CellPrefix))
	pt, err := a.Decrypt(raw, ad)
	if err != nil || string(pt) != "from keysync" {
		t.Fatalf("Tink Decrypt = %q, %v", pt, err)
	}

	ct, err := a.Encrypt([]byte("from tink"), ad)
	if err != nil {
		t.Fatal(err)
	}
	pt, err = Open(ks, testContext, CellPrefix+base64.RawURLEncoding.EncodeToString(ct))
	if err != nil || string(pt) != "from tink" {
		t.Fatalf("Open(Tink ciphertext) = %q, %v", pt, err)
	}
}

func TestAssociatedData(t *testing.T) {
	c := CellContext{Table: "public.items", Column: "title", Tenant: "acme", RowKey: []string{"42", "b"}}
	ad, err := c.AssociatedData()
	if err != nil {
		t.Fatal(err)
	}
	want := "shapeseal/cell/v1\x00public.items\x00title\x00acme\x0042\x00b"
	if string(ad) != want {
		t.Fatalf("AD = %q, want %q", ad, want)
	}
	if c.adLen() != len(ad) {
		t.Fatalf("adLen = %d, want %d", c.adLen(), len(ad))
	}
	c.RowKey = nil
	ad, _ = c.AssociatedData()
	if want := "shapeseal/cell/v1\x00public.items\x00title\x00acme"; string(ad) != want {
		t.Fatalf("AD = %q, want %q", ad, want)
	}
	// The example of docs/cell-format.md.
	c = CellContext{Table: "public.items", Column: "title", Tenant: "t1", RowKey: []string{"7"}}
	ad, _ = c.AssociatedData()
	if got, want := hex.EncodeToString(ad), "73686170657365616c2f63656c6c2f7631007075626c69632e6974656d73007469746c650074310037"; got != want {
		t.Fatalf("AD hex = %s, want %s", got, want)
	}
}

func TestInvalidContext(t *testing.T) {
	ks := newTestKeyset(t, "acme")
	for name, c := range map[string]CellContext{
		"unqualified table": {Table: "items", Column: "c", Tenant: "acme"},
		"empty schema":      {Table: ".items", Column: "c", Tenant: "acme"},
		"empty column":      {Table: "public.items", Tenant: "acme"},
		"NUL in column":     {Table: "public.items", Column: "c\x00d", Tenant: "acme"},
		"NUL in table":      {Table: "public.it\x00ems", Column: "c", Tenant: "acme"},
		"NUL in row key":    {Table: "public.items", Column: "c", Tenant: "acme", RowKey: []string{"a\x00b"}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Seal(ks, c, []byte("x")); !errors.Is(err, ErrInvalidContext) {
				t.Errorf("Seal: err = %v, want ErrInvalidContext", err)
			}
			cell := mustSeal(t, ks, testContext, "x")
			if _, err := Open(ks, c, cell); !errors.Is(err, ErrInvalidContext) {
				t.Errorf("Open: err = %v, want ErrInvalidContext", err)
			}
		})
	}
}

// TestOpenErrors is the table of ways a cell fails to open, each with the
// one error it must produce.
func TestOpenErrors(t *testing.T) {
	ks := newTestKeyset(t, "acme")
	other := newTestKeyset(t, "acme") // same tenant, different keys
	// 7 bytes of plaintext make a 40-byte ciphertext, whose padded base64
	// differs from the unpadded one.
	cell := mustSeal(t, ks, testContext, "secret!")
	raw, _ := base64.RawURLEncoding.DecodeString(strings.TrimPrefix(cell, CellPrefix))
	enc := func(b []byte) string { return CellPrefix + base64.RawURLEncoding.EncodeToString(b) }
	flip := func(i int) string {
		b := bytes.Clone(raw)
		b[i] ^= 0x01
		return enc(b)
	}
	with := func(f func(c *CellContext)) CellContext {
		c := testContext
		c.RowKey = append([]string(nil), c.RowKey...)
		f(&c)
		return c
	}
	foreign := mustSeal(t, other, testContext, "secret!")

	tests := []struct {
		name string
		ks   *Keyset
		c    CellContext
		cell string
		want error
	}{
		{"tampered ciphertext", ks, testContext, flip(keyPrefixLen + nonceLen), ErrAuth},
		{"tampered nonce", ks, testContext, flip(keyPrefixLen), ErrAuth},
		{"tampered tag", ks, testContext, flip(len(raw) - 1), ErrAuth},
		{"tampered key id", ks, testContext, flip(4), ErrNoKey},
		{"moved row", ks, with(func(c *CellContext) { c.RowKey[0] = "another-row" }), cell, ErrAuth},
		{"moved column", ks, with(func(c *CellContext) { c.Column = "body" }), cell, ErrAuth},
		{"moved table", ks, with(func(c *CellContext) { c.Table = "public.other" }), cell, ErrAuth},
		{"row key dropped", ks, with(func(c *CellContext) { c.RowKey = nil }), cell, ErrAuth},
		{"row key extended", ks, with(func(c *CellContext) { c.RowKey = append(c.RowKey, "") }), cell, ErrAuth},
		{"keyset of another tenant", newTestKeyset(t, "globex"), with(func(c *CellContext) { c.Tenant = "globex" }), cell, ErrNoKey},
		{"context of another tenant", ks, with(func(c *CellContext) { c.Tenant = "globex" }), cell, ErrTenantMismatch},
		{"sealed with other keys", ks, testContext, foreign, ErrNoKey},
		{"truncated to nothing", ks, testContext, CellPrefix, ErrMalformedCell},
		{"truncated below minimum", ks, testContext, enc(raw[:minCellLen-1]), ErrMalformedCell},
		{"truncated by a byte", ks, testContext, enc(raw[:len(raw)-1]), ErrAuth},
		{"extended by a byte", ks, testContext, enc(append(bytes.Clone(raw), 0)), ErrAuth},
		{"bad base64 character", ks, testContext, cell[:10] + "+" + cell[11:], ErrMalformedCell},
		{"padded base64", ks, testContext, CellPrefix + base64.URLEncoding.EncodeToString(raw), ErrMalformedCell},
		{"standard base64 alphabet", ks, testContext, cell[:10] + "/" + cell[11:], ErrMalformedCell},
		{"newline inside", ks, testContext, cell[:20] + "\n" + cell[20:], ErrMalformedCell},
		{"impossible length", ks, testContext, impossibleLength(cell), ErrMalformedCell},
		{"missing prefix", ks, testContext, cell[len(CellPrefix):], ErrNotEncrypted},
		{"plaintext", ks, testContext, "secret", ErrNotEncrypted},
		{"empty", ks, testContext, "", ErrNotEncrypted},
		{"upper-case prefix", ks, testContext, "SS1:" + cell[4:], ErrNotEncrypted},
		{"future version", ks, testContext, "ss2:" + cell[4:], ErrMalformedCell},
		{"CRUNCHY prefix", ks, testContext, enc(append([]byte{0}, raw[1:]...)), ErrMalformedCell},
	}
	sentinels := []error{ErrAuth, ErrNoKey, ErrMalformedCell, ErrNotEncrypted, ErrTenantMismatch}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pt, err := Open(tt.ks, tt.c, tt.cell)
			if err == nil {
				t.Fatalf("Open succeeded with %d bytes", len(pt))
			}
			oe, ok := errors.AsType[*OpenError](err)
			if !ok {
				t.Fatalf("err = %T %v, want *OpenError", err, err)
			}
			for _, s := range sentinels {
				if errors.Is(err, s) != (s == tt.want) {
					t.Errorf("errors.Is(%v, %v) = %v", err, s, !(s == tt.want))
				}
			}
			if (tt.want == ErrAuth || tt.want == ErrNoKey) != oe.HasKeyID {
				t.Errorf("HasKeyID = %v for %v", oe.HasKeyID, tt.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q contains the plaintext", err)
			}
		})
	}
}

// impossibleLength appends 'A's to cell until its base64 has a length that
// no encoding has (1 mod 4).
func impossibleLength(cell string) string {
	for len(cell[len(CellPrefix):])%4 != 1 {
		cell += "A"
	}
	return cell
}

func TestOpenErrorFields(t *testing.T) {
	ks := newTestKeyset(t, "acme")
	cell := mustSeal(t, ks, testContext, "x")
	c := testContext
	c.Column = "body"
	_, err := Open(ks, c, cell)
	oe, ok := errors.AsType[*OpenError](err)
	if !ok {
		t.Fatal(err)
	}
	if oe.Table != "public.items" || oe.Column != "body" || oe.Tenant != "acme" || oe.KeyID != ks.PrimaryKeyID() || oe.Generation != 1 {
		t.Fatalf("OpenError = %+v", oe)
	}
	if !strings.Contains(err.Error(), "public.items.body") {
		t.Errorf("message %q does not say where", err)
	}
	if strings.Contains(err.Error(), c.RowKey[0]) {
		t.Errorf("message %q contains the row key", err)
	}
}

func TestSealTenantMismatch(t *testing.T) {
	ks := newTestKeyset(t, "acme")
	c := testContext
	c.Tenant = "globex"
	_, err := Seal(ks, c, []byte("x"))
	tm, ok := errors.AsType[*TenantMismatchError](err)
	if !ok || tm.Want != "globex" || tm.Got != "acme" || !errors.Is(err, ErrTenantMismatch) {
		t.Fatalf("err = %v", err)
	}
}

func TestRotate(t *testing.T) {
	ks1 := newTestKeyset(t, "acme")
	old := mustSeal(t, ks1, testContext, "old")
	ks2, err := ks1.Rotate()
	if err != nil {
		t.Fatal(err)
	}
	if ks2.Generation() != 2 || ks1.Generation() != 1 {
		t.Fatalf("generations %d, %d", ks1.Generation(), ks2.Generation())
	}
	if ks2.PrimaryKeyID() == ks1.PrimaryKeyID() || !ks2.HasKey(ks1.PrimaryKeyID()) || len(ks2.KeyIDs()) != 2 {
		t.Fatalf("rotated keyset %v from %v", ks2, ks1)
	}
	if ks1.HasKey(ks2.PrimaryKeyID()) {
		t.Fatal("Rotate changed the original keyset")
	}
	new := mustSeal(t, ks2, testContext, "new")
	if pt, err := Open(ks2, testContext, old); err != nil || string(pt) != "old" {
		t.Fatalf("old cell after rotation: %q, %v", pt, err)
	}
	// A reader still at generation 1 does not have the new key yet.
	_, err = Open(ks1, testContext, new)
	if oe, ok := errors.AsType[*OpenError](err); !ok || !errors.Is(err, ErrNoKey) || oe.KeyID != ks2.PrimaryKeyID() {
		t.Fatalf("new cell with old keyset: %v", err)
	}

	// Retire the old key once its cells are re-encrypted.
	if _, err := ks2.Retire(ks2.PrimaryKeyID()); err == nil {
		t.Fatal("retired the primary key")
	}
	if _, err := ks2.Retire(12345); err == nil {
		t.Fatal("retired an absent key")
	}
	ks3, err := ks2.Retire(ks1.PrimaryKeyID())
	if err != nil {
		t.Fatal(err)
	}
	if ks3.Generation() != 3 || ks3.HasKey(ks1.PrimaryKeyID()) {
		t.Fatalf("retired keyset %v", ks3)
	}
	if _, err := Open(ks3, testContext, old); !errors.Is(err, ErrNoKey) {
		t.Fatalf("cell of a retired key: %v", err)
	}
	if pt, err := Open(ks3, testContext, new); err != nil || string(pt) != "new" {
		t.Fatalf("new cell after retire: %q, %v", pt, err)
	}
}

func TestKeysetString(t *testing.T) {
	ks := newTestKeyset(t, "acme")
	s := ks.String()
	if !strings.Contains(s, "acme") || strings.Contains(strings.ToLower(s), "value") {
		t.Fatalf("String() = %q", s)
	}
}

func TestNewKeysetTenant(t *testing.T) {
	for _, tenant := range []string{"", "a\x00b", strings.Repeat("x", maxTenantLen+1)} {
		if _, err := NewKeyset(tenant); !errors.Is(err, ErrInvalidContext) {
			t.Errorf("NewKeyset(%.10q): %v", tenant, err)
		}
	}
}

func TestOpenedPlaintextIsIndependent(t *testing.T) {
	ks := newTestKeyset(t, "acme")
	cell := mustSeal(t, ks, testContext, "abc")
	a, _ := Open(ks, testContext, cell)
	b, _ := Open(ks, testContext, cell)
	a = append(a, "def"...)
	a[0] = 'X'
	if string(b) != "abc" {
		t.Fatalf("plaintexts share memory: %q", b)
	}
}

func TestConcurrentSealOpen(t *testing.T) {
	ks := newTestKeyset(t, "acme")
	spec := itemsSpec
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 200 {
				c := testContext
				c.RowKey = []string{fmt.Sprint(g, "-", i)}
				pt := strings.Repeat("x", i*7)
				cell, err := Seal(ks, c, []byte(pt))
				if err != nil {
					t.Error(err)
					return
				}
				got, err := Open(ks, c, cell)
				if err != nil || string(got) != pt {
					t.Errorf("Open = %d bytes, %v", len(got), err)
					return
				}
				row := map[string]any{"id": c.RowKey[0], "tenant_id": "acme", "title": pt}
				if err := spec.SealRow(ks, row); err != nil {
					t.Error(err)
					return
				}
				if err := spec.OpenRow(ks, row); err != nil || row["title"] != pt {
					t.Errorf("OpenRow: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
}

// OpenAppend leaves no plaintext in dst's spare capacity.
func TestOpenAppendSpareCapacity(t *testing.T) {
	ks := newTestKeyset(t, "acme")
	secret := strings.Repeat("SECRET", 20)
	cell := mustSeal(t, ks, testContext, secret)
	buf := make([]byte, 0, 4096)
	got, err := OpenAppend(buf, ks, testContext, cell)
	if err != nil || string(got) != secret {
		t.Fatalf("OpenAppend = %q, %v", got, err)
	}
	// Past the plaintext: where its tail was before it moved down (now
	// zero), then the tag and associated data.
	spare := got[len(got):cap(got)]
	if !bytes.Equal(spare[:keyPrefixLen+nonceLen], make([]byte, keyPrefixLen+nonceLen)) || bytes.Contains(spare, []byte("SECRET")) {
		t.Fatalf("plaintext left in spare capacity: %q", spare[:64])
	}
}
