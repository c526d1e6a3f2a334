package keysync

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"filippo.io/age"

	"github.com/shapeseal/shapeseal/client"
)

// TenantKeysTable is the table of wrapped tenant keysets that a [Keyring]
// follows.
const TenantKeysTable = "shapeseal_tenant_keys"

// DefaultKeyWait is how long [Keyring.Open] waits, by default, for the key
// shape to deliver a key that a cell names.
const DefaultKeyWait = 5 * time.Second

// ErrStaleGeneration means a tenant-key row carries a keyset older than one
// the keyring already held for that tenant. The keyring keeps the newer one:
// it never goes backwards.
var ErrStaleGeneration = errors.New("keysync: keyset generation older than the one held")

// ErrKeyringClosed means the keyring was closed, or stopped following the
// key shape, while a call waited for it.
var ErrKeyringClosed = errors.New("keysync: keyring closed")

// KeyringOptions configure a [Keyring].
type KeyringOptions struct {
	// Stream follows the tenant-key shape: the URL of Electric's /v1/shape
	// or of a proxy path, with params, headers and token source as that
	// server needs them. Talking to Electric directly, build it with
	// [KeyShapeOptions]; behind the proxy, the proxy pins the table and
	// filters the rows to the authenticated user and device. The keyring
	// always follows the shape live and sets no Transform.
	Stream client.Options

	// Identity is the device's age identity, which unwraps the rows.
	Identity age.Identity

	// Signers are the signer keys the device trusts (see [Signer]): the
	// ring adopts a keyset only if one of them signed it for this device.
	// At least one is required. Configure them out of band (a flag, a
	// file, the app's build) — never from the database that serves the
	// keys.
	Signers []VerifyKey

	// Floor, if set, keeps the newest generation adopted per tenant across
	// runs, and the ring refuses keysets below it (see [GenerationFloor]).
	Floor GenerationFloor

	// UserID and DeviceID, if set, make the keyring ignore rows of other
	// users or devices (rows whose user_id or device_id column differs), for
	// a key shape that is not filtered to the device.
	UserID, DeviceID string

	// KeyWait bounds how long Open waits for a key the ring does not hold
	// yet. 0 means DefaultKeyWait; a negative value does not wait.
	KeyWait time.Duration

	// OnRowError, if set, is called (from the goroutine running Run) with
	// every row the keyring refuses: a payload wrapped for another device,
	// for another tenant, malformed, or older than the keyset held. The
	// refused row changes nothing in the ring. Errors never hold key
	// material.
	OnRowError func(*KeyRowError)

	// Logger receives a warning for every refused row, and debug lines when
	// the ring changes. Nil discards them.
	Logger *slog.Logger
}

// KeyShapeOptions returns stream options that follow the tenant-key shape of
// one device directly from Electric (or electrictest): shapeURL is the
// /v1/shape endpoint, and the rows are filtered with a where clause on
// user_id and device_id. Behind the proxy, use the proxy's URL and leave the
// filtering to it instead.
func KeyShapeOptions(shapeURL, userID, deviceID string) client.Options {
	return client.Options{
		URL: shapeURL,
		Params: client.Params{
			Table:   TenantKeysTable,
			Where:   "user_id = $1 AND device_id = $2",
			Params:  []string{userID, deviceID},
			Columns: []string{"tenant_id", "user_id", "device_id", "generation", "wrapped"},
		},
		Live: true,
	}
}

// KeyRowError reports a tenant-key row the keyring refused. It wraps
// [ErrWrongIdentity], [ErrTenantMismatch], [ErrMalformedPayload],
// [ErrInvalidKeyset] or [ErrStaleGeneration].
type KeyRowError struct {
	Key        string // the row's key in the shape
	Tenant     string // the row's tenant_id, if it had one
	Generation uint64 // the row's generation, if it had one
	Err        error
}

func (e *KeyRowError) Error() string {
	return fmt.Sprintf("keysync: tenant-key row %s (tenant %q, generation %d) refused: %s",
		e.Key, e.Tenant, e.Generation, trimPrefix(e.Err.Error()))
}

func (e *KeyRowError) Unwrap() error { return e.Err }

// A Keyring holds the tenant keysets of one device, kept up to date by
// following the tenant-key shape (design.md §4): a grant or a rotation
// replaces the tenant's keyset, a deleted row (a revocation) drops it, and a
// must-refetch rebuilds the ring from scratch, all without a restart.
//
// The ring is published as an immutable map, swapped atomically at every
// up-to-date message that changed it, so Open and Keyset are safe for
// concurrent use and never block Run.
type Keyring struct {
	opts     KeyringOptions
	self     string // the identity's recipient, which payloads must name
	keyWait  time.Duration
	state    atomic.Pointer[ringState]
	closed   chan struct{}
	stopped  chan struct{} // closed when Run returns
	closeOne sync.Once

	mu     sync.Mutex
	cancel context.CancelFunc // of the running Run
	misses map[missKey]*Keyset
}

