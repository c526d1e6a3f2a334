package keysync

import (
	"errors"
	"fmt"
)

// Sentinel errors. Functions wrap them with context (see [OpenError],
// [TenantMismatchError]); compare with [errors.Is].
var (
	// ErrNotEncrypted means a value in an encrypted column is not a cell: it
	// lacks the "ss1:" prefix. It is never treated as plaintext.
	ErrNotEncrypted = errors.New("keysync: value is not an encrypted cell")

	// ErrMalformedCell means a value starts like a cell but cannot be one:
	// bad base64, too short, an unknown version or ciphertext prefix.
	ErrMalformedCell = errors.New("keysync: malformed cell")

	// ErrNoKey means the cell names a key the keyset does not hold: it was
	// sealed under a newer generation (a rotation still in flight), or under
	// a key that has been retired, or for another tenant.
	ErrNoKey = errors.New("keysync: no key for cell")

	// ErrAuth means the keyset holds the key the cell names, but the cell did
	// not authenticate: a byte was changed, or the cell was moved to another
	// row, column, table or tenant.
	ErrAuth = errors.New("keysync: cell authentication failed (tampered or moved)")

	// ErrTenantMismatch means a keyset or payload belongs to another tenant
	// than the one it is used for.
	ErrTenantMismatch = errors.New("keysync: tenant mismatch")

	// ErrInvalidContext means a [CellContext] or [TableSpec] cannot be
	// encoded: an empty name, a NUL byte, or a missing row key.
	ErrInvalidContext = errors.New("keysync: invalid cell context")

	// ErrMalformedPayload means a wrapped keyset decrypted, but its content
	// is not a valid shapeseal keyset payload.
	ErrMalformedPayload = errors.New("keysync: malformed wrapped keyset")

	// ErrWrongIdentity means none of the given age identities can unwrap a
	// payload: the payload was wrapped for another device. The error also
	// matches *age.NoIdentityMatchError with errors.As when age reported it.
	ErrWrongIdentity = errors.New("keysync: identity cannot unwrap this keyset")

	// ErrUntrustedKeyset: a wrapped keyset is not signed by a signer the
	// device trusts, its signature does not verify, or it was signed for
	// another device. Someone who can write shapeseal_tenant_keys tried to
	// hand the device a keyset the key administrators did not grant (or an
	// unsigned payload of an older shapeseal).
	ErrUntrustedKeyset = errors.New("keysync: wrapped keyset is not signed by a trusted signer")

	// ErrInsecureFile means a secret file (an identity or a local KEK) can
	// be read or written by the group or others.
	ErrInsecureFile = errors.New("keysync: secret file is accessible by group or others")

	// ErrInvalidKeyset means a keyset does not have the shape a tenant
	// keyset must have (AES-256-GCM keys with Tink output prefixes, one
	// enabled primary).
	ErrInvalidKeyset = errors.New("keysync: invalid tenant keyset")

	// ErrGenerationExists means a keyset row for that tenant and generation
	// is already stored: another writer changed the keyset concurrently.
	ErrGenerationExists = errors.New("keysync: keyset generation already stored")

	// ErrStateMismatch means a table disagrees with a tenant's signed log:
	// the keyset the log names is missing or is another one. The table was
	// changed by someone who cannot sign; the error is a *[StateError].
	ErrStateMismatch = errors.New("keysync: a table disagrees with the tenant's log")

	// ErrUncertifiedDevice means a device row has no certificate signed by
	// a root or an admin of the tenant, or one that does not match the
	// row: it is data, not a device, and receives nothing.
	ErrUncertifiedDevice = errors.New("keysync: device is not certified for the tenant")

	// ErrNotMember means a device or user is not a member of a tenant, as
	// the tenant's log says.
	ErrNotMember = errors.New("keysync: not a member of the tenant")

	// ErrTenantExists means a tenant already has a log.
	ErrTenantExists = errors.New("keysync: tenant exists")

	// ErrSuspectCell means a cell is sealed with a key that was revoked
	// before the row was last written: a revoked member may have forged
	// it. Re-encryption leaves it alone and reports it.
	ErrSuspectCell = errors.New("keysync: cell written with a revoked key after the revocation")
)

