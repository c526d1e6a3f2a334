package client

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"slices"
	"strconv"
	"strings"
)

// maxMessageBytes bounds a single message (not a response): a larger element
// is a ParseError rather than unbounded memory.
const maxMessageBytes = 256 << 20

// arrayReader splits a streamed JSON array into its elements without
// holding more than one element (plus read-ahead) in memory.
type arrayReader struct {
	r     io.Reader
	buf   []byte
	start int // first unconsumed byte
	end   int // end of buffered data
	base  int64
	state int // 0: before '[', 1: want element or ']', 2: want ',' or ']', 3: after ']'
	eof   bool
	rerr  error

	noFill bool // nextBuffered is running: fill reads nothing
}

func newArrayReader(r io.Reader) *arrayReader {
	return &arrayReader{r: r, buf: make([]byte, 32<<10)}
}

// fill reads more data, compacting or growing the buffer as needed. It
// returns false when no more data can be read (see a.rerr / a.eof).
func (a *arrayReader) fill() bool {
	if a.eof || a.rerr != nil || a.noFill {
		return false
	}
	if a.start > 0 && (a.start == a.end || a.end == len(a.buf)) {
		copy(a.buf, a.buf[a.start:a.end])
		a.base += int64(a.start)
		a.end -= a.start
		a.start = 0
	}
	if a.end == len(a.buf) {
		if len(a.buf) >= maxMessageBytes {
			a.rerr = &ParseError{Offset: a.base, Msg: fmt.Sprintf("message larger than %d bytes", maxMessageBytes)}
			return false
		}
		nb := make([]byte, 2*len(a.buf))
		copy(nb, a.buf[:a.end])
		a.buf = nb
	}
	for tries := 0; tries < 100; tries++ {
		n, err := a.r.Read(a.buf[a.end:])
		a.end += n
		if err == io.EOF {
			a.eof = true
			return n > 0
		}
		if err != nil {
			a.rerr = err
			return n > 0
		}
		if n > 0 {
			return true
		}
	}
	a.rerr = io.ErrNoProgress
	return false
}

// truncated reports the error for input that ended early.
func (a *arrayReader) truncated() error {
	if a.rerr != nil {
		return a.rerr
	}
	return io.ErrUnexpectedEOF
}

// skipWS skips whitespace, reading as needed; it returns false at the end
// of the input.
func (a *arrayReader) skipWS() bool {
	for {
		for a.start < a.end {
			switch a.buf[a.start] {
			case ' ', '\t', '\n', '\r':
				a.start++
			default:
				return true
			}
		}
		if !a.fill() {
			return false
		}
	}
}

func (a *arrayReader) syntax(msg string) error {
	return &ParseError{Offset: a.base + int64(a.start), Msg: msg}
}

// next returns the next element of the array and its byte offset in the
// body. The slice is valid until the next call. It returns io.EOF after the
// closing ']' followed by the end of the input, io.ErrUnexpectedEOF (or the
// read error) when the input ends early, and a *ParseError for malformed
// input.
func (a *arrayReader) next() ([]byte, int64, error) {
	for {
		if !a.skipWS() {
			if a.state == 3 && a.rerr == nil {
				return nil, 0, io.EOF
			}
			return nil, 0, a.truncated()
		}
		c := a.buf[a.start]
		switch a.state {
		case 0:
			if c != '[' {
				return nil, 0, a.syntax("response body is not a JSON array")
			}
			a.start++
			a.state = 1
		case 1:
			if c == ']' {
				a.start++
				a.state = 3
				continue
			}
			return a.element()
		case 2:
			switch c {
			case ',':
				a.start++
				if !a.skipWS() {
					return nil, 0, a.truncated()
				}
				if a.buf[a.start] == ']' {
					return nil, 0, a.syntax("trailing comma in array")
				}
				return a.element()
			case ']':
				a.start++
				a.state = 3
			default:
				return nil, 0, a.syntax("expected ',' or ']' after array element")
			}
		case 3:
			return nil, 0, a.syntax("data after the end of the array")
		}
	}
}

