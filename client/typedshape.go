package client

import (
	"cmp"
	"context"
	"encoding/binary"
	"io"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"
)

// A TypedShape materializes a shape as structs of type T, decoded as a
// [RowDecoder] decodes them, with the semantics of a [Shape]: changes
// apply in batches, readers see the view as of the last up-to-date message
// (never half a batch), updates merge into the row's previous value, a
// must-refetch replaces the whole view at the next up-to-date, and with
// log=changes_only updates and deletes of unknown keys are ignored. Tags
// of subquery shapes and move-out events are applied as a Shape applies
// them: a row left without tags by a move-out is deleted in the batch.
//
// Readers take a [View]: an immutable snapshot of the rows sorted by key,
// safe to keep and to read from any goroutine while the shape moves on.
// [TypedShape.Changes] (or Subscribe) reports what each batch inserted,
// updated and deleted.
//
// Without a Transform on the stream, values are decoded from the wire
// straight into the structs, without building a [Row] first.
type TypedShape[T any] struct {
	stream      Stream
	changesOnly bool
	dec         *RowDecoder[T]
	onErr       func(key string, err error) error

	view     atomic.Pointer[View[T]]
	upToDate atomic.Bool
	stopOnce sync.Once
	stopped  chan struct{} // closed when Run first returns

	// staging, touched only by the goroutine that applies messages
	ps     *planSet
	psID   *byte
	psSet  bool
	stage  [][]staged[T]  // chunks of stageChunk entries, so that growing copies nothing
	staged int            // entries in stage
	index  map[string]int // key → stage entry, built at the first lookup
	fresh  bool
	tags   rowTags // the rows' tags, as staged

	// what the stream decoded (decodeValue) of the last message's value
	sunk     string // that value's JSON, to recognize the message
	scratch  T
	mask     uint64 // the fields of scratch the value set
	fieldErr error

	subMu  sync.Mutex
	subs   map[int]func(*Batch[T])
	nextID int
}

const stageChunk = 1024

// at returns the i-th staged entry.
func (s *TypedShape[T]) at(i int) *staged[T] { return &s.stage[i/stageChunk][i%stageChunk] }

// resetStage drops the staged entries, keeping a small first chunk.
func (s *TypedShape[T]) resetStage() {
	if len(s.stage) > 0 {
		first := s.stage[0]
		clear(first)
		clear(s.stage)
		s.stage = s.stage[:0]
		if cap(first) <= 64 {
			s.stage = append(s.stage, first[:0])
		}
	}
	s.staged, s.index = 0, nil
}

// staged is a change waiting for the next up-to-date.
type staged[T any] struct {
	key string
	v   T
	del bool
}

// TypedOptions configure a TypedShape.
type TypedOptions struct {
	// OnRowError is called with a row that does not decode: its key and a
	// *FieldError (or a parse error). Returning nil leaves the row out of
	// the view (its change is dropped, and an earlier value of the row
	// removed at the batch's end); returning an error stops Run with it.
	// Nil stops Run with the row's error.
	OnRowError func(key string, err error) error
}

// NewTypedShape returns a TypedShape of T (a struct type) fed by stream, a
// *ShapeStream or a *WSStream (nil if you call Apply yourself). The typed
// shape reads the stream: do not read it elsewhere.
func NewTypedShape[T any](stream Stream, opts ...TypedOptions) (*TypedShape[T], error) {
	dec, err := NewRowDecoder[T]()
	if err != nil {
		return nil, err
	}
	s := &TypedShape[T]{dec: dec, fresh: true, stopped: make(chan struct{})}
	for _, o := range opts {
		if o.OnRowError != nil {
			s.onErr = o.OnRowError
		}
	}
	if !isNil(stream) {
		s.stream = stream
		s.changesOnly = changesOnly(stream)
		if l, ok := stream.(interface{ setLazy(valueSink) }); ok {
			l.setLazy(s)
		}
	}
	s.view.Store(&View[T]{changed: make(chan struct{})})
	return s, nil
}

// Stream returns the stream the shape reads (nil if none).
func (s *TypedShape[T]) Stream() Stream { return s.stream }

// Run reads the stream and applies its messages until the stream ends: it
// returns nil after the first up-to-date of a non-live stream, and
// otherwise the stream's error (ctx.Err() when ctx ends) or a row's (see
// TypedOptions.OnRowError).
func (s *TypedShape[T]) Run(ctx context.Context) error {
	defer s.stopOnce.Do(func() { close(s.stopped) })
	for {
		m, err := s.stream.Next(ctx)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if _, err := s.Apply(m); err != nil {
			return err
		}
	}
}