// StateError reports a table that disagrees with a tenant's signed log.
// It wraps [ErrStateMismatch].
type StateError struct {
	Tenant string
	Table  string
	Detail string
}

func (e *StateError) Error() string {
	return fmt.Sprintf("keysync: tenant %q: %s disagrees with the log: %s", e.Tenant, e.Table, e.Detail)
}

func (e *StateError) Unwrap() error { return ErrStateMismatch }

// DeviceError reports a device row that was ignored. It wraps
// [ErrUncertifiedDevice].
type DeviceError struct {
	User, Device string
	Detail       string
}

func (e *DeviceError) Error() string {
	return fmt.Sprintf("keysync: device %q of %q ignored: %s", e.Device, e.User, e.Detail)
}

func (e *DeviceError) Unwrap() error { return ErrUncertifiedDevice }

// OpenError is the error [Open] returns. It tells where the cell was and,
// once the cell's prefix has been parsed, which key it names. It never holds
// the cell's content or the row key.
type OpenError struct {
	Table  string // schema.table
	Column string
	Tenant string

	// KeyID is the key named by the cell's prefix; valid when HasKeyID.
	KeyID    uint32
	HasKeyID bool

	// Generation is the generation of the keyset that was tried.
	Generation uint64

	// Err is ErrNotEncrypted, ErrMalformedCell, ErrNoKey, ErrAuth,
	// ErrTenantMismatch or ErrInvalidContext, possibly with a detail.
	Err error
}

func (e *OpenError) Error() string {
	s := fmt.Sprintf("keysync: open %s.%s (tenant %q", e.Table, e.Column, e.Tenant)
	if e.HasKeyID {
		s += fmt.Sprintf(", key 0x%08x", e.KeyID)
	}
	if e.Generation != 0 {
		s += fmt.Sprintf(", keyset generation %d", e.Generation)
	}
	return s + "): " + trimPrefix(e.Err.Error())
}

func (e *OpenError) Unwrap() error { return e.Err }

// TenantMismatchError reports a keyset or wrapped payload for another tenant.
// It wraps [ErrTenantMismatch].
type TenantMismatchError struct {
	Want string // the tenant the caller asked for
	Got  string // the tenant the keyset or payload belongs to
}

func (e *TenantMismatchError) Error() string {
	return fmt.Sprintf("keysync: tenant mismatch: want %q, keyset belongs to %q", e.Want, e.Got)
}

func (e *TenantMismatchError) Unwrap() error { return ErrTenantMismatch }

// FilePermissionError reports a secret file whose permissions let the group
// or others in. It wraps [ErrInsecureFile].
type FilePermissionError struct {
	Path string
	Mode uint32 // the file's permission bits
}

func (e *FilePermissionError) Error() string {
	return fmt.Sprintf("keysync: %s has mode %#o; secret files must not be accessible by group or others (chmod 600)", e.Path, e.Mode)
}

func (e *FilePermissionError) Unwrap() error { return ErrInsecureFile }

// KEKError reports a failure to encrypt or decrypt a keyset (or, with no
// Tenant, a signer key) with a KEK.
type KEKError struct {
	URI        string // the KEK's URI
	Tenant     string
	Generation uint64
	Err        error
}

func (e *KEKError) Error() string {
	if e.Tenant == "" {
		return fmt.Sprintf("keysync: KEK %s: %v", e.URI, e.Err)
	}
	return fmt.Sprintf("keysync: keyset of tenant %q generation %d with KEK %s: %v", e.Tenant, e.Generation, e.URI, e.Err)
}

func (e *KEKError) Unwrap() error { return e.Err }

// detail wraps a sentinel with a detail message: errors.Is still matches the
// sentinel.
func detail(sentinel error, format string, args ...any) error {
	return &detailError{sentinel, fmt.Sprintf(format, args...)}
}

type detailError struct {
	sentinel error
	msg      string
}

func (e *detailError) Error() string { return e.sentinel.Error() + ": " + e.msg }
func (e *detailError) Unwrap() error { return e.sentinel }

func trimPrefix(s string) string {
	const p = "keysync: "
	if len(s) >= len(p) && s[:len(p)] == p {
		return s[len(p):]
	}
	return s
}
