package client

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
)

const deleteSecret = "d3lete-s3cret+/=" // needs query escaping

// readToUpToDate reads s until an up-to-date message and returns what it read.
func readToUpToDate(t *testing.T, s *ShapeStream) []Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var ms []Message
	for {
		m, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("after %d messages: %v", len(ms), err)
		}
		ms = append(ms, m)
		if m.IsUpToDate() {
			return ms
		}
	}
}

// checkNoSecret fails if err, or the *HTTPError in it, mentions secret.
func checkNoSecret(t *testing.T, err error, secret string) {
	t.Helper()
	forms := []string{secret, url.QueryEscape(secret)}
	texts := []string{err.Error(), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)}
	if he, ok := errors.AsType[*HTTPError](err); ok {
		texts = append(texts, he.URL, string(he.Body), fmt.Sprint(he.Header))
	}
	for _, s := range texts {
		for _, f := range forms {
			if strings.Contains(s, f) {
				t.Errorf("error mentions the secret %q: %s", f, s)
			}
		}
	}
}

func wantHTTPError(t *testing.T, err error, status int) *HTTPError {
	t.Helper()
	he, ok := errors.AsType[*HTTPError](err)
	if !ok {
		t.Fatalf("got %v (%T), want an *HTTPError with status %d", err, err, status)
	}
	if he.StatusCode != status {
		t.Fatalf("status %d, want %d: %v", he.StatusCode, status, err)
	}
	return he
}

func TestDeleteShape(t *testing.T) {
	s := newDeleteRun(t)
	s.followUpdate()
	s.failedDeletes()
	s.deleteByHandle()
	s.resumeAtOldHandle()
	s.freshSnapshot()
	s.deleteCurrent()
}

// deleteRun is the state TestDeleteShape's steps share, in order.
type deleteRun struct {
	t        *testing.T
	e        *env
	shapeURL string // the shape endpoint, with the secret
	hc       *http.Client

	oldHandle, oldOffset string // of the shape before the delete
	newHandle            string // of the shape after it
}

