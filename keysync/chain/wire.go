package chain

import (
	"encoding/binary"
	"strings"
	"unicode/utf8"
)

// Limits of the wire format. A field longer than its limit makes the whole
// object malformed.
const (
	MaxEntrySize    = 1 << 20 // bytes in one encoded entry
	maxIDLen        = 1024    // tenant, user and device ids, in bytes
	maxRecipientLen = 4096    // an age recipient ("age1pq1…" is about 1,960)
	maxURILen       = 1024    // a KEK URI
	maxKeyIDs       = 4096    // key ids in one keyset op
)

// enc appends the wire encodings of fields to a byte slice.
type enc []byte

func (e *enc) u8(v byte)    { *e = append(*e, v) }
func (e *enc) u16(v int)    { *e = binary.BigEndian.AppendUint16(*e, uint16(v)) }
func (e *enc) u32(v uint32) { *e = binary.BigEndian.AppendUint32(*e, v) }
func (e *enc) u64(v uint64) { *e = binary.BigEndian.AppendUint64(*e, v) }
func (e *enc) raw(b []byte) { *e = append(*e, b...) }
func (e *enc) str(s string) { e.u16(len(s)); *e = append(*e, s...) }

// dec reads wire fields; the first failure sticks, so a parser reads every
// field and checks ok once.
type dec struct {
	b   []byte
	bad string // what was wrong, the first time something was
}

func (d *dec) fail(what string) {
	if d.bad == "" {
		d.bad = what
	}
}

func (d *dec) take(n int, what string) []byte {
	if d.bad != "" || n < 0 || len(d.b) < n {
		d.fail("truncated " + what)
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *dec) u8(what string) byte {
	if b := d.take(1, what); b != nil {
		return b[0]
	}
	return 0
}

func (d *dec) u16(what string) int {
	if b := d.take(2, what); b != nil {
		return int(binary.BigEndian.Uint16(b))
	}
	return 0
}

func (d *dec) u32(what string) uint32 {
	if b := d.take(4, what); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (d *dec) u64(what string) uint64 {
	if b := d.take(8, what); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

func (d *dec) key(what string) (k PublicKey) {
	copy(k.key[:], d.take(len(k.key), what))
	return k
}

// str reads a length-prefixed string and checks it with valid.
func (d *dec) str(what string, valid func(string) bool) string {
	s := string(d.take(d.u16(what+" length"), what))
	if d.bad == "" && !valid(s) {
		d.fail("bad " + what)
	}
	return s
}

// validID accepts a tenant, user or device id: 1 to 1024 bytes of UTF-8
// without NUL.
func validID(s string) bool {
	return s != "" && len(s) <= maxIDLen && utf8.ValidString(s) && !strings.ContainsRune(s, 0)
}

// validRecipient accepts the text of an age recipient, checked for its
// shape only: "age1" and lower-case Bech32 characters.
func validRecipient(s string) bool {
	if len(s) > maxRecipientLen || !strings.HasPrefix(s, "age1") || len(s) < 10 {
		return false
	}
	for i := 4; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return true
}

// validURI accepts a KEK URI: 1 to 1024 printable ASCII bytes.
func validURI(s string) bool {
	if s == "" || len(s) > maxURILen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] <= ' ' || s[i] > '~' {
			return false
		}
	}
	return true
}
