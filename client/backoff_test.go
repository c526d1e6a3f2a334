package client

import (
	"net/http"
	"testing"
	"time"
)

func TestBackoffFullJitter(t *testing.T) {
	b := backoff{cfg: Backoff{}.withDefaults()}
	ceilings := []time.Duration{1, 2, 4, 8, 16, 32, 32, 32}
	for i, c := range ceilings {
		c *= time.Second
		for range 50 {
			bb := b
			if w := bb.next(0); w < 0 || w >= c {
				t.Fatalf("retry %d: wait %v outside [0, %v)", i+1, w, c)
			}
		}
		b.next(0)
	}
	b.reset()
	if w := b.next(0); w >= time.Second {
		t.Errorf("after reset: %v", w)
	}
}

func TestBackoffRetryAfter(t *testing.T) {
	b := backoff{cfg: Backoff{Initial: time.Millisecond}.withDefaults()}
	if w := b.next(5 * time.Second); w != 5*time.Second {
		t.Errorf("Retry-After 5s: wait %v", w)
	}
	b = backoff{cfg: Backoff{Initial: time.Millisecond}.withDefaults()}
	if w := b.next(3 * time.Hour); w != time.Hour {
		t.Errorf("Retry-After 3h: wait %v, want the 1h cap", w)
	}
	b = backoff{cfg: Backoff{Initial: time.Millisecond, MaxRetryAfter: 10 * time.Millisecond}.withDefaults()}
	if w := b.next(time.Minute); w != 10*time.Millisecond {
		t.Errorf("MaxRetryAfter: wait %v", w)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	tests := map[string]time.Duration{
		"":                              0,
		"7":                             7 * time.Second,
		" 10 ":                          10 * time.Second,
		"0":                             0,
		"-3":                            0,
		"soon":                          0,
		"Fri, 02 Jan 2026 03:04:35 GMT": 30 * time.Second,
		"Fri, 02 Jan 2026 03:00:00 GMT": 0,
		"99999999999":                   24 * time.Hour,
	}
	for v, want := range tests {
		h := http.Header{}
		if v != "" {
			h.Set("Retry-After", v)
		}
		if got := parseRetryAfter(h, now); got != want {
			t.Errorf("Retry-After %q = %v, want %v", v, got, want)
		}
	}
}

func TestRecoveryDelay(t *testing.T) {
	cfg := Backoff{}.withDefaults()
	for n := 1; n <= 8; n++ {
		ceiling := min(time.Second<<(n-1), 32*time.Second)
		if d := recoveryDelay(cfg, n); d < 0 || d >= ceiling {
			t.Errorf("recovery %d: %v ≥ %v", n, d, ceiling)
		}
	}
}
