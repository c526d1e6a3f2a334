package client

import (
	"errors"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
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
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		c := s[i]
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
