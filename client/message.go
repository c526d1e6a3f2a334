package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
)

// Operation is the kind of a change message.
type Operation string

// The operations of change messages.
const (
	Insert Operation = "insert"
	Update Operation = "update"
	Delete Operation = "delete"
)

// Control names a control message.
type Control string

// The control messages of the protocol.
const (
	// UpToDate ends a batch: everything before it forms a consistent view.
	UpToDate Control = "up-to-date"
	// MustRefetch says that everything learnt about the shape so far must be
	// discarded. Electric sends it as the body of a 409; the stream emits it
	// too when it resets for other reasons.
	MustRefetch Control = "must-refetch"
	// SnapshotEnd marks the end of the initial snapshot and carries the
	// snapshot's xmin, xmax and xip_list.
	SnapshotEnd Control = "snapshot-end"
)

// A Row maps column names to values. Without Options.Parse a value is the
// column's Postgres text as a string, or nil for NULL. Rows handed out by
// the stream or a Shape are shared: treat them as read-only.
type Row map[string]any

// Headers are the parsed "headers" object of a message. Fields the protocol
// does not define here (xmin, xmax, xip_list, active_conditions, ...) are
// available through Raw. Relation, Tags and RemovedTags are shared between
// messages: do not modify them.
type Headers struct {
	Operation Operation // change messages: insert, update or delete
	Control   Control   // control messages: up-to-date, must-refetch, snapshot-end, ...
	Event     string    // event messages of subquery shapes: move-in, move-out

	Relation      []string // [schema, table]
	LSN           string   // decimal commit LSN of the change ("" inside the snapshot)
	OpPosition    int64    // position of the change inside its transaction
	TxIDs         []int64  // transaction ids
	Last          bool     // last change of its transaction for this shape
	KeyChangeTo   string   // on the delete half of a primary-key change
	KeyChangeFrom string   // on the insert half of a primary-key change

	GlobalLastSeenLSN string // up-to-date: decimal LSN the server had processed

	// Subquery shapes: the tags of a changed row (each tag is slots joined
	// by "/"), the tags an update took away from it, and the patterns of a
	// move-in or move-out event.
	Tags        []string
	RemovedTags []string
	Patterns    []MovePattern

	raw string
}

// A MovePattern of a move-in or move-out event matches the tags whose slot
// number Pos (counting from 0, slots being separated by "/") is Value.
type MovePattern struct {
	Pos   int    `json:"pos"`
	Value string `json:"value"`
}

// matches reports whether tag has Value in slot Pos.
func (p MovePattern) matches(tag string) bool {
	v, ok := tagSlot(tag, p.Pos)
	return ok && v == p.Value
}

// tagSlot returns slot pos of tag.
func tagSlot(tag string, pos int) (string, bool) {
	if pos < 0 {
		return "", false
	}
	for ; pos > 0; pos-- {
		i := strings.IndexByte(tag, '/')
		if i < 0 {
			return "", false
		}
		tag = tag[i+1:]
	}
	if i := strings.IndexByte(tag, '/'); i >= 0 {
		tag = tag[:i]
	}
	return tag, true
}

// Raw returns the headers object exactly as the server sent it.
func (h Headers) Raw() json.RawMessage {
	if h.raw == "" {
		return nil
	}
	return json.RawMessage(h.raw)
}

// A Message is one element of a shape log response: a change (insert,
// update, delete of a row), a control message or an event.
//
// Key, Value and OldValue are set for change messages only. Value holds the
// full row for inserts, and for updates and deletes whatever the replica mode
// sends (the primary key and the changed columns with replica=default).
// OldValue is set for updates with replica=full.
type Message struct {
	Key      string
	Value    Row
	OldValue Row
	Headers  Headers

	raw      string
	valueRaw string // the value object, when a TypedShape decodes it from JSON
}

// Raw returns the message exactly as the server sent it (for a message the
// stream synthesises, such as a must-refetch after a 409, its canonical
// form). A Transform does not change Raw; see [Message.MarshalJSON].
func (m Message) Raw() json.RawMessage {
	if m.raw == "" {
		b, _ := m.MarshalJSON()
		return b
	}
	return json.RawMessage(m.raw)
}

// IsChange reports whether m is an insert, update or delete.
func (m Message) IsChange() bool { return m.Headers.Operation != "" }

// IsControl reports whether m is a control message.
func (m Message) IsControl() bool { return m.Headers.Control != "" }

// IsUpToDate reports whether m is an up-to-date control message.
func (m Message) IsUpToDate() bool { return m.Headers.Control == UpToDate }

// IsMustRefetch reports whether m is a must-refetch control message.
func (m Message) IsMustRefetch() bool { return m.Headers.Control == MustRefetch }

