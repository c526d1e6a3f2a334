package client

// Replays: canned Electric exchanges (status, headers, bodies as Electric
// 1.7 sends them) in testdata/replay/*.json, served in order by a fake
// server that checks every request against the exchange's expectation.
//
// Format (one JSON object per file):
//
//	{
//	  "about": "what is replayed",
//	  "options": {"table": "items", "live": true, "log": "", "offset": "", "handle": ""},
//	  "exchanges": [
//	    {"note": "…",
//	     "request": {"query": {"offset": "-1"},      // exact values
//	                 "absent": ["handle"],            // parameters not sent
//	                 "fresh": ["cache-buster"]},      // sent, unlike any earlier value
//	     "response": {"status": 200, "headers": {…}, "body": [ … ]},  // body: JSON, or absent
//	     "repeat": 1}                                 // times served; -1: forever
//	  ],
//	  "expect": {
//	    "messages": ["i1", "E", "R", "U"],  // i/u/d + last key part, E snapshot-end, R must-refetch, U up-to-date
//	    "error": "",                        // "", "FastLoopError" or "StaleResponseError"
//	    "requests": 0,                      // total requests, if not 0
//	    "handle": "", "offset": "",         // the stream's at the end, if set
//	    "commits": [1, 1],                  // Shape's row count after each up-to-date
//	    "rows": {"key": {"col": "val"}}     // Shape's rows at the end, if set
//	  }
//	}
//
// Every request must also carry log=<options.log, default full>. When the
// stream asks for more than the exchanges (a live stream), the replay ends
// there without error.

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

type replay struct {
	About   string `json:"about"`
	Options struct {
		Table  string `json:"table"`
		Live   bool   `json:"live"`
		Log    string `json:"log"`
		Offset string `json:"offset"`
		Handle string `json:"handle"`
	} `json:"options"`
	Exchanges []replayExchange `json:"exchanges"`
	Expect    struct {
		Messages []string                     `json:"messages"`
		Error    string                       `json:"error"`
		Requests int                          `json:"requests"`
		Handle   string                       `json:"handle"`
		Offset   string                       `json:"offset"`
		Commits  []int                        `json:"commits"`
		Rows     map[string]map[string]string `json:"rows"`
	} `json:"expect"`
}

type replayExchange struct {
	Note    string `json:"note"`
	Request struct {
		Query  map[string]string `json:"query"`
		Absent []string          `json:"absent"`
		Fresh  []string          `json:"fresh"`
	} `json:"request"`
	Response struct {
		Status  int               `json:"status"`
		Headers map[string]string `json:"headers"`
		Body    json.RawMessage   `json:"body"`
	} `json:"response"`
	Repeat int `json:"repeat"`
}

// replayServer serves a replay's exchanges in order.
type replayServer struct {
	r       *replay
	logMode string

	mu       sync.Mutex
	ex       int // current exchange
	served   int // times it was served
	requests []url.Values
	seen     map[string]map[string]bool // parameter → values sent so far
	problems []string
	end      chan struct{} // closed at the first request past the script
	ended    bool
}

func (rs *replayServer) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	q := req.URL.Query()
	rs.mu.Lock()
	n := len(rs.requests)
	rs.requests = append(rs.requests, q)
	if rs.ex >= len(rs.r.Exchanges) {
		if !rs.ended {
			rs.ended = true
			close(rs.end)
		}
		rs.mu.Unlock()
		<-req.Context().Done() // a live request that never returns
		return
	}
	e := rs.r.Exchanges[rs.ex]
	rs.check(n, e, q)
	rs.served++
	if e.Repeat >= 0 && rs.served >= max(e.Repeat, 1) {
		rs.ex++
		rs.served = 0
	}
	rs.mu.Unlock()

	for k, v := range e.Response.Headers {
		w.Header().Set(k, v)
	}
	w.WriteHeader(e.Response.Status)
	if len(e.Response.Body) > 0 {
		w.Write(e.Response.Body)
	}
}

// check compares request n with the exchange's expectation (rs.mu held).
func (rs *replayServer) check(n int, e replayExchange, q url.Values) {
	fail := func(format string, args ...any) {
		rs.problems = append(rs.problems, fmt.Sprintf("request %d (%s): ", n, e.Note)+fmt.Sprintf(format, args...)+" in "+q.Encode())
	}
	for k, v := range e.Request.Query {
		if got, ok := q[k]; !ok || len(got) != 1 || got[0] != v {
			fail("%s=%q, want %q", k, got, v)
		}
	}
	if got := q["log"]; len(got) != 1 || got[0] != rs.logMode {
		fail("log=%q, want %q", got, rs.logMode)
	}
	for _, k := range e.Request.Absent {
		if q.Has(k) {
			fail("%s sent", k)
		}
	}
	for _, k := range e.Request.Fresh {
		v := q.Get(k)
		if v == "" || rs.seen[k][v] {
			fail("%s=%q is not fresh", k, v)
		}
	}
	for k, vs := range q {
		if rs.seen[k] == nil {
			rs.seen[k] = map[string]bool{}
		}
		for _, v := range vs {
			rs.seen[k][v] = true
		}
	}
}

