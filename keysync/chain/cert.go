package chain

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"time"
)

// CertMagic starts every encoded device certificate.
const CertMagic = "shapeseal/device/v1\n"

// A Cert is a device certificate: a key's signed statement that a user's
// device has an age recipient. An admin makes one when a user's device is
// registered (shapeseal device add); a grant adds the device to a tenant's
// log only if the certificate's signer is a root or an admin of that
// tenant. A device row without such a certificate is data, not a device.
type Cert struct {
	User, Device, Recipient string
	Time                    time.Time
	Signer                  PublicKey
	Signature               []byte

	raw []byte
}

// Bytes returns the certificate's encoding.
func (c *Cert) Bytes() []byte { return c.raw }

func (c *Cert) body() ([]byte, error) {
	if !validID(c.User) || !validID(c.Device) || !validRecipient(c.Recipient) {
		return nil, fmt.Errorf("chain: certificate: bad user, device or recipient")
	}
	if t := c.Time.Unix(); t < 0 || t > 1<<62 {
		return nil, fmt.Errorf("chain: certificate time out of range")
	}
	b := make(enc, 0, 128+len(c.Recipient))
	b.raw([]byte(CertMagic))
	b.str(c.User)
	b.str(c.Device)
	b.str(c.Recipient)
	b.u64(uint64(c.Time.Unix()))
	b.raw(c.Signer.key[:])
	return b, nil
}

// SignCert returns c signed by s. A zero c.Time means now.
func SignCert(ctx context.Context, c Cert, s Signer) (*Cert, error) {
	c.Signer = s.Public()
	if c.Time.IsZero() {
		c.Time = time.Now()
	}
	c.Time = time.Unix(c.Time.Unix(), 0)
	body, err := c.body()
	if err != nil {
		return nil, err
	}
	sig, err := s.Sign(ctx, body)
	if err != nil {
		return nil, fmt.Errorf("chain: sign certificate: %w", err)
	}
	if !c.Signer.Verify(body, sig) {
		return nil, fmt.Errorf("chain: signer %s returned a bad signature", c.Signer)
	}
	c.Signature = sig
	c.raw = append(body, sig...)
	return &c, nil
}

// ParseCert decodes a device certificate and checks its signature by the
// key it names. Whether that key may certify devices for a tenant is the
// caller's check ([State.CanSign]). Errors wrap [ErrMalformed] or
// [ErrBadSignature].
func ParseCert(b []byte) (*Cert, error) {
	if len(b) > 16<<10 {
		return nil, malformed("certificate", "too large")
	}
	d := &dec{b: b}
	if string(d.take(len(CertMagic), "magic")) != CertMagic {
		return nil, malformed("certificate", "not a shapeseal device certificate (bad magic)")
	}
	c := &Cert{raw: b}
	c.User = d.str("user id", validID)
	c.Device = d.str("device id", validID)
	c.Recipient = d.str("recipient", validRecipient)
	t := d.u64("time")
	if t > 1<<62 {
		d.fail("time out of range")
	}
	c.Time = time.Unix(int64(t), 0)
	c.Signer = d.key("signer")
	c.Signature = d.take(SignatureSize, "signature")
	if d.bad == "" && len(d.b) != 0 {
		d.fail("bytes after the signature")
	}
	if d.bad != "" {
		return nil, malformed("certificate", "%s", d.bad)
	}
	if !c.Signer.Verify(b[:len(b)-SignatureSize], c.Signature) {
		return nil, detail(ErrBadSignature, "certificate of device %q of %q", c.Device, c.User)
	}
	return c, nil
}

// CommitMagic starts the bytes a keyset commitment hashes.
const CommitMagic = "shapeseal/keyset-commit/v1\n"

// Commit returns the commitment to a tenant keyset that the log's keyset op
// records: SHA-256 over the tenant, the generation, the primary key id and
// every enabled key's id and 32-byte AES-256-GCM key, ascending by id
// (docs/chain-format.md §5). Devices and writers check that the keyset they
// unwrapped or decrypted is the one the log names by recomputing it.
// keys maps each of ids to its 32 key bytes; ids must be ascending.
func Commit(tenant string, generation uint64, primary uint32, keys map[uint32][]byte, ids []uint32) [32]byte {
	h := sha256.New()
	b := make(enc, 0, 64+len(tenant))
	b.raw([]byte(CommitMagic))
	b.str(tenant)
	b.u64(generation)
	b.u32(primary)
	b.u16(len(ids))
	h.Write(b)
	for _, id := range ids {
		h.Write(binary.BigEndian.AppendUint32(nil, id))
		h.Write(keys[id])
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}
