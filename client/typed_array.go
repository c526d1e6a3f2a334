package client

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"unsafe"
)

// sliceSetter fills a slice field from an array literal, one dimension.
func sliceSetter(t reflect.Type, col Column, known bool, dim int) setter {
	et := t.Elem()
	if et.Kind() == reflect.String && !reflect.PointerTo(et).Implements(scannerType) && !reflect.PointerTo(et).Implements(unmarshalType) && (!known || col.Dims == dim+1) {
		return func(p unsafe.Pointer, text string) error {
			out := (*[]string)(p)
			*out = make([]string, 0, strings.Count(text, ",")+1) // never the old slice: views share it
			return scanArray(text, func(el string, null bool) error {
				if null {
					return ErrNullField
				}
				*out = append(*out, el)
				return nil
			})
		}
	}
	elem := makeSetter(et, col, known, dim+1)
	null := makeNull(et)
	nested := known && col.Dims > dim+1
	return func(p unsafe.Pointer, text string) error {
		sv := reflect.NewAt(t, p).Elem()
		s := reflect.MakeSlice(t, 0, 4)
		add := func(el string, null bool, set setter, setNull func(unsafe.Pointer) error) error {
			s = reflect.Append(s, reflect.Zero(et))
			ep := s.Index(s.Len() - 1).Addr().UnsafePointer()
			if null {
				return setNull(ep)
			}
			return set(ep, el)
		}
		var err error
		if nested {
			err = scanArrayNested(text, func(sub string) error { return add(sub, false, elem, null) })
		} else {
			err = scanArray(text, func(el string, isNull bool) error { return add(el, isNull, elem, null) })
		}
		if err != nil {
			return err
		}
		sv.Set(s)
		return nil
	}
}

// scanArray calls f with every element of a one-dimensional array literal.
func scanArray(text string, f func(el string, null bool) error) error {
	s := text
	if strings.HasPrefix(s, "[") {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return errors.New("malformed array dimensions")
		}
		s = s[eq+1:]
	}
	p := arrayParser{s: s}
	p.ws()
	if p.i >= len(p.s) || p.s[p.i] != '{' {
		return errors.New("not an array")
	}
	p.i++
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
	} else {
		for {
			p.ws()
			if p.i >= len(p.s) {
				return errors.New("unterminated array")
			}
			switch p.s[p.i] {
			case '{':
				return errors.New("array has more dimensions than the field")
			case '"':
				t, err := p.quoted()
				if err != nil {
					return err
				}
				if err := f(t, false); err != nil {
					return err
				}
			default:
				start := p.i
				for p.i < len(p.s) && p.s[p.i] != ',' && p.s[p.i] != '}' {
					if p.s[p.i] == '{' || p.s[p.i] == '"' {
						return fmt.Errorf("unexpected %q in array", p.s[p.i])
					}
					p.i++
				}
				t := strings.TrimRight(p.s[start:p.i], " \t\n\r")
				if t == "" {
					return errors.New("empty array element")
				}
				if err := f(t, len(t) == 4 && strings.EqualFold(t, "NULL")); err != nil {
					return err
				}
			}
			p.ws()
			if p.i >= len(p.s) {
				return errors.New("unterminated array")
			}
			if p.s[p.i] == '}' {
				p.i++
				break
			}
			if p.s[p.i] != ',' {
				return errors.New("expected ',' or '}' in array")
			}
			p.i++
		}
	}
	p.ws()
	if p.i != len(p.s) {
		return errors.New("data after array")
	}
	return nil
}

// scanArrayNested calls f with the literal of every sub-array of a
// multi-dimensional array literal.
func scanArrayNested(text string, f func(sub string) error) error {
	s := text
	if strings.HasPrefix(s, "[") {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return errors.New("malformed array dimensions")
		}
		s = s[eq+1:]
	}
	s = strings.TrimSpace(s)
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return errors.New("not an array")
	}
	inner := s[1 : len(s)-1]
	depth, start, inQ, esc := 0, -1, false, false
	for i := 0; i < len(inner); i++ {
		c := inner[i]
		switch {
		case esc:
			esc = false
		case inQ && c == '\\':
			esc = true
		case c == '"':
			inQ = !inQ
		case inQ:
		case c == '{':
			if depth == 0 {
				start = i
			}
			depth++
		case c == '}':
			depth--
			if depth == 0 {
				if err := f(inner[start : i+1]); err != nil {
					return err
				}
			}
		}
	}
	if depth != 0 || inQ {
		return errors.New("unterminated array")
	}
	return nil
}
