package chain

import (
	"errors"
	"fmt"
)

// Sentinel errors; every error of this package wraps one of them. Compare
// with [errors.Is]; [errors.As] finds the *[Error] with the tenant and
// sequence number.
var (
	// ErrMalformed: the bytes are not a valid entry or certificate.
	ErrMalformed = errors.New("chain: malformed")

	// ErrBadSignature: the signature does not verify with the key the
	// object names.
	ErrBadSignature = errors.New("chain: bad signature")

	// ErrUnauthorized: the entry is signed by a key that may not make it —
	// not a pinned root where one is needed, not an admin of the tenant.
	ErrUnauthorized = errors.New("chain: signer not authorized")

	// ErrBroken: the entry does not follow the one before (sequence number
	// or previous hash), belongs to another tenant, or the log has a gap.
	ErrBroken = errors.New("chain: entry does not extend the log")

	// ErrInvalidOp: an operation does not apply to the state: a device
	// for a non-member, a keyset generation that does not grow, a no-op.
	ErrInvalidOp = errors.New("chain: invalid operation")

	// ErrRollback: the log is shorter than one this verifier has already
	// seen, or its keyset generation is lower.
	ErrRollback = errors.New("chain: log rolled back")

	// ErrFork: the log differs from one this verifier has already seen at
	// the same sequence number (or a tenant was deleted and created again).
	ErrFork = errors.New("chain: log forked")

	// ErrNoLog: the tenant has no log entry at all.
	ErrNoLog = errors.New("chain: tenant has no log")
)

// Error is an error about one tenant's log, at one entry when Seq is not 0.
type Error struct {
	Tenant string
	Seq    uint64
	Err    error // wraps one of the sentinels
}

func (e *Error) Error() string {
	if e.Seq == 0 {
		return fmt.Sprintf("chain: tenant %q: %v", e.Tenant, trim(e.Err))
	}
	return fmt.Sprintf("chain: tenant %q entry %d: %v", e.Tenant, e.Seq, trim(e.Err))
}

func (e *Error) Unwrap() error { return e.Err }

type detailError struct {
	sentinel error
	msg      string
}

func (e *detailError) Error() string { return e.sentinel.Error() + ": " + e.msg }
func (e *detailError) Unwrap() error { return e.sentinel }

func detail(sentinel error, format string, args ...any) error {
	return &detailError{sentinel, fmt.Sprintf(format, args...)}
}

func malformed(what, format string, args ...any) error {
	return detail(ErrMalformed, what+": "+format, args...)
}

func trim(err error) string {
	s := err.Error()
	if len(s) > 7 && s[:7] == "chain: " {
		return s[7:]
	}
	return s
}
