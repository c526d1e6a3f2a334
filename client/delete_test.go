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
	e := newEnv(t, electrictest.Options{Secret: deleteSecret, AllowDelete: true, LongPollTimeout: 300 * time.Millisecond})
	e.exec(fmt.Sprintf(itemsDDL, "items"))
	e.exec(`INSERT INTO items (id, title) SELECT i, 'old ciphertext ' || i FROM generate_series(1, 5) i`)
	shapeURL := e.url + "?secret=" + url.QueryEscape(deleteSecret)
	hc := testClient()

	// A reader syncs the shape, then follows an update into its log.
	s, err := New(Options{URL: shapeURL, Params: Params{Table: "items"}, Live: true, HTTPClient: hc, Backoff: fastBackoff()})
	if err != nil {
		t.Fatal(err)
	}
	readToUpToDate(t, s)
	oldHandle := s.Handle()
	e.exec(`UPDATE items SET title = 'new ciphertext' WHERE id = 1`)
	for sawUpdate := false; !sawUpdate; {
		for _, m := range readToUpToDate(t, s) {
			sawUpdate = sawUpdate || m.Headers.Operation == Update
		}
	}
	oldOffset := s.Offset()
	s.Close()

	// Before the delete, a new reader replays the old log: the snapshot,
	// then the update.
	fresh := func() (*ShapeStream, []Message) {
		t.Helper()
		s, err := New(Options{URL: shapeURL, Params: Params{Table: "items"}, HTTPClient: hc})
		if err != nil {
			t.Fatal(err)
		}
		return s, readToUpToDate(t, s)
	}
	countOps := func(ms []Message, op Operation) (n int) {
		for _, m := range ms {
			if m.Headers.Operation == op {
				n++
			}
		}
		return n
	}
	s2, ms := fresh()
	if s2.Handle() != oldHandle || countOps(ms, Update) != 1 {
		t.Fatalf("before the delete: handle %s (want %s), %d updates (want 1)", s2.Handle(), oldHandle, countOps(ms, Update))
	}

	t.Run("wrong secret", func(t *testing.T) {
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

	t.Run("bad params", func(t *testing.T) {
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
	if s3, _ := fresh(); s3.Handle() != oldHandle {
		t.Fatalf("shape rotated by failed deletes: handle %s, want %s", s3.Handle(), oldHandle)
	}

	if err := DeleteShape(t.Context(), DeleteOptions{URL: e.url, Table: "items", Handle: oldHandle, Secret: deleteSecret, HTTPClient: hc}); err != nil {
		t.Fatalf("DeleteShape: %v", err)
	}

	// The old handle is gone: a 409 must-refetch (or a fresh snapshot under
	// a new handle).
	q := url.Values{"table": {"items"}, "offset": {oldOffset}, "handle": {oldHandle}, "secret": {deleteSecret}}
	resp, err := hc.Get(e.url + "?" + q.Encode())
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	switch nh := resp.Header.Get("electric-handle"); {
	case resp.StatusCode == http.StatusConflict && strings.Contains(string(body), `"must-refetch"`):
	case resp.StatusCode == http.StatusOK && nh != "" && nh != oldHandle:
	default:
		t.Fatalf("old handle after the delete: %d, handle %q: %s", resp.StatusCode, nh, body)
	}

	// A reader resuming at the old handle is told to refetch and gets the
	// new snapshot, with the update folded in.
	s4, err := New(Options{URL: shapeURL, Params: Params{Table: "items"}, Offset: oldOffset, Handle: oldHandle, HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	ms = readToUpToDate(t, s4)
	if !ms[0].IsMustRefetch() {
		t.Errorf("resumed reader: first message %s, want must-refetch", ms[0].Raw())
	}
	sh := NewShape(nil)
	for _, m := range ms {
		sh.Apply(m)
	}
	if d := diffRows(sh.Rows(), e.tableRows("items")); d != "" {
		t.Errorf("resumed reader: %s", d)
	}

	// A reader from offset -1 gets the fresh snapshot: the new value is an
	// insert of the snapshot, not an update replayed from the old log.
	s5, ms := fresh()
	newHandle := s5.Handle()
	if newHandle == oldHandle {
		t.Fatalf("handle %s after the delete", newHandle)
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

	// Without Handle, the table's current shape is dropped; then there is
	// none left to drop.
	if err := DeleteShape(t.Context(), DeleteOptions{URL: shapeURL, Table: "items", HTTPClient: hc}); err != nil {
		t.Fatalf("DeleteShape with the secret in the URL: %v", err)
	}
	err = DeleteShape(t.Context(), DeleteOptions{URL: e.url, Table: "items", Secret: deleteSecret, HTTPClient: hc})
	he := wantHTTPError(t, err, http.StatusNotFound)
	if !strings.Contains(string(he.Body), "No existing shape found") {
		t.Errorf("body %q", he.Body)
	}
	checkNoSecret(t, err, deleteSecret)
	if s6, _ := fresh(); s6.Handle() == newHandle {
		t.Errorf("handle %s survived the second delete", newHandle)
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
