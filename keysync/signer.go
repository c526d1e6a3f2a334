package keysync

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/shapeseal/shapeseal/internal/b64url"
)

// Why keyset payloads are signed
//
// age encrypts to a public recipient and says nothing about who encrypted:
// anyone who can write shapeseal_tenant_keys — a database operator, a
// compromised service — could otherwise wrap a keyset of their own making
// to a device's public recipient, at a higher generation, and the device
// would adopt it. Cells sealed with it would then open as genuine, and a
// client that seals with its keyring's keyset would seal for the attacker.
//
// So every payload is signed, inside the age encryption, by a Signer: an
// Ed25519 key that belongs to the key administrators. Its private half is
// stored envelope-encrypted under a KEK (shapeseal_signers), so exactly
// those who can use the KEK — the ones who can already read every keyset —
// can grant. Devices are configured with the public halves they trust
// (KeyringOptions.Signers, `shapeseal tail --signer`), out of band: a
// signer key learnt from the database would prove nothing.

// VerifyKeyPrefix starts the text form of a [VerifyKey].
const VerifyKeyPrefix = "ssvk1"

// A VerifyKey is the public half of a [Signer]: devices that trust it accept
// the keyset payloads it signed. Its text form is "ssvk1" followed by the
// unpadded base64url of the Ed25519 public key. VerifyKeys are comparable.
type VerifyKey struct{ key [ed25519.PublicKeySize]byte }

// String returns the text form, "ssvk1…".
func (k VerifyKey) String() string {
	b := make([]byte, len(VerifyKeyPrefix)+b64url.EncodedLen(len(k.key)))
	copy(b, VerifyKeyPrefix)
	b64url.Encode(b[len(VerifyKeyPrefix):], k.key[:])
	return string(b)
}

// ParseVerifyKey parses the text form of a VerifyKey.
func ParseVerifyKey(s string) (VerifyKey, error) {
	var k VerifyKey
	body, ok := strings.CutPrefix(s, VerifyKeyPrefix)
	if !ok || b64url.DecodedLen(len(body)) != len(k.key) {
		return k, fmt.Errorf("keysync: not a signer key (want %s followed by 43 base64url characters)", VerifyKeyPrefix)
	}
	if n, err := b64url.Decode(k.key[:], body); err != nil || n != len(k.key) || b64url.EncodedLen(n) != len(body) {
		return k, fmt.Errorf("keysync: signer key %q: bad base64url", s)
	}
	return k, nil
}

// ParseVerifyKeys parses a comma- or space-separated list of VerifyKeys, the
// form of the SHAPESEAL_SIGNERS variable and of repeated flags.
func ParseVerifyKeys(list string) ([]VerifyKey, error) {
	var keys []VerifyKey
	for _, s := range strings.FieldsFunc(list, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' }) {
		k, err := ParseVerifyKey(s)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// A Signer signs keyset payloads (see [Wrap]). The admin functions of this
// package ([CreateTenant], [Grant], [Rotate], [Revoke], [RetireKeys]) use
// the signer stored under their KEK, creating it the first time
// ([EnsureSigner]); build one with [GenerateSigner] only to wrap keysets
// yourself.
type Signer struct {
	key ed25519.PrivateKey
	pub VerifyKey
}

// GenerateSigner returns a new random Signer.
func GenerateSigner() (*Signer, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	return newSigner(priv.Seed())
}

func newSigner(seed []byte) (*Signer, error) {
	if len(seed) != ed25519.SeedSize {
		return nil, errors.New("keysync: signer seed has the wrong length")
	}
	s := &Signer{key: ed25519.NewKeyFromSeed(seed)}
	copy(s.pub.key[:], s.key.Public().(ed25519.PublicKey))
	return s, nil
}

// VerifyKey returns the public half of s, which devices are configured to
// trust.
func (s *Signer) VerifyKey() VerifyKey { return s.pub }

// String names the signer by its public half; it never prints the private
// key.
func (s *Signer) String() string { return "keysync.Signer(" + s.pub.String() + ")" }

func (s *Signer) sign(msg []byte) []byte { return ed25519.Sign(s.key, msg) }

func (k VerifyKey) verify(msg, sig []byte) bool {
	return ed25519.Verify(k.key[:], msg, sig)
}

// signerAD binds an encrypted signer key to its public half, so that rows of
// shapeseal_signers cannot be swapped.
func signerAD(pub VerifyKey) []byte { return []byte("shapeseal/signer/v1\x00" + pub.String()) }

// EnsureSigner returns the signer stored under kek in shapeseal_signers,
// creating and storing one first if the KEK has none. There is one signer
// per KEK; concurrent callers get the same one. To change signers, use a new
// KEK (and configure devices to trust the new signer before granting with
// it).
func EnsureSigner(ctx context.Context, db DB, kek KEK) (*Signer, error) {
	if s, err := loadSigner(ctx, db, kek); !errors.Is(err, pgx.ErrNoRows) {
		return s, err
	}
	s, err := GenerateSigner()
	if err != nil {
		return nil, err
	}
	enc, err := kek.Encrypt(s.key.Seed(), signerAD(s.pub))
	if err != nil {
		return nil, &KEKError{URI: kek.URI(), Err: fmt.Errorf("encrypt signer key: %w", err)}
	}
	if _, err := db.Exec(ctx, `INSERT INTO shapeseal_signers (kek_uri, public_key, encrypted_key)
		VALUES ($1, $2, $3) ON CONFLICT (kek_uri) DO NOTHING`, kek.URI(), s.pub.String(), enc); err != nil {
		return nil, fmt.Errorf("keysync: store signer: %w", err)
	}
	// Another caller may have won the race: the stored one is the signer.
	return loadSigner(ctx, db, kek)
}

func loadSigner(ctx context.Context, db DB, kek KEK) (*Signer, error) {
	var (
		pubText string
		enc     []byte
	)
	err := db.QueryRow(ctx, `SELECT public_key, encrypted_key FROM shapeseal_signers WHERE kek_uri = $1`,
		kek.URI()).Scan(&pubText, &enc)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("keysync: load signer: %w", err)
	}
	pub, err := ParseVerifyKey(pubText)
	if err != nil {
		return nil, err
	}
	seed, err := kek.Decrypt(enc, signerAD(pub))
	if err != nil {
		return nil, &KEKError{URI: kek.URI(), Err: fmt.Errorf("decrypt signer key %s: %w", pub, err)}
	}
	defer clear(seed)
	s, err := newSigner(seed)
	if err != nil {
		return nil, err
	}
	if s.pub != pub {
		return nil, &KEKError{URI: kek.URI(), Err: fmt.Errorf("signer key %s does not match its stored public key", pub)}
	}
	return s, nil
}
