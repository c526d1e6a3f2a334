package client

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
)

func TestSSEReader(t *testing.T) {
	body := ": keep-alive\n\ndata: {\"a\":1}\n\nevent: x\r\ndata: {\"b\":\r\ndata: 2}\r\n\r\n\n\ndata:\n\nid: 7\ndata:{\"c\":3}\n\ndata: {\"cut\""
	r := newSSEReader(strings.NewReader(body))
	var got []string
	for {
		d, _, err := r.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, string(d))
	}
	want := []string{`{"a":1}`, "{\"b\":\n2}", `{"c":3}`}
	if !slices.Equal(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	// A cut connection is an error, not the end of the stream.
	r = newSSEReader(io.MultiReader(strings.NewReader("data: {}\n\ndata: {"), errReader{io.ErrUnexpectedEOF}))
	if _, _, err := r.next(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.next(); err != io.ErrUnexpectedEOF {
		t.Fatalf("err %v, want unexpected EOF", err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// recorder records the query of every shape request it forwards.
type recorder struct {
	next http.Handler
	mu   sync.Mutex
	qs   []string
	// sse, if set, answers SSE requests instead of next.
	sse func(w http.ResponseWriter, r *http.Request)
}

func (p *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.qs = append(p.qs, r.URL.RawQuery)
	p.mu.Unlock()
	if p.sse != nil && r.URL.Query().Get("live_sse") == "true" {
		p.sse(w, r)
		return
	}
	p.next.ServeHTTP(w, r)
}

// count returns how many requests had live=true, and how many of them live_sse=true.
func (p *recorder) count() (live, sse int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, q := range p.qs {
		if strings.Contains(q, "live=true") {
			live++
			if strings.Contains(q, "live_sse=true") {
				sse++
			}
		}
	}
	return
}

// readInserts reads the stream until n inserts arrived, checking that no
// change comes twice, and returns their keys in order.
func readInserts(t *testing.T, ctx context.Context, s *ShapeStream, n int) []string {
	t.Helper()
	var got []string
	seen := map[string]bool{}
	var last pos
	hasLast := false
	for len(got) < n {
		m, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("after %d inserts: %v", len(got), err)
		}
		if m.IsMustRefetch() {
			t.Fatalf("unexpected must-refetch")
		}
		if !m.IsChange() {
			continue
		}
		if p, ok := m.position(); ok {
			if hasLast && !p.after(last) {
				t.Fatalf("change %s at %v after %v", m.Raw(), p, last)
			}
			last, hasLast = p, true
		}
		if m.Headers.Operation == Insert {
			if seen[m.Key] {
				t.Fatalf("%s delivered twice", m.Key)
			}
			seen[m.Key] = true
			got = append(got, m.Key)
		}
	}
	return got
}

func itemKeys(from, to int) []string {
	var keys []string
	for i := from; i <= to; i++ {
		keys = append(keys, `"public"."items"/"`+strconv.Itoa(i)+`"`)
	}
	return keys
}

func syncInitial(t *testing.T, ctx context.Context, s *ShapeStream) {
	t.Helper()
	for {
		m, err := s.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.IsUpToDate() {
			return
		}
	}
}

func TestElectricSSELiveChanges(t *testing.T) {
	e := newEnv(t, electrictest.Options{SSETimeout: 700 * time.Millisecond, SSEKeepAlive: 200 * time.Millisecond})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items (id, title) SELECT i, 'init' FROM generate_series(1, 10) i`)
	rec := &recorder{next: e.srv.Server}
	front := httptest.NewServer(rec)
	defer front.Close()

	s, err := New(Options{URL: front.URL + "/v1/shape", Params: Params{Table: "items"}, Live: true, LiveSSE: true, HTTPClient: testClient()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	syncInitial(t, ctx, s)
	if live, _ := rec.count(); live != 0 {
		t.Fatalf("%d live requests before up-to-date", live)
	}
	// Writes, one transaction each and some of several rows, spread over
	// several SSE connections (each lasts 700 ms).
	go func() {
		id := 11
		for i := range 20 {
			k := 1 + i%3
			e.exec(fmt.Sprintf(`INSERT INTO items (id, title) SELECT g, 'live' FROM generate_series(%d, %d) g`, id, id+k-1))
			id += k
			time.Sleep(70 * time.Millisecond)
		}
	}()
	got := readInserts(t, ctx, s, 39) // 20 transactions of 1, 2 or 3 rows
	if want := itemKeys(11, 49); !slices.Equal(got, want) {
		t.Fatalf("inserts %q, want %q", got, want)
	}
	live, sse := rec.count()
	if live == 0 || sse != live {
		t.Fatalf("%d live requests, %d with live_sse=true", live, sse)
	}
	if s.SSEFallback() {
		t.Fatal("fell back to long polling")
	}
	// The offset is exact: a new stream resuming from it gets nothing twice.
	syncInitial(t, ctx, s) // the up-to-date after the last transaction
	off, h := s.Offset(), s.Handle()
	s.Close()
	e.exec(`INSERT INTO items (id, title) VALUES (50, 'after')`)
	s2, err := New(Options{URL: front.URL + "/v1/shape", Params: Params{Table: "items"}, Live: true, LiveSSE: true, HTTPClient: testClient(), Offset: off, Handle: h})
	if err != nil {
		t.Fatal(err)
	}
	if got := readInserts(t, ctx, s2, 1); !slices.Equal(got, itemKeys(50, 50)) {
		t.Fatalf("resumed: %q", got)
	}
	t.Logf("%d SSE requests, offset %s", sse, off)
}

func TestElectricSSECutConnections(t *testing.T) {
	e := newEnv(t, electrictest.Options{SSETimeout: 300 * time.Millisecond, SSEKeepAlive: 50 * time.Millisecond})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	rec := &recorder{next: e.srv.Server}
	front := httptest.NewServer(rec)
	defer front.Close()
	s, err := New(Options{URL: front.URL + "/v1/shape", Params: Params{Table: "items"}, Live: true, LiveSSE: true, HTTPClient: testClient(), Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	syncInitial(t, ctx, s)

	// Each round: the next response (an SSE connection) is cut after a
	// few bytes, then a transaction of several rows is written, so that
	// the cut falls before, inside or after its events.
	const rounds, per = 25, 4
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range rounds {
			e.srv.CutNext(1, []int{0, 14, 60, 200, 400, 700, 1000}[i%7])
			id := 1 + i*per
			e.exec(fmt.Sprintf(`INSERT INTO items (id, title) SELECT g, 'row ' || g FROM generate_series(%d, %d) g`, id, id+per-1))
			time.Sleep(time.Duration(20+i%5*30) * time.Millisecond)
		}
	}()
	got := readInserts(t, ctx, s, rounds*per)
	<-done
	if want := itemKeys(1, rounds*per); !slices.Equal(got, want) {
		t.Fatalf("inserts %q, want %q", got, want)
	}
	live, sse := rec.count()
	if sse != live || sse < 5 {
		t.Fatalf("%d live requests, %d SSE", live, sse)
	}
	t.Logf("%d SSE requests for %d cuts", sse, rounds)
	if s.SSEFallback() {
		t.Fatal("fell back to long polling")
	}
}

// A cut in the middle of a batch that ends in events without a position
// (here: a fake server whose messages have none) resumes by skipping what
// was delivered.
func TestSSECutMidBatchSkips(t *testing.T) {
	var n atomic.Int32
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		h := w.Header()
		h.Set("electric-handle", "h1")
		h.Set("electric-schema", `{"id":{"type":"int8"}}`)
		h.Set("electric-cursor", "1")
		if q.Get("live_sse") != "true" {
			h.Set("electric-offset", "5_0")
			w.Write([]byte(`[{"headers":{"control":"up-to-date"}}]`))
			return
		}
		h.Set("content-type", "text/event-stream")
		h.Set("electric-offset", "9_9")
		change := func(id, lsn int, op int) string {
			return fmt.Sprintf(`data: {"key":"k%d","value":{"id":"%d"},"headers":{"operation":"insert","lsn":"%d","op_position":%d}}`+"\n\n", id, id, lsn, op)
		}
		ev := func(name string) string { return `data: {"headers":{"event":"` + name + `","patterns":[]}}` + "\n\n" }
		utd := "data: {\"headers\":{\"control\":\"up-to-date\",\"global_last_seen_lsn\":\"7\"}}\n\n"
		fl := w.(http.Flusher)
		switch k := n.Add(1); {
		case k == 1 && q.Get("offset") == "5_0":
			// A batch: two changes, two events, up-to-date; then one more
			// change and an event, and the connection is cut.
			io.WriteString(w, change(1, 6, 0)+change(2, 6, 2)+ev("e1")+ev("e2")+utd+change(3, 7, 0)+ev("e3"))
			fl.Flush()
			panic(http.ErrAbortHandler)
		case k == 2 && q.Get("offset") == "6_2":
			io.WriteString(w, ev("e1")+ev("e2")+utd+change(3, 7, 0)+ev("e3")+ev("e4")+utd)
			fl.Flush()
			time.Sleep(1100 * time.Millisecond)
		default:
			t.Errorf("request %d: %s", k, r.URL.RawQuery)
			time.Sleep(time.Second)
		}
	})
	srv := httptest.NewServer(handler)
	defer srv.Close()
	s, err := New(Options{URL: srv.URL, Live: true, LiveSSE: true, Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var got []string
	for len(got) < 10 {
		m, err := s.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case m.IsChange():
			got = append(got, m.Key)
		case m.Headers.Event != "":
			got = append(got, m.Headers.Event)
		case m.IsUpToDate():
			got = append(got, "utd@"+s.Offset())
		}
	}
	want := []string{"utd@5_0", "k1", "k2", "e1", "e2", "utd@6_2", "k3", "e3", "e4", "utd@7_0"}
	if !slices.Equal(got, want) {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestElectricSSEQuickCloseFallback(t *testing.T) {
	e := newEnv(t, electrictest.Options{LongPollTimeout: 300 * time.Millisecond})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items (id, title) VALUES (1, 'a')`)
	rec := &recorder{next: e.srv.Server}
	// A proxy that closes every event stream at once, with nothing in it.
	rec.sse = func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		h := w.Header()
		h.Set("content-type", "text/event-stream")
		h.Set("electric-handle", q.Get("handle"))
		h.Set("electric-offset", q.Get("offset"))
		h.Set("electric-cursor", "1")
		w.WriteHeader(http.StatusOK)
	}
	front := httptest.NewServer(rec)
	defer front.Close()
	s, err := New(Options{URL: front.URL + "/v1/shape", Params: Params{Table: "items"}, Live: true, LiveSSE: true, HTTPClient: testClient()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	syncInitial(t, ctx, s)
	go func() {
		time.Sleep(500 * time.Millisecond)
		e.exec(`INSERT INTO items (id, title) VALUES (2, 'b'), (3, 'c')`)
	}()
	start := time.Now()
	if got := readInserts(t, ctx, s, 2); !slices.Equal(got, itemKeys(2, 3)) {
		t.Fatalf("inserts %q", got)
	}
	if !s.SSEFallback() {
		t.Fatal("SSEFallback is false")
	}
	live, sse := rec.count()
	if sse != 3 || live <= sse {
		t.Fatalf("%d live requests, %d SSE; want 3 SSE, then long polls", live, sse)
	}
	t.Logf("fell back after %v; %d long polls", time.Since(start), live-sse)
}

// A rotation ends the SSE connection; the reconnect gets the 409 and the
// stream refetches. Expired tokens are refreshed on a reconnect's 401.
func TestElectricSSERotationAndAuth(t *testing.T) {
	e := newEnv(t, electrictest.Options{SSETimeout: 300 * time.Millisecond, SSEKeepAlive: 100 * time.Millisecond})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items (id, title) VALUES (1, 'a')`)
	ap := newAuthProxy(e.srv.Server)
	rec := &recorder{next: ap}
	front := httptest.NewServer(rec)
	defer front.Close()
	s, err := New(Options{URL: front.URL + "/v1/shape", Params: Params{Table: "items"}, Live: true, LiveSSE: true,
		HTTPClient: testClient(), TokenSource: NewSharedTokenSource(ap.mint), Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	syncInitial(t, ctx, s)

	ap.expireAll()
	time.Sleep(400 * time.Millisecond) // the open connection ends (SSETimeout); the reconnect gets a 401
	e.exec(`INSERT INTO items (id, title) VALUES (2, 'b')`)
	if got := readInserts(t, ctx, s, 1); !slices.Equal(got, itemKeys(2, 2)) {
		t.Fatalf("inserts %q", got)
	}
	ap.mu.Lock()
	refused := ap.refused
	ap.mu.Unlock()
	if refused == 0 {
		t.Fatal("no 401: the SSE reconnect did not use the expired token")
	}

	syncInitial(t, ctx, s)
	e.srv.Rotate("items")
	sawRefetch := false
	keys := map[string]bool{}
	for {
		m, err := s.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.IsMustRefetch() {
			sawRefetch = true
			clear(keys)
		}
		if m.IsChange() && sawRefetch {
			keys[m.Key] = true
		}
		if m.IsUpToDate() && sawRefetch {
			break
		}
	}
	if len(keys) != 2 {
		t.Fatalf("after the refetch: %v", keys)
	}
	e.exec(`INSERT INTO items (id, title) VALUES (3, 'c')`)
	if got := readInserts(t, ctx, s, 1); !slices.Equal(got, itemKeys(3, 3)) {
		t.Fatalf("inserts %q", got)
	}
	if live, sse := rec.count(); sse != live {
		t.Fatalf("%d live requests, %d SSE", live, sse)
	}
}
