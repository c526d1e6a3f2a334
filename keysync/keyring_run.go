package keysync

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// How the keyring decides
//
// The keyring follows two shapes: the device's wrapped keysets
// (shapeseal_tenant_keys) and the logs of its tenants (shapeseal_log). A
// wrapped keyset proves only that someone who holds the keyset wrapped it
// for the device; the log says whether the device should hold it. So at
// every up-to-date message of either shape, for every tenant, the ring:
//
//  1. verifies the tenant's log from the pinned roots (incrementally when
//     entries were only appended) and checks it against the floor;
//  2. looks up its own recipient among the log's member devices — a device
//     the log does not list gets no keys, whatever rows say;
//  3. adopts the newest wrapped keyset whose generation and commitment are
//     those of a keyset op of the log, signed by a root, an admin of the
//     tenant or the signer of that op, and not below the floor or the
//     newest adopted in this run. A row with a generation the log has not
//     reached yet waits for the log.

// ringEvent is one message of one of the two shapes.
type ringEvent struct {
	log bool // from the log shape
	m   client.Message
	err error
}

// keyRow is one row of the key shape, with what unwrapping it gave.
type keyRow struct {
	vals     client.Row // merged: updates may carry only changed columns
	tenant   string
	gen      uint64
	ks       *Keyset   // nil if the row does not unwrap
	signer   VerifyKey // who signed the payload
	err      error     // why the row does not unwrap or was refused
	reported string    // the last error reported for the row
}

// tenantLog is what the ring holds of one tenant's log.
type tenantLog struct {
	entries    map[uint64][]byte
	st         *chain.State // verified; nil if not (err says why)
	err        error
	dirty      bool
	appendOnly bool // since st was verified, only entries after it arrived
}

// ringRun is the state of one Run.
type ringRun struct {
	r                  *Keyring
	rows               map[string]*keyRow     // by shape key
	logs               map[string]*tenantLog  // by tenant
	logKeys            map[string]logPosition // log shape key → entry
	keyReady, logReady bool                   // each stream is up to date, and not rebuilding
	dirty              bool
	high               map[string]uint64  // newest generation adopted per tenant in this run
	adopted            map[string]*Keyset // the keyset held per tenant
	logReported        map[string]string  // the last error reported per tenant
}

type logPosition struct {
	tenant string
	seq    uint64
}

// Run follows the key shape and the log shape until ctx ends, Close is
// called (both return nil) or a stream fails (its error). Run may be called
// once. After Run has returned, the ring keeps the keysets it held, and
// Open no longer waits for keys.
func (r *Keyring) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	r.mu.Lock()
	if r.cancel != nil {
		r.mu.Unlock()
		return errors.New("keysync: Keyring.Run called twice")
	}
	r.cancel = cancel
	r.mu.Unlock()
	defer close(r.stopped)
	select {
	case <-r.closed:
		return nil
	default:
	}

	var streams []*client.ShapeStream
	events := make(chan ringEvent)
	done := make(chan struct{})
	var followers sync.WaitGroup
	// On the way out: stop the followers, wait until none is inside Next,
	// then close the streams (Close must not run during Next).
	defer func() {
		cancel()
		close(done)
		followers.Wait()
		for _, s := range streams {
			s.Close()
		}
	}()
	for i, o := range []client.Options{r.opts.Stream, r.opts.Log} {
		o.Live, o.Transform = true, nil
		s, err := client.New(o)
		if err != nil {
			return err
		}
		streams = append(streams, s)
		followers.Add(1)
		go func() {
			defer followers.Done()
			follow(ctx, s, i == 1, events, done)
		}()
	}
	run := &ringRun{r: r, rows: map[string]*keyRow{}, logs: map[string]*tenantLog{}, logKeys: map[string]logPosition{}, high: map[string]uint64{}, logReported: map[string]string{}, adopted: map[string]*Keyset{}, dirty: true}
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev := <-events:
			if ev.err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return ev.err
			}
			run.handle(ev)
		}
	}
}