// ringState is one published version of the ring. It is never modified;
// changed is closed when a newer version replaces it.
type ringState struct {
	keys    map[string]*Keyset
	ready   bool // the key shape has been up to date at least once
	changed chan struct{}
}

type missKey struct {
	tenant string
	id     uint32
}

// NewKeyring returns a keyring that follows opts.Stream once Run is called.
func NewKeyring(opts KeyringOptions) (*Keyring, error) {
	if opts.Identity == nil {
		return nil, errors.New("keysync: keyring needs an identity")
	}
	self, err := RecipientOf(opts.Identity)
	if err != nil {
		return nil, err
	}
	if len(opts.Signers) == 0 {
		return nil, errors.New("keysync: keyring needs at least one trusted signer key (KeyringOptions.Signers)")
	}
	opts.Signers = slices.Clone(opts.Signers)
	if opts.Stream.URL == "" {
		return nil, errors.New("keysync: keyring needs the key shape's URL")
	}
	if _, err := url.Parse(opts.Stream.URL); err != nil {
		return nil, fmt.Errorf("keysync: key shape URL: %w", err)
	}
	r := &Keyring{opts: opts, self: self, keyWait: opts.KeyWait, closed: make(chan struct{}), stopped: make(chan struct{}), misses: map[missKey]*Keyset{}}
	if r.keyWait == 0 {
		r.keyWait = DefaultKeyWait
	}
	r.state.Store(&ringState{keys: map[string]*Keyset{}, changed: make(chan struct{})})
	return r, nil
}

// Keyset returns the tenant's current keyset, or nil if the ring holds none.
func (r *Keyring) Keyset(tenant string) *Keyset { return r.state.Load().keys[tenant] }

// Tenants returns the number of tenants whose keyset the ring holds.
func (r *Keyring) Tenants() int { return len(r.state.Load().keys) }

// Ready waits until the key shape has been up to date once (so the ring
// holds every key granted so far), ctx ends or the ring is closed.
func (r *Keyring) Ready(ctx context.Context) error {
	_, err := r.wait(ctx, func(st *ringState) bool { return st.ready })
	return err
}

// Wait waits until ok accepts the ring's keyset of tenant (nil while the ring
// holds none) and returns that keyset, or until ctx ends or the ring is
// closed. It checks ok now and after every change of the ring, so it does
// not miss one: wait for a grant with
//
//	ks, err := ring.Wait(ctx, "acme", func(ks *keysync.Keyset) bool { return ks != nil })
//
// for a rotation with ks != nil && ks.Generation() >= gen, and for a
// revocation with ks == nil.
func (r *Keyring) Wait(ctx context.Context, tenant string, ok func(*Keyset) bool) (*Keyset, error) {
	st, err := r.wait(ctx, func(st *ringState) bool { return ok(st.keys[tenant]) })
	if err != nil {
		return nil, err
	}
	return st.keys[tenant], nil
}

// wait returns the first state, from now on, that cond accepts.
func (r *Keyring) wait(ctx context.Context, cond func(*ringState) bool) (*ringState, error) {
	for {
		st := r.state.Load()
		if cond(st) {
			return st, nil
		}
		select {
		case <-st.changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-r.closed:
			return nil, ErrKeyringClosed
		case <-r.stopped:
			return nil, ErrKeyringClosed
		}
	}
}

// Close stops Run and wakes every Open waiting for a key. It is safe to call
// more than once.
func (r *Keyring) Close() error {
	r.closeOne.Do(func() {
		close(r.closed)
		r.mu.Lock()
		if r.cancel != nil {
			r.cancel()
		}
		r.mu.Unlock()
	})
	return nil
}

// Open opens cell for the place c with the tenant's keyset. When the ring
// does not hold the key the cell names (a grant or rotation still in flight
// on the key shape), Open waits for the ring to change, up to
// KeyringOptions.KeyWait, and then fails with an *[OpenError] wrapping
// [ErrNoKey]. Once a wait for a key has timed out, later cells naming the
// same key of the same tenant fail at once, until the tenant's keyset
// changes. Other errors are returned at once, as [Open] returns them.
func (r *Keyring) Open(ctx context.Context, c CellContext, cell string) ([]byte, error) {
	v := r.view(c.Tenant)
	pt, err := v.openAppend(ctx, nil, &c, cell)
	if err != nil {
		return nil, err
	}
	return pt[:len(pt):len(pt)], nil
}

