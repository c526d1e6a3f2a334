package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/shapeseal/shapeseal/keysync"
)

// The faults, each injected at least once when the schedule has room:
//
//   - kill-proxy: SIGKILL proxy-1 and restart it 0.5–3 s later (proxy-0
//     lives through the run, for the memory figures); readers on it fail
//     over to proxy-0;
//   - restart-shape-server: stop the shape server and start a new one,
//     whose shapes are new: readers get 409 and refetch;
//   - cut-upstream: for 1 s, every response from the shape server is cut
//     halfway through its next chunk;
//   - stall-upstream: every response from the shape server is held for
//     2–5 s;
//   - restart-postgres: a fast shutdown and start of Postgres: writes
//     fail meanwhile, the shape server loses its replication connection;
//   - expire-tokens: a fifth of the readers get an expired token, which
//     the proxies refuse (401) and the readers refresh;
//   - truncate: TRUNCATE items or notes.
var faultKinds = []string{"kill-proxy", "restart-shape-server", "cut-upstream", "stall-upstream", "restart-postgres", "expire-tokens", "truncate"}

// schedule draws n faults: every kind once (in random order) while n
// allows, then kinds at random.
func schedule(rng *rand.Rand, n int) []string {
	out := make([]string, 0, n)
	perm := rng.Perm(len(faultKinds))
	for i := 0; i < n; i++ {
		if i < len(perm) {
			out = append(out, faultKinds[perm[i]])
		} else {
			out = append(out, faultKinds[rng.IntN(len(faultKinds))])
		}
	}
	return out
}

// chaos injects faults and moves readers between proxies.
type chaos struct {
	st      *stack
	w       *world
	readers func() []*reader
	rng     *rand.Rand
	faults  int
}

// run injects the scheduled faults over d, one in each of len(kinds)
// equal slots, at a random moment in the middle half of the slot (or as
// soon as the one before has ended: a restarted part is up again).
func (c *chaos) run(ctx context.Context, d time.Duration, kinds []string) {
	if len(kinds) == 0 {
		return
	}
	begin := time.Now()
	gap := d / time.Duration(len(kinds))
	for i, kind := range kinds {
		at := begin.Add(time.Duration(i)*gap + gap/4 + time.Duration(c.rng.Int64N(int64(gap/2))))
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(at)):
		}
		start := time.Now()
		if err := c.inject(context.WithoutCancel(ctx), kind); err != nil {
			logf("fault %s: %v", kind, err)
			continue
		}
		c.faults++
		logf("fault %d: %s (%s)", c.faults, kind, time.Since(start).Round(time.Millisecond))
	}
}

func (c *chaos) inject(ctx context.Context, kind string) error {
	switch kind {
	case "kill-proxy":
		c.st.killProxy(1)
		time.Sleep(500*time.Millisecond + time.Duration(c.rng.Int64N(int64(2500*time.Millisecond))))
		return c.st.restartProxy(ctx, 1)
	case "restart-shape-server":
		return c.st.restartShapeServer(ctx)
	case "cut-upstream":
		c.st.gate.cut(time.Second)
	case "stall-upstream":
		c.st.gate.stall(2*time.Second + time.Duration(c.rng.Int64N(int64(3*time.Second))))
	case "restart-postgres":
		err := c.st.cluster.Restart(ctx)
		c.w.db.Reset()
		return err
	case "expire-tokens":
		rs := c.readers()
		for _, i := range c.rng.Perm(len(rs))[:max(1, len(rs)/5)] {
			rs[i].tok.expire()
		}
	case "truncate":
		table := []string{"items", "notes"}[c.rng.IntN(2)]
		_, err := c.w.db.Exec(ctx, "TRUNCATE "+table)
		return err
	default:
		return fmt.Errorf("unknown fault %q", kind)
	}
	return nil
}

// switchReaders moves a random reader to the other proxy every interval
// until ctx ends, and returns how many moves it made.
func (c *chaos) switchReaders(ctx context.Context, rng *rand.Rand, interval time.Duration) int {
	n := 0
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return n
		case <-t.C:
		}
		if rs := c.readers(); len(rs) > 0 {
			rs[rng.IntN(len(rs))].lb.switchProxy()
			n++
		}
	}
}

