package electrictest

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"
)

// A TestServer is a Server listening on a loopback port.
type TestServer struct {
	*Server
	// URL is the base URL, e.g. http://127.0.0.1:41234; shapes are at
	// URL + "/v1/shape".
	URL string
}

// StartTest starts a Server for a test on a loopback port and stops it when
// the test ends. opts.DatabaseURL is required (see internal/pgtest).
func StartTest(t testing.TB, opts Options) *TestServer {
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
