package keysync

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func newLocalKEK(t testing.TB) KEK {
	t.Helper()
	k, err := GenerateLocalKEK(filepath.Join(t.TempDir(), "kek.json"))
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestLocalKEK(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kek.json")
	k, err := GenerateLocalKEK(path)
	if err != nil {
		t.Fatal(err)
	}
	if want := "local://" + filepath.ToSlash(path); k.URI() != want {
		t.Fatalf("URI = %q, want %q", k.URI(), want)
	}
	fi, _ := os.Stat(path)
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("KEK file mode %o", fi.Mode().Perm())
	}
	if _, err := GenerateLocalKEK(path); err == nil {
		t.Fatal("GenerateLocalKEK overwrote a KEK")
	}

	ks := newTestKeyset(t, "acme")
	enc, err := EncryptKeyset(ks, k)
	if err != nil {
		t.Fatal(err)
	}
	// The same KEK, opened again by URI, decrypts.
	k2, err := OpenKEK(k.URI())
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecryptKeyset(k2, "acme", 1, enc)
	if err != nil {
		t.Fatal(err)
	}
	if got.PrimaryKeyID() != ks.PrimaryKeyID() || got.Generation() != 1 || got.Tenant() != "acme" {
		t.Fatalf("decrypted %v, want %v", got, ks)
	}

	os.Chmod(path, 0o644)
	if _, err := OpenLocalKEK(path); !errors.Is(err, ErrInsecureFile) {
		t.Fatalf("world-readable KEK: %v", err)
	}
	if _, err := OpenKEK("vault://x"); err == nil {
		t.Fatal("OpenKEK accepted an unknown scheme")
	}
	if _, err := OpenKEK("hcvault://vault:8200/transit/keys/k"); err == nil || !strings.Contains(err.Error(), "keysync/vaultkek") {
		t.Fatalf("OpenKEK(hcvault://) without vaultkek: %v", err)
	}
	if _, err := OpenKEK("local://"); err == nil {
		t.Fatal("OpenKEK accepted an empty path")
	}
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(bad, []byte(`{"not":"a keyset"}`), 0o600)
	if _, err := OpenLocalKEK(bad); err == nil {
		t.Fatal("OpenLocalKEK accepted a non-keyset")
	}
}

// TestEncryptedKeysetBinding checks that the associated data binds an
// encrypted keyset to its tenant and generation, and that it opens only
// under its KEK.
func TestEncryptedKeysetBinding(t *testing.T) {
	k := newLocalKEK(t)
	ks, _ := newTestKeyset(t, "acme").Rotate()
	enc, err := EncryptKeyset(ks, k)
	if err != nil {
		t.Fatal(err)
	}
	material, _ := ks.marshalKeyset()
	if bytes.Contains(enc, material[len(material)-40:]) {
		t.Fatal("encrypted keyset contains key material")
	}
	tests := []struct {
		name   string
		kek    KEK
		tenant string
		gen    uint64
		enc    []byte
	}{
		{"other tenant", k, "globex", 2, enc},
		{"other generation", k, "acme", 1, enc},
		{"other KEK", newLocalKEK(t), "acme", 2, enc},
		{"truncated", k, "acme", 2, enc[:len(enc)-1]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecryptKeyset(tt.kek, tt.tenant, tt.gen, tt.enc)
			ke, ok := errors.AsType[*KEKError](err)
			if !ok || ke.URI != tt.kek.URI() || ke.Tenant != tt.tenant {
				t.Fatalf("err = %v, want *KEKError", err)
			}
		})
	}
	if _, err := DecryptKeyset(k, "acme", 2, enc); err != nil {
		t.Fatal(err)
	}
	if _, err := DecryptKeyset(k, "", 2, enc); !errors.Is(err, ErrInvalidContext) {
		t.Fatalf("empty tenant: %v", err)
	}
}

func TestKEKString(t *testing.T) {
	k := newLocalKEK(t)
	if s := k.(interface{ String() string }).String(); !strings.Contains(s, "local://") {
		t.Fatalf("String() = %q", s)
	}
}