// Apply applies one message and reports whether it completed a batch (an
// up-to-date message). Apply must not be called concurrently with itself
// or Run.
func (s *TypedShape[T]) Apply(m Message) (bool, error) {
	switch {
	case m.IsChange():
		ok, err := s.applyChange(&m)
		if ok || m.Headers.Operation == Delete {
			s.tags.change(&m)
		}
		return false, err
	case m.Headers.Event == "move-out":
		s.tags.moveOut(m.Headers.Patterns, s.remove)
	case m.IsMustRefetch():
		s.resetStage()
		s.tags.reset()
		s.fresh = true
		s.upToDate.Store(false)
		s.psSet = false
	case m.IsUpToDate():
		s.commit()
		return true, nil
	}
	return false, nil
}

// decodeValue decodes, as the stream parses a change message, its value
// into s.scratch.
func (s *TypedShape[T]) decodeValue(msg string, i int, schema Schema) (int, error) {
	ps := s.planSetFor(schema)
	var zero T
	s.scratch, s.mask, s.sunk = zero, 0, ""
	p := scanner{s: msg, i: i}
	ferr, err := ps.scan(&p, unsafe.Pointer(&s.scratch), &s.mask)
	if err != nil {
		return p.i, err
	}
	s.sunk, s.fieldErr = msg[i:p.i], ferr
	return p.i, nil
}

// planSet returns the plans for the stream's current schema.
func (s *TypedShape[T]) planSet() *planSet {
	var schema Schema
	if s.stream != nil {
		schema = s.stream.Schema()
	}
	return s.planSetFor(schema)
}

func (s *TypedShape[T]) planSetFor(schema Schema) *planSet {
	if id := schemaID(schema); !s.psSet || id != s.psID {
		s.ps, s.psID, s.psSet = newPlanSet(s.dec.rt, schema), id, true
	}
	return s.ps
}

// lookup returns the current value of key: staged, or committed.
func (s *TypedShape[T]) lookup(key string) (T, bool) {
	if s.index == nil && s.staged > 0 {
		s.index = make(map[string]int, s.staged)
		for i := range s.staged {
			s.index[s.at(i).key] = i
		}
	}
	if i, ok := s.index[key]; ok {
		e := s.at(i)
		return e.v, !e.del
	}
	if s.fresh {
		var zero T
		return zero, false
	}
	return s.view.Load().Get(key)
}

// slot returns the staged entry of key: the one staged already, when the
// index is built, or else a new one.
func (s *TypedShape[T]) slot(key string) *staged[T] {
	if s.index != nil {
		if i, ok := s.index[key]; ok {
			return s.at(i)
		}
		s.index[key] = s.staged
	}
	c := s.staged / stageChunk
	if c == len(s.stage) {
		n := stageChunk
		if c == 0 {
			n = 16 // the first chunk grows: most batches are small
		}
		s.stage = append(s.stage, make([]staged[T], 0, n))
	}
	s.stage[c] = append(s.stage[c], staged[T]{key: key})
	s.staged++
	return s.at(s.staged - 1)
}

// keyIdx is a staged entry's key and index, for sorting, with the key's
// first 8 bytes as a number (zero-padded), which orders most pairs without
// comparing the strings.
type keyIdx struct {
	key string
	pre uint64
	i   int32
}

func prefix8(k string) uint64 {
	var b [8]byte
	copy(b[:], k)
	return binary.BigEndian.Uint64(b[:])
}

func cmpKeyIdx(a, b keyIdx) int {
	if a.pre != b.pre {
		return cmp.Compare(a.pre, b.pre)
	}
	if c := strings.Compare(a.key, b.key); c != 0 {
		return c
	}
	return cmp.Compare(a.i, b.i)
}

// applyChange stages a change and reports whether the row is in the view
// after it (not for deletes, ignored changes, or rows that do not decode).
func (s *TypedShape[T]) applyChange(m *Message) (bool, error) {
	var e *staged[T]
	switch m.Headers.Operation {
	case Insert:
		e = s.slot(m.Key)
		var zero T
		e.v, e.del = zero, false
	case Update:
		old, ok := s.lookup(m.Key)
		if !ok && s.changesOnly {
			return false, nil
		}
		e = s.slot(m.Key)
		e.v, e.del = old, false
	case Delete:
		s.remove(m.Key)
		return false, nil
	default:
		return false, nil
	}
	var err error
	switch {
	case s.sunk != "" && len(m.valueRaw) == len(s.sunk) && unsafe.StringData(m.valueRaw) == unsafe.StringData(s.sunk):
		// The stream decoded the value as it read the message.
		err = s.fieldErr
		if m.Headers.Operation == Insert {
			e.v = s.scratch
		} else if len(s.dec.rt.fields) <= 64 {
			for i, f := range s.dec.rt.fields {
				if s.mask&(1<<i) != 0 {
					reflect.NewAt(f.typ, unsafe.Add(unsafe.Pointer(&e.v), f.offset)).Elem().Set(
						reflect.NewAt(f.typ, unsafe.Add(unsafe.Pointer(&s.scratch), f.offset)).Elem())
				}
			}
		} else {
			err = s.planSet().decodeJSON(m.valueRaw, unsafe.Pointer(&e.v))
		}
	case m.Value == nil && m.valueRaw != "":
		// Decoded in place: the staged entry is where the row is kept.
		err = s.planSet().decodeJSON(m.valueRaw, unsafe.Pointer(&e.v))
	default:
		err = s.planSet().decodeRow(m.Value, unsafe.Pointer(&e.v))
	}
	if err != nil {
		var zero T
		e.v, e.del = zero, true // left out of the view
		s.tags.drop(m.Key)
		if s.onErr == nil {
			return false, err
		}
		return false, s.onErr(m.Key, err)
	}
	return true, nil
}

