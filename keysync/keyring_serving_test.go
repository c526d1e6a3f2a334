package keysync

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The ring keeps serving the keysets it holds while its shapes are slow or
// refetched.

// delayTransport holds back every response for delay while armed, to the
// requests that match.
type delayTransport struct {
	armed atomic.Bool
	delay time.Duration
	match func(*http.Request) bool
}

func (d *delayTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err == nil && d.armed.Load() && (d.match == nil || d.match(req)) {
		time.Sleep(d.delay)
	}
	return resp, err
}

// droppedWithin reports whether r holds no keyset for tenant at some
// point within d.
func droppedWithin(r *Keyring, tenant string, d time.Duration) bool {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	_, err := r.Wait(ctx, tenant, func(ks *Keyset) bool { return ks == nil })
	return err == nil
}

// TestKeyringRotationKeepsServing: a rotation whose new row reaches the
// ring before the log entry that names it (the log shape is slower) must
// not leave the ring without the tenant's keyset meanwhile.
func TestKeyringRotationKeepsServing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newTrustEnv(t)
	ks1 := e.tenant("acme")
	alice := e.device("alice", "phone")
	e.grant("acme", "alice")
	slowLog := &delayTransport{delay: 2 * time.Second}
	opts := e.ringOptions("alice", "phone", alice, nil, &rowErrors{})
	opts.Log.HTTPClient = &http.Client{Transport: slowLog}
	ring, _ := e.startRing(opts)
	holds(t, ring, "acme", ks1)

	slowLog.armed.Store(true)
	ks2, err := e.admin.Rotate(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	dropped := droppedWithin(ring, "acme", 1500*time.Millisecond)
	slowLog.armed.Store(false)
	holds(t, waitGenRing(t, ring, "acme", 2), "acme", ks2)
	if dropped {
		t.Error("while the rotated row waited for its log entry, the ring held no keyset for the tenant")
	}
}

// TestKeyringRefetchKeepsServing: while one of the ring's shapes is
// refetched (a must-refetch, then a slow snapshot), the ring keeps serving
// the keysets it holds: it does not publish a half-rebuilt ring when the
// other shape is up to date.
func TestKeyringRefetchKeepsServing(t *testing.T) {
	t.Parallel()
	for _, table := range []string{TenantKeysTable, LogTable} {
		t.Run(table, func(t *testing.T) {
			t.Parallel()
			e := newTrustEnv(t)
			acme := e.tenant("acme")
			alice := e.device("alice", "phone")
			e.grant("acme", "alice")
			slowSnapshot := &delayTransport{delay: 2 * time.Second, match: func(r *http.Request) bool {
				return r.URL.Query().Get("offset") == "-1"
			}}
			errs := &rowErrors{}
			opts := e.ringOptions("alice", "phone", alice, nil, errs)
			refetched := &opts.Stream
			if table == LogTable {
				refetched = &opts.Log
			}
			refetched.HTTPClient = &http.Client{Transport: slowSnapshot}
			ring, _ := e.startRing(opts)
			holds(t, ring, "acme", acme)

			before := published(ring)
			slowSnapshot.armed.Store(true)
			if n, _ := e.srv.Rotate(table); n == 0 {
				t.Fatal("no shape rotated")
			}
			if droppedWithin(ring, "acme", 1500*time.Millisecond) {
				t.Fatal("the ring held no keyset for acme while the shape was refetched")
			}
			slowSnapshot.armed.Store(false)
			waitPublished(t, ring, before) // rebuilt
			holds(t, ring, "acme", acme)
			if errs := errs.all(); len(errs) != 0 {
				t.Errorf("row errors: %v", errs)
			}
		})
	}
}

// count409 counts the 409 responses of a transport.
type count409 struct {
	mu sync.Mutex
	n  int
}

func (c *count409) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := http.DefaultTransport.RoundTrip(req)
	if err == nil && resp.StatusCode == http.StatusConflict {
		c.mu.Lock()
		c.n++
		c.mu.Unlock()
	}
	return resp, err
}