// churn administers the churn tenant while everything runs: grants (the
// grantee's reader starts then, as a new member's app would), revocations
// (the revokee's reader keeps following the rows, and must not open a cell
// sealed after), re-encryption with retirement of the old keys, and a
// rotation. start starts a grantee's reader.
func (c *chaos) churn(ctx context.Context, d time.Duration, start func(*user) error) {
	var revokees, grantees []*user
	for _, u := range c.w.users {
		switch u.role {
		case "revokee":
			revokees = append(revokees, u)
		case "grantee":
			grantees = append(grantees, u)
		}
	}
	steps := []struct {
		at float64
		do func(context.Context) error
	}{
		{0.15, func(ctx context.Context) error { return c.grant(ctx, grantees[0], start) }},
		{0.25, func(ctx context.Context) error { return c.revoke(ctx, revokees[0]) }},
		{0.35, c.reencrypt},
		{0.50, func(ctx context.Context) error { _, err := c.w.admin.Rotate(ctx, churnTenant); return err }},
		{0.60, func(ctx context.Context) error { return c.grant(ctx, grantees[1], start) }},
		{0.70, func(ctx context.Context) error { return c.revoke(ctx, revokees[1]) }},
		{0.80, c.reencrypt},
	}
	begin := time.Now()
	for i, s := range steps {
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(begin.Add(time.Duration(s.at * float64(d))))):
		}
		// Postgres may be restarting: an admin operation runs in one
		// transaction, so it is simply tried again.
		for attempt := 1; ; attempt++ {
			err := s.do(context.WithoutCancel(ctx))
			if err == nil {
				logf("churn %d done", i+1)
				break
			}
			logf("churn %d: %v", i+1, err)
			if attempt == 10 || ctx.Err() != nil {
				break
			}
			time.Sleep(time.Second)
		}
	}
}

func (c *chaos) grant(ctx context.Context, u *user, start func(*user) error) error {
	if _, err := c.w.admin.Grant(ctx, churnTenant, u.name); err != nil {
		return err
	}
	return start(u)
}

// revoke revokes u from the churn tenant, after recording the keys its
// reader held.
func (c *chaos) revoke(ctx context.Context, u *user) error {
	held, err := c.w.currentKeys(ctx, churnTenant)
	if err != nil {
		return err
	}
	for _, r := range c.readers() {
		if r.u == u {
			r.heldBefore.Store(&held)
		}
	}
	_, err = c.w.admin.Revoke(ctx, churnTenant, u.name)
	return err
}

// reencrypt re-seals the churn tenant's cells under its primary key and
// retires the other keys.
func (c *chaos) reencrypt(ctx context.Context) error {
	if _, err := c.w.admin.Reencrypt(ctx, itemsSpec, churnTenant, keysync.ReencryptOptions{}); err != nil {
		return err
	}
	res, err := c.w.admin.Reencrypt(ctx, notesSpec, churnTenant, keysync.ReencryptOptions{Retire: true, OtherTables: []keysync.TableSpec{itemsSpec}})
	if err != nil {
		return err
	}
	logf("churn: re-encrypted; retired keys %v", res.Retired)
	return nil
}

// snapshot puts the readers in the same place every time — all on proxy-0,
// their Shapes up to date, given 5 s to settle their connections — and
// reads every process there, so that two snapshots compare like with like
// whatever the readers' failovers did to where they were.
func (c *chaos) snapshot(ctx context.Context, smp *sampler, label string) (map[string]procSample, error) {
	rs := c.readers()
	for _, r := range rs {
		r.lb.moveTo(0)
	}
	deadline := time.Now().Add(60 * time.Second)
	for !allUpToDate(rs) && time.Now().Before(deadline) {
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return nil, err
		}
	}
	if err := sleepCtx(ctx, 5*time.Second); err != nil {
		return nil, err
	}
	return smp.snapshot(*keep, label), nil
}

func allUpToDate(rs []*reader) bool {
	for _, r := range rs {
		for _, sh := range r.shapes {
			if !sh.IsUpToDate() {
				return false
			}
		}
	}
	return true
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}
