package client

import (
	"context"
	"io"
	"maps"
	"sync"
)

// Shape materializes the rows of a shape by key. It applies change
// messages in batches: readers (Rows, Get, Len) always see the view as of
// the last up-to-date message, never a half-applied batch, and subscribers
// are notified once per batch.
//
// Updates merge into the existing row ({...old, ...value}), so
// replica=default works; deletes remove the key; a must-refetch discards
// everything, and the refetched rows replace the old view atomically at the
// next up-to-date (until then readers keep seeing the old view, and
// IsUpToDate reports false). With log=changes_only, updates and deletes of
// keys never inserted are ignored.
//
// Rows of subquery shapes carry tags, and the Shape keeps each row's set,
// as Electric's clients do: an insert sets it to the message's tags, an
// update takes away its removed_tags and adds its tags, a delete or a
// must-refetch drops it. A move-out event takes from every row the tags
// whose slot at a pattern's pos equals its value, and removes the rows
// left without tags, as deletes of the current batch (visible at the next
// up-to-date, like other changes); rows that never had tags stay. Move-in
// events need nothing: the rows that move in follow them as inserts.
//
// Feed a Shape with Run, or with Apply from your own loop.
type Shape struct {
	stream      Stream
	changesOnly bool

	mu       sync.RWMutex
	rows     map[string]Row // committed view
	upToDate bool
	ready    chan struct{} // closed at the next commit

	// staging, touched only by the goroutine that applies messages
	stage map[string]Row // key → row, nil row = deleted
	fresh bool           // stage replaces rows instead of patching them
	tags  rowTags        // the rows' tags, as staged

	subMu  sync.Mutex
	subs   map[int]func(*Shape)
	nextID int
}

// NewShape returns a Shape fed by stream, a *ShapeStream or a *WSStream
// (nil if you call Apply yourself).
func NewShape(stream Stream) *Shape {
	sh := &Shape{
		rows:  map[string]Row{},
		ready: make(chan struct{}),
		stage: map[string]Row{},
		fresh: true,
	}
	if !isNil(stream) {
		sh.stream = stream
		sh.changesOnly = changesOnly(stream)
	}
	return sh
}

// Run reads the stream and applies its messages until the stream ends:
// it returns nil after the first up-to-date of a non-live stream, and
// otherwise the stream's error (ctx.Err() when ctx ends).
func (sh *Shape) Run(ctx context.Context) error {
	for {
		m, err := sh.stream.Next(ctx)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		sh.Apply(m)
	}
}

// Apply applies one message and reports whether it completed a batch (an
// up-to-date message). Apply must not be called concurrently with itself
// or Run.
func (sh *Shape) Apply(m Message) bool {
	switch {
	case m.IsChange():
		if sh.applyChange(&m) {
			sh.tags.change(&m)
		}
	case m.Headers.Event == "move-out":
		sh.tags.moveOut(m.Headers.Patterns, sh.remove)
	case m.IsMustRefetch():
		clear(sh.stage)
		sh.tags.reset()
		sh.fresh = true
		sh.mu.Lock()
		sh.upToDate = false
		sh.mu.Unlock()
	case m.IsUpToDate():
		sh.commit()
		return true
	}
	return false
}

// lookup returns the current row of key, staged or committed.
func (sh *Shape) lookup(key string) (Row, bool) {
	if r, ok := sh.stage[key]; ok {
		return r, r != nil
	}
	if sh.fresh {
		return nil, false
	}
	sh.mu.RLock()
	r, ok := sh.rows[key]
	sh.mu.RUnlock()
	return r, ok
}

// applyChange stages a change and reports whether it applied (changes
// of unknown keys are ignored with log=changes_only).
func (sh *Shape) applyChange(m *Message) bool {
	switch m.Headers.Operation {
	case Insert:
		sh.stage[m.Key] = m.Value
	case Update:
		old, ok := sh.lookup(m.Key)
		if !ok && sh.changesOnly {
			return false
		}
		row := make(Row, len(old)+len(m.Value))
		maps.Copy(row, old)
		maps.Copy(row, m.Value)
		sh.stage[m.Key] = row
	case Delete:
		if _, ok := sh.lookup(m.Key); !ok && sh.changesOnly {
			return false
		}
		sh.remove(m.Key)
	default:
		return false
	}
	return true
}

// remove stages the deletion of key.
func (sh *Shape) remove(key string) {
	if sh.fresh {
		delete(sh.stage, key)
	} else {
		sh.stage[key] = nil
	}
}

// commit publishes the staged changes and notifies subscribers.
func (sh *Shape) commit() {
	sh.mu.Lock()
	if sh.fresh {
		sh.rows = sh.stage
		sh.stage = map[string]Row{}
		sh.fresh = false
	} else {
		for k, r := range sh.stage {
			if r == nil {
				delete(sh.rows, k)
			} else {
				sh.rows[k] = r
			}
		}
		clear(sh.stage)
	}
	sh.upToDate = true
	close(sh.ready)
	sh.ready = make(chan struct{})
	sh.mu.Unlock()

	sh.subMu.Lock()
	subs := make([]func(*Shape), 0, len(sh.subs))
	for _, f := range sh.subs {
		subs = append(subs, f)
	}
	sh.subMu.Unlock()
	for _, f := range subs {
		f(sh)
	}
}

// Rows returns a copy of the current view, key → row. The rows themselves
// are shared: do not modify them.
func (sh *Shape) Rows() map[string]Row {
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	return maps.Clone(sh.rows)
}

// Get returns the row with the given key in the current view.
func (sh *Shape) Get(key string) (Row, bool) {
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	r, ok := sh.rows[key]
	return r, ok
}

// Len returns the number of rows in the current view.
func (sh *Shape) Len() int {
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	return len(sh.rows)
}

// IsUpToDate reports whether the view is current: an up-to-date message
// was applied and no must-refetch came after it.
func (sh *Shape) IsUpToDate() bool {
	sh.mu.RLock()
	defer sh.mu.RUnlock()
	return sh.upToDate
}

// Wait blocks until the shape is up to date (returning at once if it is).
func (sh *Shape) Wait(ctx context.Context) error {
	for {
		sh.mu.RLock()
		ok, ready := sh.upToDate, sh.ready
		sh.mu.RUnlock()
		if ok {
			return nil
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Subscribe calls f after every batch is applied, from the goroutine
// running Run or Apply; f may read the shape but must not block for long.
// The returned function unsubscribes.
func (sh *Shape) Subscribe(f func(*Shape)) (unsubscribe func()) {
	sh.subMu.Lock()
	defer sh.subMu.Unlock()
	if sh.subs == nil {
		sh.subs = map[int]func(*Shape){}
	}
	id := sh.nextID
	sh.nextID++
	sh.subs[id] = f
	return func() {
		sh.subMu.Lock()
		delete(sh.subs, id)
		sh.subMu.Unlock()
	}
}
