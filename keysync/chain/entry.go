package chain

import (
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"time"
)

// EntryMagic starts every encoded log entry.
const EntryMagic = "shapeseal/log/v1\n"

// SignatureSize is the length of an Ed25519 signature.
const SignatureSize = 64

// OpType is the kind of an [Op].
type OpType byte

// The operations a log entry can hold. docs/chain-format.md gives each
// one's encoding and the rule that makes it valid.
const (
	OpAdminAdd        OpType = 1 // Key may sign entries of the tenant (roots only)
	OpAdminRemove     OpType = 2 // Key may no longer (roots only)
	OpMemberAdd       OpType = 3 // User becomes a member
	OpMemberRemove    OpType = 4 // User and all their devices leave
	OpDeviceAdd       OpType = 5 // a member's Device, with its age Recipient, receives keys
	OpDeviceRemove    OpType = 6 // Device no longer receives keys
	OpKeyset          OpType = 7 // the tenant's current keyset is Keyset
	OpRevocationPoint OpType = 8 // keys held until now are revoked as of a database snapshot (XID, InProgress)
)

func (t OpType) String() string {
	switch t {
	case OpAdminAdd:
		return "admin_add"
	case OpAdminRemove:
		return "admin_remove"
	case OpMemberAdd:
		return "member_add"
	case OpMemberRemove:
		return "member_remove"
	case OpDeviceAdd:
		return "device_add"
	case OpDeviceRemove:
		return "device_remove"
	case OpKeyset:
		return "keyset"
	case OpRevocationPoint:
		return "revocation_point"
	}
	return fmt.Sprintf("op(%d)", byte(t))
}

// KeysetRef names a tenant keyset without holding its keys: its generation,
// the ids of its keys, a commitment to the key material ([Commit]) and the
// KEK that writers find it under.
type KeysetRef struct {
	Generation uint64
	Primary    uint32   // the id of the key that seals new cells
	KeyIDs     []uint32 // every enabled key, ascending; includes Primary
	Commitment [32]byte
	KEK        string // URI of the KEK the keyset is stored under
}

// An Op is one change of a tenant's state. Which fields count depends on
// Type.
type Op struct {
	Type      OpType
	Key       PublicKey // OpAdminAdd, OpAdminRemove
	User      string    // member and device ops
	Device    string    // device ops
	Recipient string    // OpDeviceAdd
	Keyset    KeysetRef // OpKeyset
	// OpRevocationPoint: the Postgres snapshot of the revoking transaction
	// (xid8s): XID is its xmax, the first transaction not yet started, and
	// InProgress the transactions running then, ascending. A row written
	// by one of those, or by XID or a later one, was written after the
	// revocation.
	XID        uint64
	InProgress []uint64
}

// An Entry is one signed link of a tenant's log. Entries are made with
// [Sign] and read with [Parse]; the zero value is not useful.
type Entry struct {
	Tenant    string
	Seq       uint64   // 1 for the first entry, then one more each
	Prev      [32]byte // [Entry.Hash] of the entry before; zero for Seq 1
	Time      time.Time
	Ops       []Op
	Signer    PublicKey
	Signature []byte

	raw []byte // the whole encoding
}

// Bytes returns the entry's encoding, as stored in shapeseal_log.entry.
func (e *Entry) Bytes() []byte { return e.raw }

// Hash returns SHA-256 of the entry's encoding: what the next entry names
// as Prev.
func (e *Entry) Hash() [32]byte { return sha256.Sum256(e.raw) }

// body encodes every field of e before the signature.
func (e *Entry) body() ([]byte, error) {
	if !validID(e.Tenant) {
		return nil, fmt.Errorf("chain: bad tenant id %q", short(e.Tenant))
	}
	if e.Seq == 0 || len(e.Ops) == 0 || len(e.Ops) > 0xffff {
		return nil, fmt.Errorf("chain: an entry needs a sequence number and 1 to 65535 operations")
	}
	if t := e.Time.Unix(); t < 0 || t > 1<<62 {
		return nil, fmt.Errorf("chain: entry time out of range")
	}
	b := make(enc, 0, 256)
	b.raw([]byte(EntryMagic))
	b.str(e.Tenant)
	b.u64(e.Seq)
	b.raw(e.Prev[:])
	b.u64(uint64(e.Time.Unix()))
	b.u16(len(e.Ops))
	for i := range e.Ops {
		if err := e.Ops[i].encode(&b); err != nil {
			return nil, err
		}
	}
	b.raw(e.Signer.key[:])
	if len(b)+SignatureSize > MaxEntrySize {
		return nil, fmt.Errorf("chain: entry larger than %d bytes", MaxEntrySize)
	}
	return b, nil
}

func (op *Op) encode(b *enc) error {
	bad := func(what string) error { return fmt.Errorf("chain: %s op: bad %s", op.Type, what) }
	b.u8(byte(op.Type))
	switch op.Type {
	case OpAdminAdd, OpAdminRemove:
		if op.Key.IsZero() {
			return bad("key")
		}
		b.raw(op.Key.key[:])
	case OpMemberAdd, OpMemberRemove:
		if !validID(op.User) {
			return bad("user id")
		}
		b.str(op.User)
	case OpDeviceAdd, OpDeviceRemove:
		if !validID(op.User) || !validID(op.Device) {
			return bad("user or device id")
		}
		b.str(op.User)
		b.str(op.Device)
		if op.Type == OpDeviceAdd {
			if !validRecipient(op.Recipient) {
				return bad("recipient")
			}
			b.str(op.Recipient)
		}
	case OpKeyset:
		k := &op.Keyset
		if k.Generation == 0 || !validKeyIDs(k.KeyIDs, k.Primary) || !validURI(k.KEK) {
			return bad("keyset reference")
		}
		b.u64(k.Generation)
		b.u32(k.Primary)
		b.u16(len(k.KeyIDs))
		for _, id := range k.KeyIDs {
			b.u32(id)
		}
		b.raw(k.Commitment[:])
		b.str(k.KEK)
	case OpRevocationPoint:
		if !validXIP(op.XID, op.InProgress) {
			return bad("snapshot")
		}
		b.u64(op.XID)
		b.u16(len(op.InProgress))
		for _, x := range op.InProgress {
			b.u64(x)
		}
	default:
		return fmt.Errorf("chain: unknown op type %d", op.Type)
	}
	return nil
}