// MarshalJSON encodes the message in the wire format from its current
// fields, so values changed by a Transform are written as changed. Headers
// are written as received (or built from the fields when there is no raw
// form), followed by key, value and old_value.
func (m Message) MarshalJSON() ([]byte, error) {
	var b bytes.Buffer
	b.WriteString(`{"headers":`)
	if m.Headers.raw != "" {
		b.WriteString(m.Headers.raw)
	} else {
		hb, err := m.Headers.marshal()
		if err != nil {
			return nil, err
		}
		b.Write(hb)
	}
	if m.IsChange() || m.Key != "" {
		b.WriteString(`,"key":`)
		kb, err := json.Marshal(m.Key)
		if err != nil {
			return nil, err
		}
		b.Write(kb)
	}
	if m.Value != nil {
		b.WriteString(`,"value":`)
		vb, err := json.Marshal(map[string]any(m.Value))
		if err != nil {
			return nil, err
		}
		b.Write(vb)
	}
	if m.OldValue != nil {
		b.WriteString(`,"old_value":`)
		vb, err := json.Marshal(map[string]any(m.OldValue))
		if err != nil {
			return nil, err
		}
		b.Write(vb)
	}
	b.WriteByte('}')
	return b.Bytes(), nil
}

func (h *Headers) marshal() ([]byte, error) {
	type wire struct {
		Operation         Operation     `json:"operation,omitempty"`
		Control           Control       `json:"control,omitempty"`
		Event             string        `json:"event,omitempty"`
		Relation          []string      `json:"relation,omitempty"`
		LSN               string        `json:"lsn,omitempty"`
		OpPosition        *int64        `json:"op_position,omitempty"`
		TxIDs             []int64       `json:"txids,omitempty"`
		Last              bool          `json:"last,omitempty"`
		KeyChangeTo       string        `json:"key_change_to,omitempty"`
		KeyChangeFrom     string        `json:"key_change_from,omitempty"`
		GlobalLastSeenLSN string        `json:"global_last_seen_lsn,omitempty"`
		Tags              []string      `json:"tags,omitempty"`
		RemovedTags       []string      `json:"removed_tags,omitempty"`
		Patterns          []MovePattern `json:"patterns,omitempty"`
	}
	w := wire{
		Operation: h.Operation, Control: h.Control, Event: h.Event, Relation: h.Relation,
		LSN: h.LSN, TxIDs: h.TxIDs, Last: h.Last, KeyChangeTo: h.KeyChangeTo,
		KeyChangeFrom: h.KeyChangeFrom, GlobalLastSeenLSN: h.GlobalLastSeenLSN,
		Tags: h.Tags, RemovedTags: h.RemovedTags, Patterns: h.Patterns,
	}
	if h.LSN != "" {
		w.OpPosition = &h.OpPosition
	}
	return json.Marshal(w)
}

// position returns the log position (lsn, op_position) of a replicated
// change, and false for messages without one (snapshot rows, controls).
func (m Message) position() (pos, bool) {
	if m.Headers.LSN == "" || !m.IsChange() {
		return pos{}, false
	}
	lsn, err := strconv.ParseUint(m.Headers.LSN, 10, 64)
	if err != nil {
		return pos{}, false
	}
	return pos{lsn, m.Headers.OpPosition}, true
}

type pos struct {
	lsn uint64
	op  int64
}

func (p pos) after(q pos) bool {
	if p.lsn != q.lsn {
		return p.lsn > q.lsn
	}
	return p.op > q.op
}

const mustRefetchJSON = `{"headers":{"control":"must-refetch"}}`

func mustRefetchMessage(raw string) Message {
	if raw == "" {
		raw = mustRefetchJSON
	}
	return Message{
		Headers: Headers{Control: MustRefetch, raw: `{"control":"must-refetch"}`},
		raw:     raw,
	}
}

const upToDateJSON = `{"headers":{"control":"up-to-date"}}`

// upToDateMessage is the up-to-date the stream synthesises for a 204.
func upToDateMessage() Message {
	return Message{
		Headers: Headers{Control: UpToDate, raw: `{"control":"up-to-date"}`},
		raw:     upToDateJSON,
	}
}

// A transformSlot is where a stream's messages sit while Options.Transform
// runs. The hook takes a *Message, and a pointer that a function value
// receives escapes: passed &m, every message of a stream with a Transform
// would be copied to a new heap allocation. The slot is one such
// allocation, made with the stream and reused for every message; the
// message is copied in, transformed, and copied out. So the pointer the hook
// receives is valid only during the call, as its documentation says.
type transformSlot struct{ m Message }

// apply runs f on *m through the slot. An error is a *TransformError.
func (t *transformSlot) apply(ctx context.Context, f func(context.Context, *Message) error, m *Message) error {
	t.m = *m
	err := f(ctx, &t.m)
	*m, t.m = t.m, Message{} // the slot keeps no reference to the message
	if err != nil {
		return &TransformError{Key: m.Key, Err: err}
	}
	return nil
}

// transformFunc returns the transform of one message of a stream's
// options: f with a context, t without one, or b with a batch of one (nil
// if none is set).
func transformFunc(t func(*Message) error, f func(context.Context, *Message) error, b func(context.Context, []*Message) error) (func(context.Context, *Message) error, error) {
	n := 0
	for _, set := range []bool{t != nil, f != nil, b != nil} {
		if set {
			n++
		}
	}
	switch {
	case n > 1:
		return nil, errors.New("client: set one of Transform, TransformContext and TransformBatch")
	case t != nil:
		return func(_ context.Context, m *Message) error { return t(m) }, nil
	case b != nil:
		one := make([]*Message, 1) // the stream's batch of one, made once
		return func(ctx context.Context, m *Message) error {
			one[0] = m
			err := b(ctx, one)
			one[0] = nil
			return err
		}, nil
	}
	return f, nil
}