// An arrayMark is a position of an arrayReader, which reset returns to as
// long as no fill moved the buffer in between.
type arrayMark struct{ start, state int }

func (a *arrayReader) mark() arrayMark   { return arrayMark{a.start, a.state} }
func (a *arrayReader) reset(m arrayMark) { a.start, a.state = m.start, m.state }

// nextBuffered is next for an element that is already buffered: it never
// reads. When the next element is not all in the buffer, or next fails, it
// consumes nothing and returns false (next, called then, reads as needed
// and reports the failure).
func (a *arrayReader) nextBuffered() (el []byte, off int64, ok bool) {
	m := a.mark()
	a.noFill = true
	el, off, err := a.next()
	a.noFill = false
	if err != nil {
		a.reset(m)
		return nil, 0, false
	}
	return el, off, true
}

// element scans one element starting at a.start: an object, array, string
// or scalar. The element's syntax is validated later by the message parser;
// here only its extent is found.
func (a *arrayReader) element() ([]byte, int64, error) {
	i := 0 // scan position relative to a.start
	depth := 0
	inStr := false
	first := a.buf[a.start]
	if first == '}' || first == ']' || first == ',' || first == ':' {
		return nil, 0, a.syntax("expected an array element")
	}
	scalar := first != '{' && first != '[' && first != '"'
	for {
		buf := a.buf[a.start:a.end]
		for i < len(buf) {
			if inStr {
				// Skip to the next quote or backslash, 8 bytes at a time.
				for i+8 <= len(buf) {
					if m := quote8(binary.LittleEndian.Uint64(buf[i:])); m != 0 {
						i += bits.TrailingZeros64(m) >> 3
						goto stop
					}
					i += 8
				}
				for i < len(buf) && !strStop[buf[i]] {
					i++
				}
			stop:
				if i >= len(buf) {
					break
				}
				if buf[i] == '\\' {
					if i+1 >= len(buf) {
						break // the escaped byte is not read yet: look again after fill
					}
					i += 2
					continue
				}
				i++
				inStr = false
				if depth == 0 {
					return a.take(i)
				}
				continue
			}
			if scalar {
				switch buf[i] {
				case ',', ']', ' ', '\t', '\n', '\r':
					return a.take(i)
				}
				i++
				continue
			}
			for i < len(buf) && !structural[buf[i]] {
				i++
			}
			if i >= len(buf) {
				break
			}
			switch buf[i] {
			case '"':
				inStr = true
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return a.take(i + 1)
				}
				if depth < 0 {
					return nil, 0, a.syntax("unbalanced brackets")
				}
			}
			i++
		}
		if !a.fill() {
			if scalar && a.eof && a.rerr == nil {
				return a.take(a.end - a.start)
			}
			return nil, 0, a.truncated()
		}
	}
}

// strStop marks the bytes that end a run of plain string content, and
// structural those that matter outside strings.
var strStop, structural = func() (s, t [256]bool) {
	s['"'], s['\\'] = true, true
	for _, c := range []byte(`"{}[]`) {
		t[c] = true
	}
	return s, t
}()

func (a *arrayReader) take(n int) ([]byte, int64, error) {
	el := a.buf[a.start : a.start+n]
	off := a.base + int64(a.start)
	a.start += n
	a.state = 2
	return el, off, nil
}

// decoder turns elements into Messages.
type decoder struct {
	names   map[string]string // interned column names
	lastRel []string
	lastTag [2][]string // the last tags and removed_tags, shared while equal
	schema  Schema
	parse   bool
	parser  map[string]ParseFunc
	lazy    bool      // leave values as JSON (Message.valueRaw) for a TypedShape
	sink    valueSink // if set (with lazy), decodes values as they are read
}