// remove stages the deletion of key, unless it is unknown and the
// deletion would change nothing.
func (s *TypedShape[T]) remove(key string) {
	if _, ok := s.lookup(key); !ok && (s.changesOnly || s.fresh) {
		return
	}
	e := s.slot(key)
	var zero T
	e.v, e.del = zero, true
}

// commit publishes the staged changes and reports them to subscribers.
func (s *TypedShape[T]) commit() {
	// The staged changes in key order; the last change of a key wins.
	order := make([]keyIdx, s.staged)
	for i := range order {
		order[i] = keyIdx{key: s.at(i).key, i: int32(i)}
	}
	// Keys share a long prefix ("public"."items"/"…): compare what follows.
	if len(order) > 1 {
		lcp := order[0].key
		for _, o := range order[1:] {
			n := 0
			for n < len(lcp) && n < len(o.key) && lcp[n] == o.key[n] {
				n++
			}
			lcp = lcp[:n]
		}
		for i := range order {
			order[i].key = order[i].key[len(lcp):]
		}
	}
	for i := range order {
		order[i].pre = prefix8(order[i].key)
	}
	if !slices.IsSortedFunc(order, cmpKeyIdx) {
		slices.SortFunc(order, cmpKeyIdx)
	}
	w := 0
	for i := range order {
		if w > 0 && order[w-1].key == order[i].key { // equal suffixes, equal keys
			order[w-1] = order[i]
			continue
		}
		order[w] = order[i]
		w++
	}
	order = order[:w]

	old := s.view.Load()
	s.subMu.Lock()
	report := len(s.subs) > 0
	s.subMu.Unlock()
	var b *Batch[T]
	if report {
		b = &Batch[T]{Refetched: s.fresh}
	}
	var entries []Entry[T]
	if s.fresh {
		entries = make([]Entry[T], 0, len(order))
		for _, o := range order {
			if e := s.at(int(o.i)); !e.del {
				entries = append(entries, Entry[T]{e.key, e.v})
			}
		}
		if b != nil {
			diff(old.entries, entries, b)
		}
	} else {
		entries = merge(old.entries, order, s.at, b)
	}
	s.resetStage()
	s.fresh = false
	nv := &View[T]{entries: entries, changed: make(chan struct{})}
	s.view.Store(nv)
	s.upToDate.Store(true)
	close(old.changed)

	if b != nil && (b.Len() > 0 || b.Refetched) {
		s.subMu.Lock()
		subs := make([]func(*Batch[T]), 0, len(s.subs))
		for _, f := range s.subs {
			subs = append(subs, f)
		}
		s.subMu.Unlock()
		for _, f := range subs {
			f(b)
		}
	}
}

// merge applies the staged changes, in key order, to the sorted entries
// of a view, noting them in b (if not nil).
func merge[T any](old []Entry[T], order []keyIdx, at func(int) *staged[T], b *Batch[T]) []Entry[T] {
	out := make([]Entry[T], 0, len(old)+len(order))
	i := 0
	for _, o := range order {
		c := at(int(o.i))
		k := i + sort.Search(len(old)-i, func(n int) bool { return old[i+n].Key >= c.key })
		out = append(out, old[i:k]...)
		i = k
		exists := i < len(old) && old[i].Key == c.key
		switch {
		case c.del && exists:
			if b != nil {
				b.Deleted = append(b.Deleted, old[i])
			}
			i++
		case c.del:
		case exists:
			if b != nil {
				b.Updated = append(b.Updated, Change[T]{c.key, old[i].Value, c.v})
			}
			out = append(out, Entry[T]{c.key, c.v})
			i++
		default:
			if b != nil {
				b.Inserted = append(b.Inserted, Entry[T]{c.key, c.v})
			}
			out = append(out, Entry[T]{c.key, c.v})
		}
	}
	return append(out, old[i:]...)
}

// diff notes in b how the sorted entries nw differ from old.
func diff[T any](old, nw []Entry[T], b *Batch[T]) {
	i, j := 0, 0
	for i < len(old) || j < len(nw) {
		switch {
		case j == len(nw) || i < len(old) && old[i].Key < nw[j].Key:
			b.Deleted = append(b.Deleted, old[i])
			i++
		case i == len(old) || nw[j].Key < old[i].Key:
			b.Inserted = append(b.Inserted, nw[j])
			j++
		default:
			b.Updated = append(b.Updated, Change[T]{nw[j].Key, old[i].Value, nw[j].Value})
			i++
			j++
		}
	}
}
