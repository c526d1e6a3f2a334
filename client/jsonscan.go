package client

import (
	"encoding/binary"
	"errors"
	"math/bits"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// scanner is a small JSON parser over one complete message. It returns
// substrings of its input wherever the JSON text needs no unescaping, so
// parsing a message allocates little beyond the maps it fills.
type scanner struct {
	s string
	i int
}

var errSyntax = errors.New("invalid JSON")

const maxDepth = 10000 // as encoding/json

func (p *scanner) ws() {
	if p.i < len(p.s) && p.s[p.i] > ' ' {
		return // the usual case: no whitespace at all
	}
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *scanner) peek() byte {
	if p.i < len(p.s) {
		return p.s[p.i]
	}
	return 0
}

func (p *scanner) expect(c byte) error {
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == c {
		p.i++
		return nil
	}
	return p.errExpected(c)
}

func (p *scanner) errExpected(c byte) error {
	got := "end of message"
	if p.i < len(p.s) {
		got = strconv.QuoteRune(rune(p.s[p.i]))
	}
	return errors.New("invalid JSON: expected " + strconv.QuoteRune(rune(c)) + ", got " + got)
}

// strEnd scans the string starting at p.i (which must be '"') and returns
// the index just past its closing quote, whether it needs unescaping
// (escapes or invalid UTF-8), and an error for malformed strings.
func (p *scanner) strEnd() (end int, slow bool, err error) {
	s := p.s
	i := p.i + 1
	nonASCII := false
	for i < len(s) {
		// 8 bytes at a time; the lowest bit of the mask is the first
		// special byte exactly.
		for i+8 <= len(s) {
			if m := strSpecial8(load8(s, i)); m != 0 {
				i += bits.TrailingZeros64(m) >> 3
				goto special
			}
			i += 8
		}
		for i < len(s) && !strSpecial[s[i]] {
			i++
		}
	special:
		if i >= len(s) {
			break
		}
		c := s[i]
		switch {
		case c == '"':
			if nonASCII && !slow && !utf8.ValidString(s[p.i+1:i]) {
				slow = true
			}
			return i + 1, slow, nil
		case c == '\\':
			slow = true
			if i+1 >= len(s) {
				return 0, false, errSyntax
			}
			switch s[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(s) {
					return 0, false, errSyntax
				}
				for _, h := range []byte(s[i+2 : i+6]) {
					if !isHex(h) {
						return 0, false, errSyntax
					}
				}
				i += 6
			default:
				return 0, false, errSyntax
			}
		case c < 0x20:
			return 0, false, errSyntax
		default:
			if c >= 0x80 {
				nonASCII = true
			}
			i++
		}
	}
	return 0, false, errSyntax
}

// strSpecial marks the bytes strEnd looks at: the closing quote, escapes,
// control characters (invalid in strings) and non-ASCII bytes.
var strSpecial = func() (t [256]bool) {
	t['"'], t['\\'] = true, true
	for c := range 0x20 {
		t[c] = true
	}
	for c := 0x80; c < 0x100; c++ {
		t[c] = true
	}
	return t
}()

const (
	lo8 = 0x0101010101010101
	hi8 = 0x8080808080808080
)

// load8 returns the 8 bytes of s at i, little-endian.
func load8(s string, i int) uint64 {
	return binary.LittleEndian.Uint64(unsafe.Slice(unsafe.StringData(s[i:i+8]), 8))
}

// zero8 has the high bit set in the bytes of w that are zero (and maybe
// in some above them, which is fine to find the first).
func zero8(w uint64) uint64 { return (w - lo8) &^ w & hi8 }

// strSpecial8 is not zero when one of the 8 bytes of w is special in a
// string (see strSpecial).
func strSpecial8(w uint64) uint64 {
	return zero8(w^(lo8*'"')) | zero8(w^(lo8*'\\')) | (w-lo8*0x20)&^w&hi8 | w&hi8
}

// quote8 is not zero when one of the 8 bytes of w is a quote or a
// backslash.
func quote8(w uint64) uint64 { return zero8(w^(lo8*'"')) | zero8(w^(lo8*'\\')) }

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// str reads a JSON string and returns its value.
func (p *scanner) str() (string, error) {
	p.ws()
	if p.peek() != '"' {
		return "", p.errExpected('"')
	}
	end, slow, err := p.strEnd()
	if err != nil {
		return "", err
	}
	lit := p.s[p.i:end]
	p.i = end
	if !slow {
		return lit[1 : len(lit)-1], nil
	}
	return unquote(lit[1 : len(lit)-1]), nil
}

// unquote decodes the inside of a JSON string literal already validated by
// strEnd, as encoding/json does: invalid UTF-8 and lone surrogates become
// U+FFFD.
func unquote(s string) string {
	if u, ok := unquoteSimple(s); ok {
		return u
	}
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		c := s[i]
		if c != '\\' && c < utf8.RuneSelf {
			// A run of plain ASCII: copy it whole.
			j := i + 1
			for j < len(s) && s[j] != '\\' && s[j] < utf8.RuneSelf {
				j++
			}
			b.WriteString(s[i:j])
			i = j
			continue
		}
		switch {
		case c == '\\':
			switch s[i+1] {
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			case 'u':
				r := hex4(s[i+2 : i+6])
				i += 6
				if utf16.IsSurrogate(r) {
					if i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
						if dec := utf16.DecodeRune(r, hex4(s[i+2:i+6])); dec != utf8.RuneError {
							b.WriteRune(dec)
							i += 6
							continue
						}
					}
					r = utf8.RuneError
				}
				b.WriteRune(r)
				continue
			default: // " \ /
				b.WriteByte(s[i+1])
			}
			i += 2
		case c < utf8.RuneSelf:
			b.WriteByte(c)
			i++
		default:
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				b.WriteRune(utf8.RuneError)
			} else {
				b.WriteString(s[i : i+size])
			}
			i += size
		}
	}
	return b.String()
}