// validKeyIDs accepts 1 to maxKeyIDs strictly ascending ids that include
// primary.
func validKeyIDs(ids []uint32, primary uint32) bool {
	if len(ids) == 0 || len(ids) > maxKeyIDs {
		return false
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] <= ids[i-1] {
			return false
		}
	}
	_, found := slices.BinarySearch(ids, primary)
	return found
}

// validXIP accepts a snapshot's in-progress list: at most maxKeyIDs
// transactions, strictly ascending, all before xmax.
func validXIP(xmax uint64, xip []uint64) bool {
	if len(xip) > maxKeyIDs {
		return false
	}
	for i, x := range xip {
		if x >= xmax || i > 0 && x <= xip[i-1] {
			return false
		}
	}
	return true
}

// Sign encodes e with s as its signer, signs it and returns the signed
// entry, ready to store. A zero e.Time means now. e is not modified.
func Sign(ctx context.Context, e Entry, s Signer) (*Entry, error) {
	e.Signer = s.Public()
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Time = time.Unix(e.Time.Unix(), 0)
	e.Ops = slices.Clone(e.Ops)
	body, err := e.body()
	if err != nil {
		return nil, err
	}
	sig, err := s.Sign(ctx, body)
	if err != nil {
		return nil, fmt.Errorf("chain: sign entry: %w", err)
	}
	if !e.Signer.Verify(body, sig) {
		return nil, fmt.Errorf("chain: signer %s returned a bad signature", e.Signer)
	}
	e.Signature = sig
	e.raw = append(body, sig...)
	return &e, nil
}

// Parse decodes an entry and checks its signature by the key it names. It
// checks the encoding only: whether that key may sign for the tenant, and
// whether the entry follows the one before, is [State.Append]'s business.
// Errors wrap [ErrMalformed] or [ErrBadSignature].
func Parse(b []byte) (*Entry, error) {
	if len(b) > MaxEntrySize {
		return nil, malformed("entry", "larger than %d bytes", MaxEntrySize)
	}
	d := &dec{b: b}
	if string(d.take(len(EntryMagic), "magic")) != EntryMagic {
		return nil, malformed("entry", "not a shapeseal log entry (bad magic)")
	}
	e := &Entry{raw: b}
	e.Tenant = d.str("tenant", validID)
	e.Seq = d.u64("seq")
	copy(e.Prev[:], d.take(32, "prev"))
	t := d.u64("time")
	if t > 1<<62 {
		d.fail("time out of range")
	}
	e.Time = time.Unix(int64(t), 0)
	n := d.u16("op count")
	if d.bad == "" && n == 0 {
		d.fail("entry without operations")
	}
	for i := 0; i < n && d.bad == ""; i++ {
		e.Ops = append(e.Ops, parseOp(d))
	}
	e.Signer = d.key("signer")
	e.Signature = d.take(SignatureSize, "signature")
	if d.bad == "" && len(d.b) != 0 {
		d.fail("bytes after the signature")
	}
	if d.bad == "" && e.Seq == 0 {
		d.fail("seq 0")
	}
	if d.bad != "" {
		return nil, malformed("entry", "%s", d.bad)
	}
	if !e.Signer.Verify(b[:len(b)-SignatureSize], e.Signature) {
		return nil, &Error{Tenant: e.Tenant, Seq: e.Seq, Err: ErrBadSignature}
	}
	return e, nil
}

func parseOp(d *dec) Op {
	op := Op{Type: OpType(d.u8("op type"))}
	switch op.Type {
	case OpAdminAdd, OpAdminRemove:
		op.Key = d.key("admin key")
	case OpMemberAdd, OpMemberRemove:
		op.User = d.str("user id", validID)
	case OpDeviceAdd, OpDeviceRemove:
		op.User = d.str("user id", validID)
		op.Device = d.str("device id", validID)
		if op.Type == OpDeviceAdd {
			op.Recipient = d.str("recipient", validRecipient)
		}
	case OpKeyset:
		k := &op.Keyset
		k.Generation = d.u64("generation")
		k.Primary = d.u32("primary key id")
		n := d.u16("key count")
		for i := 0; i < n && d.bad == ""; i++ {
			k.KeyIDs = append(k.KeyIDs, d.u32("key id"))
		}
		copy(k.Commitment[:], d.take(32, "commitment"))
		k.KEK = d.str("KEK URI", validURI)
		if d.bad == "" && (k.Generation == 0 || !validKeyIDs(k.KeyIDs, k.Primary)) {
			d.fail("keyset reference")
		}
	case OpRevocationPoint:
		op.XID = d.u64("xid")
		n := d.u16("in-progress count")
		for i := 0; i < n && d.bad == ""; i++ {
			op.InProgress = append(op.InProgress, d.u64("in-progress xid"))
		}
		if d.bad == "" && !validXIP(op.XID, op.InProgress) {
			d.fail("snapshot")
		}
	default:
		d.fail(fmt.Sprintf("unknown op type %d", op.Type))
	}
	return op
}
