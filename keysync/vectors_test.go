package keysync

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"unicode/utf8"

	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/insecuresecretdataaccess"
	"github.com/tink-crypto/tink-go/v2/keyset"
	gcmpb "github.com/tink-crypto/tink-go/v2/proto/aes_gcm_go_proto"
	tinkpb "github.com/tink-crypto/tink-go/v2/proto/tink_go_proto"
	"google.golang.org/protobuf/proto"
)

var update = flag.Bool("update", false, "rewrite testdata/vectors and testdata/fuzz seeds from the generator")

const vectorsPath = "testdata/vectors/cell_v1.json"

// vectorFile is the JSON layout of testdata/vectors/cell_v1.json; see
// docs/cell-format.md.
type vectorFile struct {
	Comment []string `json:"comment"`
	// Keyset is a Tink JSON keyset (cleartext, test-only keys).
	Keyset json.RawMessage `json:"keyset"`
	// Keys are the same keys as raw AES-256 keys, for implementations
	// without Tink.
	Keys    []vectorKey `json:"keys"`
	Vectors []vector    `json:"vectors"`
}

type vectorKey struct {
	KeyID   uint32 `json:"key_id"`
	Primary bool   `json:"primary"`
	KeyHex  string `json:"key_hex"`
}

type vectorContext struct {
	Table  string   `json:"table"`
	Column string   `json:"column"`
	Tenant string   `json:"tenant"`
	RowKey []string `json:"row_key"` // null or absent: row not bound
}

type vector struct {
	Name    string        `json:"name"`
	Context vectorContext `json:"context"`
	// AssociatedDataHex is the associated data Context encodes to.
	AssociatedDataHex string `json:"associated_data_hex"`
	Cell              string `json:"cell"`
	// For a valid cell: the plaintext, and (informative) the key and
	// nonce that sealed it.
	PlaintextHex *string `json:"plaintext_hex,omitempty"`
	Plaintext    *string `json:"plaintext,omitempty"` // when it is UTF-8
	KeyID        uint32  `json:"key_id,omitempty"`
	NonceHex     string  `json:"nonce_hex,omitempty"`
	// Error, for an invalid cell: ErrNotEncrypted, ErrMalformedCell,
	// ErrNoKey or ErrAuth.
	Error string `json:"error,omitempty"`
}

var vectorErrors = map[string]error{
	"ErrNotEncrypted":  ErrNotEncrypted,
	"ErrMalformedCell": ErrMalformedCell,
	"ErrNoKey":         ErrNoKey,
	"ErrAuth":          ErrAuth,
}

func (c vectorContext) cellContext() CellContext {
	return CellContext{Table: c.Table, Column: c.Column, Tenant: c.Tenant, RowKey: c.RowKey}
}

