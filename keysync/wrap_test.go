package keysync

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/shapeseal/shapeseal/keysync/chain"
)

func TestWrapUnwrap(t *testing.T) {
	hybrid, err := GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	x25519, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	ks := newTestKeyset(t, "acme")
	ks, _ = ks.Rotate()
	cell := mustSeal(t, ks, testContext, "shared")

	for name, id := range map[string]age.Identity{"hybrid": hybrid, "x25519": x25519} {
		t.Run(name, func(t *testing.T) {
			rs, _ := RecipientOf(id)
			wrapped, err := Wrap(t.Context(), ks, testSigner, rs)
			if err != nil {
				t.Fatal(err)
			}
			got, err := Unwrap(id, wrapped, "acme", testSigners)
			if err != nil {
				t.Fatal(err)
			}
			if got.Tenant() != "acme" || got.Generation() != 2 || got.PrimaryKeyID() != ks.PrimaryKeyID() || len(got.KeyIDs()) != 2 {
				t.Fatalf("unwrapped %v, want %v", got, ks)
			}
			if pt, err := Open(got, testContext, cell); err != nil || string(pt) != "shared" {
				t.Fatalf("Open with unwrapped keyset: %q, %v", pt, err)
			}
		})
	}
}

func TestWrapRecipientKinds(t *testing.T) {
	hybrid, _ := GenerateIdentity()
	if r, _ := RecipientOf(hybrid); !strings.HasPrefix(r, "age1pq1") {
		t.Fatalf("default identity's recipient %.12s… is not post-quantum", r)
	}
	ks := newTestKeyset(t, "acme")
	if _, err := Wrap(t.Context(), ks, testSigner, ""); err == nil {
		t.Fatal("Wrap with no recipient")
	}
	if _, err := Wrap(t.Context(), ks, nil, hybrid.Recipient().String()); err == nil {
		t.Fatal("Wrap with no signer")
	}
	for _, s := range []string{"", "ssh-ed25519 AAAA", "AGE-SECRET-KEY-1XYZ", "age1notvalid"} {
		if _, err := ParseRecipient(s); err == nil {
			t.Errorf("ParseRecipient(%q) succeeded", s)
		}
	}
}

// failingSigner is a signer whose key store is unreachable.
type failingSigner struct{ chain.Signer }

func (failingSigner) Sign(context.Context, []byte) ([]byte, error) {
	return nil, errors.New("key store unreachable")
}

// TestWrapSignerFails: a signer that fails (a KMS that is down) makes Wrap
// fail; it never returns an unsigned payload.
func TestWrapSignerFails(t *testing.T) {
	id, _ := GenerateIdentity()
	ks := newTestKeyset(t, "acme")
	w, err := Wrap(t.Context(), ks, failingSigner{testSigner}, id.Recipient().String())
	if err == nil || !strings.Contains(err.Error(), "key store unreachable") || w != nil {
		t.Fatalf("Wrap with a failing signer: %d bytes, %v", len(w), err)
	}
}