// A valueSink decodes the value object of a change message, at msg[i:], as
// the message is parsed, for a TypedShape, which keeps what it decoded of
// the last message it was given. It returns the index just past the
// object, and JSON syntax errors only. (It takes the message and an index,
// not the scanner, which would then escape to the heap.)
type valueSink interface {
	decodeValue(msg string, i int, schema Schema) (end int, err error)
}

// parseMessage parses one array element. The returned message's strings
// share the memory of a single copy of el.
func (d *decoder) parseMessage(el []byte, off int64) (Message, error) {
	s := string(el)
	m, err := d.parseString(s)
	if err != nil {
		var ve *ValueError
		if errors.As(err, &ve) {
			return m, &ParseError{Offset: off, Msg: "message " + m.Key, Err: err}
		}
		return m, &ParseError{Offset: off, Msg: "malformed message", Err: err}
	}
	return m, nil
}

func (d *decoder) parseString(s string) (Message, error) {
	var m Message
	m.raw = s
	p := &scanner{s: s}
	p.ws()
	if p.peek() != '{' {
		return m, errors.New("message is not a JSON object")
	}
	err := p.object(func(name string) error {
		switch name {
		case "key":
			k, null, err := p.strOrNull()
			if err != nil {
				return fmt.Errorf("key: %w", err)
			}
			if !null {
				m.Key = k
			}
			return nil
		case "value":
			if d.lazy {
				p.ws()
				start := p.i
				var err error
				if d.sink != nil {
					p.i, err = d.sink.decodeValue(p.s, p.i, d.schema)
				} else {
					err = p.skip(1)
				}
				if err != nil {
					return fmt.Errorf("value: %w", err)
				}
				m.valueRaw = s[start:p.i]
				return nil
			}
			r, err := d.row(p)
			if err != nil {
				return fmt.Errorf("value: %w", err)
			}
			m.Value = r
			return nil
		case "old_value":
			if d.lazy {
				return p.skip(1)
			}
			r, err := d.row(p)
			if err != nil {
				return fmt.Errorf("old_value: %w", err)
			}
			m.OldValue = r
			return nil
		case "headers":
			p.ws()
			start := p.i
			if err := d.headers(p, &m.Headers); err != nil {
				return fmt.Errorf("headers: %w", err)
			}
			m.Headers.raw = s[start:p.i]
			return nil
		default:
			return p.skip(1)
		}
	})
	if err != nil {
		return m, err
	}
	p.ws()
	if p.i != len(s) {
		return m, errors.New("data after the message object")
	}
	if d.parse && d.schema != nil && !d.lazy {
		if err := d.convert(m.Value); err != nil {
			return m, err
		}
		if err := d.convert(m.OldValue); err != nil {
			return m, err
		}
	}
	return m, nil
}

func (d *decoder) intern(name string) string {
	if v, ok := d.names[name]; ok {
		return v
	}
	if d.names == nil {
		d.names = make(map[string]string)
	}
	if len(d.names) < 4096 {
		name = string([]byte(name)) // do not pin the message's memory
		d.names[name] = name
	}
	return name
}

// row parses a value/old_value object: column name → string or null.
func (d *decoder) row(p *scanner) (Row, error) {
	p.ws()
	if p.peek() == 'n' {
		return nil, p.lit("null")
	}
	hint := len(d.schema)
	if hint == 0 {
		hint = 8
	}
	r := make(Row, hint)
	err := p.object(func(name string) error {
		v, null, err := p.strOrNull()
		if err != nil {
			return fmt.Errorf("column %q: expected a string or null: %w", name, err)
		}
		if null {
			r[d.intern(name)] = nil
		} else {
			r[d.intern(name)] = v
		}
		return nil
	})
	return r, err
}

