package proxy

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sync"
	"time"
)

// healthTTL is how long an answer of GET /healthz is reused: the endpoint
// is public, and must not let anyone make upstream requests at will.
const healthTTL = time.Second

// healthCache holds the last upstream health check.
type healthCache struct {
	mu       sync.Mutex
	at       time.Time // of status and body; zero: none yet
	status   int
	body     map[string]any
	checking chan struct{} // closed when the check in flight ends
}

func (p *Proxy) health(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	status, body := p.healthState(r.Context())
	writeJSON(w, status, body)
}

// healthState returns the upstream health, checked at most once per
// healthTTL: concurrent callers share one check.
func (p *Proxy) healthState(ctx context.Context) (int, map[string]any) {
	h := &p.healthz
	h.mu.Lock()
	for {
		if !h.at.IsZero() && time.Since(h.at) < healthTTL {
			defer h.mu.Unlock()
			return h.status, h.body
		}
		if h.checking == nil {
			break
		}
		ch := h.checking
		h.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return http.StatusServiceUnavailable, map[string]any{"status": "upstream unavailable"}
		}
		h.mu.Lock()
	}
	ch := make(chan struct{})
	h.checking = ch
	h.mu.Unlock()
	// Apart from ctx: the check is shared with whoever waits for it.
	status, body := p.checkHealth(context.WithoutCancel(ctx))
	h.mu.Lock()
	h.at, h.status, h.body, h.checking = time.Now(), status, body, nil
	h.mu.Unlock()
	close(ch)
	return status, body
}

// checkHealth asks the upstream's /v1/health.
func (p *Proxy) checkHealth(ctx context.Context) (int, map[string]any) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	u := *p.upstream
	u.Path += "/v1/health"
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	resp, err := p.client.Do(req)
	if err != nil {
		p.metrics.upErrors.Add(1)
		return http.StatusServiceUnavailable, map[string]any{"status": "upstream unavailable"}
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
	}
	json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&body)
	if resp.StatusCode != http.StatusOK {
		return http.StatusServiceUnavailable, map[string]any{"status": "upstream not ready", "upstream": body.Status}
	}
	return http.StatusOK, map[string]any{"status": "ok", "upstream": body.Status}
}
