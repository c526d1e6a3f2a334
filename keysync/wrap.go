package keysync

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"

	"filippo.io/age"

	"github.com/shapeseal/shapeseal/keysync/chain"
)

// The wrapped payload is what age encrypts to a device: a small binary
// structure that names the keyset's tenant and generation and the device it
// is for next to the key material, signed by a [chain.Signer], so that a device
// can check it got the keyset it asked for, from the key administrators.
//
//	magic       "shapeseal/keyset/v2\n"  (20 bytes)
//	tenant      uint16 big-endian length, then that many bytes (UTF-8, no NUL)
//	generation  uint64 big-endian, > 0
//	recipient   uint16 big-endian length, then the device's age recipient
//	            ("age1pq1…" or "age1…") the payload was wrapped to
//	keyset      uint32 big-endian length, then a Tink binary keyset
//	            (google.crypto.tink.Keyset protobuf, cleartext)
//	signer      32 bytes: the signer's Ed25519 public key
//	signature   64 bytes: Ed25519 signature over every byte before it
//
// Nothing may follow the signature. Version 1 had no recipient, signer or
// signature; it is refused as untrusted. docs/keyset-payload.md specifies
// the format for other implementations.
const (
	payloadMagic   = "shapeseal/keyset/v2\n"
	payloadMagicV1 = "shapeseal/keyset/v1\n"
	signatureLen   = 64
	signerLen      = 32
)

// maxPayload bounds a payload (and so an age plaintext read by Unwrap).
// A keyset key takes about 60 bytes, so this is thousands of rotations.
const maxPayload = 1 << 20

type payload struct {
	tenant     string
	generation uint64
	recipient  string
	keyset     []byte
	signer     VerifyKey
	signature  []byte
	signed     []byte // the bytes the signature covers
}

// marshal encodes p, signed by s.
func (p *payload) marshal(ctx context.Context, s chain.Signer) ([]byte, error) {
	p.signer = s.Public()
	b := p.body()
	sig, err := s.Sign(ctx, b)
	if err == nil && (len(sig) != signatureLen || !p.signer.Verify(b, sig)) {
		err = fmt.Errorf("signer %s returned a bad signature", p.signer)
	}
	if err != nil {
		clear(b)
		return nil, fmt.Errorf("keysync: sign keyset payload: %w", err)
	}
	return append(b, sig...), nil
}

// body encodes every field of p up to the signature: what the signature
// covers.
func (p *payload) body() []byte {
	b := make([]byte, 0, len(payloadMagic)+2+len(p.tenant)+8+2+len(p.recipient)+4+len(p.keyset)+signerLen+signatureLen)
	b = append(b, payloadMagic...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(p.tenant)))
	b = append(b, p.tenant...)
	b = binary.BigEndian.AppendUint64(b, p.generation)
	b = binary.BigEndian.AppendUint16(b, uint16(len(p.recipient)))
	b = append(b, p.recipient...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(p.keyset)))
	b = append(b, p.keyset...)
	return append(b, p.signer.Bytes()...)
}

// parsePayload parses a payload; it checks the structure only, not the
// signature or the keyset inside.
func parsePayload(b []byte) (*payload, error) {
	bad := func(what string) (*payload, error) { return nil, detail(ErrMalformedPayload, "%s", what) }
	if len(b) > maxPayload {
		return bad("too large")
	}
	if bytes.HasPrefix(b, []byte(payloadMagicV1)) {
		return nil, detail(ErrUntrustedKeyset, "unsigned payload of format v1: grant again")
	}
	rest, ok := bytes.CutPrefix(b, []byte(payloadMagic))
	if !ok {
		return bad("not a shapeseal keyset payload (bad magic)")
	}
	var p payload
	field := func(lenBytes int) ([]byte, bool) {
		if len(rest) < lenBytes {
			return nil, false
		}
		var n uint64
		if lenBytes == 2 {
			n = uint64(binary.BigEndian.Uint16(rest))
		} else {
			n = uint64(binary.BigEndian.Uint32(rest))
		}
		rest = rest[lenBytes:]
		if uint64(len(rest)) < n {
			return nil, false
		}
		f := rest[:n]
		rest = rest[n:]
		return f, true
	}
	tenant, ok := field(2)
	if !ok {
		return bad("truncated tenant")
	}
	if p.tenant = string(tenant); checkTenant(p.tenant) != nil {
		return bad("bad tenant id")
	}
	if len(rest) < 8 {
		return bad("truncated generation")
	}
	p.generation, rest = binary.BigEndian.Uint64(rest), rest[8:]
	if p.generation == 0 {
		return bad("generation 0")
	}
	recipient, ok := field(2)
	if !ok {
		return bad("truncated recipient")
	}
	p.recipient = string(recipient)
	if p.keyset, ok = field(4); !ok {
		return bad("truncated keyset")
	}
	if len(rest) != signerLen+signatureLen {
		return bad("signer and signature do not end the payload")
	}
	signer, err := chain.PublicKeyFromBytes(rest[:signerLen])
	if err != nil {
		return bad("signer")
	}
	p.signer = signer
	p.signature = rest[signerLen:]
	p.signed = b[:len(b)-signatureLen]
	return &p, nil
}