// A tenantView is what one tenant's cells are opened with: the tenant's
// keyset in one published version of the ring. The ring is a map, looked up
// by tenant; a reader that opens many cells of one tenant (the cells of a
// row) looks the keyset up once, in [Keyring.view], and then opens every
// cell through the view without touching the map again.
type tenantView struct {
	r      *Keyring
	tenant string
	st     *ringState // the version of the ring ks was found in
	ks     *Keyset    // never nil: a keyset without keys if st holds none
}

// view returns the tenant's view of the current ring.
func (r *Keyring) view(tenant string) tenantView {
	v := tenantView{r: r, tenant: tenant}
	v.load()
	return v
}

// load moves v to the current version of the ring.
func (v *tenantView) load() {
	v.st = v.r.state.Load()
	v.ks = v.st.keys[v.tenant]
	if v.ks == nil {
		// No keys: opening reports ErrNoKey once the cell has been parsed,
		// which names the key to wait for.
		v.ks = &Keyset{tenant: v.tenant}
	}
}

// openAppend opens cell for c (whose tenant must be v's) and appends the
// plaintext to dst, as [OpenAppend] does. When the cell names a key the
// view's keyset lacks, it waits for the ring as [Keyring.Open] describes,
// and moves the view to every newer version of the ring it sees, so that
// the cells that follow are opened with the keyset that was waited for.
func (v *tenantView) openAppend(ctx context.Context, dst []byte, c *CellContext, cell string) ([]byte, error) {
	r := v.r
	var deadline <-chan time.Time
	for {
		out, err := OpenAppend(dst, v.ks, *c, cell)
		if err == nil || !errors.Is(err, ErrNoKey) {
			return out, err
		}
		oe, ok := errors.AsType[*OpenError](err)
		if !ok {
			return nil, err
		}
		held := v.st.keys[v.tenant] // nil when the ring holds no keyset for the tenant
		mk := missKey{v.tenant, oe.KeyID}
		if deadline == nil {
			if r.keyWait < 0 || r.missed(mk, held) {
				return nil, err
			}
			t := time.NewTimer(r.keyWait)
			defer t.Stop()
			deadline = t.C
		}
		select {
		case <-v.st.changed:
			v.load()
			continue
		case <-deadline:
		case <-ctx.Done():
			return nil, err
		case <-r.closed:
		case <-r.stopped:
		}
		r.mu.Lock()
		r.misses[mk] = held
		r.mu.Unlock()
		oe.Err = detail(ErrNoKey, "key not in the keyring after waiting %s for the key shape", r.keyWait)
		return nil, oe
	}
}

// missed reports whether a wait for mk timed out while the tenant's keyset
// was ks.
func (r *Keyring) missed(mk missKey, ks *Keyset) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	prev, ok := r.misses[mk]
	if ok && prev != ks {
		delete(r.misses, mk)
		return false
	}
	return ok
}

// ringRow is what the ring learnt from one tenant-key row.
type ringRow struct {
	tenant string
	ks     *Keyset // nil if the row was refused
}

// Run follows the key shape until ctx ends, Close is called (both return
// nil) or the stream fails (its error). Run may be called once. After Run
// has returned, the ring keeps the keysets it held, and Open no longer waits
// for keys.
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

	opts := r.opts.Stream
	opts.Live = true
	opts.Transform = nil
	s, err := client.New(opts)
	if err != nil {
		return err
	}
	defer s.Close()

	rows := map[string]ringRow{} // by shape key
	high := map[string]uint64{}  // newest generation ever held per tenant: never go backwards
	dirty, rebuilding := true, false
	for m, err := range s.Messages(ctx) {
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		switch {
		case m.IsChange():
			if r.apply(rows, high, m) {
				dirty = true
			}
		case m.IsMustRefetch():
			clear(rows)
			dirty, rebuilding = true, true
		case m.IsUpToDate():
			if dirty || rebuilding {
				r.publish(rows)
				dirty, rebuilding = false, false
			}
		}
	}
	return nil
}

