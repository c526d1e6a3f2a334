package client

import "context"

// maxBatch bounds the change messages of one Options.TransformBatch call.
const maxBatch = 128

// readAhead holds the change messages of a response that a TransformBatch
// transformed together, from the second on, until Next delivers them.
type readAhead struct {
	msgs  []Message
	marks []readMark // how much of the response was read before each
	ptrs  []*Message // the batch as the transform takes it
	next  int        // the next message to deliver
}

// pop returns the next message read ahead, if any.
func (a *readAhead) pop() (Message, bool) {
	if a.next >= len(a.msgs) {
		return Message{}, false
	}
	m := a.msgs[a.next]
	a.msgs[a.next] = Message{} // the stream keeps no reference to a delivered message
	if a.next++; a.next == len(a.msgs) {
		a.msgs, a.marks, a.next = a.msgs[:0], a.marks[:0], 0
	}
	return m, true
}

// drop forgets the messages read ahead, giving those not delivered back to
// r (if not nil) as not read.
func (a *readAhead) drop(r *response) {
	if r != nil && a.next < len(a.msgs) {
		r.unread(a.marks[a.next])
	}
	clear(a.msgs)
	clear(a.ptrs)
	a.msgs, a.marks, a.ptrs, a.next = a.msgs[:0], a.marks[:0], a.ptrs[:0], 0
}

// transformAhead transforms m, a change message just read from r (before
// is how much of r was read before it), together with the change messages
// that follow it in what r has already buffered, and returns m: Next
// delivers the others. The batch ends at the first message that is not a
// change or not all buffered, so it never waits for the network, and never
// spans an up-to-date.
func (s *ShapeStream) transformAhead(ctx context.Context, r *response, m Message, before readMark) (Message, bool, error) {
	a := &s.ahead
	a.msgs = append(a.msgs, m)
	a.marks = append(a.marks, before)
	for len(a.msgs) < maxBatch {
		mark := r.ar.mark()
		el, off, ok := r.ar.nextBuffered()
		if !ok {
			break
		}
		m, err := s.dec.parseMessage(el, off)
		if err != nil || !m.IsChange() {
			// Read again, and reported or handled, by the next read.
			r.ar.reset(mark)
			break
		}
		before := r.readMark()
		if s.admit(r, &m) {
			a.msgs = append(a.msgs, m)
			a.marks = append(a.marks, before)
		}
	}
	for i := range a.msgs {
		a.ptrs = append(a.ptrs, &a.msgs[i])
	}
	err := s.batch(ctx, a.ptrs)
	clear(a.ptrs)
	a.ptrs = a.ptrs[:0]
	if err != nil {
		key := a.msgs[0].Key
		a.drop(r)
		if cerr := ctx.Err(); cerr != nil {
			// As for TransformContext: none of the batch is delivered, and
			// the next Next reads it again.
			return Message{}, false, cerr
		}
		return Message{}, false, &TransformError{Key: key, Err: err}
	}
	m, _ = a.pop()
	return m, true, nil
}
