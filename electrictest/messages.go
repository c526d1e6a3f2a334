package electrictest

import (
	"strconv"
	"strings"
	"unicode/utf8"
)

// appendJSONString appends s as a JSON string literal.
func appendJSONString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch c {
			case '"', '\\':
				dst = append(dst, '\\', c)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
			i += size
			start = i
			continue
		}
		i += size
	}
	dst = append(dst, s[start:]...)
	return append(dst, '"')
}

// escapeKeyPart escapes one part of a row key the way Electric does.
func escapeKeyPart(s string, dots bool) string {
	s = strings.ReplaceAll(s, "/", "//")
	if dots {
		s = strings.ReplaceAll(s, ".", "..")
	}
	return s
}

// rowKey builds `"schema"."table"/"pk1"/"pk2"`; a NULL part is `_`.
func rowKey(rel Relation, t *table, keyCols []int, row []datum) string {
	var b strings.Builder
	b.WriteString(`"` + escapeKeyPart(rel.Schema, true) + `"."` + escapeKeyPart(rel.Name, true) + `"`)
	for _, i := range keyCols {
		b.WriteByte('/')
		if row[i].kind == 'n' {
			b.WriteByte('_')
			continue
		}
		b.WriteString(`"` + escapeKeyPart(row[i].text, false) + `"`)
	}
	return b.String()
}

// appendRow appends a JSON object of the given columns of row.
func appendRow(dst []byte, t *table, cols []int, row []datum) []byte {
	dst = append(dst, '{')
	for n, i := range cols {
		if n > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, t.columns[i].name)
		dst = append(dst, ':')
		if row[i].kind == 'n' {
			dst = append(dst, "null"...)
		} else {
			dst = appendJSONString(dst, row[i].text)
		}
	}
	return append(dst, '}')
}

// changeMsg is a change message before encoding.
type changeMsg struct {
	op            string // insert, update, delete
	key           string
	value         []int // columns of row to send as value
	row           []datum
	oldValue      []int // columns of old to send as old_value (update, replica=full)
	old           []datum
	pos           uint64
	last          bool
	keyChangeTo   string
	keyChangeFrom string
	// Subquery shapes: tags, removed_tags (updates; nil: none sent) and
	// the number of active_conditions (all true).
	tags        []string
	removedTags []string
	conds       int
}

// encodeChange renders a change message of a replicated transaction.
func encodeChange(t *table, m *changeMsg, lsn uint64, xid uint32) []byte {
	b := make([]byte, 0, 128)
	b = append(b, `{"key":`...)
	b = appendJSONString(b, m.key)
	b = append(b, `,"value":`...)
	b = appendRow(b, t, m.value, m.row)
	if m.oldValue != nil {
		b = append(b, `,"old_value":`...)
		b = appendRow(b, t, m.oldValue, m.old)
	}
	b = append(b, `,"headers":{"operation":"`...)
	b = append(b, m.op...)
	b = append(b, `","relation":[`...)
	b = appendJSONString(b, t.rel.Schema)
	b = append(b, ',')
	b = appendJSONString(b, t.rel.Name)
	b = append(b, `],"lsn":"`...)
	b = strconv.AppendUint(b, lsn, 10)
	b = append(b, `","op_position":`...)
	b = strconv.AppendUint(b, m.pos, 10)
	b = append(b, `,"txids":[`...)
	b = strconv.AppendUint(b, uint64(xid), 10)
	b = append(b, ']')
	if m.last {
		b = append(b, `,"last":true`...)
	}
	if m.keyChangeTo != "" {
		b = append(b, `,"key_change_to":`...)
		b = appendJSONString(b, m.keyChangeTo)
	}
	if m.keyChangeFrom != "" {
		b = append(b, `,"key_change_from":`...)
		b = appendJSONString(b, m.keyChangeFrom)
	}
	if m.tags != nil {
		b = appendStrings(append(b, `,"tags":`...), m.tags)
		if m.removedTags != nil {
			b = appendStrings(append(b, `,"removed_tags":`...), m.removedTags)
		}
		b = appendConds(append(b, `,"active_conditions":`...), m.conds)
	}
	return append(b, "}}"...)
}

func appendStrings(dst []byte, ss []string) []byte {
	dst = append(dst, '[')
	for i, s := range ss {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendJSONString(dst, s)
	}
	return append(dst, ']')
}

// appendConds appends active_conditions: n times true (a row in the shape
// of a where clause that is one conjunction meets every condition).
func appendConds(dst []byte, n int) []byte {
	dst = append(dst, '[')
	for i := 0; i < n; i++ {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, "true"...)
	}
	return append(dst, ']')
}

// encodeTaggedRow renders an insert of a subquery shape's snapshot or of a
// move-in, with Electric's header order.
func encodeTaggedRow(dst []byte, t *table, cols, keyCols []int, row []datum, tag string, conds int, moveIn bool) []byte {
	dst = append(dst, `{"key":`...)
	dst = appendJSONString(dst, rowKey(t.rel, t, keyCols, row))
	dst = append(dst, `,"value":`...)
	dst = appendRow(dst, t, cols, row)
	dst = appendConds(append(dst, `,"headers":{"active_conditions":`...), conds)
	dst = appendStrings(append(dst, `,"tags":`...), []string{tag})
	dst = append(dst, `,"operation":"insert","relation":[`...)
	dst = appendJSONString(dst, t.rel.Schema)
	dst = append(dst, ',')
	dst = appendJSONString(dst, t.rel.Name)
	dst = append(dst, ']')
	if moveIn {
		dst = append(dst, `,"is_move_in":true`...)
	}
	return append(dst, "}}"...)
}

// encodeSnapshotRow renders an insert message of the initial snapshot.
func encodeSnapshotRow(dst []byte, t *table, cols, keyCols []int, row []datum) []byte {
	dst = append(dst, `{"key":`...)
	dst = appendJSONString(dst, rowKey(t.rel, t, keyCols, row))
	dst = append(dst, `,"value":`...)
	dst = appendRow(dst, t, cols, row)
	dst = append(dst, `,"headers":{"operation":"insert","relation":[`...)
	dst = appendJSONString(dst, t.rel.Schema)
	dst = append(dst, ',')
	dst = appendJSONString(dst, t.rel.Name)
	return append(dst, "]}}"...)
}

// appendUpToDate appends an up-to-date control message.
func appendUpToDate(dst []byte, lsn uint64) []byte {
	dst = append(dst, `{"headers":{"control":"up-to-date","global_last_seen_lsn":"`...)
	dst = strconv.AppendUint(dst, lsn, 10)
	return append(dst, `"}}`...)
}

// appendSnapshotEnd appends a snapshot-end control message: the visibility
// of the snapshot that the messages before it were read in.
func appendSnapshotEnd(dst []byte, snap *pgSnapshot) []byte {
	return append(dst, `{"headers":{"control":"snapshot-end","xmin":"`+snap.text[0]+`","xmax":"`+snap.text[1]+`","xip_list":`+snap.text[2]+`}}`...)
}