// apply records one change of the key shape in rows and reports whether the
// ring changed.
func (r *Keyring) apply(rows map[string]ringRow, high map[string]uint64, m client.Message) bool {
	if m.Headers.Operation == client.Delete {
		_, had := rows[m.Key]
		delete(rows, m.Key)
		return had
	}
	v := m.Value
	if r.opts.UserID != "" && !matches(v, m.OldValue, "user_id", r.opts.UserID) ||
		r.opts.DeviceID != "" && !matches(v, m.OldValue, "device_id", r.opts.DeviceID) {
		return false
	}
	prev, had := rows[m.Key]
	rowErr := &KeyRowError{Key: m.Key, Tenant: prev.tenant}
	if t, ok := v["tenant_id"].(string); ok {
		rowErr.Tenant = t
	}
	refuse := func(err error) bool {
		rowErr.Err = err
		r.report(rowErr)
		if !had {
			rows[m.Key] = ringRow{tenant: rowErr.Tenant}
		}
		return false
	}
	if rowErr.Tenant == "" {
		return refuse(detail(ErrMalformedPayload, "row has no tenant_id"))
	}
	gen, ok := uintValue(v["generation"])
	if !ok {
		return refuse(detail(ErrMalformedPayload, "row has no valid generation"))
	}
	rowErr.Generation = gen
	wrapped, ok := byteaValue(v["wrapped"])
	if !ok {
		if _, present := v["wrapped"]; !present && had && prev.ks != nil && prev.ks.generation == gen {
			return false // an update that did not change the payload
		}
		return refuse(detail(ErrMalformedPayload, "row has no valid wrapped payload"))
	}
	ks, err := unwrap(r.opts.Identity, r.self, wrapped, rowErr.Tenant, r.opts.Signers)
	clear(wrapped)
	if err != nil {
		return refuse(err)
	}
	if ks.generation != gen {
		return refuse(detail(ErrMalformedPayload, "payload is generation %d, row says %d", ks.generation, gen))
	}
	h, seen := high[ks.tenant]
	if !seen && r.opts.Floor != nil {
		// The first row of a tenant in this run: the floor of earlier runs.
		f, err := r.opts.Floor.Floor(ks.tenant)
		if err != nil {
			return refuse(fmt.Errorf("keysync: generation floor: %w", err))
		}
		h = f
	}
	if ks.generation < h {
		return refuse(detail(ErrStaleGeneration, "generation %d, held %d", ks.generation, h))
	}
	high[ks.tenant] = ks.generation
	if r.opts.Floor != nil {
		if err := r.opts.Floor.Raise(ks.tenant, ks.generation); err != nil && r.opts.Logger != nil {
			// The keyset is genuine; only the next run's check is weaker.
			r.opts.Logger.Warn("keysync: generation floor not raised", "tenant", ks.tenant, "generation", ks.generation, "err", err.Error())
		}
	}
	rows[m.Key] = ringRow{tenant: ks.tenant, ks: ks}
	return true
}

func (r *Keyring) report(e *KeyRowError) {
	if r.opts.Logger != nil {
		r.opts.Logger.Warn("keysync: tenant-key row refused", "key", e.Key, "tenant", e.Tenant,
			"generation", e.Generation, "err", e.Err.Error())
	}
	if r.opts.OnRowError != nil {
		r.opts.OnRowError(e)
	}
}

// publish swaps in a new ring built from rows: per tenant, the newest
// keyset of its rows.
func (r *Keyring) publish(rows map[string]ringRow) {
	keys := make(map[string]*Keyset, len(rows))
	for _, row := range rows {
		if row.ks == nil {
			continue
		}
		if cur := keys[row.tenant]; cur == nil || row.ks.generation > cur.generation {
			keys[row.tenant] = row.ks
		}
	}
	old := r.state.Load()
	r.state.Store(&ringState{keys: keys, ready: true, changed: make(chan struct{})})
	close(old.changed)
	if r.opts.Logger != nil {
		r.opts.Logger.Debug("keysync: keyring updated", "tenants", len(keys))
	}
}

func matches(v, old client.Row, col, want string) bool {
	got, ok := v[col].(string)
	if !ok {
		got, ok = old[col].(string)
	}
	return !ok || got == want
}

// uintValue reads a positive integer column, as text or parsed.
func uintValue(v any) (uint64, bool) {
	switch v := v.(type) {
	case string:
		n, err := strconv.ParseUint(v, 10, 64)
		return n, err == nil && n > 0
	case int64:
		return uint64(v), v > 0
	}
	return 0, false
}

// byteaValue decodes a bytea column in Postgres hex text format ("\x…").
func byteaValue(v any) ([]byte, bool) {
	switch v := v.(type) {
	case string:
		h, ok := strings.CutPrefix(v, `\x`)
		if !ok {
			return nil, false
		}
		b, err := hex.DecodeString(h)
		return b, err == nil
	case []byte:
		return append([]byte(nil), v...), true
	}
	return nil, false
}