// follow sends every message of s to events until ctx ends or done closes.
func follow(ctx context.Context, s *client.ShapeStream, log bool, events chan<- ringEvent, done <-chan struct{}) {
	for m, err := range s.Messages(ctx) {
		select {
		case events <- ringEvent{log: log, m: m, err: err}:
		case <-done:
			return
		}
		if err != nil {
			return
		}
	}
}

func (run *ringRun) handle(ev ringEvent) {
	m := ev.m
	switch {
	case m.IsChange() && ev.log:
		run.logChange(m)
	case m.IsChange():
		run.keyChange(m)
	case m.IsMustRefetch() && ev.log:
		// The ring keeps serving what it holds until the log is up to
		// date again.
		clear(run.logs)
		clear(run.logKeys)
		run.logReady, run.dirty = false, true
	case m.IsMustRefetch():
		clear(run.rows)
		run.keyReady, run.dirty = false, true
	case m.IsUpToDate():
		if ev.log {
			run.logReady = true
		} else {
			run.keyReady = true
		}
		if run.keyReady && run.logReady && run.dirty {
			run.publish()
			run.dirty = false
		}
	}
}

// merged returns the row m leaves: an update's columns over the row held.
func merged(prev client.Row, m client.Message) client.Row {
	if m.Headers.Operation != client.Update || prev == nil {
		return m.Value
	}
	out := make(client.Row, len(prev)+len(m.Value))
	for k, v := range prev {
		out[k] = v
	}
	for k, v := range m.Value {
		out[k] = v
	}
	return out
}

// keyChange records a change of the key shape, unwrapping a new or
// changed payload.
func (run *ringRun) keyChange(m client.Message) {
	r := run.r
	run.dirty = true
	if m.Headers.Operation == client.Delete {
		delete(run.rows, m.Key)
		return
	}
	prev := run.rows[m.Key]
	var pv client.Row
	if prev != nil {
		pv = prev.vals
	}
	v := merged(pv, m)
	if r.opts.UserID != "" && !matches(v, m.OldValue, "user_id", r.opts.UserID) ||
		r.opts.DeviceID != "" && !matches(v, m.OldValue, "device_id", r.opts.DeviceID) {
		delete(run.rows, m.Key)
		return
	}
	row := &keyRow{vals: v}
	row.tenant, _ = v["tenant_id"].(string)
	gen, okGen := uintValue(v["generation"])
	row.gen = gen
	wrapped, okWrapped := byteaValue(v["wrapped"])
	switch {
	case row.tenant == "":
		row.err = detail(ErrMalformedPayload, "row has no tenant_id")
	case !okGen:
		row.err = detail(ErrMalformedPayload, "row has no valid generation")
	case !okWrapped:
		row.err = detail(ErrMalformedPayload, "row has no valid wrapped payload")
	default:
		row.ks, row.signer, row.err = unwrapSigned(r.opts.Identity, r.self, wrapped, row.tenant)
		clear(wrapped)
		if row.err == nil && row.ks.generation != gen {
			row.ks, row.err = nil, detail(ErrMalformedPayload, "payload is generation %d, row says %d", row.ks.generation, gen)
		}
	}
	if prev != nil {
		row.reported = prev.reported
	}
	run.rows[m.Key] = row
}

