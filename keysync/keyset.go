package keysync

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"slices"

	"github.com/tink-crypto/tink-go/v2/aead"
	"github.com/tink-crypto/tink-go/v2/aead/aesgcm"
	"github.com/tink-crypto/tink-go/v2/insecurecleartextkeyset"
	"github.com/tink-crypto/tink-go/v2/insecuresecretdataaccess"
	"github.com/tink-crypto/tink-go/v2/keyset"

	"github.com/shapeseal/shapeseal/keysync/chain"
)

// A Keyset is a tenant's data-encryption keys: a Tink AEAD keyset of
// AES-256-GCM keys, one of which is primary and seals new cells, plus the
// tenant it belongs to and a generation that grows by one with every change.
//
// A Keyset is immutable: [Keyset.Rotate] and [Keyset.Retire] return a new one.
// It is safe for concurrent use.
type Keyset struct {
	tenant     string
	generation uint64
	handle     *keyset.Handle

	primaryID uint32
	primary   cipher.AEAD
	// keys holds the enabled keys by id, for opening. A keyset has a handful
	// of keys, so a slice beats a map.
	keys []keyEntry

	// commit is the commitment to the enabled keys that a tenant's log
	// records (chain.Commit).
	commit [32]byte
}

type keyEntry struct {
	id   uint32
	aead cipher.AEAD // AES-256-GCM, 12-byte nonce, 16-byte tag
}

// keyTemplate is the template of every key of a tenant keyset:
// AES-256-GCM, 12-byte IV, 16-byte tag, TINK output prefix.
var keyTemplate = aead.AES256GCMKeyTemplate

// maxTenantLen bounds the length of a tenant id, in bytes.
const maxTenantLen = 1024

// NewKeyset returns a fresh keyset for tenant, at generation 1, with one
// random AES-256-GCM key.
func NewKeyset(tenant string) (*Keyset, error) {
	if err := checkTenant(tenant); err != nil {
		return nil, err
	}
	h, err := keyset.NewHandle(keyTemplate())
	if err != nil {
		return nil, fmt.Errorf("keysync: new keyset: %w", err)
	}
	return newKeyset(tenant, 1, h)
}

// Tenant returns the tenant the keyset belongs to.
func (ks *Keyset) Tenant() string { return ks.tenant }

// Generation returns the keyset's generation: 1 for a new keyset, one more
// after each [Keyset.Rotate] or [Keyset.Retire].
func (ks *Keyset) Generation() uint64 { return ks.generation }

// PrimaryKeyID returns the id of the key that seals new cells.
func (ks *Keyset) PrimaryKeyID() uint32 { return ks.primaryID }

// KeyIDs returns the ids of the keys that open cells, in keyset order (the
// order in which they were added).
func (ks *Keyset) KeyIDs() []uint32 {
	ids := make([]uint32, len(ks.keys))
	for i, k := range ks.keys {
		ids[i] = k.id
	}
	return ids
}

// HasKey reports whether the keyset can open cells sealed with key id.
func (ks *Keyset) HasKey(id uint32) bool { return ks.key(id) != nil }

func (ks *Keyset) key(id uint32) cipher.AEAD {
	for i := range ks.keys {
		if ks.keys[i].id == id {
			return ks.keys[i].aead
		}
	}
	return nil
}

// String describes the keyset without any key material.
func (ks *Keyset) String() string {
	return fmt.Sprintf("keysync.Keyset{tenant %q, generation %d, primary 0x%08x, %d keys}",
		ks.tenant, ks.generation, ks.primaryID, len(ks.keys))
}

// Rotate returns a keyset with a new random key, made primary, at the next
// generation. New cells are sealed with the new key; every older key still
// opens the cells it sealed.
func (ks *Keyset) Rotate() (*Keyset, error) {
	m := keyset.NewManagerFromHandle(ks.handle)
	id, err := m.Add(keyTemplate())
	if err != nil {
		return nil, fmt.Errorf("keysync: rotate: %w", err)
	}
	if err := m.SetPrimary(id); err != nil {
		return nil, fmt.Errorf("keysync: rotate: %w", err)
	}
	h, err := m.Handle()
	if err != nil {
		return nil, fmt.Errorf("keysync: rotate: %w", err)
	}
	return newKeyset(ks.tenant, ks.generation+1, h)
}

// Retire returns a keyset without key id, at the next generation. Cells
// sealed with that key no longer open ([ErrNoKey]), so retire a key only
// after every cell it sealed has been re-encrypted. The primary key cannot be
// retired.
func (ks *Keyset) Retire(id uint32) (*Keyset, error) { return ks.retire([]uint32{id}) }

// retire is Retire for several keys at once, in one generation.
func (ks *Keyset) retire(ids []uint32) (*Keyset, error) {
	m := keyset.NewManagerFromHandle(ks.handle)
	for _, id := range ids {
		if id == ks.primaryID {
			return nil, fmt.Errorf("keysync: retire: key 0x%08x is the primary key", id)
		}
		if err := m.Delete(id); err != nil {
			return nil, fmt.Errorf("keysync: retire: no key 0x%08x in keyset", id)
		}
	}
	h, err := m.Handle()
	if err != nil {
		return nil, fmt.Errorf("keysync: retire: %w", err)
	}
	return newKeyset(ks.tenant, ks.generation+1, h)
}

