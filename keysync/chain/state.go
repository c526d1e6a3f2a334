package chain

import (
	"cmp"
	"maps"
	"slices"
	"time"
)

// A State is what a tenant's log says once verified: who administers the
// tenant, who its members are and which of their devices receive keys, and
// which keyset is current. Build one with [Verify] and extend it with
// [State.Append]; a State is never read from anything unsigned.
//
// A State is not safe for concurrent use while Append runs; readers that
// share one must not call Append on it.
type State struct {
	tenant  string
	roots   []PublicKey
	seq     uint64
	hashes  [][32]byte // hashes[i] is the hash of entry i+1
	time    time.Time
	admins  map[PublicKey]bool
	members map[string]map[string]string // user → device → recipient
	byRcpt  map[string]Device            // recipient → device
	devTime map[[2]string]time.Time      // (user, device) → time of the entry that set its recipient
	devPast map[[2]string][]string       // (user, device) → recipients replaced since
	keysets []KeysetInfo                 // every keyset op, oldest first
	revs    []Revocation
	broken  error // set when an Append failed half-way: the state is unusable
}

// KeysetInfo is a keyset op of the log: the reference, and the entry and
// signer that made it current.
type KeysetInfo struct {
	KeysetRef
	Seq    uint64
	Signer PublicKey
}

// A Revocation is a revocation point of the log: the entry that removed a
// member or device, the Postgres snapshot of the transaction it was
// written in, and the keys that were current until then. A cell sealed
// with one of those keys in a row written after that snapshot — by a
// transaction in InProgress, or by XID (the snapshot's xmax) or a later
// one — was written by someone who no longer held the keys legitimately,
// or by a writer that raced the revocation.
type Revocation struct {
	Seq        uint64
	XID        uint64
	InProgress []uint64
	KeyIDs     []uint32 // the key ids of the keyset current before the entry
}

// A Device is a member's device that receives the tenant's keys.
type Device struct {
	User, Device, Recipient string
}

// NewState returns the empty state of tenant's log, before its first entry,
// for verifiers that pin roots: the keys that may sign the first entry and
// change the tenant's admins.
func NewState(tenant string, roots []PublicKey) *State {
	return &State{
		tenant:  tenant,
		roots:   slices.Clone(roots),
		admins:  map[PublicKey]bool{},
		members: map[string]map[string]string{},
		byRcpt:  map[string]Device{},
		devTime: map[[2]string]time.Time{},
		devPast: map[[2]string][]string{},
	}
}