func (c *count409) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// TestKeyringMustRefetch: each of the ring's shapes is invalidated in
// turn; the ring refetches it, is rebuilt, keeps serving meanwhile, and
// then still follows grants and revocations live.
func TestKeyringMustRefetch(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newTrustEnv(t)
	acme := e.tenant("acme")
	alice := e.device("alice", "phone")
	e.grant("acme", "alice")

	keyConflicts, logConflicts := &count409{}, &count409{}
	errs := &rowErrors{}
	opts := e.ringOptions("alice", "phone", alice, nil, errs)
	opts.Stream.HTTPClient = &http.Client{Transport: keyConflicts}
	opts.Log.HTTPClient = &http.Client{Transport: logConflicts}
	opts.UserID, opts.DeviceID = "alice", "phone"
	ring, _ := e.startRing(opts)
	ks := ring.Keyset("acme")
	holds(t, ring, "acme", acme)

	// Readers open cells concurrently throughout, and note whether the
	// ring ever stopped holding acme's keyset.
	stopReaders, missed := openConcurrently(t, ctx, ring, acme)
	defer stopReaders()

	// The key shape is invalidated: the ring refetches it and is rebuilt
	// (the rows are unwrapped again, so the keyset is a new one).
	if n, _ := e.srv.Rotate(TenantKeysTable); n == 0 {
		t.Fatal("no key shape rotated")
	}
	for deadline := time.Now().Add(10 * time.Second); keyConflicts.count() == 0 || ring.Keyset("acme") == ks; {
		if time.Now().After(deadline) {
			t.Fatalf("no rebuild: %d conflicts", keyConflicts.count())
		}
		time.Sleep(5 * time.Millisecond)
	}
	holds(t, ring, "acme", acme)

	// The log shape is invalidated: the ring refetches the log, verifies it
	// again and publishes.
	before := published(ring)
	if n, _ := e.srv.Rotate(LogTable); n == 0 {
		t.Fatal("no log shape rotated")
	}
	waitUntil(t, func() bool { return logConflicts.count() > 0 })
	waitPublished(t, ring, before)
	waitUntil(t, func() bool { return ring.Keyset("acme") != nil })
	holds(t, ring, "acme", acme)
	stopReaders()

	checkFollowsLive(t, ctx, e, ring, errs)
	if missed() {
		t.Error("the ring held no keyset for acme while a shape was refetched (see TestKeyringRefetchKeepsServing)")
	}
}

// openConcurrently starts four readers that open a cell of acme's
// through ring until stop is called, and note whether the ring ever held
// no keyset for acme: missed says so once stop returned.
func openConcurrently(t *testing.T, ctx context.Context, ring *Keyring, acme *Keyset) (stop func(), missed func() bool) {
	cc := CellContext{Table: "public.items", Column: "title", Tenant: "acme", RowKey: []string{"1"}}
	cell, _ := Seal(acme, cc, []byte("hi"))
	done := make(chan struct{})
	var wg sync.WaitGroup
	var missing sync.Once
	wasMissing := false
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				if ring.Keyset("acme") == nil {
					missing.Do(func() { wasMissing = true })
				}
				if pt, err := ring.Open(ctx, cc, cell); err != nil || string(pt) != "hi" {
					t.Errorf("concurrent open: %q %v", pt, err)
					return
				}
			}
		})
	}
	stop = sync.OnceFunc(func() { close(done); wg.Wait() })
	return stop, func() bool { stop(); return wasMissing }
}

// checkFollowsLive: after the refetches, alice's ring still follows
// live: a grant, then a revocation; and it refused rows only for her not
// being a member.
func checkFollowsLive(t *testing.T, ctx context.Context, e *trustEnv, ring *Keyring, errs *rowErrors) {
	t.Helper()
	globex := e.tenant("globex")
	e.grant("globex", "alice")
	holds(t, waitGenRing(t, ring, "globex", 1), "globex", globex)
	if _, err := e.admin.Revoke(ctx, "acme", "alice"); err != nil {
		t.Fatal(err)
	}
	waitGen(t, ring, "acme", 0)
	if ring.Tenants() != 1 {
		t.Fatalf("%d tenants", ring.Tenants())
	}
	// Refusals for not being a member: acme's after the revocation, and
	// globex's key row if it came before the log entry that grants it
	// (the two shapes are followed apart; the row is adopted once the log
	// catches up, as waitGenRing saw).
	for _, re := range errs.all() {
		if re.Tenant != "acme" && re.Tenant != "globex" || !errors.Is(re, ErrNotMember) {
			t.Errorf("row error %v", re)
		}
	}
}
