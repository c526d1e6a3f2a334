package proxy

import (
	"math"
	"sync"
	"time"
)

// limiter holds a token bucket and a live-request count per user.
type limiter struct {
	rate    float64
	burst   float64
	maxLive int

	mu    sync.Mutex
	users map[string]*userState
	swept time.Time
	now   func() time.Time
}

type userState struct {
	tokens float64
	last   time.Time
	live   int
}

func newLimiter(l Limits) *limiter {
	return &limiter{rate: l.RequestsPerSecond, burst: float64(l.Burst), maxLive: l.MaxLivePerUser,
		users: map[string]*userState{}, now: time.Now}
}

// allow takes a token from the user's bucket. When the bucket is empty it
// returns false and how long until a token is available.
func (l *limiter) allow(user string) (bool, time.Duration) {
	if l.rate < 0 {
		return true, 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	l.sweep(now)
	u := l.user(user, now)
	u.tokens = math.Min(l.burst, u.tokens+now.Sub(u.last).Seconds()*l.rate)
	u.last = now
	if u.tokens < 1 {
		wait := time.Duration((1 - u.tokens) / l.rate * float64(time.Second))
		return false, wait
	}
	u.tokens--
	return true, 0
}

// acquireLive counts a live request; release must be called when it ends.
func (l *limiter) acquireLive(user string) (release func(), ok bool) {
	if l.maxLive < 0 {
		return func() {}, true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	u := l.user(user, l.now())
	if u.live >= l.maxLive {
		return nil, false
	}
	u.live++
	var once sync.Once
	return func() {
		once.Do(func() {
			l.mu.Lock()
			u.live--
			l.mu.Unlock()
		})
	}, true
}

func (l *limiter) user(name string, now time.Time) *userState {
	u := l.users[name]
	if u == nil {
		u = &userState{tokens: l.burst, last: now}
		l.users[name] = u
	}
	return u
}

// sweep forgets users whose bucket is full again and who hold no live
// request, once a minute.
func (l *limiter) sweep(now time.Time) {
	if now.Sub(l.swept) < time.Minute {
		return
	}
	l.swept = now
	for name, u := range l.users {
		if u.live == 0 && (l.rate <= 0 || u.tokens+now.Sub(u.last).Seconds()*l.rate >= l.burst) {
			delete(l.users, name)
		}
	}
}