// TestVectors checks that every vector in testdata/vectors opens, or fails,
// exactly as labelled; that the file is what the generator produces; and
// that the raw keys listed match the Tink keyset.
func TestVectors(t *testing.T) {
	want, err := generateVectors()
	if err != nil {
		t.Fatal(err)
	}
	wantJSON, err := marshalVectors(want)
	if err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(vectorsPath, wantJSON, 0o644); err != nil {
			t.Fatal(err)
		}
		writeFuzzSeeds(t, want)
	}
	b, err := os.ReadFile(vectorsPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, wantJSON) {
		t.Errorf("%s differs from the generator's output; run go test -run TestVectors -update", vectorsPath)
	}
	var vf vectorFile
	if err := json.Unmarshal(b, &vf); err != nil {
		t.Fatal(err)
	}
	checkVectorKeys(t, &vf)

	counts := map[string]int{}
	for _, v := range vf.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			c := v.Context.cellContext()
			// The vectors test the format, in which a keyset's tenant is
			// out of band: load the keyset for the vector's tenant.
			ks := vectorKeyset(t, vf.Keyset, c.Tenant)
			ad, err := c.AssociatedData()
			if err != nil {
				t.Fatal(err)
			}
			if got := hex.EncodeToString(ad); got != v.AssociatedDataHex {
				t.Errorf("associated data %s, want %s", got, v.AssociatedDataHex)
			}
			pt, err := Open(ks, c, v.Cell)
			// OpenAppend must agree with Open, appending after what dst
			// holds, with and without spare capacity.
			for _, dst := range [][]byte{[]byte("head"), append(make([]byte, 0, 4096), "head"...)} {
				got, aerr := OpenAppend(dst, ks, c, v.Cell)
				if (aerr == nil) != (err == nil) || aerr != nil && aerr.Error() != err.Error() {
					t.Fatalf("OpenAppend: %v; Open: %v", aerr, err)
				}
				if aerr == nil && (string(got[:4]) != "head" || !bytes.Equal(got[4:], pt)) {
					t.Fatalf("OpenAppend = %q, want head + %q", got, pt)
				}
			}
			if v.Error == "" {
				counts["ok"]++
				if v.PlaintextHex == nil {
					t.Fatal("valid vector without plaintext_hex")
				}
				want, _ := hex.DecodeString(*v.PlaintextHex)
				if err != nil || !bytes.Equal(pt, want) {
					t.Fatalf("Open = %x, %v; want %x", pt, err, want)
				}
				return
			}
			counts[v.Error]++
			sentinel, ok := vectorErrors[v.Error]
			if !ok {
				t.Fatalf("unknown error label %q", v.Error)
			}
			if err == nil {
				t.Fatalf("Open succeeded, want %s", v.Error)
			}
			for name, s := range vectorErrors {
				if errors.Is(err, s) != (s == sentinel) {
					t.Errorf("Open: %v; errors.Is(err, %s) = %v", err, name, !(s == sentinel))
				}
			}
		})
	}
	t.Logf("vectors: %v", counts)
}

func vectorHandle(tb testing.TB, tinkJSON []byte) *keyset.Handle {
	tb.Helper()
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(tinkJSON)))
	if err != nil {
		tb.Fatal(err)
	}
	return h
}

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

func vectorKeyset(t *testing.T, tinkJSON []byte, tenant string) *Keyset {
	t.Helper()
	ks, err := newKeyset(tenant, 1, vectorHandle(t, tinkJSON))
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func checkVectorKeys(t *testing.T, vf *vectorFile) {
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(vf.Keyset)))
	if err != nil {
		t.Fatal(err)
	}
	if h.Len() != len(vf.Keys) {
		t.Fatalf("keyset has %d keys, keys lists %d", h.Len(), len(vf.Keys))
	}
	for i, k := range vf.Keys {
		e, err := h.Entry(i)
		if err != nil {
			t.Fatal(err)
		}
		raw := e.Key().(*aesgcm.Key).KeyBytes().Data(insecuresecretdataaccess.Token{})
		if e.KeyID() != k.KeyID || e.IsPrimary() != k.Primary || hex.EncodeToString(raw) != k.KeyHex {
			t.Errorf("keys[%d] = %+v does not match the keyset's key 0x%08x", i, k, e.KeyID())
		}
	}
}

// The generator. It derives keys and nonces from fixed labels, so its output
// is stable, and it seals with crypto/cipher following docs/cell-format.md
// rather than with Seal, so the vectors also check Open against an
// independent implementation of the format.

func testKey(label string) []byte {
	k := sha256.Sum256([]byte("shapeseal test vector key: " + label))
	return k[:]
}

func testNonce(label string) []byte {
	n := sha256.Sum256([]byte("shapeseal test vector nonce: " + label))
	return n[:nonceLen]
}

type genKey struct {
	id      uint32
	primary bool
	inSet   bool // false: a key the keyset does not hold
	label   string
}

var genKeys = []genKey{
	{id: 0x1a2b3c4d, label: "old", inSet: true},
	{id: 0x5e6f7081, label: "primary", inSet: true, primary: true},
	{id: 0x0badc0de, label: "absent"},
}

func genKeyByLabel(label string) genKey {
	for _, k := range genKeys {
		if k.label == label {
			return k
		}
	}
	panic("no key " + label)
}

