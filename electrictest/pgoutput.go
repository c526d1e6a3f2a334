package electrictest

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// This file decodes the pgoutput logical replication protocol, version 1:
// the messages Postgres' built-in output plugin sends inside XLogData.

// A datum is one column value of a replicated tuple, in text format.
type datum struct {
	kind byte // 'n' null, 'u' unchanged TOAST value, 't' text
	text string
}

type relColumn struct {
	name    string
	typeOID uint32
	key     bool
}

type relMessage struct {
	id      uint32
	rel     Relation
	columns []relColumn
}

type beginMessage struct {
	finalLSN uint64
	xid      uint32
}

type commitMessage struct {
	commitLSN uint64
}

type rowMessage struct {
	op     byte // 'I', 'U', 'D'
	relID  uint32
	old    []datum // nil when the message carries no old tuple
	new    []datum
	hasOld bool
}

type truncateMessage struct {
	relIDs []uint32
}

var errShortMessage = errors.New("electrictest: pgoutput message truncated")

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) u8() byte {
	if d.err != nil || len(d.b) < 1 {
		d.err = errShortMessage
		return 0
	}
	v := d.b[0]
	d.b = d.b[1:]
	return v
}

func (d *decoder) u16() uint16 {
	if d.err != nil || len(d.b) < 2 {
		d.err = errShortMessage
		return 0
	}
	v := binary.BigEndian.Uint16(d.b)
	d.b = d.b[2:]
	return v
}

func (d *decoder) u32() uint32 {
	if d.err != nil || len(d.b) < 4 {
		d.err = errShortMessage
		return 0
	}
	v := binary.BigEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *decoder) u64() uint64 {
	if d.err != nil || len(d.b) < 8 {
		d.err = errShortMessage
		return 0
	}
	v := binary.BigEndian.Uint64(d.b)
	d.b = d.b[8:]
	return v
}

func (d *decoder) cstring() string {
	if d.err != nil {
		return ""
	}
	for i, c := range d.b {
		if c == 0 {
			s := string(d.b[:i])
			d.b = d.b[i+1:]
			return s
		}
	}
	d.err = errShortMessage
	return ""
}

func (d *decoder) bytes(n int) string {
	if d.err != nil || n < 0 || len(d.b) < n {
		d.err = errShortMessage
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}

func (d *decoder) tuple() []datum {
	n := int(d.u16())
	if d.err != nil {
		return nil
	}
	t := make([]datum, n)
	for i := range t {
		switch k := d.u8(); k {
		case 'n', 'u':
			t[i].kind = k
		case 't', 'b':
			t[i].kind = 't'
			t[i].text = d.bytes(int(int32(d.u32())))
		default:
			if d.err == nil {
				d.err = fmt.Errorf("electrictest: unknown tuple column kind %q", k)
			}
			return nil
		}
	}
	return t
}

// decodePgoutput decodes one pgoutput message. It returns nil, nil for
// message kinds the server does not use (origin, type, logical messages).
func decodePgoutput(b []byte) (any, error) {
	d := &decoder{b: b}
	var msg any
	switch kind := d.u8(); kind {
	case 'B':
		m := beginMessage{finalLSN: d.u64()}
		d.u64() // commit timestamp
		m.xid = d.u32()
		msg = m
	case 'C':
		d.u8() // flags
		msg = commitMessage{commitLSN: d.u64()}
	case 'R':
		m := &relMessage{id: d.u32()}
		m.rel.Schema = d.cstring()
		m.rel.Name = d.cstring()
		d.u8() // replica identity setting
		n := int(d.u16())
		for i := 0; i < n && d.err == nil; i++ {
			flags := d.u8()
			c := relColumn{name: d.cstring(), typeOID: d.u32(), key: flags&1 == 1}
			d.u32() // type modifier
			m.columns = append(m.columns, c)
		}
		msg = m
	case 'I':
		m := rowMessage{op: 'I', relID: d.u32()}
		if t := d.u8(); t != 'N' && d.err == nil {
			return nil, fmt.Errorf("electrictest: insert without new tuple (%q)", t)
		}
		m.new = d.tuple()
		msg = m
	case 'U':
		m := rowMessage{op: 'U', relID: d.u32()}
		t := d.u8()
		if t == 'K' || t == 'O' {
			m.old, m.hasOld = d.tuple(), true
			t = d.u8()
		}
		if t != 'N' && d.err == nil {
			return nil, fmt.Errorf("electrictest: update without new tuple (%q)", t)
		}
		m.new = d.tuple()
		msg = m
	case 'D':
		m := rowMessage{op: 'D', relID: d.u32()}
		if t := d.u8(); t != 'K' && t != 'O' && d.err == nil {
			return nil, fmt.Errorf("electrictest: delete without old tuple (%q)", t)
		}
		m.old, m.hasOld = d.tuple(), true
		msg = m
	case 'T':
		n := int(d.u32())
		d.u8() // options
		m := truncateMessage{}
		for i := 0; i < n && d.err == nil; i++ {
			m.relIDs = append(m.relIDs, d.u32())
		}
		msg = m
	case 'O', 'Y', 'M':
		return nil, nil
	default:
		if d.err == nil {
			return nil, fmt.Errorf("electrictest: unknown pgoutput message %q", kind)
		}
	}
	if d.err != nil {
		return nil, d.err
	}
	return msg, nil
}