// token names a message compactly: i/u/d and the last part of the key for
// changes, E, R, U for snapshot-end, must-refetch, up-to-date.
func token(m Message) string {
	switch {
	case m.IsChange():
		k := m.Key
		if i := strings.LastIndex(k, "/"); i >= 0 {
			k = k[i+1:]
		}
		return string(m.Headers.Operation[:1]) + strings.Trim(k, `"`)
	case m.IsUpToDate():
		return "U"
	case m.IsMustRefetch():
		return "R"
	case m.Headers.Control == SnapshotEnd:
		return "E"
	}
	return "?"
}

func loadReplay(t *testing.T, path string) *replay {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var r replay
	dec := json.NewDecoder(strings.NewReader(string(b)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if len(r.Exchanges) == 0 {
		t.Fatalf("%s: no exchanges", path)
	}
	return &r
}

func runReplay(t *testing.T, r *replay) {
	rs := &replayServer{r: r, logMode: cmp.Or(r.Options.Log, "full"), seen: map[string]map[string]bool{}, end: make(chan struct{})}
	srv := httptest.NewServer(rs)
	defer srv.Close()
	s, err := New(Options{
		URL:     srv.URL + "/v1/shape",
		Params:  Params{Table: r.Options.Table, Log: r.Options.Log},
		Live:    r.Options.Live,
		Offset:  r.Options.Offset,
		Handle:  r.Options.Handle,
		Backoff: fastBackoff(),
	})
	if err != nil {
		t.Fatal(err)
	}
	res := consumeReplay(t, s, rs)

	rs.mu.Lock()
	defer rs.mu.Unlock()
	for _, p := range rs.problems {
		t.Error(p)
	}
	if rs.ex < len(r.Exchanges) && r.Exchanges[rs.ex].Repeat >= 0 {
		t.Errorf("stream stopped at exchange %d (%s) of %d", rs.ex, r.Exchanges[rs.ex].Note, len(r.Exchanges))
	}
	checkReplayError(t, r, res.err, srv.URL)
	checkReplayResult(t, r, rs, s, res)
}

// replayResult is what a replayed stream delivered.
type replayResult struct {
	got     []string // the messages' tokens
	commits []int    // the shape's rows after each commit
	sh      *Shape
	err     error // how the stream ended: nil at io.EOF or the replay's end
}

// consumeReplay applies s to a Shape until the stream fails or rs has
// served its last exchange.
func consumeReplay(t *testing.T, s *ShapeStream, rs *replayServer) replayResult {
	res := replayResult{sh: NewShape(nil)}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := s.Next(ctx)
			if err != nil {
				errc <- err
				return
			}
			res.got = append(res.got, token(m))
			if res.sh.Apply(m) {
				res.commits = append(res.commits, res.sh.Len())
			}
		}
	}()
	var serr error
	select {
	case serr = <-errc:
	case <-rs.end:
		cancel()
		if err := <-errc; !errors.Is(err, context.Canceled) {
			serr = err
		}
	}
	if serr == io.EOF {
		serr = nil
	}
	res.err = serr
	return res
}

// checkReplayError checks how the stream ended against r.Expect.Error.
func checkReplayError(t *testing.T, r *replay, serr error, srvURL string) {
	t.Helper()
	e := r.Expect
	switch e.Error {
	case "":
		if serr != nil {
			t.Errorf("stream error %v", serr)
		}
	case "FastLoopError":
		var fe *FastLoopError
		if !errors.As(serr, &fe) || !errors.Is(serr, ErrFastLoop) || !strings.HasPrefix(fe.URL, srvURL) {
			t.Errorf("stream error %v, want a FastLoopError", serr)
		}
	case "StaleResponseError":
		if _, ok := errors.AsType[*StaleResponseError](serr); !ok {
			t.Errorf("stream error %v, want a StaleResponseError", serr)
		}
	default:
		t.Fatalf("unknown expected error %q", e.Error)
	}
	if serr != nil {
		t.Logf("stream error: %v", serr)
	}
}

// checkReplayResult checks what the stream delivered, and where it ended,
// against r.Expect. The caller holds rs.mu.
func checkReplayResult(t *testing.T, r *replay, rs *replayServer, s *ShapeStream, res replayResult) {
	t.Helper()
	e := r.Expect
	if !slices.Equal(res.got, e.Messages) {
		t.Errorf("messages %v\n                want %v", res.got, e.Messages)
	}
	if e.Requests != 0 && len(rs.requests) != e.Requests {
		t.Errorf("%d requests, want %d", len(rs.requests), e.Requests)
	}
	if e.Handle != "" && s.Handle() != e.Handle {
		t.Errorf("handle %q, want %q", s.Handle(), e.Handle)
	}
	if e.Offset != "" && s.Offset() != e.Offset {
		t.Errorf("offset %q, want %q", s.Offset(), e.Offset)
	}
	if e.Commits != nil && !slices.Equal(res.commits, e.Commits) {
		t.Errorf("rows after each commit %v, want %v", res.commits, e.Commits)
	}
	if e.Rows != nil {
		rows := map[string]map[string]string{}
		for k, row := range res.sh.Rows() {
			rows[k] = stringify(row)
		}
		if !maps.EqualFunc(rows, e.Rows, maps.Equal) {
			t.Errorf("rows %v, want %v", rows, e.Rows)
		}
	}
}

func TestReplays(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("testdata/replay/*.json")
	if err != nil || len(files) == 0 {
		t.Fatalf("no replays: %v", err)
	}
	for _, f := range files {
		r := loadReplay(t, f)
		t.Run(strings.TrimSuffix(filepath.Base(f), ".json"), func(t *testing.T) {
			t.Parallel()
			runReplay(t, r)
		})
	}
}