// sealVector seals pt with key for c exactly as the format says:
// 0x01 || key id || nonce || AES-256-GCM(key, nonce, pt, AD).
func sealVector(k genKey, nonce []byte, c CellContext, pt []byte) (string, []byte) {
	ad, err := c.AssociatedData()
	if err != nil {
		panic(err)
	}
	block, _ := aes.NewCipher(testKey(k.label))
	g, _ := cipher.NewGCM(block)
	raw := []byte{0x01}
	raw = binary.BigEndian.AppendUint32(raw, k.id)
	raw = append(raw, nonce...)
	raw = g.Seal(raw, nonce, pt, ad)
	return CellPrefix + base64.RawURLEncoding.EncodeToString(raw), raw
}

func tinkJSONKeyset() ([]byte, error) {
	ks := &tinkpb.Keyset{}
	for _, k := range genKeys {
		if !k.inSet {
			continue
		}
		ser, err := proto.Marshal(&gcmpb.AesGcmKey{Version: 0, KeyValue: testKey(k.label)})
		if err != nil {
			return nil, err
		}
		ks.Key = append(ks.Key, &tinkpb.Keyset_Key{
			KeyData: &tinkpb.KeyData{
				TypeUrl:         "type.googleapis.com/google.crypto.tink.AesGcmKey",
				Value:           ser,
				KeyMaterialType: tinkpb.KeyData_SYMMETRIC,
			},
			Status:           tinkpb.KeyStatusType_ENABLED,
			KeyId:            k.id,
			OutputPrefixType: tinkpb.OutputPrefixType_TINK,
		})
		if k.primary {
			ks.PrimaryKeyId = k.id
		}
	}
	ser, err := proto.Marshal(ks)
	if err != nil {
		return nil, err
	}
	h, err := insecurecleartextkeyset.Read(keyset.NewBinaryReader(bytes.NewReader(ser)))
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(&buf)); err != nil {
		return nil, err
	}
	// Re-indent for a readable file.
	var out bytes.Buffer
	if err := json.Indent(&out, buf.Bytes(), "  ", "  "); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

