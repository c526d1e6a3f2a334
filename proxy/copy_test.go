package proxy

import (
	"bytes"
	"io"
	"net/http/httptest"
	"strings"
	"testing"
)

// eventReader returns one event per Read, as an SSE body does.
type eventReader struct{ events []string }

func (r *eventReader) Read(p []byte) (int, error) {
	if len(r.events) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.events[0])
	r.events[0] = r.events[0][n:]
	if r.events[0] == "" {
		r.events = r.events[1:]
	}
	return n, nil
}

// TestCopyFlushBuffers: a response that trickles (an SSE stream, open for a
// minute) is relayed through a small buffer, and one that arrives in bulk
// moves to a large one. Before, every relayed response held a 256 KiB
// buffer for its whole life: the soak (bench/soak) found one in the
// proxy's heap per SSE reader. Not parallel: it counts the large buffers
// taken by the whole package.
func TestCopyFlushBuffers(t *testing.T) {
	var events []string
	for i := range 200 {
		events = append(events, "data: "+strings.Repeat("x", i)+"\n\n")
	}
	want := strings.Join(events, "")
	before := bigCopies.Load()
	rec := httptest.NewRecorder()
	if err := copyFlush(rec, &eventReader{events: events}); err != nil {
		t.Fatal(err)
	}
	if rec.Body.String() != want {
		t.Fatalf("relayed %d bytes, want the %d of the events", rec.Body.Len(), len(want))
	}
	if n := bigCopies.Load() - before; n != 0 {
		t.Errorf("a trickling body took %d large buffers, want 0", n)
	}

	bulk := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	rec = httptest.NewRecorder()
	if err := copyFlush(rec, bytes.NewReader(bulk)); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rec.Body.Bytes(), bulk) {
		t.Fatalf("relayed %d bytes of a %d-byte body, or other bytes", rec.Body.Len(), len(bulk))
	}
	if n := bigCopies.Load() - before; n != 1 {
		t.Errorf("a bulk body took %d large buffers, want 1", n)
	}
}
