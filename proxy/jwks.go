package proxy

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	jose "github.com/go-jose/go-jose/v4"
)

// jwksCache holds the keys of a JWKS URL. It is fetched on first use,
// again after MaxAge, and on an unknown kid at most once per
// MinRefreshInterval. A fetch runs on its own goroutine, one at a time,
// never under mu: verifications with a known key go on with the keys at
// hand meanwhile; only the first use and an unknown kid wait for it. Ages
// are measured with the verifier's clock.
type jwksCache struct {
	url         string
	client      *http.Client
	timeout     time.Duration
	maxAge      time.Duration
	minInterval time.Duration
	now         func() time.Time

	mu        sync.Mutex
	set       []*verifyKey
	fetchedAt time.Time     // of set
	triedAt   time.Time     // when the last fetch started (zero: never)
	fetching  chan struct{} // closed when the fetch in flight ends; nil when none
}

func newJWKSCache(cfg AuthConfig, now func() time.Time) *jwksCache {
	c := &jwksCache{url: cfg.JWKSURL, client: cfg.HTTPClient, timeout: cfg.JWKSTimeout,
		maxAge: cfg.JWKSMaxAge, minInterval: cfg.JWKSMinRefreshInterval, now: now}
	if c.client == nil {
		c.client = http.DefaultClient
	}
	if c.timeout <= 0 {
		c.timeout = 5 * time.Second
	}
	if c.maxAge <= 0 {
		c.maxAge = time.Hour
	}
	if c.minInterval <= 0 {
		c.minInterval = 30 * time.Second
	}
	return c
}

func (c *jwksCache) has(kid string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, k := range c.set {
		if k.id == kid {
			return true
		}
	}
	return false
}

// keys returns the current keys. A set older than maxAge is refreshed in
// the background (its keys are used meanwhile); before the first set,
// keys waits for the first fetch.
func (c *jwksCache) keys(ctx context.Context) []*verifyKey {
	c.mu.Lock()
	now := c.now()
	if (c.set == nil || now.Sub(c.fetchedAt) > c.maxAge) && c.fetching == nil && c.mayTry(now) {
		c.startLocked(ctx, now)
	}
	ch := c.fetching
	set := c.set
	c.mu.Unlock()
	if set == nil && ch != nil {
		return c.wait(ctx, ch)
	}
	return set
}

// refreshForUnknown refetches the set for a kid it lacks, unless a fetch
// started less than minInterval ago; refreshed is false then. A fetch in
// flight is waited for rather than repeated.
func (c *jwksCache) refreshForUnknown(ctx context.Context) (keys []*verifyKey, refreshed bool) {
	c.mu.Lock()
	if c.fetching == nil {
		now := c.now()
		if !c.mayTry(now) {
			set := c.set
			c.mu.Unlock()
			return set, false
		}
		c.startLocked(ctx, now)
	}
	ch := c.fetching
	c.mu.Unlock()
	return c.wait(ctx, ch), true
}

func (c *jwksCache) mayTry(now time.Time) bool {
	return c.triedAt.IsZero() || now.Sub(c.triedAt) >= c.minInterval
}

// wait waits for the fetch that closes ch (or ctx) and returns the keys.
func (c *jwksCache) wait(ctx context.Context, ch chan struct{}) []*verifyKey {
	select {
	case <-ch:
	case <-ctx.Done():
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.set
}

// startLocked starts a fetch; on failure the old keys stay. It runs apart
// from ctx's cancellation: the caller going away leaves it to others.
func (c *jwksCache) startLocked(ctx context.Context, now time.Time) {
	ch := make(chan struct{})
	c.triedAt, c.fetching = now, ch
	ctx = context.WithoutCancel(ctx)
	go func() {
		keys, err := c.fetch(ctx)
		c.mu.Lock()
		if err == nil {
			c.set, c.fetchedAt = keys, c.now()
		}
		c.fetching = nil
		c.mu.Unlock()
		close(ch)
	}()
}

func (c *jwksCache) fetch(ctx context.Context) ([]*verifyKey, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("JWKS: status %d", resp.StatusCode)
	}
	return parseJWKS(io.LimitReader(resp.Body, 1<<20))
}

// parseJWKS reads the signature keys of a JWK set with go-jose: RSA (2048
// bits or more), EC and OKP (Ed25519) public keys. Symmetric ("oct") and
// private keys, keys for encryption, and keys go-jose cannot read are
// skipped, each on its own.
func parseJWKS(r io.Reader) ([]*verifyKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.NewDecoder(r).Decode(&set); err != nil {
		return nil, err
	}
	keys := []*verifyKey{}
	for _, raw := range set.Keys {
		var k jose.JSONWebKey
		if k.UnmarshalJSON(raw) != nil || !k.Valid() || !k.IsPublic() || k.Use != "" && k.Use != "sig" {
			continue
		}
		if pk, ok := k.Key.(*rsa.PublicKey); ok && pk.N.BitLen() < 2048 {
			continue
		}
		if k.Algorithm != "" && !supportedAlgs[k.Algorithm] {
			continue
		}
		keys = append(keys, &verifyKey{id: k.KeyID, alg: k.Algorithm, key: k.Key})
	}
	return keys, nil
}