func TestUnwrapErrors(t *testing.T) {
	id, _ := GenerateIdentity()
	other, _ := GenerateIdentity()
	ks := newTestKeyset(t, "acme")
	wrapped, err := Wrap(t.Context(), ks, testSigner, id.Recipient().String())
	if err != nil {
		t.Fatal(err)
	}

	t.Run("wrong identity", func(t *testing.T) {
		_, err := Unwrap(other, wrapped, "acme", testSigners)
		if !errors.Is(err, ErrWrongIdentity) {
			t.Fatalf("err = %v, want ErrWrongIdentity", err)
		}
		if _, ok := errors.AsType[*age.NoIdentityMatchError](err); !ok {
			t.Fatalf("err = %v does not hold *age.NoIdentityMatchError", err)
		}
	})
	t.Run("payload for another tenant", func(t *testing.T) {
		_, err := Unwrap(id, wrapped, "globex", testSigners)
		tm, ok := errors.AsType[*TenantMismatchError](err)
		if !ok || !errors.Is(err, ErrTenantMismatch) || tm.Want != "globex" || tm.Got != "acme" {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("tampered", func(t *testing.T) {
		b := bytes.Clone(wrapped)
		b[len(b)-1] ^= 1
		if _, err := Unwrap(id, b, "acme", testSigners); !errors.Is(err, ErrMalformedPayload) {
			t.Fatalf("err = %v, want ErrMalformedPayload", err)
		}
	})
	t.Run("not age", func(t *testing.T) {
		if _, err := Unwrap(id, []byte("hello"), "acme", testSigners); !errors.Is(err, ErrMalformedPayload) {
			t.Fatalf("err = %v, want ErrMalformedPayload", err)
		}
	})
	t.Run("age but not a payload", func(t *testing.T) {
		var buf bytes.Buffer
		w, _ := age.Encrypt(&buf, id.Recipient())
		w.Write([]byte("shapeseal/keyset/v9\nnot really"))
		w.Close()
		if _, err := Unwrap(id, buf.Bytes(), "acme", testSigners); !errors.Is(err, ErrMalformedPayload) {
			t.Fatalf("err = %v, want ErrMalformedPayload", err)
		}
	})
	t.Run("payload with a bad keyset", func(t *testing.T) {
		var buf bytes.Buffer
		w, _ := age.Encrypt(&buf, id.Recipient())
		w.Write(signedPayload(t, &payload{tenant: "acme", generation: 1, recipient: id.Recipient().String(), keyset: []byte("garbage")}, testSigner))
		w.Close()
		if _, err := Unwrap(id, buf.Bytes(), "acme", testSigners); !errors.Is(err, ErrInvalidKeyset) {
			t.Fatalf("err = %v, want ErrInvalidKeyset", err)
		}
	})
}

// TestUnwrapUntrusted is the attack signing exists for: someone who can
// write shapeseal_tenant_keys (but cannot use the KEK) wraps a keyset of
// their own to a device's public recipient.
func TestUnwrapUntrusted(t *testing.T) {
	id, _ := GenerateIdentity()
	other, _ := GenerateIdentity()
	self := id.Recipient().String()
	ks := newTestKeyset(t, "acme")
	seal := func(pt []byte) []byte {
		var buf bytes.Buffer
		w, _ := age.Encrypt(&buf, id.Recipient())
		w.Write(pt)
		w.Close()
		return buf.Bytes()
	}
	material, err := ks.marshalKeyset()
	if err != nil {
		t.Fatal(err)
	}
	genuine := signedPayload(t, &payload{tenant: "acme", generation: 5, recipient: self, keyset: material}, testSigner)
	if _, err := Unwrap(id, seal(genuine), "acme", testSigners); err != nil {
		t.Fatalf("genuine payload: %v", err)
	}

	forger := mustSigner()
	flipped := bytes.Clone(genuine)
	flipped[len(payloadMagic)+2+len("acme")+7] ^= 1 // generation 5 → 4
	swapped := bytes.Clone(genuine)                 // a valid signature by the forger, the trusted key's name
	forged := signedPayload(t, &payload{tenant: "acme", generation: 5, recipient: self, keyset: material}, forger)
	copy(swapped[len(swapped)-signatureLen:], forged[len(forged)-signatureLen:])
	v1 := append([]byte(payloadMagicV1), genuine[len(payloadMagic):]...)
	for name, tc := range map[string]struct {
		pt      []byte
		signers []VerifyKey
	}{
		"untrusted signer":         {forged, testSigners},
		"no trusted signers":       {genuine, nil},
		"trusts only another":      {genuine, []VerifyKey{forger.Public()}},
		"changed after signing":    {flipped, testSigners},
		"signature of another key": {swapped, testSigners},
		"signed for another device": {signedPayload(t, &payload{tenant: "acme", generation: 5, recipient: other.Recipient().String(), keyset: material}, testSigner),
			testSigners},
		"unsigned v1": {v1, testSigners},
	} {
		_, err := Unwrap(id, seal(tc.pt), "acme", tc.signers)
		if !errors.Is(err, ErrUntrustedKeyset) {
			t.Errorf("%s: err = %v, want ErrUntrustedKeyset", name, err)
		}
	}
}

// signedPayload returns p encoded and signed by s.
func signedPayload(tb testing.TB, p *payload, s chain.Signer) []byte {
	tb.Helper()
	b, err := p.marshal(context.Background(), s)
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func TestParsePayload(t *testing.T) {
	good := signedPayload(t, &payload{tenant: "acme", generation: 3, recipient: "age1x", keyset: []byte("ks")}, testSigner)
	p, err := parsePayload(good)
	if err != nil || p.tenant != "acme" || p.generation != 3 || p.recipient != "age1x" || string(p.keyset) != "ks" ||
		p.signer != testSigner.Public() || !p.signer.Verify(p.signed, p.signature) {
		t.Fatalf("parsePayload = %+v, %v", p, err)
	}
	bad := map[string][]byte{
		"empty":          nil,
		"bad magic":      append([]byte("shapeseal/keyset/v3\n"), good[len(payloadMagic):]...),
		"truncated":      good[:len(good)-1],
		"trailing":       append(bytes.Clone(good), 'x'),
		"generation 0":   signedPayload(t, &payload{tenant: "acme", generation: 0, keyset: []byte("ks")}, testSigner),
		"empty tenant":   signedPayload(t, &payload{tenant: "", generation: 1, keyset: []byte("ks")}, testSigner),
		"NUL in tenant":  signedPayload(t, &payload{tenant: "a\x00b", generation: 1, keyset: []byte("ks")}, testSigner),
		"tenant too big": append(append([]byte(payloadMagic), 0xff, 0xff), "short"...),
	}
	for name, b := range bad {
		if _, err := parsePayload(b); !errors.Is(err, ErrMalformedPayload) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

func TestIdentityFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "device.key")
	id, _ := GenerateIdentity()
	if err := WriteIdentityFile(path, id); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("identity file mode %o, want 600", fi.Mode().Perm())
	}
	if err := WriteIdentityFile(path, id); err == nil {
		t.Fatal("WriteIdentityFile overwrote an existing file")
	}
	b, _ := os.ReadFile(path)
	if r, _ := RecipientOf(id); !bytes.Contains(b, []byte("# public key: "+r)) {
		t.Fatal("identity file lacks its public key comment")
	}

	got, err := LoadIdentityFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The loaded identity unwraps what was wrapped to the original.
	ks := newTestKeyset(t, "acme")
	wrapped, _ := Wrap(t.Context(), ks, testSigner, id.Recipient().String())
	if _, err := Unwrap(got, wrapped, "acme", testSigners); err != nil {
		t.Fatal(err)
	}

	for _, mode := range []os.FileMode{0o640, 0o604, 0o660, 0o644, 0o610} {
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		_, err := LoadIdentityFile(path)
		pe, ok := errors.AsType[*FilePermissionError](err)
		if !ok || !errors.Is(err, ErrInsecureFile) || pe.Mode != uint32(mode) {
			t.Errorf("mode %o: err = %v, want *FilePermissionError", mode, err)
		}
		if err != nil && strings.Contains(err.Error(), "AGE-SECRET-KEY") {
			t.Fatal("error contains the secret key")
		}
	}
	os.Chmod(path, 0o400)
	if _, err := LoadIdentityFile(path); err != nil {
		t.Errorf("mode 400: %v", err)
	}

	// X25519 identities are accepted too.
	xpath := filepath.Join(dir, "x25519.key")
	x, _ := age.GenerateX25519Identity()
	if err := WriteIdentityFile(xpath, x); err != nil {
		t.Fatal(err)
	}
	if got, err := LoadIdentityFile(xpath); err != nil {
		t.Fatal(err)
	} else if _, ok := got.(*age.X25519Identity); !ok {
		t.Fatalf("loaded %T", got)
	}

	// Garbage, and two identities, are refused without echoing the file.
	gpath := filepath.Join(dir, "garbage.key")
	os.WriteFile(gpath, []byte("AGE-SECRET-KEY-1NOTAKEY\n"), 0o600)
	if _, err := LoadIdentityFile(gpath); err == nil || strings.Contains(err.Error(), "NOTAKEY") {
		t.Fatalf("garbage identity: %v", err)
	}
	two := filepath.Join(dir, "two.key")
	os.WriteFile(two, []byte(id.String()+"\n"+x.String()+"\n"), 0o600)
	if _, err := LoadIdentityFile(two); err == nil {
		t.Fatal("loaded a file with two identities")
	}
	if _, err := LoadIdentityFile(filepath.Join(dir, "absent")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("absent file: %v", err)
	}
}