// Wrap encrypts ks with age to one device's recipient ("age1pq1…" or
// "age1…"), in a payload that names the keyset's tenant and generation and
// that recipient, signed by signer. The result is what a
// shapeseal_tenant_keys row holds in its wrapped column.
//
// One device per payload: the signature binds the payload to its device, and
// a row per device is what lets a grant or a revocation touch one device.
// Devices accept it only from a key that may sign for the tenant (a pinned
// root or an admin of the tenant, as its log says).
func Wrap(ctx context.Context, ks *Keyset, signer chain.Signer, recipient string) ([]byte, error) {
	if signer == nil {
		return nil, errors.New("keysync: wrap: no signer")
	}
	r, err := ParseRecipient(recipient)
	if err != nil {
		return nil, err
	}
	material, err := ks.marshalKeyset()
	if err != nil {
		return nil, err
	}
	pt, err := (&payload{tenant: ks.tenant, generation: ks.generation, recipient: recipient, keyset: material}).marshal(ctx, signer)
	clear(material)
	if err != nil {
		return nil, err
	}
	defer clear(pt)

	var out bytes.Buffer
	w, err := age.Encrypt(&out, r)
	if err != nil {
		return nil, fmt.Errorf("keysync: wrap: %w", err)
	}
	if _, err := w.Write(pt); err != nil {
		return nil, fmt.Errorf("keysync: wrap: %w", err)
	}
	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("keysync: wrap: %w", err)
	}
	return out.Bytes(), nil
}

// Unwrap decrypts a wrapped keyset with identity and checks, before it looks
// at the key material, that one of signers signed it for identity's
// recipient, and that it belongs to tenant, the tenant of the row it came
// from. With no signers it trusts nothing: every payload fails.
//
// Errors wrap [ErrWrongIdentity] (the payload was wrapped for another device;
// errors.As also finds *age.NoIdentityMatchError), [ErrUntrustedKeyset] (not
// signed by one of signers, a bad signature, or signed for another device),
// [ErrTenantMismatch] (as a *[TenantMismatchError]: the payload names another
// tenant, so the row was swapped), [ErrMalformedPayload] or
// [ErrInvalidKeyset].
//
// Unwrap does not check the generation: callers compare
// [Keyset.Generation] with the row's and refuse to go backwards.
func Unwrap(identity age.Identity, wrapped []byte, tenant string, signers []VerifyKey) (*Keyset, error) {
	self, err := RecipientOf(identity)
	if err != nil {
		return nil, err
	}
	return unwrap(identity, self, wrapped, tenant, signers)
}

// unwrap is Unwrap for callers that know identity's recipient, self (which
// takes a hybrid identity about as long to compute as a signature check).
func unwrap(identity age.Identity, self string, wrapped []byte, tenant string, signers []VerifyKey) (*Keyset, error) {
	ks, signer, err := unwrapSigned(identity, self, wrapped, tenant)
	if err != nil {
		return nil, err
	}
	if !slices.Contains(signers, signer) {
		return nil, detail(ErrUntrustedKeyset, "signed by %s, which this device does not trust", signer)
	}
	return ks, nil
}

// unwrapSigned decrypts and parses a payload, checks that it is signed by
// the key it names, for self, and for tenant, and returns the keyset and
// that key. Whether the key may sign for the tenant is the caller's check.
func unwrapSigned(identity age.Identity, self string, wrapped []byte, tenant string) (*Keyset, VerifyKey, error) {
	var none VerifyKey
	r, err := age.Decrypt(bytes.NewReader(wrapped), identity)
	if err != nil {
		if _, ok := errors.AsType[*age.NoIdentityMatchError](err); ok {
			return nil, none, &wrongIdentityError{err}
		}
		return nil, none, detail(ErrMalformedPayload, "%v", err)
	}
	pt, err := io.ReadAll(io.LimitReader(r, maxPayload+1))
	defer clear(pt)
	if err != nil {
		return nil, none, detail(ErrMalformedPayload, "%v", err)
	}
	p, err := parsePayload(pt)
	if err != nil {
		return nil, none, err
	}
	if !p.signer.Verify(p.signed, p.signature) {
		return nil, none, detail(ErrUntrustedKeyset, "bad signature")
	}
	if p.recipient != self {
		return nil, none, detail(ErrUntrustedKeyset, "signed for another device")
	}
	if p.tenant != tenant {
		return nil, none, &TenantMismatchError{Want: tenant, Got: p.tenant}
	}
	ks, err := unmarshalKeyset(p.tenant, p.generation, p.keyset)
	return ks, p.signer, err
}

type wrongIdentityError struct{ err error }

func (e *wrongIdentityError) Error() string {
	return ErrWrongIdentity.Error() + " (" + e.err.Error() + ")"
}

func (e *wrongIdentityError) Unwrap() []error { return []error{ErrWrongIdentity, e.err} }