// newKeyset validates h as a tenant keyset and builds the primitives.
//
// Every key must be AES-256-GCM with a 12-byte IV, a 16-byte tag and the TINK
// output prefix (0x01 || key id), so that the cell format is exactly the one
// docs/cell-format.md describes. Disabled keys are kept in the handle but do
// not open cells.
func newKeyset(tenant string, generation uint64, h *keyset.Handle) (*Keyset, error) {
	if err := checkTenant(tenant); err != nil {
		return nil, err
	}
	if generation == 0 {
		return nil, detail(ErrInvalidKeyset, "generation 0")
	}
	ks := &Keyset{tenant: tenant, generation: generation, handle: h}
	material := map[uint32][]byte{}
	defer func() {
		for _, k := range material {
			clear(k)
		}
	}()
	for i := range h.Len() {
		e, err := h.Entry(i)
		if err != nil {
			return nil, detail(ErrInvalidKeyset, "%v", err)
		}
		k, ok := e.Key().(*aesgcm.Key)
		if !ok {
			return nil, detail(ErrInvalidKeyset, "key 0x%08x is %T, want AES-GCM", e.KeyID(), e.Key())
		}
		p := k.Parameters().(*aesgcm.Parameters)
		if p.KeySizeInBytes() != 32 || p.IVSizeInBytes() != 12 || p.TagSizeInBytes() != 16 || p.Variant() != aesgcm.VariantTink {
			return nil, detail(ErrInvalidKeyset, "key 0x%08x is not AES-256-GCM (12-byte IV, 16-byte tag) with a TINK prefix", e.KeyID())
		}
		if want := cellKeyPrefix(e.KeyID()); !bytes.Equal(k.OutputPrefix(), want[:]) {
			return nil, detail(ErrInvalidKeyset, "key 0x%08x has an unexpected output prefix", e.KeyID())
		}
		if slices.ContainsFunc(ks.keys, func(x keyEntry) bool { return x.id == e.KeyID() }) {
			return nil, detail(ErrInvalidKeyset, "duplicate key id 0x%08x", e.KeyID())
		}
		if e.KeyStatus() != keyset.Enabled {
			if e.IsPrimary() {
				return nil, detail(ErrInvalidKeyset, "primary key is not enabled")
			}
			continue
		}
		// The cell format is exactly Tink's AES-GCM ciphertext (prefix ||
		// nonce || ciphertext || tag), which Tink itself computes with
		// crypto/cipher. Using crypto/cipher directly on the key lets Open
		// decrypt in place, without the copy Tink's Decrypt makes.
		raw := k.KeyBytes().Data(insecuresecretdataaccess.Token{})
		material[e.KeyID()] = bytes.Clone(raw)
		a, err := newGCM(raw)
		if err != nil {
			return nil, detail(ErrInvalidKeyset, "key 0x%08x: %v", e.KeyID(), err)
		}
		ks.keys = append(ks.keys, keyEntry{e.KeyID(), a})
		if e.IsPrimary() {
			ks.primaryID, ks.primary = e.KeyID(), a
		}
	}
	if ks.primary == nil {
		return nil, detail(ErrInvalidKeyset, "no primary key")
	}
	ks.commit = chain.Commit(tenant, generation, ks.primaryID, material, ks.sortedIDs())
	return ks, nil
}

// sortedIDs returns the ids of the keys that open cells, ascending.
func (ks *Keyset) sortedIDs() []uint32 {
	ids := ks.KeyIDs()
	slices.Sort(ids)
	return ids
}

// Commitment returns the keyset's commitment (docs/chain-format.md §5):
// a hash of its tenant, generation and key material that the tenant's log
// records, so that a device or writer can check it holds the keyset the
// log names without the log revealing any key.
func (ks *Keyset) Commitment() [32]byte { return ks.commit }

// Ref returns the reference to ks that a tenant log's keyset operation
// records, stored under the KEK named kekURI.
func (ks *Keyset) Ref(kekURI string) chain.KeysetRef {
	return chain.KeysetRef{Generation: ks.generation, Primary: ks.primaryID, KeyIDs: ks.sortedIDs(), Commitment: ks.commit, KEK: kekURI}
}

// matches reports whether ks is the keyset ref names: same generation and
// commitment.
func (ks *Keyset) matches(ref chain.KeysetRef) bool {
	return ks.generation == ref.Generation && ks.commit == ref.Commitment
}

// marshalKeyset returns the Tink binary (protobuf) serialization of the
// keyset's key material, in cleartext. Callers must encrypt it.
func (ks *Keyset) marshalKeyset() ([]byte, error) {
	var buf bytes.Buffer
	if err := insecurecleartextkeyset.Write(ks.handle, keyset.NewBinaryWriter(&buf)); err != nil {
		return nil, fmt.Errorf("keysync: serialize keyset: %w", err)
	}
	return buf.Bytes(), nil
}

// unmarshalKeyset parses a cleartext Tink binary keyset.
func unmarshalKeyset(tenant string, generation uint64, b []byte) (*Keyset, error) {
	h, err := insecurecleartextkeyset.Read(keyset.NewBinaryReader(bytes.NewReader(b)))
	if err != nil {
		return nil, detail(ErrInvalidKeyset, "%v", err)
	}
	return newKeyset(tenant, generation, h)
}

func checkTenant(tenant string) error {
	switch {
	case tenant == "":
		return detail(ErrInvalidContext, "empty tenant id")
	case len(tenant) > maxTenantLen:
		return detail(ErrInvalidContext, "tenant id longer than %d bytes", maxTenantLen)
	case hasNUL(tenant):
		return detail(ErrInvalidContext, "NUL byte in tenant id")
	}
	return nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	defer clear(key)
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}