func newDeleteRun(t *testing.T) *deleteRun {
	e := newEnv(t, electrictest.Options{Secret: deleteSecret, AllowDelete: true, LongPollTimeout: 300 * time.Millisecond})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items (id, title) SELECT i, 'old ciphertext ' || i FROM generate_series(1, 5) i`)
	return &deleteRun{t: t, e: e, shapeURL: e.url + "?secret=" + url.QueryEscape(deleteSecret), hc: testClient()}
}

// fresh reads the shape from offset -1 to up-to-date.
func (s *deleteRun) fresh() (*ShapeStream, []Message) {
	t := s.t
	t.Helper()
	st, err := New(Options{URL: s.shapeURL, Params: Params{Table: "items"}, HTTPClient: s.hc})
	if err != nil {
		t.Fatal(err)
	}
	return st, readToUpToDate(t, st)
}

func countOps(ms []Message, op Operation) (n int) {
	for _, m := range ms {
		if m.Headers.Operation == op {
			n++
		}
	}
	return n
}

// followUpdate: a reader syncs the shape, then follows an update into its
// log; before the delete, a new reader replays the old log: the snapshot,
// then the update.
func (s *deleteRun) followUpdate() {
	t := s.t
	st, err := New(Options{URL: s.shapeURL, Params: Params{Table: "items"}, Live: true, HTTPClient: s.hc, Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	readToUpToDate(t, st)
	s.oldHandle = st.Handle()
	s.e.exec(`UPDATE items SET title = 'new ciphertext' WHERE id = 1`)
	for sawUpdate := false; !sawUpdate; {
		for _, m := range readToUpToDate(t, st) {
			sawUpdate = sawUpdate || m.Headers.Operation == Update
		}
	}
	s.oldOffset = st.Offset()
	st.Close()

	s2, ms := s.fresh()
	if s2.Handle() != s.oldHandle || countOps(ms, Update) != 1 {
		t.Fatalf("before the delete: handle %s (want %s), %d updates (want 1)", s2.Handle(), s.oldHandle, countOps(ms, Update))
	}
}

// failedDeletes: a wrong secret and bad params are refused, and drop
// nothing.
func (s *deleteRun) failedDeletes() {
	e, hc, oldHandle := s.e, s.hc, s.oldHandle
	s.t.Run("wrong secret", func(t *testing.T) {
		const wrong = "wr0ng-s3cret/value"
		err := DeleteShape(t.Context(), DeleteOptions{URL: e.url, Table: "items", Secret: wrong, HTTPClient: hc})
		he := wantHTTPError(t, err, http.StatusUnauthorized)
		if !strings.Contains(string(he.Body), "Invalid API secret") {
			t.Errorf("body %q", he.Body)
		}
		checkNoSecret(t, err, wrong)
		// A wrong secret in the URL, under its legacy name.
		err = DeleteShape(t.Context(), DeleteOptions{URL: e.url + "?api_secret=" + url.QueryEscape(wrong), Table: "items", HTTPClient: hc})
		wantHTTPError(t, err, http.StatusUnauthorized)
		checkNoSecret(t, err, wrong)
		// No secret at all.
		err = DeleteShape(t.Context(), DeleteOptions{URL: e.url, Table: "items", HTTPClient: hc})
		wantHTTPError(t, err, http.StatusUnauthorized)
	})

	s.t.Run("bad params", func(t *testing.T) {
		err := DeleteShape(t.Context(), DeleteOptions{URL: e.url, Table: "a.b.c", Secret: deleteSecret, HTTPClient: hc})
		wantHTTPError(t, err, http.StatusBadRequest)
		checkNoSecret(t, err, deleteSecret)
		// A handle that is not the table's shape.
		err = DeleteShape(t.Context(), DeleteOptions{URL: e.url, Table: "items", Handle: oldHandle + "x", Secret: deleteSecret, HTTPClient: hc})
		he := wantHTTPError(t, err, http.StatusBadRequest)
		if !strings.Contains(string(he.Body), "do not match") {
			t.Errorf("body %q", he.Body)
		}
		checkNoSecret(t, err, deleteSecret)
	})
	// Nothing above dropped the shape.
	if s3, _ := s.fresh(); s3.Handle() != oldHandle {
		s.t.Fatalf("shape rotated by failed deletes: handle %s, want %s", s3.Handle(), oldHandle)
	}
}

// deleteByHandle deletes the shape by its handle: the old handle is gone,
// a 409 must-refetch (or a fresh snapshot under a new handle).
func (s *deleteRun) deleteByHandle() {
	t, hc := s.t, s.hc
	if err := DeleteShape(t.Context(), DeleteOptions{URL: s.e.url, Table: "items", Handle: s.oldHandle, Secret: deleteSecret, HTTPClient: hc}); err != nil {
		t.Fatalf("DeleteShape: %v", err)
	}

	q := url.Values{"table": {"items"}, "offset": {s.oldOffset}, "handle": {s.oldHandle}, "secret": {deleteSecret}}
	resp, err := hc.Get(s.e.url + "?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	switch nh := resp.Header.Get("electric-handle"); {
	case resp.StatusCode == http.StatusConflict && strings.Contains(string(body), `"must-refetch"`):
	case resp.StatusCode == http.StatusOK && nh != "" && nh != s.oldHandle:
	default:
		t.Fatalf("old handle after the delete: %d, handle %q: %s", resp.StatusCode, nh, body)
	}
}

// resumeAtOldHandle: a reader resuming at the old handle is told to
// refetch and gets the new snapshot, with the update folded in.
func (s *deleteRun) resumeAtOldHandle() {
	t := s.t
	s4, err := New(Options{URL: s.shapeURL, Params: Params{Table: "items"}, Offset: s.oldOffset, Handle: s.oldHandle, HTTPClient: s.hc})
	if err != nil {
		t.Fatal(err)
	}
	ms := readToUpToDate(t, s4)
	if !ms[0].IsMustRefetch() {
		t.Errorf("resumed reader: first message %s, want must-refetch", ms[0].Raw())
	}
	sh := NewShape(nil)
	for _, m := range ms {
		sh.Apply(m)
	}
	if d := diffRows(sh.Rows(), s.e.tableRows("items")); d != "" {
		t.Errorf("resumed reader: %s", d)
	}
}

// freshSnapshot: a reader from offset -1 gets the fresh snapshot: the new
// value is an insert of the snapshot, not an update replayed from the old
// log.
func (s *deleteRun) freshSnapshot() {
	t := s.t
	s5, ms := s.fresh()
	s.newHandle = s5.Handle()
	if s.newHandle == s.oldHandle {
		t.Fatalf("handle %s after the delete", s.newHandle)
	}
	if n := countOps(ms, Update); n != 0 {
		t.Errorf("%d updates in the fresh snapshot", n)
	}
	if n := countOps(ms, Insert); n != 5 {
		t.Errorf("%d inserts in the fresh snapshot, want 5", n)
	}
	for _, m := range ms {
		if m.Headers.Operation == Insert && m.Value["id"] == "1" && m.Value["title"] != "new ciphertext" {
			t.Errorf("row 1 in the fresh snapshot: %v", m.Value)
		}
	}
}

// deleteCurrent: without Handle, the table's current shape is dropped;
// then there is none left to drop.
func (s *deleteRun) deleteCurrent() {
	t, hc := s.t, s.hc
	if err := DeleteShape(t.Context(), DeleteOptions{URL: s.shapeURL, Table: "items", HTTPClient: hc}); err != nil {
		t.Fatalf("DeleteShape with the secret in the URL: %v", err)
	}
	err := DeleteShape(t.Context(), DeleteOptions{URL: s.e.url, Table: "items", Secret: deleteSecret, HTTPClient: hc})
	he := wantHTTPError(t, err, http.StatusNotFound)
	if !strings.Contains(string(he.Body), "No existing shape found") {
		t.Errorf("body %q", he.Body)
	}
	checkNoSecret(t, err, deleteSecret)
	if s6, _ := s.fresh(); s6.Handle() == s.newHandle {
		t.Errorf("handle %s survived the second delete", s.newHandle)
	}
}

func TestDeleteShapeDisabled(t *testing.T) {
	e := newEnv(t, electrictest.Options{})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	err := DeleteShape(t.Context(), DeleteOptions{URL: e.url, Table: "items", HTTPClient: testClient()})
	he := wantHTTPError(t, err, http.StatusMethodNotAllowed)
	if !strings.Contains(err.Error(), "DELETE not allowed") {
		t.Errorf("error %q", err)
	}
	if he.Header.Get("cache-control") != "no-cache" {
		t.Errorf("headers %v", he.Header)
	}
}

// countingClient fails every request, counting them.
func countingClient(n *atomic.Int32) *http.Client {
	return &http.Client{Transport: roundTripFunc(func(*http.Request) (*http.Response, error) {
		n.Add(1)
		return nil, errors.New("unexpected request")
	})}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func TestDeleteShapeInvalidOptions(t *testing.T) {
	var n atomic.Int32
	hc := countingClient(&n)
	for _, tc := range []struct {
		name string
		opts DeleteOptions
		want string
	}{
		{"no table", DeleteOptions{URL: "http://localhost:1/v1/shape", Secret: deleteSecret}, "Table is required"},
		{"no URL", DeleteOptions{Table: "items", Secret: deleteSecret}, "URL is required"},
		{"not http", DeleteOptions{URL: "ftp://localhost/v1/shape?secret=x", Table: "items"}, "http(s)"},
		{"unparsable", DeleteOptions{URL: "http://localhost/v1/shape?secret=" + deleteSecret + "\n", Table: "items"}, "DeleteOptions.URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.HTTPClient = hc
			err := DeleteShape(t.Context(), tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
			checkNoSecret(t, err, deleteSecret)
		})
	}
	if n.Load() != 0 {
		t.Errorf("%d requests made", n.Load())
	}
}

func TestDeleteShapeRequest(t *testing.T) {
	var got []*http.Request
	status := http.StatusAccepted
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r)
		if status == http.StatusFound {
			http.Redirect(w, r, "/elsewhere?"+r.URL.RawQuery, status)
			return
		}
		w.WriteHeader(status)
		// A server echoing the request URL must not leak the secret.
		fmt.Fprintf(w, `{"url":%q}`, r.URL.String())
	}))
	defer srv.Close()

	// The proxy's fixed params are kept; Secret replaces a legacy api_secret.
	opts := DeleteOptions{URL: srv.URL + "/v1/shape?source_id=s1&api_secret=0ld-legacy-value", Table: `public."It""ems"`, Handle: "123-456", Secret: deleteSecret}
	if err := DeleteShape(t.Context(), opts); err != nil {
		t.Fatal(err)
	}
	r := got[0]
	want := url.Values{"source_id": {"s1"}, "table": {`public."It""ems"`}, "handle": {"123-456"}, "secret": {deleteSecret}}
	if r.Method != http.MethodDelete || r.URL.Path != "/v1/shape" || r.URL.Query().Encode() != want.Encode() {
		t.Errorf("request %s %s, want DELETE /v1/shape?%s", r.Method, r.URL, want.Encode())
	}

	// Redirects are not followed (Go would turn the DELETE into a GET).
	status = http.StatusFound
	err := DeleteShape(t.Context(), opts)
	wantHTTPError(t, err, http.StatusFound)
	checkNoSecret(t, err, deleteSecret)
	checkNoSecret(t, err, "0ld-legacy-value")
	if len(got) != 2 {
		t.Errorf("%d requests, want 2", len(got))
	}

	// Other statuses, with bodies echoing the secret.
	status = http.StatusInternalServerError
	err = DeleteShape(t.Context(), opts)
	he := wantHTTPError(t, err, http.StatusInternalServerError)
	if !strings.Contains(string(he.Body), "REDACTED") {
		t.Errorf("body %q", he.Body)
	}
	checkNoSecret(t, err, deleteSecret)

	// Network errors and cancellation.
	srv.Close()
	err = DeleteShape(t.Context(), opts)
	if err == nil {
		t.Fatal("no error from a closed server")
	}
	checkNoSecret(t, err, deleteSecret)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := DeleteShape(ctx, opts); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}
