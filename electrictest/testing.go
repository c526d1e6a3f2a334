package electrictest

import (
	"context"
	"net/http/httptest"
	"time"
)

// A TestServer is a Server listening on a loopback port.
type TestServer struct {
	*Server
	// URL is the base URL, e.g. http://127.0.0.1:41234; shapes are at
	// URL + "/v1/shape".
	URL string
}

// TB is the part of testing.TB that StartTest uses; *testing.T and
// *testing.B satisfy it. (electrictest does not import package testing, so
// that programs serving shapes with it do not link it.)
type TB interface {
	Helper()
	Fatalf(format string, args ...any)
	Cleanup(func())
}

// StartTest starts a Server for a test on a loopback port and stops it when
// the test ends. opts.DatabaseURL is required (see internal/pgtest).
func StartTest(t TB, opts Options) *TestServer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := New(ctx, opts)
	if err != nil {
		t.Fatalf("electrictest: %v", err)
	}
	hs := httptest.NewServer(s)
	t.Cleanup(func() {
		hs.CloseClientConnections()
		s.Close()
		hs.Close()
	})
	return &TestServer{Server: s, URL: hs.URL}
}
