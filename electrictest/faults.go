package electrictest

import (
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// faults are failures injected into shape responses, for testing how
// clients and proxies recover. They are real HTTP behaviour (a status, a
// connection cut mid-body, a slow answer), not a mock of the protocol.
type faults struct {
	mu         sync.Mutex
	failN      int
	failStatus int
	retryAfter time.Duration
	cutN       int
	cutAfter   int
	delay      time.Duration
}

// FailNext answers the next n shape requests with status (503 if 0) and,
// when retryAfter > 0, a Retry-After header in whole seconds.
func (s *Server) FailNext(n, status int, retryAfter time.Duration) {
	if status == 0 {
		status = http.StatusServiceUnavailable
	}
	s.faults.mu.Lock()
	s.faults.failN, s.faults.failStatus, s.faults.retryAfter = n, status, retryAfter
	s.faults.mu.Unlock()
}

// CutNext cuts the connection of the next n shape responses after
// afterBytes bytes of body: the client sees a truncated chunked body.
func (s *Server) CutNext(n, afterBytes int) {
	s.faults.mu.Lock()
	s.faults.cutN, s.faults.cutAfter = n, afterBytes
	s.faults.mu.Unlock()
}

// SetDelay delays every shape response by d before its headers (0 turns it off).
func (s *Server) SetDelay(d time.Duration) {
	s.faults.mu.Lock()
	s.faults.delay = d
	s.faults.mu.Unlock()
}

// before applies delay and failures; false means the response was written.
func (f *faults) before(w http.ResponseWriter, r *http.Request) bool {
	f.mu.Lock()
	delay := f.delay
	fail := f.failN > 0
	status, retryAfter := f.failStatus, f.retryAfter
	if fail {
		f.failN--
	}
	f.mu.Unlock()
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-r.Context().Done():
			return false
		}
	}
	if fail {
		h := w.Header()
		if retryAfter > 0 {
			h.Set("retry-after", strconv.Itoa(int((retryAfter+time.Second-1)/time.Second)))
		}
		h.Set("cache-control", "no-store")
		h.Set("content-type", "application/json; charset=utf-8")
		w.WriteHeader(status)
		b, _ := json.Marshal(map[string]string{"message": "electrictest: injected failure"})
		w.Write(b)
		return false
	}
	return true
}

// wrap returns w, or a writer that cuts the connection after cutAfter bytes.
func (f *faults) wrap(w http.ResponseWriter) http.ResponseWriter {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cutN == 0 {
		return w
	}
	f.cutN--
	return &cutWriter{ResponseWriter: w, left: f.cutAfter}
}

type cutWriter struct {
	http.ResponseWriter
	left int
}

func (c *cutWriter) Write(b []byte) (int, error) {
	if len(b) <= c.left {
		c.left -= len(b)
		return c.ResponseWriter.Write(b)
	}
	c.ResponseWriter.Write(b[:c.left])
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
	// net/http closes the connection without finishing the chunked body.
	panic(http.ErrAbortHandler)
}

func (c *cutWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}
