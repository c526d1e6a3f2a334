package client

import (
	"context"
	"errors"
	"sync"
)

// A TokenSource supplies the bearer token sent as
// "Authorization: Bearer <token>".
type TokenSource interface {
	Token(ctx context.Context) (string, error)
}

// A RefreshableTokenSource can replace a token the server refused. The
// stream calls Refresh with the token that got a 401; an implementation
// shared by many streams should mint a new token only if rejected is still
// its current one, so that N streams failing together cause one refresh.
// [SharedTokenSource] does exactly that.
type RefreshableTokenSource interface {
	TokenSource
	Refresh(ctx context.Context, rejected string) (string, error)
}

// StaticToken is a TokenSource that always returns the same token. A 401
// reaches OnError as an *HTTPError.
type StaticToken string

// Token returns t.
func (t StaticToken) Token(context.Context) (string, error) { return string(t), nil }

// SharedTokenSource caches a token obtained from a fetch function and
// refreshes it single-flight: however many goroutines ask for a refresh of
// the same rejected token at once, fetch runs once and all of them get its
// result. Share one SharedTokenSource among all streams that use the same
// credentials. It starts no goroutines: the first caller runs fetch with
// its own context, the others wait (each honouring its own context) and
// take over if the first caller's context ends.
type SharedTokenSource struct {
	fetch func(ctx context.Context) (string, error)

	mu    sync.Mutex
	token string
	valid bool
	call  *tokenFlight
}

type tokenFlight struct {
	done   chan struct{}
	token  string
	err    error
	leader context.Context
}

// NewSharedTokenSource returns a SharedTokenSource that obtains tokens
// from fetch (an OAuth client, a command, a call to your auth service).
func NewSharedTokenSource(fetch func(ctx context.Context) (string, error)) *SharedTokenSource {
	return &SharedTokenSource{fetch: fetch}
}

// Token returns the cached token, fetching one if there is none.
func (s *SharedTokenSource) Token(ctx context.Context) (string, error) {
	return s.get(ctx, func(tok string) bool { return true })
}

// Refresh returns a token other than rejected: the current token if
// another caller already replaced rejected, or a freshly fetched one.
func (s *SharedTokenSource) Refresh(ctx context.Context, rejected string) (string, error) {
	return s.get(ctx, func(tok string) bool { return tok != rejected })
}

// get returns the cached token if acceptable, else joins or starts a fetch.
func (s *SharedTokenSource) get(ctx context.Context, acceptable func(string) bool) (string, error) {
	for {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		s.mu.Lock()
		if s.call == nil && s.valid && acceptable(s.token) {
			tok := s.token
			s.mu.Unlock()
			return tok, nil
		}
		if c := s.call; c != nil {
			s.mu.Unlock()
			select {
			case <-c.done:
			case <-ctx.Done():
				return "", ctx.Err()
			}
			if c.err != nil && c.leader.Err() != nil && errors.Is(c.err, c.leader.Err()) {
				continue // the leader gave up; try again as a leader ourselves
			}
			if c.err != nil {
				return "", c.err
			}
			if acceptable(c.token) {
				return c.token, nil
			}
			continue
		}
		c := &tokenFlight{done: make(chan struct{}), leader: ctx}
		s.call = c
		s.mu.Unlock()

		tok, err := s.fetch(ctx)

		s.mu.Lock()
		c.token, c.err = tok, err
		if err == nil {
			s.token, s.valid = tok, true
		}
		s.call = nil
		close(c.done)
		s.mu.Unlock()
		return tok, err
	}
}
