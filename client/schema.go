package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// A Schema describes the columns of a shape, as sent in the electric-schema
// header of non-live responses.
type Schema map[string]Column

// Column describes one column of a Schema. For array columns Type is the
// element type and Dims the number of dimensions.
type Column struct {
	Type      string `json:"type"`
	Dims      int    `json:"dims,omitempty"`
	PKIndex   *int   `json:"pk_index,omitempty"`
	NotNull   bool   `json:"not_null,omitempty"`
	MaxLength int    `json:"max_length,omitempty"`
	Length    int    `json:"length,omitempty"`
	Precision int    `json:"precision,omitempty"`
	Scale     int    `json:"scale,omitempty"`
	TypeMod   int    `json:"type_mod,omitempty"`
}

// ParseSchema parses an electric-schema header value.
func ParseSchema(header string) (Schema, error) {
	var s Schema
	if err := json.Unmarshal([]byte(header), &s); err != nil {
		return nil, &ParseError{Offset: -1, Msg: "electric-schema header", Err: err}
	}
	return s, nil
}

// A ParseFunc converts the Postgres text of one value of a column (one
// element, for array columns) into a Go value. It is never called for NULL.
type ParseFunc func(text string, col Column) (any, error)

// DefaultParsers are the conversions Options.Parse applies, by Postgres
// type name. Types not listed stay strings.
var DefaultParsers = map[string]ParseFunc{
	"int2":   parseInt,
	"int4":   parseInt,
	"int8":   parseInt,
	"float4": parseFloat,
	"float8": parseFloat,
	"bool":   parseBool,
	"json":   parseJSON,
	"jsonb":  parseJSON,
}

func parseInt(s string, _ Column) (any, error) { return strconv.ParseInt(s, 10, 64) }

func parseFloat(s string, _ Column) (any, error) { return strconv.ParseFloat(s, 64) }

func parseBool(s string, _ Column) (any, error) {
	switch s {
	case "t", "true":
		return true, nil
	case "f", "false":
		return false, nil
	}
	return nil, errors.New("not a boolean")
}

func parseJSON(s string, _ Column) (any, error) {
	if !json.Valid([]byte(s)) {
		return nil, errors.New("invalid JSON")
	}
	return json.RawMessage(s), nil
}

// convert replaces the strings of r by parsed values, in place.
func (d *decoder) convert(r Row) error {
	for name, v := range r {
		col, ok := d.schema[name]
		if !ok {
			continue
		}
		if v == nil {
			if col.NotNull {
				return &ValueError{Column: name, Type: col.Type}
			}
			continue
		}
		text, ok := v.(string)
		if !ok {
			continue
		}
		pv, err := d.parseValue(text, col)
		if err != nil {
			return &ValueError{Column: name, Type: col.Type, Value: &text, Err: err}
		}
		r[name] = pv
	}
	return nil
}

func (d *decoder) parseValue(text string, col Column) (any, error) {
	f := d.parser[col.Type]
	if col.Dims > 0 {
		return ParseArray(text, func(el string) (any, error) {
			if f == nil {
				return el, nil
			}
			return f(el, col)
		})
	}
	if f == nil {
		return text, nil
	}
	return f(text, col)
}

// ParseArray parses a Postgres array literal such as {1,2,NULL} or
// {{"a b","c\"d"},{e,f}} into nested []any, calling elem for every non-NULL
// element (NULL becomes nil). A leading dimension decoration such as
// [0:2]={…} is accepted and ignored.
func ParseArray(text string, elem func(string) (any, error)) (any, error) {
	s := text
	if strings.HasPrefix(s, "[") {
		eq := strings.IndexByte(s, '=')
		if eq < 0 {
			return nil, errors.New("malformed array dimensions")
		}
		s = s[eq+1:]
	}
	p := arrayParser{s: s, elem: elem}
	p.ws()
	v, err := p.array(0)
	if err != nil {
		return nil, err
	}
	p.ws()
	if p.i != len(p.s) {
		return nil, fmt.Errorf("data after array at %d", p.i)
	}
	return v, nil
}

type arrayParser struct {
	s    string
	i    int
	elem func(string) (any, error)
	sb   strings.Builder
}

func (p *arrayParser) ws() {
	for p.i < len(p.s) && (p.s[p.i] == ' ' || p.s[p.i] == '\t' || p.s[p.i] == '\n' || p.s[p.i] == '\r') {
		p.i++
	}
}

func (p *arrayParser) array(depth int) ([]any, error) {
	if depth > 100 {
		return nil, errors.New("array nested too deeply")
	}
	if p.i >= len(p.s) || p.s[p.i] != '{' {
		return nil, fmt.Errorf("expected '{' at %d", p.i)
	}
	p.i++
	out := []any{}
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		return out, nil
	}
	for {
		p.ws()
		if p.i >= len(p.s) {
			return nil, errors.New("unterminated array")
		}
		var v any
		var err error
		switch p.s[p.i] {
		case '{':
			var sub []any
			sub, err = p.array(depth + 1)
			v = sub
		case '"':
			var t string
			if t, err = p.quoted(); err == nil {
				v, err = p.elem(t)
			}
		default:
			start := p.i
			for p.i < len(p.s) && p.s[p.i] != ',' && p.s[p.i] != '}' {
				if p.s[p.i] == '{' || p.s[p.i] == '"' {
					return nil, fmt.Errorf("unexpected %q at %d", p.s[p.i], p.i)
				}
				p.i++
			}
			t := strings.TrimRight(p.s[start:p.i], " \t\n\r")
			if t == "" {
				return nil, fmt.Errorf("empty element at %d", start)
			}
			if strings.EqualFold(t, "NULL") {
				v = nil
			} else {
				v, err = p.elem(t)
			}
		}
		if err != nil {
			return nil, err
		}
		out = append(out, v)
		p.ws()
		if p.i >= len(p.s) {
			return nil, errors.New("unterminated array")
		}
		switch p.s[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return out, nil
		default:
			return nil, fmt.Errorf("expected ',' or '}' at %d", p.i)
		}
	}
}

func (p *arrayParser) quoted() (string, error) {
	p.i++ // opening quote
	p.sb.Reset()
	start := p.i
	simple := true
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch c {
		case '"':
			var t string
			if simple {
				t = p.s[start:p.i]
			} else {
				t = p.sb.String()
			}
			p.i++
			return t, nil
		case '\\':
			if simple {
				p.sb.WriteString(p.s[start:p.i])
				simple = false
			}
			p.i++
			if p.i >= len(p.s) {
				return "", errors.New("unterminated escape")
			}
			p.sb.WriteByte(p.s[p.i])
			p.i++
		default:
			if !simple {
				p.sb.WriteByte(c)
			}
			p.i++
		}
	}
	return "", errors.New("unterminated quoted element")
}