func (d *decoder) headers(p *scanner, h *Headers) error {
	return p.object(func(name string) error {
		var err error
		switch name {
		case "operation":
			var v string
			v, err = p.str()
			h.Operation = Operation(v)
		case "control":
			var v string
			v, err = p.str()
			h.Control = Control(v)
		case "event":
			h.Event, err = p.str()
		case "relation":
			var buf [4]string
			rel := buf[:0]
			err = p.array(func() error {
				v, err := p.str()
				rel = append(rel, v)
				return err
			})
			h.Relation = d.relation(rel)
		case "lsn":
			h.LSN, err = p.strOrNumber()
		case "global_last_seen_lsn":
			h.GlobalLastSeenLSN, err = p.strOrNumber()
		case "op_position":
			var v string
			if v, err = p.strOrNumber(); err == nil {
				h.OpPosition, err = strconv.ParseInt(v, 10, 64)
			}
		case "txids":
			h.TxIDs = h.TxIDs[:0]
			err = p.array(func() error {
				v, err := p.strOrNumber()
				if err != nil {
					return err
				}
				n, err := strconv.ParseInt(v, 10, 64)
				h.TxIDs = append(h.TxIDs, n)
				return err
			})
		case "last":
			p.ws()
			switch p.peek() {
			case 't':
				h.Last, err = true, p.lit("true")
			case 'f':
				h.Last, err = false, p.lit("false")
			default:
				err = errors.New("last: expected a boolean")
			}
		case "tags":
			h.Tags, err = d.tags(p, 0)
		case "removed_tags":
			h.RemovedTags, err = d.tags(p, 1)
		case "patterns":
			h.Patterns, err = p.movePatterns(h.Patterns[:0])
		case "key_change_to":
			h.KeyChangeTo, err = p.str()
		case "key_change_from":
			h.KeyChangeFrom, err = p.str()
		default:
			err = p.skip(1)
		}
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return nil
	})
}

// movePatterns appends to dst the patterns of a move-out event's
// headers (an array of {"pos", "value"} objects).
func (p *scanner) movePatterns(dst []MovePattern) ([]MovePattern, error) {
	err := p.array(func() error {
		var mp MovePattern
		err := p.object(func(name string) error {
			switch name {
			case "pos":
				v, err := p.strOrNumber()
				if err != nil {
					return err
				}
				n, err := strconv.Atoi(v)
				mp.Pos = n
				return err
			case "value":
				v, err := p.str()
				mp.Value = v
				return err
			}
			return p.skip(2)
		})
		dst = append(dst, mp)
		return err
	})
	return dst, err
}

// tags reads a list of tags (or null): nil when empty, and otherwise the
// slice of the previous message's tags (which = 0) or removed_tags (1)
// when equal, as rows of a shape mostly share their tags. A new list is
// copied, so that it does not keep the message's memory.
func (d *decoder) tags(p *scanner, which int) ([]string, error) {
	p.ws()
	if p.peek() == 'n' {
		return nil, p.lit("null")
	}
	var buf [4]string
	t := buf[:0]
	err := p.array(func() error {
		v, err := p.str()
		t = append(t, v)
		return err
	})
	if err != nil || len(t) == 0 {
		return nil, err
	}
	if last := d.lastTag[which]; slices.Equal(t, last) {
		return last, nil
	}
	nt := make([]string, len(t))
	for i, v := range t {
		nt[i] = strings.Clone(v)
	}
	d.lastTag[which] = nt
	return nt, nil
}

// relation returns rel, sharing the slice of the previous message when
// equal (every message of a shape names the same relation).
func (d *decoder) relation(rel []string) []string {
	if slices.Equal(rel, d.lastRel) {
		return d.lastRel
	}
	d.lastRel = make([]string, len(rel))
	for i, v := range rel {
		d.lastRel[i] = d.intern(v)
	}
	return d.lastRel
}

// strOrNumber reads a string or a number, returning its text (LSNs are
// decimal strings in Electric, numbers in some servers).
func (p *scanner) strOrNumber() (string, error) {
	p.ws()
	if p.peek() == '"' {
		return p.str()
	}
	return p.number()
}