// logChange records a change of the log shape.
func (run *ringRun) logChange(m client.Message) {
	run.dirty = true
	pos, had := run.logKeys[m.Key]
	if m.Headers.Operation == client.Delete {
		if had {
			delete(run.logKeys, m.Key)
			if tl := run.logs[pos.tenant]; tl != nil {
				delete(tl.entries, pos.seq)
				tl.dirty, tl.appendOnly = true, false
			}
		}
		return
	}
	var prev client.Row
	if had {
		if tl := run.logs[pos.tenant]; tl != nil {
			if b, ok := tl.entries[pos.seq]; ok {
				prev = client.Row{"tenant_id": pos.tenant, "seq": strconv.FormatUint(pos.seq, 10), "entry": b}
			}
		}
	}
	v := merged(prev, m)
	tenant, _ := v["tenant_id"].(string)
	seq, okSeq := uintValue(v["seq"])
	entry, okEntry := byteaValue(v["entry"])
	if had && (pos.tenant != tenant || pos.seq != seq) {
		run.logChange(client.Message{Key: m.Key, Headers: client.Headers{Operation: client.Delete}})
	}
	if tenant == "" || !okSeq || !okEntry {
		run.r.report(&KeyRowError{Key: m.Key, Tenant: tenant, Err: detail(ErrMalformedPayload, "log row without tenant_id, seq or entry")})
		return
	}
	tl := run.logs[tenant]
	if tl == nil {
		tl = &tenantLog{entries: map[uint64][]byte{}, appendOnly: true}
		run.logs[tenant] = tl
	}
	if tl.st != nil && seq <= tl.st.Seq() {
		tl.appendOnly = false
	}
	tl.entries[seq] = entry
	tl.dirty = true
	run.logKeys[m.Key] = logPosition{tenant, seq}
}

// verify brings tl's state up to date with its entries.
func (tl *tenantLog) verify(roots []VerifyKey, tenant string) {
	if !tl.dirty {
		return
	}
	tl.dirty = false
	st := tl.st
	if st == nil || !tl.appendOnly {
		st = chain.NewState(tenant, roots)
	}
	tl.st, tl.appendOnly = nil, true
	for seq := st.Seq() + 1; ; seq++ {
		b, ok := tl.entries[seq]
		if !ok {
			break
		}
		if _, err := st.Append(b); err != nil {
			tl.err = err
			return
		}
	}
	switch {
	case st.Seq() == 0:
		tl.err = &chain.Error{Tenant: tenant, Err: chain.ErrNoLog}
	case uint64(len(tl.entries)) != st.Seq():
		tl.err = &chain.Error{Tenant: tenant, Err: fmt.Errorf("%w: entry %d missing", chain.ErrBroken, st.Seq()+1)}
	default:
		tl.st, tl.err = st, nil
	}
}

// publish decides every tenant's keyset and swaps in the new ring.
func (run *ringRun) publish() {
	r := run.r
	tenants := map[string]bool{}
	for _, row := range run.rows {
		if row.tenant != "" {
			tenants[row.tenant] = true
		}
	}
	for t, tl := range run.logs {
		tl.verify(r.opts.Roots, t)
		tenants[t] = true
	}
	keys := make(map[string]*Keyset, len(tenants))
	for t := range tenants {
		if ks := run.decide(t); ks != nil {
			keys[t] = ks
		}
	}
	old := r.state.Load()
	r.state.Store(&ringState{keys: keys, ready: true, changed: make(chan struct{})})
	close(old.changed)
	if r.opts.Logger != nil {
		r.opts.Logger.Debug("keysync: keyring updated", "tenants", len(keys))
	}
}

