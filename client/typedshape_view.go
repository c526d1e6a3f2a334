package client

import (
	"cmp"
	"context"
	"iter"
	"slices"
	"sync"
)

// An Entry is one row of a typed shape.
type Entry[T any] struct {
	Key   string
	Value T
}

// A Change is a row a batch updated: its value before and after.
type Change[T any] struct {
	Key      string
	Old, New T
}

// A Batch is what one up-to-date message changed in a [TypedShape]'s view,
// each list in key order. Deleted holds the rows' last values. Refetched
// reports a batch that replaced the whole view after a must-refetch: it
// lists the differences between the old view and the new one, every row in
// both counting as updated.
type Batch[T any] struct {
	Inserted  []Entry[T]
	Updated   []Change[T]
	Deleted   []Entry[T]
	Refetched bool
}

// Len returns the number of rows the batch changed.
func (b *Batch[T]) Len() int { return len(b.Inserted) + len(b.Updated) + len(b.Deleted) }

// View returns the current view: the rows as of the last up-to-date.
func (s *TypedShape[T]) View() *View[T] { return s.view.Load() }

// Get returns the row with the given key in the current view.
func (s *TypedShape[T]) Get(key string) (T, bool) { return s.view.Load().Get(key) }

// Len returns the number of rows in the current view.
func (s *TypedShape[T]) Len() int { return s.view.Load().Len() }

// All iterates over the rows of the current view in key order.
func (s *TypedShape[T]) All() iter.Seq2[string, T] { return s.view.Load().All() }

// IsUpToDate reports whether the view is current: an up-to-date message
// was applied and no must-refetch came after it.
func (s *TypedShape[T]) IsUpToDate() bool { return s.upToDate.Load() }

// Wait waits until the shape is up to date and ok (nil accepts any view)
// accepts its view, and returns that view; or until ctx ends, or Run
// returns. It checks now and after every batch, so it misses none.
func (s *TypedShape[T]) Wait(ctx context.Context, ok func(*View[T]) bool) (*View[T], error) {
	for {
		v := s.view.Load()
		if s.upToDate.Load() && (ok == nil || ok(v)) {
			return v, nil
		}
		select {
		case <-v.changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-s.stopped:
			if v != s.view.Load() {
				continue
			}
			return nil, ErrClosed
		}
	}
}

// Subscribe calls f with every batch that changed the view (and the first
// after a must-refetch), from the goroutine running Run or Apply, after
// the batch's view is published; f must not block for long,
// nor keep b's slices beyond the call if it modifies them. The returned
// function unsubscribes.
func (s *TypedShape[T]) Subscribe(f func(b *Batch[T])) (unsubscribe func()) {
	s.subMu.Lock()
	defer s.subMu.Unlock()
	if s.subs == nil {
		s.subs = map[int]func(*Batch[T]){}
	}
	id := s.nextID
	s.nextID++
	s.subs[id] = f
	return func() {
		s.subMu.Lock()
		delete(s.subs, id)
		s.subMu.Unlock()
	}
}

// Changes returns the batches applied from now on, in order. It
// subscribes at once: batches queue in memory from the call until the loop
// reads them, so that a change made right after the call is not missed,
// and Run is never held up by a slow consumer (keep up, or stop the loop).
// The iteration ends when ctx ends or Run returns (after the batches
// applied before it returned), and the subscription when the loop ends or
// ctx ends. Range over it once.
func (s *TypedShape[T]) Changes(ctx context.Context) iter.Seq[*Batch[T]] {
	var mu sync.Mutex
	var queue []*Batch[T]
	wake := make(chan struct{}, 1)
	unsubscribe := s.Subscribe(func(b *Batch[T]) {
		mu.Lock()
		queue = append(queue, b)
		mu.Unlock()
		select {
		case wake <- struct{}{}:
		default:
		}
	})
	stop := context.AfterFunc(ctx, unsubscribe)
	return func(yield func(*Batch[T]) bool) {
		defer func() {
			stop()
			unsubscribe()
		}()
		for {
			mu.Lock()
			q := queue
			queue = nil
			mu.Unlock()
			for _, b := range q {
				if !yield(b) {
					return
				}
			}
			if len(q) > 0 {
				continue
			}
			select {
			case <-wake:
			case <-ctx.Done():
				return
			case <-s.stopped:
				mu.Lock()
				n := len(queue)
				mu.Unlock()
				if n == 0 {
					return
				}
			}
		}
	}
}

// A View is an immutable snapshot of a [TypedShape]: its rows as of one
// up-to-date message, sorted by key (in byte order). It is safe for
// concurrent use and stays valid after the shape moves on. The values are
// shared: do not modify what their pointers, slices or maps refer to.
type View[T any] struct {
	entries []Entry[T]
	changed chan struct{} // closed when a newer view replaces this one
}

// Get returns the row with the given key.
func (v *View[T]) Get(key string) (T, bool) {
	i, ok := slices.BinarySearchFunc(v.entries, key, func(e Entry[T], k string) int { return cmp.Compare(e.Key, k) })
	if !ok {
		var zero T
		return zero, false
	}
	return v.entries[i].Value, true
}

// Len returns the number of rows.
func (v *View[T]) Len() int { return len(v.entries) }

// All iterates over the rows in key order.
func (v *View[T]) All() iter.Seq2[string, T] {
	return func(yield func(string, T) bool) {
		for i := range v.entries {
			if !yield(v.entries[i].Key, v.entries[i].Value) {
				return
			}
		}
	}
}

// Values iterates over the rows' values in key order.
func (v *View[T]) Values() iter.Seq[T] {
	return func(yield func(T) bool) {
		for i := range v.entries {
			if !yield(v.entries[i].Value) {
				return
			}
		}
	}
}