func generateVectors() (*vectorFile, error) {
	kj, err := tinkJSONKeyset()
	if err != nil {
		return nil, err
	}
	vf := &vectorFile{
		Comment: []string{
			"shapeseal cell format v1 test vectors; see docs/cell-format.md.",
			"TEST-ONLY KEYS, derived from public labels. Never use them for data.",
			"keyset is a Tink JSON keyset; keys lists the same AES-256 keys raw.",
			"A vector without error opens to plaintext_hex; one with error must fail with it.",
			"Generated by go test ./keysync -run TestVectors -update.",
		},
		Keyset: kj,
	}
	for _, k := range genKeys {
		if k.inSet {
			vf.Keys = append(vf.Keys, vectorKey{KeyID: k.id, Primary: k.primary, KeyHex: hex.EncodeToString(testKey(k.label))})
		}
	}

	base := vectorContext{Table: "public.items", Column: "title", Tenant: "tenant-a", RowKey: []string{"7f9c2ba4-e88f-4d2c-9f5e-1b2c3d4e5f60"}}
	ctx := func(f func(c *vectorContext)) vectorContext {
		c := base
		c.RowKey = append([]string(nil), base.RowKey...)
		if f != nil {
			f(&c)
		}
		return c
	}
	add := func(v vector) {
		ad, err := v.Context.cellContext().AssociatedData()
		if err != nil {
			panic(err)
		}
		v.AssociatedDataHex = hex.EncodeToString(ad)
		vf.Vectors = append(vf.Vectors, v)
	}
	valid := func(name, key string, c vectorContext, pt []byte) (string, []byte) {
		k := genKeyByLabel(key)
		nonce := testNonce(name)
		cell, raw := sealVector(k, nonce, c.cellContext(), pt)
		ph := hex.EncodeToString(pt)
		v := vector{Name: name, Context: c, Cell: cell, PlaintextHex: &ph, KeyID: k.id, NonceHex: hex.EncodeToString(nonce)}
		if utf8.Valid(pt) {
			s := string(pt)
			v.Plaintext = &s
		}
		add(v)
		return cell, raw
	}
	invalid := func(name string, c vectorContext, cell, errName string) {
		add(vector{Name: name, Context: c, Cell: cell, Error: errName})
	}
	enc := func(raw []byte) string { return CellPrefix + base64.RawURLEncoding.EncodeToString(raw) }
	flip := func(raw []byte, i int) string {
		b := bytes.Clone(raw)
		b[i] ^= 0x80
		return enc(b)
	}

	// Valid cells.
	cell, raw := valid("text, row bound", "primary", base, []byte("Quarterly numbers"))
	valid("empty plaintext", "primary", base, []byte{})
	valid("UTF-8 plaintext", "primary", ctx(func(c *vectorContext) { c.Column = "body" }), []byte("Grüße, 世界 🔐"))
	valid("binary plaintext", "primary", ctx(func(c *vectorContext) { c.Column = "blob" }), []byte{0x00, 0x01, 0xfe, 0xff, 0x00})
	valid("row not bound", "primary", ctx(func(c *vectorContext) { c.RowKey = nil }), []byte("serial ids are not known at seal time"))
	valid("composite row key", "primary", ctx(func(c *vectorContext) { c.RowKey = []string{"42", "2024-01-31"} }), []byte("two key columns"))
	valid("empty row-key value", "primary", ctx(func(c *vectorContext) { c.RowKey = []string{""} }), []byte("bound to the empty string"))
	valid("other schema", "primary", ctx(func(c *vectorContext) { c.Table = "billing.invoices"; c.Column = "amount" }), []byte("1234.50"))
	valid("sealed with an older key", "old", base, []byte("before the rotation"))
	valid("longer plaintext", "primary", base, bytes.Repeat([]byte("0123456789abcdef"), 16))
	absentCell, _ := sealVector(genKeyByLabel("absent"), testNonce("unknown key id"), base.cellContext(), []byte("sealed with a key the keyset lacks"))

	// Invalid cells, each with the error it must produce.
	invalid("tampered ciphertext byte", base, flip(raw, keyPrefixLen+nonceLen), "ErrAuth")
	invalid("tampered nonce byte", base, flip(raw, keyPrefixLen+3), "ErrAuth")
	invalid("tampered tag byte", base, flip(raw, len(raw)-1), "ErrAuth")
	invalid("moved row", ctx(func(c *vectorContext) { c.RowKey = []string{"00000000-0000-0000-0000-000000000000"} }), cell, "ErrAuth")
	invalid("moved column", ctx(func(c *vectorContext) { c.Column = "body" }), cell, "ErrAuth")
	invalid("moved table", ctx(func(c *vectorContext) { c.Table = "public.archive" }), cell, "ErrAuth")
	invalid("moved tenant", ctx(func(c *vectorContext) { c.Tenant = "tenant-b" }), cell, "ErrAuth")
	invalid("row key dropped", ctx(func(c *vectorContext) { c.RowKey = nil }), cell, "ErrAuth")
	invalid("truncated by one byte", base, enc(raw[:len(raw)-1]), "ErrAuth")
	invalid("truncated below 33 bytes", base, enc(raw[:minCellLen-1]), "ErrMalformedCell")
	invalid("prefix only", base, CellPrefix, "ErrMalformedCell")
	invalid("bad base64 character", base, cell[:12]+"+"+cell[13:], "ErrMalformedCell")
	invalid("base64 with padding", base, CellPrefix+base64.URLEncoding.EncodeToString(raw[:len(raw)-1]), "ErrMalformedCell")
	invalid("non-canonical base64 (trailing bits)", base, nonCanonical(raw[:len(raw)-1]), "ErrMalformedCell")
	invalid("line break in base64", base, cell[:30]+"\n"+cell[30:], "ErrMalformedCell")
	invalid("unknown version", base, "ss2:"+cell[len(CellPrefix):], "ErrMalformedCell")
	invalid("unknown output prefix", base, enc(append([]byte{0x00}, raw[1:]...)), "ErrMalformedCell")
	invalid("missing prefix", base, cell[len(CellPrefix):], "ErrNotEncrypted")
	invalid("plaintext in an encrypted column", base, "Quarterly numbers", "ErrNotEncrypted")
	invalid("upper-case prefix", base, "SS1:"+cell[len(CellPrefix):], "ErrNotEncrypted")
	invalid("unknown key id", base, absentCell, "ErrNoKey")
	invalid("tampered key id", base, flip(raw, 1), "ErrNoKey")
	return vf, nil
}

