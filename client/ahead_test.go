package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
)

// batchEnv is a 600-row table served by electrictest, its snapshot taken.
func batchEnv(t *testing.T) *env {
	e := newEnv(t, electrictest.Options{LongPollTimeout: 200 * time.Millisecond})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items (id, title, n) SELECT g, 'item ' || g, g FROM generate_series(1, 600) g`)
	return e
}

// markBatch is a TransformBatch that marks every value with its batch's
// number and checks the batch is change messages in key order after the
// last batch's; calls records each batch's size.
type markBatch struct {
	t     *testing.T
	calls []int
	last  int // the id of the last message transformed
	block func(ctx context.Context, batch int) error
}

func (b *markBatch) transform(ctx context.Context, ms []*Message) error {
	b.calls = append(b.calls, len(ms))
	if b.block != nil {
		if err := b.block(ctx, len(b.calls)); err != nil {
			return err
		}
	}
	for _, m := range ms {
		id, _ := strconv.Atoi(fmt.Sprint(m.Value["id"]))
		if !m.IsChange() || id <= b.last {
			b.t.Errorf("batch %d holds %q after id %d", len(b.calls), m.Key, b.last)
		}
		b.last = id
		m.Value["batch"] = strconv.Itoa(len(b.calls))
	}
	return nil
}

// readIDs reads s to its up-to-date (with ctx, and a new context after each
// error that is ctx's), and returns the ids of the changes in order, failing
// t at a change that is not marked.
func readIDs(t *testing.T, s *ShapeStream, next func() (Message, error)) []int {
	var ids []int
	for {
		m, err := next()
		if err == io.EOF {
			return ids
		}
		if errors.Is(err, context.Canceled) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if m.IsChange() {
			if m.Value["batch"] == nil {
				t.Fatalf("%s was not transformed", m.Key)
			}
			id, _ := strconv.Atoi(m.Value["id"].(string))
			ids = append(ids, id)
		}
	}
}

// checkOnce fails unless ids is 1…600 in order.
func checkOnce(t *testing.T, ids []int) {
	t.Helper()
	for i, id := range ids {
		if id != i+1 {
			t.Fatalf("change %d has id %d (of %d changes)", i, id, len(ids))
		}
	}
	if len(ids) != 600 {
		t.Fatalf("%d changes, want 600", len(ids))
	}
}

// A TransformBatch gets the changes in batches of what the response has
// buffered, and the stream delivers each once, in order.
func TestTransformBatch(t *testing.T) {
	e := batchEnv(t)
	b := &markBatch{t: t}
	s, err := New(Options{URL: e.url, Params: Params{Table: "items"}, TransformBatch: b.transform})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	checkOnce(t, readIDs(t, s, func() (Message, error) { return s.Next(t.Context()) }))
	if len(b.calls) >= 600 || len(b.calls) < 600/maxBatch {
		t.Errorf("%d batches for 600 changes", len(b.calls))
	}
	for _, n := range b.calls {
		if n < 1 || n > maxBatch {
			t.Errorf("a batch of %d", n)
		}
	}
}

// A batch cut short by the caller's context is delivered whole by the next
// calls of Next, and so are the rest of a batch whose delivery was
// abandoned by breaking out of Messages.
func TestTransformBatchInterrupted(t *testing.T) {
	e := batchEnv(t)
	b := &markBatch{t: t}
	ctx, cancel := context.WithCancel(t.Context())
	b.block = func(bctx context.Context, n int) error {
		if n == 3 {
			cancel()
			<-bctx.Done()
			return bctx.Err()
		}
		return nil
	}
	s, err := New(Options{URL: e.url, Params: Params{Table: "items"}, TransformBatch: b.transform})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var ids []int
	delivered := 0
	for m, err := range s.Messages(ctx) {
		if errors.Is(err, context.Canceled) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, mustID(t, m))
		delivered++
	}
	if delivered == 0 || b.calls[0] < 2 {
		t.Fatalf("%d delivered before the cancel, batches %v", delivered, b.calls)
	}
	b.last = ids[len(ids)-1]
	// Break out one message into a batch: Next delivers the rest of it.
	stopAt := len(b.calls) + 1
	for m, err := range s.Messages(t.Context()) {
		if err != nil {
			t.Fatal(err)
		}
		if m.IsChange() {
			ids = append(ids, mustID(t, m))
		}
		if len(b.calls) == stopAt {
			break
		}
	}
	b.last = ids[len(ids)-1]
	ids = append(ids, readIDs(t, s, func() (Message, error) { return s.Next(t.Context()) })...)
	checkOnce(t, ids)
}

func mustID(t *testing.T, m Message) int {
	t.Helper()
	if m.Value["batch"] == nil {
		t.Fatalf("%s was not transformed", m.Key)
	}
	id, err := strconv.Atoi(m.Value["id"].(string))
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// An error of a TransformBatch stops the stream with a *TransformError
// naming the batch's first message, before any of the batch is delivered.
func TestTransformBatchError(t *testing.T) {
	e := batchEnv(t)
	boom := errors.New("boom")
	b := &markBatch{t: t, block: func(_ context.Context, n int) error {
		if n == 2 {
			return boom
		}
		return nil
	}}
	s, err := New(Options{URL: e.url, Params: Params{Table: "items"}, TransformBatch: b.transform})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	n := 0
	for {
		m, err := s.Next(t.Context())
		if err != nil {
			te, ok := errors.AsType[*TransformError](err)
			if !ok || !errors.Is(err, boom) || te.Key != `"public"."items"/"`+strconv.Itoa(b.calls[0]+1)+`"` {
				t.Fatalf("Next = %v, want a *TransformError for the second batch's first message", err)
			}
			break
		}
		if m.IsChange() {
			n++
		}
	}
	if n != b.calls[0] {
		t.Errorf("%d changes delivered, want the first batch's %d", n, b.calls[0])
	}
	if _, err := s.Next(t.Context()); !errors.Is(err, boom) {
		t.Errorf("Next after the error = %v", err)
	}
	if _, err := New(Options{URL: e.url, TransformBatch: b.transform,
		TransformContext: func(context.Context, *Message) error { return nil }}); err == nil {
		t.Error("New accepted two transforms")
	}
}