// Verify verifies tenant's log, entries in order from the first, against
// the pinned roots, and returns the resulting state. An empty log is an
// error wrapping [ErrNoLog].
func Verify(roots []PublicKey, tenant string, entries [][]byte) (*State, error) {
	if len(entries) == 0 {
		return nil, &Error{Tenant: tenant, Err: ErrNoLog}
	}
	s := NewState(tenant, roots)
	for _, b := range entries {
		if _, err := s.Append(b); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Tenant returns the tenant the log belongs to.
func (s *State) Tenant() string { return s.tenant }

// Seq returns the sequence number of the newest entry: the log's length.
func (s *State) Seq() uint64 { return s.seq }

// Head returns the hash of the newest entry, which the next one names.
func (s *State) Head() [32]byte {
	if s.seq == 0 {
		return [32]byte{}
	}
	return s.hashes[s.seq-1]
}

// HashAt returns the hash of entry seq, if the log has it.
func (s *State) HashAt(seq uint64) ([32]byte, bool) {
	if seq == 0 || seq > s.seq {
		return [32]byte{}, false
	}
	return s.hashes[seq-1], true
}

// Time returns the time the newest entry says it was signed.
func (s *State) Time() time.Time { return s.time }

// Roots returns the pinned roots the state was verified against.
func (s *State) Roots() []PublicKey { return slices.Clone(s.roots) }

// IsRoot reports whether k is one of the pinned roots.
func (s *State) IsRoot(k PublicKey) bool { return slices.Contains(s.roots, k) }

// CanSign reports whether k may sign the tenant's next entry (other than
// admin changes): a root or a current admin.
func (s *State) CanSign(k PublicKey) bool { return s.IsRoot(k) || s.admins[k] }

// Admins returns the tenant's admin keys, sorted.
func (s *State) Admins() []PublicKey {
	ks := slices.Collect(maps.Keys(s.admins))
	slices.SortFunc(ks, func(a, b PublicKey) int { return cmpKeys(a, b) })
	return ks
}

func cmpKeys(a, b PublicKey) int { return slices.Compare(a.key[:], b.key[:]) }

// IsMember reports whether user is a member.
func (s *State) IsMember(user string) bool { _, ok := s.members[user]; return ok }

// Members returns the members' user ids, sorted.
func (s *State) Members() []string { return slices.Sorted(maps.Keys(s.members)) }

// Devices returns the devices that receive the tenant's keys, sorted by user
// and device.
func (s *State) Devices() []Device {
	var ds []Device
	for u, devs := range s.members {
		for d, r := range devs {
			ds = append(ds, Device{u, d, r})
		}
	}
	slices.SortFunc(ds, func(a, b Device) int { return cmp.Or(cmp.Compare(a.User, b.User), cmp.Compare(a.Device, b.Device)) })
	return ds
}

// Device returns the recipient of a member's device, if it receives keys.
func (s *State) Device(user, device string) (string, bool) {
	r, ok := s.members[user][device]
	return r, ok
}

// DeviceTime returns the time of the entry that gave a member's device its
// current recipient. A certificate older than that must not replace it.
func (s *State) DeviceTime(user, device string) (time.Time, bool) {
	t, ok := s.devTime[[2]string{user, device}]
	return t, ok
}

// HadRecipient reports whether the log gave a user's device the recipient
// once and replaced it with another since (re-keying the device).
func (s *State) HadRecipient(user, device, recipient string) bool {
	return slices.Contains(s.devPast[[2]string{user, device}], recipient)
}

// HasRecipient reports whether a device with the age recipient receives
// the tenant's keys, and whose it is.
func (s *State) HasRecipient(recipient string) (Device, bool) {
	d, ok := s.byRcpt[recipient]
	return d, ok
}

// Keyset returns the current keyset reference. Every verified log has one.
func (s *State) Keyset() KeysetInfo { return s.keysets[len(s.keysets)-1] }

// KeysetAt returns the keyset op of generation gen, current or older.
func (s *State) KeysetAt(gen uint64) (KeysetInfo, bool) {
	i, ok := slices.BinarySearchFunc(s.keysets, gen, func(k KeysetInfo, g uint64) int { return cmp.Compare(k.Generation, g) })
	if !ok {
		return KeysetInfo{}, false
	}
	return s.keysets[i], true
}

// Revocations returns the log's revocation points, oldest first.
func (s *State) Revocations() []Revocation { return slices.Clone(s.revs) }

// Append verifies the encoded entry as the log's next entry and applies it.
// It returns the parsed entry. On an error the entry is refused; an error
// after some of its operations were applied leaves the state unusable
// (every later call fails), so callers verify again from the start.
func (s *State) Append(b []byte) (*Entry, error) {
	if s.broken != nil {
		return nil, s.broken
	}
	e, err := Parse(b)
	if err != nil {
		if ce, ok := err.(*Error); ok && ce.Tenant != s.tenant {
			ce.Tenant = s.tenant
		}
		return nil, err
	}
	fail := func(sentinel error, format string, args ...any) (*Entry, error) {
		return nil, &Error{Tenant: s.tenant, Seq: e.Seq, Err: detail(sentinel, format, args...)}
	}
	switch {
	case e.Tenant != s.tenant:
		return fail(ErrBroken, "entry of tenant %q", short(e.Tenant))
	case e.Seq != s.seq+1:
		return fail(ErrBroken, "sequence number %d, want %d", e.Seq, s.seq+1)
	case e.Prev != s.Head():
		return fail(ErrBroken, "previous hash does not match entry %d", s.seq)
	case e.Seq == 1 && !s.IsRoot(e.Signer):
		return fail(ErrUnauthorized, "first entry signed by %s, not a pinned root", e.Signer)
	case !s.CanSign(e.Signer):
		return fail(ErrUnauthorized, "signed by %s, neither a root nor an admin of the tenant", e.Signer)
	}
	if err := s.checkOps(e); err != nil {
		return nil, &Error{Tenant: s.tenant, Seq: e.Seq, Err: err}
	}
	for i := range e.Ops {
		if err := s.apply(e, &e.Ops[i]); err != nil {
			s.broken = &Error{Tenant: s.tenant, Seq: e.Seq, Err: err}
			return nil, s.broken
		}
	}
	if len(s.keysets) == 0 {
		s.broken = &Error{Tenant: s.tenant, Seq: e.Seq, Err: detail(ErrInvalidOp, "the first entry names no keyset")}
		return nil, s.broken
	}
	s.seq = e.Seq
	s.hashes = append(s.hashes, e.Hash())
	s.time = e.Time
	return e, nil
}

// checkOps checks what can be checked of e's operations without applying
// them: who may make them.
func (s *State) checkOps(e *Entry) error {
	for _, op := range e.Ops {
		if (op.Type == OpAdminAdd || op.Type == OpAdminRemove) && !s.IsRoot(e.Signer) {
			return detail(ErrUnauthorized, "%s signed by %s, not a pinned root", op.Type, e.Signer)
		}
	}
	return nil
}

// apply applies one operation of e.
func (s *State) apply(e *Entry, op *Op) error {
	invalid := func(format string, args ...any) error {
		return detail(ErrInvalidOp, "%s: "+format, append([]any{op.Type}, args...)...)
	}
	switch op.Type {
	case OpAdminAdd:
		if s.admins[op.Key] {
			return invalid("%s is an admin already", op.Key)
		}
		s.admins[op.Key] = true
	case OpAdminRemove:
		if !s.admins[op.Key] {
			return invalid("%s is not an admin", op.Key)
		}
		delete(s.admins, op.Key)
	case OpMemberAdd:
		if s.IsMember(op.User) {
			return invalid("%q is a member already", op.User)
		}
		s.members[op.User] = map[string]string{}
	case OpMemberRemove:
		if !s.IsMember(op.User) {
			return invalid("%q is not a member", op.User)
		}
		for d, r := range s.members[op.User] {
			delete(s.byRcpt, r)
			delete(s.devTime, [2]string{op.User, d})
		}
		delete(s.members, op.User)
	case OpDeviceAdd:
		devs, ok := s.members[op.User]
		if !ok {
			return invalid("%q is not a member", op.User)
		}
		if devs[op.Device] == op.Recipient {
			return invalid("device %q of %q has that recipient already", op.Device, op.User)
		}
		if d, dup := s.HasRecipient(op.Recipient); dup {
			return invalid("recipient already belongs to device %q of %q", d.Device, d.User)
		}
		if old, ok := devs[op.Device]; ok {
			delete(s.byRcpt, old)
			s.devPast[[2]string{op.User, op.Device}] = append(s.devPast[[2]string{op.User, op.Device}], old)
		}
		devs[op.Device] = op.Recipient
		s.byRcpt[op.Recipient] = Device{op.User, op.Device, op.Recipient}
		s.devTime[[2]string{op.User, op.Device}] = e.Time
	case OpDeviceRemove:
		r, ok := s.members[op.User][op.Device]
		if !ok {
			return invalid("%q has no device %q", op.User, op.Device)
		}
		delete(s.members[op.User], op.Device)
		delete(s.byRcpt, r)
		delete(s.devTime, [2]string{op.User, op.Device})
	case OpKeyset:
		if n := len(s.keysets); n > 0 && op.Keyset.Generation <= s.keysets[n-1].Generation {
			return invalid("generation %d does not follow %d", op.Keyset.Generation, s.keysets[n-1].Generation)
		}
		ref := op.Keyset
		ref.KeyIDs = slices.Clone(ref.KeyIDs)
		s.keysets = append(s.keysets, KeysetInfo{KeysetRef: ref, Seq: e.Seq, Signer: e.Signer})
	case OpRevocationPoint:
		if len(s.keysets) == 0 {
			return invalid("no keyset to revoke")
		}
		s.revs = append(s.revs, Revocation{Seq: e.Seq, XID: op.XID, InProgress: slices.Clone(op.InProgress), KeyIDs: slices.Clone(s.Keyset().KeyIDs)})
	default:
		return invalid("unknown")
	}
	return nil
}