// decide returns the keyset the ring holds for tenant, or nil.
func (run *ringRun) decide(tenant string) *Keyset {
	r := run.r
	tl := run.logs[tenant]
	st, err := (*chain.State)(nil), error(&chain.Error{Tenant: tenant, Err: chain.ErrNoLog})
	if tl != nil {
		st, err = tl.st, tl.err
	}
	var mark FloorMark
	if err == nil {
		if mark, err = r.opts.Floor.Mark(tenant); err == nil {
			err = checkMark(st, mark)
		}
	}
	if err == nil {
		if _, member := st.HasRecipient(r.self); !member {
			err = detail(ErrNotMember, "the log of tenant %q does not list this device", tenant)
		}
	}
	if err != nil {
		// A device that follows every tenant's log hears only about its
		// own tenants.
		if run.hasRows(tenant) || run.high[tenant] > 0 {
			run.reportLog(tenant, err)
		}
		delete(run.adopted, tenant)
		return nil
	}
	delete(run.logReported, tenant)
	var best *keyRow
	for key, row := range run.rows {
		if row.tenant != tenant {
			continue
		}
		if err := run.check(st, mark, row); err != nil {
			if errors.Is(err, errPending) {
				continue
			}
			run.reportRow(key, row, err)
			continue
		}
		row.reported = ""
		if best == nil || row.gen > best.gen {
			best = row
		}
	}
	// A row that is refused, or waits for the log, changes nothing: the
	// keyset held stays while the log still names it.
	ks := run.adopted[tenant]
	if ks != nil {
		if info, ok := st.KeysetAt(ks.generation); !ok || !ks.matches(info.KeysetRef) {
			ks = nil
		}
	}
	if best != nil && (ks == nil || best.gen >= ks.generation) {
		ks = best.ks
	}
	next := FloorMark{Seq: st.Seq(), Head: st.Head(), Generation: mark.Generation}
	if ks != nil {
		run.high[tenant] = ks.generation
		next.Generation = max(next.Generation, ks.generation)
		run.adopted[tenant] = ks
	} else {
		delete(run.adopted, tenant)
	}
	if err := r.opts.Floor.Raise(tenant, next); err != nil && r.opts.Logger != nil {
		// The state is genuine; only the next run's check is weaker.
		r.opts.Logger.Warn("keysync: floor not raised", "tenant", tenant, "err", err.Error())
	}
	return ks
}

// errPending marks a row whose generation the log has not reached yet.
var errPending = errors.New("pending")

// check decides whether row may be adopted under the verified log st.
func (run *ringRun) check(st *chain.State, mark FloorMark, row *keyRow) error {
	if row.err != nil {
		return row.err
	}
	info, ok := st.KeysetAt(row.gen)
	switch {
	case !ok && row.gen > st.Keyset().Generation && !st.CanSign(row.signer):
		return detail(ErrUntrustedKeyset, "generation %d, which the log does not name yet, signed by %s, neither a root nor an admin of the tenant", row.gen, row.signer)
	case !ok && row.gen > st.Keyset().Generation:
		return errPending
	case !ok:
		return detail(ErrUntrustedKeyset, "the log names no keyset of generation %d", row.gen)
	case !row.ks.matches(info.KeysetRef):
		return detail(ErrUntrustedKeyset, "not the keyset of generation %d that the log names", row.gen)
	case !st.CanSign(row.signer) && row.signer != info.Signer:
		return detail(ErrUntrustedKeyset, "signed by %s, neither a root nor an admin of the tenant", row.signer)
	case row.gen < max(mark.Generation, run.high[st.Tenant()]):
		return detail(ErrStaleGeneration, "generation %d, held %d", row.gen, max(mark.Generation, run.high[st.Tenant()]))
	}
	return nil
}

func (run *ringRun) hasRows(tenant string) bool {
	for _, row := range run.rows {
		if row.tenant == tenant {
			return true
		}
	}
	return false
}

// reportRow reports a refused row once per distinct reason.
func (run *ringRun) reportRow(key string, row *keyRow, err error) {
	if row.reported == err.Error() {
		return
	}
	row.reported = err.Error()
	run.r.report(&KeyRowError{Key: key, Tenant: row.tenant, Generation: row.gen, Err: err})
}

// reportLog reports a refused tenant once per distinct reason.
func (run *ringRun) reportLog(tenant string, err error) {
	if run.logReported[tenant] == err.Error() {
		return
	}
	run.logReported[tenant] = err.Error()
	run.r.report(&KeyRowError{Tenant: tenant, Err: err})
}

func (r *Keyring) report(e *KeyRowError) {
	if r.opts.Logger != nil {
		r.opts.Logger.Warn("keysync: tenant key refused", "key", e.Key, "tenant", e.Tenant,
			"generation", e.Generation, "err", e.Err.Error())
	}
	if r.opts.OnRowError != nil {
		r.opts.OnRowError(e)
	}
}
