package keysync

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/keyset"
	"github.com/tink-crypto/tink-go/v2/tink"
)

// A KEK (key-encryption key) encrypts tenant keysets at rest, for writers:
// the shapeseal_keysets table holds each keyset envelope-encrypted under a
// KEK, and the KEK's URI. The KEK itself never leaves its provider: a Vault
// transit key ("hcvault://…") in production, a local file ("local://…") in
// development.
type KEK interface {
	tink.AEAD
	// URI names the KEK, for example "local:///etc/shapeseal/kek.json" or
	// "hcvault://vault:8200/transit/keys/shapeseal".
	URI() string
}

// NewKEK returns a KEK named uri that encrypts with a, any Tink AEAD: for
// example the one tink-go-hcvault's hcvault.NewAEAD returns for a Vault
// transit key.
func NewKEK(uri string, a tink.AEAD) KEK { return &kek{uri, a} }

type kek struct {
	uri string
	tink.AEAD
}

func (k *kek) URI() string    { return k.uri }
func (k *kek) String() string { return "keysync.KEK(" + k.uri + ")" }

// LocalKEKScheme prefixes the URI of a local KEK file: "local://" then the
// file's absolute path, so "local:///var/lib/shapeseal/kek.json".
const LocalKEKScheme = "local://"

// GenerateLocalKEK creates a local KEK file at path: a new Tink keyset with
// one AES-256-GCM key, as cleartext JSON, readable only by its owner. It
// refuses to overwrite an existing file.
//
// A local KEK is for development and tests. Whoever reads the file can
// decrypt every stored keyset; in production use a KMS such as Vault.
func GenerateLocalKEK(path string) (KEK, error) {
	h, err := keyset.NewHandle(aead.AES256GCMKeyTemplate())
	if err != nil {
		return nil, fmt.Errorf("keysync: local KEK: %w", err)
	}
	var buf bytes.Buffer
	if err := insecurecleartextkeyset.Write(h, keyset.NewJSONWriter(&buf)); err != nil {
		return nil, fmt.Errorf("keysync: local KEK: %w", err)
	}
	defer clear(buf.Bytes())
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keysync: local KEK: %w", err)
	}
	_, err = f.Write(buf.Bytes())
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("keysync: local KEK: %w", err)
	}
	return localKEK(path, h)
}

// OpenLocalKEK opens the local KEK file at path, which GenerateLocalKEK
// wrote. It refuses a file that the group or others can access
// ([ErrInsecureFile]).
func OpenLocalKEK(path string) (KEK, error) {
	b, err := readSecretFile(path, 1<<20)
	if err != nil {
		return nil, err
	}
	defer clear(b)
	h, err := insecurecleartextkeyset.Read(keyset.NewJSONReader(bytes.NewReader(b)))
	if err != nil {
		return nil, fmt.Errorf("keysync: local KEK %s: not a Tink JSON keyset", path)
	}
	return localKEK(path, h)
}

func localKEK(path string, h *keyset.Handle) (KEK, error) {
	a, err := aead.New(h)
	if err != nil {
		return nil, fmt.Errorf("keysync: local KEK %s: %w", path, err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("keysync: local KEK: %w", err)
	}
	return NewKEK(LocalKEKScheme+filepath.ToSlash(abs), a), nil
}

// OpenKEK opens the KEK named by uri: "local://PATH" (see [OpenLocalKEK]),
// or a URI of a provider registered with [RegisterKEKScheme]. Vault transit
// ("hcvault://…") registers itself when its package is imported:
//
//	import _ "github.com/shapeseal/shapeseal/keysync/vaultkek"
func OpenKEK(uri string) (KEK, error) {
	if path, ok := strings.CutPrefix(uri, LocalKEKScheme); ok {
		if path == "" {
			return nil, errors.New("keysync: local KEK URI without a path")
		}
		return OpenLocalKEK(filepath.FromSlash(path))
	}
	kekSchemes.Lock()
	var open func(string) (KEK, error)
	for prefix, o := range kekSchemes.m {
		if strings.HasPrefix(uri, prefix) {
			open = o
		}
	}
	kekSchemes.Unlock()
	switch {
	case open != nil:
		return open(uri)
	case uri == "":
		return nil, errors.New("keysync: no KEK URI")
	case strings.HasPrefix(uri, "hcvault://"):
		return nil, fmt.Errorf("keysync: KEK URI %q: import github.com/shapeseal/shapeseal/keysync/vaultkek to open Vault transit keys", uri)
	}
	return nil, fmt.Errorf("keysync: unsupported KEK URI %q", uri)
}

var kekSchemes struct {
	sync.Mutex
	m map[string]func(string) (KEK, error)
}

// RegisterKEKScheme makes [OpenKEK] open the URIs that start with prefix
// (for example "hcvault://") with open. KEK providers call it from an init
// function; registering a prefix twice panics.
func RegisterKEKScheme(prefix string, open func(uri string) (KEK, error)) {
	kekSchemes.Lock()
	defer kekSchemes.Unlock()
	if _, dup := kekSchemes.m[prefix]; dup || prefix == LocalKEKScheme || prefix == "" {
		panic("keysync: KEK scheme " + prefix + " registered twice")
	}
	if kekSchemes.m == nil {
		kekSchemes.m = map[string]func(string) (KEK, error){}
	}
	kekSchemes.m[prefix] = open
}

// kekAD is the associated data that binds an encrypted keyset to its tenant
// and generation:
//
//	"shapeseal/kek/v1" 0x00 tenant 0x00 generation (uint64, big-endian)
//
// so a stored keyset cannot be moved to another tenant, nor replayed as
// another generation, without failing to decrypt.
func kekAD(tenant string, generation uint64) []byte {
	b := make([]byte, 0, 32+len(tenant))
	b = append(b, "shapeseal/kek/v1"...)
	b = append(b, 0)
	b = append(b, tenant...)
	b = append(b, 0)
	return binary.BigEndian.AppendUint64(b, generation)
}

// EncryptKeyset encrypts ks under kek, as a Tink EncryptedKeyset (binary
// protobuf) whose associated data binds the tenant and generation. The key
// material never leaves this process in cleartext: only the KEK's AEAD sees
// it, and a remote KEK (Vault) sees only the serialized keyset it encrypts.
func EncryptKeyset(ks *Keyset, kek KEK) ([]byte, error) {
	var buf bytes.Buffer
	err := ks.handle.WriteWithAssociatedData(keyset.NewBinaryWriter(&buf), kek, kekAD(ks.tenant, ks.generation))
	if err != nil {
		return nil, &KEKError{URI: kek.URI(), Tenant: ks.tenant, Generation: ks.generation, Err: err}
	}
	return buf.Bytes(), nil
}

// DecryptKeyset decrypts a keyset that EncryptKeyset encrypted for tenant at
// generation. A wrong KEK, tenant or generation fails with a *[KEKError].
func DecryptKeyset(kek KEK, tenant string, generation uint64, encrypted []byte) (*Keyset, error) {
	if err := checkTenant(tenant); err != nil {
		return nil, err
	}
	h, err := keyset.ReadWithAssociatedData(keyset.NewBinaryReader(bytes.NewReader(encrypted)), kek, kekAD(tenant, generation))
	if err != nil {
		return nil, &KEKError{URI: kek.URI(), Tenant: tenant, Generation: generation, Err: err}
	}
	return newKeyset(tenant, generation, h)
}