// unquoteSimple unquotes s when it is ASCII with one-character escapes
// only (a message key such as \"public\".\"items\"/\"1\"), in one
// allocation; ok is false otherwise.
func unquoteSimple(s string) (string, bool) {
	buf := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= utf8.RuneSelf {
			return "", false
		}
		if c == '\\' {
			i++
			switch c = s[i]; c {
			case '"', '\\', '/':
			case 'b':
				c = '\b'
			case 'f':
				c = '\f'
			case 'n':
				c = '\n'
			case 'r':
				c = '\r'
			case 't':
				c = '\t'
			default:
				return "", false
			}
		}
		buf = append(buf, c)
	}
	if len(buf) == 0 {
		return "", true
	}
	return unsafe.String(&buf[0], len(buf)), true
}

func hex4(s string) rune {
	var r rune
	for i := 0; i < 4; i++ {
		c := s[i]
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c = c - 'a' + 10
		default:
			c = c - 'A' + 10
		}
		r = r<<4 | rune(c)
	}
	return r
}

// strOrNull reads a JSON string or null.
func (p *scanner) strOrNull() (v string, null bool, err error) {
	p.ws()
	if p.peek() == 'n' {
		return "", true, p.lit("null")
	}
	v, err = p.str()
	return v, false, err
}

func (p *scanner) lit(l string) error {
	if len(p.s)-p.i >= len(l) && p.s[p.i:p.i+len(l)] == l {
		p.i += len(l)
		return nil
	}
	return errSyntax
}

// number reads a JSON number and returns its text.
func (p *scanner) number() (string, error) {
	p.ws()
	s, i := p.s, p.i
	if i < len(s) && s[i] == '-' {
		i++
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case i < len(s) && '1' <= s[i] && s[i] <= '9':
		for i < len(s) && '0' <= s[i] && s[i] <= '9' {
			i++
		}
	default:
		return "", errSyntax
	}
	if i < len(s) && s[i] == '.' {
		i++
		d := i
		for i < len(s) && '0' <= s[i] && s[i] <= '9' {
			i++
		}
		if i == d {
			return "", errSyntax
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		d := i
		for i < len(s) && '0' <= s[i] && s[i] <= '9' {
			i++
		}
		if i == d {
			return "", errSyntax
		}
	}
	n := s[p.i:i]
	p.i = i
	return n, nil
}

// skip validates and skips any JSON value.
func (p *scanner) skip(depth int) error {
	if depth > maxDepth {
		return errors.New("invalid JSON: nested too deeply")
	}
	p.ws()
	switch p.peek() {
	case '{':
		p.i++
		p.ws()
		if p.peek() == '}' {
			p.i++
			return nil
		}
		for {
			p.ws()
			if p.peek() != '"' {
				return errSyntax
			}
			end, _, err := p.strEnd()
			if err != nil {
				return err
			}
			p.i = end
			if err := p.expect(':'); err != nil {
				return err
			}
			if err := p.skip(depth + 1); err != nil {
				return err
			}
			p.ws()
			switch p.peek() {
			case ',':
				p.i++
			case '}':
				p.i++
				return nil
			default:
				return errSyntax
			}
		}
	case '[':
		p.i++
		p.ws()
		if p.peek() == ']' {
			p.i++
			return nil
		}
		for {
			if err := p.skip(depth + 1); err != nil {
				return err
			}
			p.ws()
			switch p.peek() {
			case ',':
				p.i++
			case ']':
				p.i++
				return nil
			default:
				return errSyntax
			}
		}
	case '"':
		end, _, err := p.strEnd()
		if err != nil {
			return err
		}
		p.i = end
		return nil
	case 't':
		return p.lit("true")
	case 'f':
		return p.lit("false")
	case 'n':
		return p.lit("null")
	default:
		_, err := p.number()
		return err
	}
}

// object calls field for every member of the object at p.i; field must
// consume the member's value.
func (p *scanner) object(field func(name string) error) error {
	if err := p.expect('{'); err != nil {
		return err
	}
	p.ws()
	if p.peek() == '}' {
		p.i++
		return nil
	}
	for {
		name, err := p.str()
		if err != nil {
			return err
		}
		if err := p.expect(':'); err != nil {
			return err
		}
		if err := field(name); err != nil {
			return err
		}
		p.ws()
		switch p.peek() {
		case ',':
			p.i++
		case '}':
			p.i++
			return nil
		default:
			return errSyntax
		}
	}
}

// array calls elem for every element of the array at p.i; elem must
// consume the element.
func (p *scanner) array(elem func() error) error {
	if err := p.expect('['); err != nil {
		return err
	}
	p.ws()
	if p.peek() == ']' {
		p.i++
		return nil
	}
	for {
		if err := elem(); err != nil {
			return err
		}
		p.ws()
		switch p.peek() {
		case ',':
			p.i++
		case ']':
			p.i++
			return nil
		default:
			return errSyntax
		}
	}
}