// nonCanonical encodes raw (whose length is not a multiple of 3) with a
// non-zero unused bit in its last character.
func nonCanonical(raw []byte) string {
	if len(raw)%3 == 0 {
		panic("nonCanonical needs a partial final group")
	}
	s := []byte(base64.RawURLEncoding.EncodeToString(raw))
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
	last := bytes.IndexByte([]byte(alphabet), s[len(s)-1])
	s[len(s)-1] = alphabet[last|1]
	return CellPrefix + string(s)
}

func marshalVectors(vf *vectorFile) ([]byte, error) {
	var buf bytes.Buffer
	e := json.NewEncoder(&buf)
	e.SetEscapeHTML(false)
	e.SetIndent("", "  ")
	if err := e.Encode(vf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// writeFuzzSeeds writes every vector's cell as a seed of FuzzOpen, in the
// corpus format of go test.
func writeFuzzSeeds(t *testing.T, vf *vectorFile) {
	dir := filepath.Join("testdata", "fuzz", "FuzzOpen")
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, v := range vf.Vectors {
		c := v.Context
		rowKey := ""
		if len(c.RowKey) > 0 {
			rowKey = c.RowKey[0]
		}
		body := fmt.Sprintf("go test fuzz v1\nstring(%q)\nstring(%q)\nstring(%q)\nbool(%v)\n", v.Cell, c.Column, rowKey, len(c.RowKey) > 0)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("vector-%02d", i)), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// FuzzParsePayload: a valid payload with the vector keyset, and cuts of
	// it at every field boundary.
	dir = filepath.Join("testdata", "fuzz", "FuzzParsePayload")
	os.RemoveAll(dir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ks, err := newKeyset("tenant-a", 7, vectorHandle(t, vf.Keyset))
	if err != nil {
		t.Fatal(err)
	}
	material, err := ks.marshalKeyset()
	if err != nil {
		t.Fatal(err)
	}
	good, err := (&payload{tenant: "tenant-a", generation: 7, recipient: "age1example", keyset: material}).marshal(context.Background(), testSigner)
	if err != nil {
		t.Fatal(err)
	}
	afterRecipient := len(payloadMagic) + 2 + len("tenant-a") + 8 + 2 + len("age1example")
	cuts := map[string][]byte{
		"valid":               good,
		"no-tenant-length":    good[:len(payloadMagic)+1],
		"no-generation":       good[:len(payloadMagic)+2+len("tenant-a")],
		"no-recipient-length": good[:len(payloadMagic)+2+len("tenant-a")+8+1],
		"no-keyset-length":    good[:afterRecipient+2],
		"short-signature":     good[:len(good)-1],
		"trailing-byte":       append(bytes.Clone(good), 0),
		"unsigned-v1":         append([]byte(payloadMagicV1), good[len(payloadMagic):afterRecipient-2-len("age1example")]...),
	}
	for name, b := range cuts {
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestVectorsPython runs testdata/vectors/check_vectors.py, an independent
// implementation of the format in Python (with the cryptography package),
// against the vectors. Without a python3 that has cryptography (Debian's
// python3-cryptography, which .ci/run installs) it is skipped, or fails when
// CI is true.
func TestVectorsPython(t *testing.T) {
	py := ""
	for _, cand := range []string{"python3", "/usr/bin/python3"} {
		if p, err := exec.LookPath(cand); err == nil && exec.Command(p, "-c", "import cryptography").Run() == nil {
			py = p
			break
		}
	}
	if py == "" {
		if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
			t.Fatal("no python3 with the cryptography package (CI is true, so this fails instead of skipping)")
		}
		t.Skip("no python3 with the cryptography package")
	}
	cmd := exec.Command(py, "check_vectors.py", "cell_v1.json")
	cmd.Dir = filepath.Join("testdata", "vectors")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("check_vectors.py: %v\n%s", err, out)
	}
	t.Logf("check_vectors.py: %s", bytes.TrimSpace(out))
}
