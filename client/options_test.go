package client

import (
	"errors"
	"net/url"
	"strings"
	"testing"
)

func TestRequestURL(t *testing.T) {
	s, err := New(Options{
		URL: "http://electric:3000/v1/shape?secret=s3",
		Params: Params{
			Table: "items", Where: "a = $1 AND b = $2", Params: []string{"x y", "2"},
			Columns: []string{"id", `we"ird`, "Title"}, Replica: "full", Log: "full",
			Extra: url.Values{"source_id": {"abc"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	got := s.requestURL().String()
	want := "http://electric:3000/v1/shape?columns=%22id%22%2C%22we%22%22ird%22%2C%22Title%22&log=full&offset=-1" +
		"&params%5B1%5D=x+y&params%5B2%5D=2&replica=full&secret=s3&source_id=abc&table=items&where=a+%3D+%241+AND+b+%3D+%242"
	if got != want {
		t.Errorf("initial URL\n got %s\nwant %s", got, want)
	}
	if r := redactURL(s.requestURL()); strings.Contains(r, "s3") {
		t.Errorf("redacted URL leaks the secret: %s", r)
	}

	// Catch-up, then live with the cursor.
	s.offset, s.handle = "0_0", "h1"
	if q := s.requestURL().Query(); q.Get("handle") != "h1" || q.Get("offset") != "0_0" || q.Has("live") || q.Has("cursor") {
		t.Errorf("catch-up query %v", q)
	}
	s.opts.Live, s.upToDate, s.cursor = true, true, "1234"
	if q := s.requestURL().Query(); q.Get("live") != "true" || q.Get("cursor") != "1234" {
		t.Errorf("live query %v", q)
	}

	// After a 409: offset -1, the new handle, expired_handle, a one-shot cache-buster.
	s.mustRefetch("h2", nil)
	q := s.requestURL().Query()
	if q.Get("offset") != "-1" || q.Get("handle") != "h2" || q.Get("expired_handle") != "h1" || q.Get("cache-buster") == "" || q.Has("live") {
		t.Errorf("after 409: %v", q)
	}
	q = s.requestURL().Query()
	if q.Has("cache-buster") || q.Get("expired_handle") != "h1" {
		t.Errorf("second request after 409: %v", q)
	}
	if m, _ := s.Next(t.Context()); !m.IsMustRefetch() || string(m.Raw()) != mustRefetchJSON {
		t.Errorf("queued message %s", m.Raw())
	}
}

func TestRequestURLSorted(t *testing.T) {
	s, _ := New(Options{URL: "http://h/v1/shape", Params: Params{Table: "foo", Where: "a=1", Columns: []string{"id"}}, Handle: "potato", Offset: "0_0"})
	// The TypeScript client's test fixture: log=full is always sent.
	want := "http://h/v1/shape?columns=%22id%22&handle=potato&log=full&offset=0_0&table=foo&where=a%3D1"
	if got := s.requestURL().String(); got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
}

// log=full is sent on every request unless the shape, the URL or Extra
// name another log mode.
func TestRequestURLLogMode(t *testing.T) {
	for _, tt := range []struct {
		url  string
		p    Params
		want string
	}{
		{"http://h/v1/shape", Params{Table: "t"}, "full"},
		{"http://h/v1/shape", Params{Table: "t", Log: "changes_only"}, "changes_only"},
		{"http://h/v1/shape", Params{Table: "t", Extra: url.Values{"log": {"changes_only"}}}, "changes_only"},
		{"http://h/v1/shape?log=changes_only", Params{}, "changes_only"},
	} {
		s, err := New(Options{URL: tt.url, Params: tt.p, Live: true})
		if err != nil {
			t.Fatal(err)
		}
		for _, step := range []func(){
			func() {},
			func() { s.offset, s.handle = "0_0", "h" },
			func() { s.upToDate, s.cursor = true, "7" },
			func() { s.mustRefetch("h2", nil) },
		} {
			step()
			if q := s.requestURL().Query(); len(q["log"]) != 1 || q.Get("log") != tt.want {
				t.Errorf("%s %+v: log=%q in %v, want %s", tt.url, tt.p, q["log"], q, tt.want)
			}
		}
	}
}

func TestNewValidation(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		want any
	}{
		{"no url", Options{}, nil},
		{"not http", Options{URL: "ftp://x"}, nil},
		{"reserved extra", Options{URL: "http://x", Params: Params{Extra: url.Values{"cursor": {"1"}}}}, &ReservedParamError{}},
		{"reserved subset", Options{URL: "http://x", Params: Params{Extra: url.Values{"subset__where": {"1"}}}}, &ReservedParamError{}},
		{"reserved in URL", Options{URL: "http://x?offset=3"}, &ReservedParamError{}},
		{"conflict", Options{URL: "http://x", Params: Params{Table: "a", Extra: url.Values{"table": {"b"}}}}, nil},
		{"offset without handle", Options{URL: "http://x", Offset: "12_3"}, ErrMissingHandle},
	}
	for _, tt := range tests {
		_, err := New(tt.opts)
		if err == nil {
			t.Errorf("%s: no error", tt.name)
			continue
		}
		switch w := tt.want.(type) {
		case error:
			if !errors.Is(err, w) {
				var rp *ReservedParamError
				if !(errors.As(w, &rp) && errors.As(err, &rp)) {
					t.Errorf("%s: err = %v, want %v", tt.name, err, w)
				}
			}
		}
	}
	for _, ok := range []Options{
		{URL: "http://x", Offset: "now"},
		{URL: "http://x", Offset: "12_3", Handle: "h"},
		{URL: "http://x", Params: Params{Extra: url.Values{"table": {"b"}}}},
	} {
		if _, err := New(ok); err != nil {
			t.Errorf("%+v: %v", ok, err)
		}
	}
}
