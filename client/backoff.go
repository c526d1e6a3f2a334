package client

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// backoff tracks the delay ceiling of consecutive retries.
type backoff struct {
	cfg     Backoff
	ceiling time.Duration // ceiling of the next wait; 0 before the first
}

// next returns the wait before the next retry: full jitter below the
// current ceiling, or retryAfter (capped) if that is longer. It then raises
// the ceiling.
func (b *backoff) next(retryAfter time.Duration) time.Duration {
	if b.ceiling == 0 {
		b.ceiling = b.cfg.Initial
	}
	wait := time.Duration(0)
	if b.ceiling > 0 {
		wait = time.Duration(rand.Int64N(int64(b.ceiling)))
	}
	if retryAfter > b.cfg.MaxRetryAfter {
		retryAfter = b.cfg.MaxRetryAfter
	}
	if retryAfter > wait {
		wait = retryAfter
	}
	c := time.Duration(float64(b.ceiling) * b.cfg.Multiplier)
	if c > b.cfg.Max || c < b.ceiling { // cap, and guard against overflow
		c = b.cfg.Max
	}
	b.ceiling = c
	return wait
}

func (b *backoff) reset() { b.ceiling = 0 }

// parseRetryAfter reads a Retry-After header: delta-seconds or an
// HTTP-date. It returns 0 for a missing or malformed header.
func parseRetryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(24*time.Hour/time.Second) {
			secs = int64(24 * time.Hour / time.Second)
		}
		return time.Duration(secs) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}
