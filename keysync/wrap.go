package keysync

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"filippo.io/age"
)

// The wrapped payload is what age encrypts to a device: a small binary
// structure that names the keyset's tenant and generation next to the key
// material, so that a device can check it got the keyset it asked for.
//
//	magic       "shapeseal/keyset/v1\n"  (20 bytes)
//	tenant      uint16 big-endian length, then that many bytes (UTF-8, no NUL)
//	generation  uint64 big-endian, > 0
//	keyset      uint32 big-endian length, then a Tink binary keyset
//	            (google.crypto.tink.Keyset protobuf, cleartext)
//
// Nothing may follow the keyset.
const payloadMagic = "shapeseal/keyset/v1\n"

// maxPayload bounds a payload (and so an age plaintext read by Unwrap).
// A keyset key takes about 60 bytes, so this is thousands of rotations.
const maxPayload = 1 << 20

type payload struct {
	tenant     string
	generation uint64
	keyset     []byte
}

func (p *payload) marshal() []byte {
	b := make([]byte, 0, len(payloadMagic)+2+len(p.tenant)+8+4+len(p.keyset))
	b = append(b, payloadMagic...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(p.tenant)))
	b = append(b, p.tenant...)
	b = binary.BigEndian.AppendUint64(b, p.generation)
	b = binary.BigEndian.AppendUint32(b, uint32(len(p.keyset)))
	b = append(b, p.keyset...)
	return b
}

// parsePayload parses a payload; it checks the structure only, not the
// keyset inside.
func parsePayload(b []byte) (*payload, error) {
	bad := func(what string) (*payload, error) { return nil, detail(ErrMalformedPayload, "%s", what) }
	if len(b) > maxPayload {
		return bad("too large")
	}
	rest, ok := bytes.CutPrefix(b, []byte(payloadMagic))
	if !ok {
		return bad("not a shapeseal keyset payload (bad magic)")
	}
	var p payload
	if len(rest) < 2 {
		return bad("truncated tenant")
	}
	n := int(binary.BigEndian.Uint16(rest))
	rest = rest[2:]
	if len(rest) < n {
		return bad("truncated tenant")
	}
	p.tenant, rest = string(rest[:n]), rest[n:]
	if checkTenant(p.tenant) != nil {
		return bad("bad tenant id")
	}
	if len(rest) < 8 {
		return bad("truncated generation")
	}
	p.generation, rest = binary.BigEndian.Uint64(rest), rest[8:]
	if p.generation == 0 {
		return bad("generation 0")
	}
	if len(rest) < 4 {
		return bad("truncated keyset")
	}
	m := binary.BigEndian.Uint32(rest)
	rest = rest[4:]
	if uint64(len(rest)) != uint64(m) {
		return bad("keyset length does not match the payload")
	}
	p.keyset = rest
	return &p, nil
}

// Wrap encrypts ks with age to each recipient, in a payload that names the
// keyset's tenant and generation. The result is what a
// shapeseal_tenant_keys row holds in its wrapped column.
//
// Wrap one device per row: age refuses to mix post-quantum and X25519
// recipients in one file, and a row per device is what lets a grant or a
// revocation touch one device.
func Wrap(ks *Keyset, recipients ...age.Recipient) ([]byte, error) {
	if len(recipients) == 0 {
		return nil, errors.New("keysync: wrap: no recipients")
	}
	material, err := ks.marshalKeyset()
	if err != nil {
		return nil, err
	}
	pt := (&payload{tenant: ks.tenant, generation: ks.generation, keyset: material}).marshal()
	defer clear(pt)
	clear(material)

	var out bytes.Buffer
	w, err := age.Encrypt(&out, recipients...)
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

// Unwrap decrypts a wrapped keyset with identity and checks that it belongs
// to tenant, the tenant of the row it came from.
//
// Errors wrap [ErrWrongIdentity] (the payload was wrapped for another device;
// errors.As also finds *age.NoIdentityMatchError), [ErrTenantMismatch] (as a
// *[TenantMismatchError]: the payload names another tenant, so the row was
// swapped), [ErrMalformedPayload] or [ErrInvalidKeyset].
//
// Unwrap does not check the generation: callers compare
// [Keyset.Generation] with the row's and refuse to go backwards.
func Unwrap(identity age.Identity, wrapped []byte, tenant string) (*Keyset, error) {
	r, err := age.Decrypt(bytes.NewReader(wrapped), identity)
	if err != nil {
		if _, ok := errors.AsType[*age.NoIdentityMatchError](err); ok {
			return nil, &wrongIdentityError{err}
		}
		return nil, detail(ErrMalformedPayload, "%v", err)
	}
	pt, err := io.ReadAll(io.LimitReader(r, maxPayload+1))
	defer clear(pt)
	if err != nil {
		return nil, detail(ErrMalformedPayload, "%v", err)
	}
	p, err := parsePayload(pt)
	if err != nil {
		return nil, err
	}
	if p.tenant != tenant {
		return nil, &TenantMismatchError{Want: tenant, Got: p.tenant}
	}
	return unmarshalKeyset(p.tenant, p.generation, p.keyset)
}

type wrongIdentityError struct{ err error }

func (e *wrongIdentityError) Error() string {
	return ErrWrongIdentity.Error() + " (" + e.err.Error() + ")"
}

func (e *wrongIdentityError) Unwrap() []error { return []error{ErrWrongIdentity, e.err} }
