package electrictest

import (
	"encoding/binary"
	"reflect"
	"strings"
	"testing"
)

// pgoutput messages built by hand, as Postgres sends them (protocol 1).

func u16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }
func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func msgOf(parts ...[]byte) []byte {
	var b []byte
	for _, p := range parts {
		b = append(b, p...)
	}
	return b
}

// tupleOf encodes a tuple: nil is NULL, "\x00u" an unchanged TOAST value.
func tupleOf(vals ...*string) []byte {
	b := u16(uint16(len(vals)))
	for _, v := range vals {
		switch {
		case v == nil:
			b = append(b, 'n')
		case *v == "\x00u":
			b = append(b, 'u')
		default:
			b = append(b, 't')
			b = append(b, u32(uint32(len(*v)))...)
			b = append(b, *v...)
		}
	}
	return b
}

func sp(s string) *string { return &s }

var toast = sp("\x00u")

func TestDecodePgoutput(t *testing.T) {
	insert := msgOf([]byte{'I'}, u32(7), []byte{'N'}, tupleOf(sp("1"), nil, sp("héllo")))
	for _, c := range []struct {
		name string
		in   []byte
		want any
	}{
		{"begin", msgOf([]byte{'B'}, u64(0x1234), u64(0), u32(99)), beginMessage{finalLSN: 0x1234, xid: 99}},
		{"commit", msgOf([]byte{'C', 0}, u64(0x1234), u64(0x1240), u64(0)), commitMessage{commitLSN: 0x1234}},
		{"relation", msgOf([]byte{'R'}, u32(7), []byte("public\x00items\x00"), []byte{'f'}, u16(2),
			[]byte{1}, []byte("id\x00"), u32(20), u32(0xffffffff), []byte{0}, []byte("title\x00"), u32(25), u32(0xffffffff)),
			&relMessage{id: 7, rel: Relation{Schema: "public", Name: "items"}, columns: []relColumn{{name: "id", typeOID: 20, key: true}, {name: "title", typeOID: 25}}}},
		{"insert", insert, rowMessage{op: 'I', relID: 7, new: []datum{{'t', "1"}, {kind: 'n'}, {'t', "héllo"}}}},
		{"update", msgOf([]byte{'U'}, u32(7), []byte{'O'}, tupleOf(sp("1"), sp("a")), []byte{'N'}, tupleOf(sp("1"), toast)),
			rowMessage{op: 'U', relID: 7, old: []datum{{'t', "1"}, {'t', "a"}}, new: []datum{{'t', "1"}, {kind: 'u'}}}},
		{"update without old", msgOf([]byte{'U'}, u32(7), []byte{'N'}, tupleOf(sp(""))),
			rowMessage{op: 'U', relID: 7, new: []datum{{'t', ""}}}},
		{"delete", msgOf([]byte{'D'}, u32(7), []byte{'O'}, tupleOf(sp("1"), nil)),
			rowMessage{op: 'D', relID: 7, old: []datum{{'t', "1"}, {kind: 'n'}}}},
		{"truncate", msgOf([]byte{'T'}, u32(2), []byte{0}, u32(7), u32(8)), truncateMessage{relIDs: []uint32{7, 8}}},
		{"origin", msgOf([]byte{'O'}, u64(1), []byte("x\x00")), nil},
		{"type", msgOf([]byte{'Y'}, u32(1), []byte("public\x00t\x00")), nil},
	} {
		got, err := decodePgoutput(c.in)
		if err != nil || !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: got %#v, %v; want %#v", c.name, got, err, c.want)
		}
	}
	// Truncated or unknown messages are errors, never panics.
	for n := range len(insert) {
		if m, err := decodePgoutput(insert[:n]); err == nil && n < len(insert)-1 {
			t.Errorf("insert truncated to %d bytes: %#v, no error", n, m)
		}
	}
	if _, err := decodePgoutput([]byte{'Z', 1, 2}); err == nil || !strings.Contains(err.Error(), "pgoutput") {
		t.Errorf("unknown message: %v", err)
	}
}

// BenchmarkDecodePgoutput decodes a typical insert and update.
func BenchmarkDecodePgoutput(b *testing.B) {
	insert := msgOf([]byte{'I'}, u32(7), []byte{'N'}, tupleOf(sp("123456"), sp("item number 123456"), sp("864192"), sp("t"), sp("2026-01-02 10:17:36+00")))
	update := msgOf([]byte{'U'}, u32(7), []byte{'O'}, tupleOf(sp("123456"), sp("item number 123456"), sp("864192"), sp("t"), sp("2026-01-02 10:17:36+00")),
		[]byte{'N'}, tupleOf(sp("123456"), sp("item number 123457"), sp("864192"), sp("f"), sp("2026-01-02 10:17:36+00")))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodePgoutput(insert); err != nil {
			b.Fatal(err)
		}
		if _, err := decodePgoutput(update); err != nil {
			b.Fatal(err)
		}
	}
}
