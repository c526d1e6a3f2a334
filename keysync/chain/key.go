package chain

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"

	"github.com/shapeseal/shapeseal/internal/b64url"
)

// PublicKeyPrefix starts the text form of a [PublicKey].
const PublicKeyPrefix = "ssvk1"

// PrivateKeyPrefix starts the text form of a [PrivateKey]'s seed.
const PrivateKeyPrefix = "sssk1"

// A PublicKey is an Ed25519 public key: a root key that verifiers pin, an
// admin key a root delegated a tenant to, or the key of a device
// certificate's signer. Its text form is "ssvk1" followed by the unpadded
// base64url of the 32-byte key. PublicKeys are comparable.
type PublicKey struct{ key [ed25519.PublicKeySize]byte }

// String returns the text form, "ssvk1…".
func (k PublicKey) String() string {
	b := make([]byte, len(PublicKeyPrefix)+b64url.EncodedLen(len(k.key)))
	copy(b, PublicKeyPrefix)
	b64url.Encode(b[len(PublicKeyPrefix):], k.key[:])
	return string(b)
}

// Bytes returns the 32 bytes of the key.
func (k PublicKey) Bytes() []byte { return append([]byte(nil), k.key[:]...) }

// PublicKeyFromBytes returns the PublicKey of 32 bytes.
func PublicKeyFromBytes(b []byte) (PublicKey, error) {
	var k PublicKey
	if len(b) != len(k.key) {
		return k, errors.New("chain: a public key is 32 bytes")
	}
	copy(k.key[:], b)
	return k, nil
}

// IsZero reports whether k is the zero value (no key).
func (k PublicKey) IsZero() bool { return k == PublicKey{} }

// Verify reports whether sig is k's signature of msg.
func (k PublicKey) Verify(msg, sig []byte) bool {
	return len(sig) == ed25519.SignatureSize && ed25519.Verify(k.key[:], msg, sig)
}

// ParsePublicKey parses the text form of a PublicKey.
func ParsePublicKey(s string) (PublicKey, error) {
	var k PublicKey
	body, ok := strings.CutPrefix(s, PublicKeyPrefix)
	if !ok || b64url.DecodedLen(len(body)) != len(k.key) {
		return k, fmt.Errorf("chain: %q is not a public key (want %s followed by 43 base64url characters)", short(s), PublicKeyPrefix)
	}
	if n, err := b64url.Decode(k.key[:], body); err != nil || n != len(k.key) || b64url.EncodedLen(n) != len(body) {
		return k, fmt.Errorf("chain: public key %q: bad base64url", short(s))
	}
	return k, nil
}

// ParsePublicKeys parses a comma- or space-separated list of PublicKeys.
func ParsePublicKeys(list string) ([]PublicKey, error) {
	var keys []PublicKey
	for _, s := range strings.FieldsFunc(list, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' }) {
		k, err := ParsePublicKey(s)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

func short(s string) string {
	if len(s) > 60 {
		return s[:57] + "..."
	}
	return s
}

// A Signer signs log entries, device certificates and keyset payloads. A
// [PrivateKey] is one; a key held by a KMS (Vault transit's ed25519 keys)
// can be another.
type Signer interface {
	Public() PublicKey
	// Sign returns the Ed25519 signature (RFC 8032, pure) of msg.
	Sign(ctx context.Context, msg []byte) ([]byte, error)
}

// A PrivateKey is an Ed25519 private key held in memory. Its String method
// names the public half only.
type PrivateKey struct {
	key ed25519.PrivateKey
	pub PublicKey
}

// GenerateKey returns a new random PrivateKey.
func GenerateKey() (*PrivateKey, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	defer clear(priv)
	return NewPrivateKey(priv.Seed())
}

// NewPrivateKey returns the PrivateKey of a 32-byte Ed25519 seed.
func NewPrivateKey(seed []byte) (*PrivateKey, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, errors.New("chain: a private key seed is 32 bytes")
	}
	k := &PrivateKey{key: ed25519.NewKeyFromSeed(seed)}
	copy(k.pub.key[:], k.key.Public().(ed25519.PublicKey))
	return k, nil
}

// ParsePrivateKey parses the text form of a private key: "sssk1" followed
// by the unpadded base64url of its 32-byte seed.
func ParsePrivateKey(s string) (*PrivateKey, error) {
	body, ok := strings.CutPrefix(strings.TrimSpace(s), PrivateKeyPrefix)
	if !ok || b64url.DecodedLen(len(body)) != ed25519.SeedSize {
		return nil, fmt.Errorf("chain: not a private key (want %s followed by 43 base64url characters)", PrivateKeyPrefix)
	}
	var seed [ed25519.SeedSize]byte
	defer clear(seed[:])
	if n, err := b64url.Decode(seed[:], body); err != nil || n != len(seed) || b64url.EncodedLen(n) != len(body) {
		return nil, errors.New("chain: private key: bad base64url")
	}
	return NewPrivateKey(seed[:])
}

// Text returns the text form of k's seed, "sssk1…". It is secret.
func (k *PrivateKey) Text() string {
	seed := k.key.Seed()
	defer clear(seed)
	b := make([]byte, len(PrivateKeyPrefix)+b64url.EncodedLen(len(seed)))
	copy(b, PrivateKeyPrefix)
	b64url.Encode(b[len(PrivateKeyPrefix):], seed)
	return string(b)
}

// Public returns the public half of k.
func (k *PrivateKey) Public() PublicKey { return k.pub }

// Sign implements [Signer]; it never fails.
func (k *PrivateKey) Sign(_ context.Context, msg []byte) ([]byte, error) {
	return ed25519.Sign(k.key, msg), nil
}

// String names the key by its public half; it never prints the private key.
func (k *PrivateKey) String() string { return "chain.PrivateKey(" + k.pub.String() + ")" }
