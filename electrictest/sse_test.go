package electrictest_test

// §3.4 of the conformance suite: Server-Sent Events.

import (
	"bufio"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
)

// sseEvent is one event of an SSE stream: data, or a comment.
type sseEvent struct {
	data, comment string
	at            time.Time
}

// openSSE starts an SSE request and returns its response and a channel of
// events, closed when the stream ends.
func (e *env) openSSE(kv ...string) (*http.Response, <-chan sseEvent) {
	e.t.Helper()
	res, err := httpClient.Get(e.srv.URL + "/v1/shape?" + qs(kv...))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { res.Body.Close() })
	ch := make(chan sseEvent, 100)
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
			case strings.HasPrefix(line, "data: "):
				ch <- sseEvent{data: strings.TrimPrefix(line, "data: "), at: time.Now()}
			case strings.HasPrefix(line, ":"):
				ch <- sseEvent{comment: line, at: time.Now()}
			default:
				ch <- sseEvent{data: "unexpected line: " + line, at: time.Now()}
			}
		}
	}()
	return res, ch
}

func next(t *testing.T, ch <-chan sseEvent, d time.Duration) (sseEvent, bool) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		return ev, ok
	case <-time.After(d):
		t.Fatalf("no SSE event within %v", d)
		return sseEvent{}, false
	}
}

func TestSSE(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{SSETimeout: 3 * time.Second, SSEKeepAlive: 400 * time.Millisecond}, itemsTable,
		`INSERT INTO items VALUES (1, 'a', 1, true)`)
	f := e.follow("table", "items")
	start := time.Now()
	res, ch := e.openSSE("table", "items", "offset", f.offset, "handle", f.handle, "live", "true", "live_sse", "true", "cursor", "")
	if res.StatusCode != 200 {
		t.Fatalf("status %d", res.StatusCode)
	}
	checkSSEHeaders(t, res, f)
	// Keep-alive comments while nothing happens.
	ev, _ := next(t, ch, 2*time.Second)
	if ev.comment != ": keep-alive" {
		t.Fatalf("first event %+v, want a keep-alive comment", ev)
	}
	// A change: its message, then up-to-date, as data events.
	e.exec(`INSERT INTO items VALUES (2, 'b', 2, false)`)
	data := nextData(t, ch, 2)
	if data[0].op() != "insert" || data[0].key() != itemKey("2") || data[1].control() != "up-to-date" {
		t.Fatalf("events %v", data)
	}
	if data[1].headers()["global_last_seen_lsn"] != data[0].headers()["lsn"] {
		t.Errorf("up-to-date %v after a change at lsn %v", data[1], data[0].headers()["lsn"])
	}
	// The stream ends after SSETimeout.
	for {
		ev, ok := next(t, ch, 4*time.Second)
		if !ok {
			break
		}
		if ev.comment == "" {
			t.Errorf("unexpected event %+v", ev)
		}
	}
	if d := time.Since(start); d < 2500*time.Millisecond || d > 5*time.Second {
		t.Errorf("stream lasted %v, SSETimeout is 3s", d)
	}

	checkSSEAfter(t, e, f)
}

// checkSSEHeaders: Electric's put_resp_headers applies to SSE too: etag,
// has-data and up-to-date, besides the SSE headers, and a cursor, at f's
// handle and offset; no schema on a live response.
func checkSSEHeaders(t *testing.T, res *http.Response, f *follower) {
	t.Helper()
	if _, ok := res.Header["Electric-Up-To-Date"]; !ok {
		t.Error("no electric-up-to-date on an SSE response")
	}
	for k, want := range map[string]string{"content-type": "text/event-stream", "cache-control": "public, max-age=2", "electric-handle": f.handle, "electric-offset": f.offset,
		"etag": `"` + f.handle + ":" + f.offset + ":" + f.offset + `"`, "electric-has-data": "true", "electric-up-to-date": ""} {
		if got := res.Header.Get(k); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	if res.Header.Get("electric-cursor") == "" {
		t.Error("no electric-cursor")
	}
	if res.Header.Get("electric-schema") != "" {
		t.Error("electric-schema on a live response")
	}
}

// nextData reads ch up to n data events, skipping comments, and returns
// them as messages.
func nextData(t *testing.T, ch <-chan sseEvent, n int) []msg {
	t.Helper()
	var data []msg
	for len(data) < n {
		ev, ok := next(t, ch, 2*time.Second)
		if !ok {
			t.Fatal("stream ended")
		}
		if ev.comment != "" {
			continue
		}
		var m msg
		if err := json.Unmarshal([]byte(ev.data), &m); err != nil {
			t.Fatalf("data %q: %v", ev.data, err)
		}
		data = append(data, m)
	}
	return data
}

// checkSSEAfter: at f's old offset, the data already there is sent at
// once, then the stream ends; and a rotation ends a live stream without an
// event, after which reconnecting gets 409.
func checkSSEAfter(t *testing.T, e *env, f *follower) {
	t.Helper()
	// Data already there (at the old offset): sent at once, then the end.
	start := time.Now()
	_, ch := e.openSSE("table", "items", "offset", f.offset, "handle", f.handle, "live", "", "experimental_live_sse", "true")
	var n int
	for ev := range ch {
		if ev.data != "" {
			n++
		}
	}
	if n != 2 || time.Since(start) > time.Second {
		t.Errorf("immediate SSE response: %d events in %v", n, time.Since(start))
	}

	// A rotation ends the stream without an event; reconnecting gets 409.
	f.catchUp()
	_, ch = e.openSSE("table", "items", "offset", f.offset, "handle", f.handle, "live", "true", "live_sse", "true")
	time.Sleep(200 * time.Millisecond)
	e.srv.RotateHandle(f.handle)
	for ev := range ch {
		if ev.data != "" {
			t.Errorf("event after rotation: %+v", ev)
		}
	}
	r := e.shape("table", "items", "offset", f.offset, "handle", f.handle, "live", "true", "live_sse", "true")
	r.expectStatus(t, 409)
	if string(r.body) != mustRefBody {
		t.Errorf("409 body %s", r.body)
	}
}
