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
	"github.com/shapeseal/shapeseal/internal/pgident"
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

	// Log follows the tenant logs (shapeseal_log) of the tenants this
	// device's user belongs to: from Electric, build it with
	// [LogShapeOptions]; behind the proxy, point it at a shape rule on
	// shapeseal_log filtered to the token's tenants (see [LogShapeWhere]). The
	// keyring always follows it live and sets no Transform.
	Log client.Options

	// Identity is the device's age identity, which unwraps the rows.
	Identity age.Identity

	// Roots are the root keys the device pins (see package chain): the
	// ring adopts a tenant's keyset only if the tenant's log, verified
	// from one of them, lists this device and names that keyset. At least
	// one is required. Configure them out of band (a flag, a file, the
	// app's build) — never from the database that serves the keys.
	Roots []VerifyKey

	// Floor keeps how far each tenant's log has been seen, and the newest
	// generation adopted, across runs; the ring refuses logs and keysets
	// below it (see [Floor]). Required: [OpenFileFloor] with
	// [DefaultFloorPath] next to the identity, or [NewMemoryFloor] for a
	// device that keeps no state (and so can be rolled back when it
	// restarts).
	Floor Floor

	// UserID and DeviceID, if set, make the keyring ignore rows of other
	// users or devices (rows whose user_id or device_id column differs), for
	// a key shape that is not filtered to the device.
	UserID, DeviceID string

	// KeyWait bounds how long Open waits for a key the ring does not hold
	// yet. 0 means DefaultKeyWait; a negative value does not wait.
	KeyWait time.Duration

	// OnRowError, if set, is called (from the goroutine running Run) with
	// every row the keyring refuses: a payload wrapped for another device,
	// for another tenant, malformed, not the keyset the tenant's log names,
	// or older than the keyset held; and a tenant's log that does not
	// verify or no longer lists this device (Key is then empty). The
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
			Replica: "full",
		},
		Live: true,
	}
}

// LogShapeWhere is the where clause that filters shapeseal_log to the logs
// of a list of tenants, given as $1 in Postgres array form ("{acme,globex}"):
// a proxy rule pins it with the token's tenants ("$tenants"), the same
// authorization as the tenants' data. The log holds no secret — public
// keys, user and device ids, generations, KEK URIs — but who belongs to a
// tenant is the tenant's business.
const LogShapeWhere = "tenant_id = ANY($1::text[])"

// LogShapeOptions returns stream options that follow, directly from
// Electric (or electrictest), the logs of tenants — every tenant's if none
// is given: shapeURL is the /v1/shape endpoint. Behind the proxy, use the
// proxy's URL of a rule that pins [LogShapeWhere] to the token's tenants
// instead.
func LogShapeOptions(shapeURL string, tenants ...string) client.Options {
	o := client.Options{
		URL: shapeURL,
		Params: client.Params{
			Table:   LogTable,
			Columns: []string{"tenant_id", "seq", "entry"},
			Replica: "full",
		},
		Live: true,
	}
	if len(tenants) > 0 {
		o.Params.Where, o.Params.Params = LogShapeWhere, []string{pgident.TextArray(tenants)}
	}
	return o
}

// KeyRowError reports a tenant-key row the keyring refused, or a tenant's
// log it refused (Key is then empty). It wraps [ErrWrongIdentity],
// [ErrTenantMismatch], [ErrMalformedPayload], [ErrInvalidKeyset],
// [ErrUntrustedKeyset], [ErrStaleGeneration], [ErrNotMember] or a
// *[chain.Error].
type KeyRowError struct {
	Key        string // the row's key in the shape; empty for the log
	Tenant     string // the row's tenant_id, if it had one
	Generation uint64 // the row's generation, if it had one
	Err        error
}

func (e *KeyRowError) Error() string {
	if e.Key == "" {
		return fmt.Sprintf("keysync: tenant %q refused: %s", e.Tenant, trimPrefix(e.Err.Error()))
	}
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
	if len(opts.Roots) == 0 {
		return nil, errors.New("keysync: keyring needs at least one pinned root key (KeyringOptions.Roots)")
	}
	opts.Roots = slices.Clone(opts.Roots)
	if opts.Floor == nil {
		return nil, errors.New("keysync: keyring needs a floor (KeyringOptions.Floor: OpenFileFloor(DefaultFloorPath(identityFile)), or NewMemoryFloor)")
	}
	for _, s := range []struct{ what, url string }{{"key shape", opts.Stream.URL}, {"log shape", opts.Log.URL}} {
		if s.url == "" {
			return nil, fmt.Errorf("keysync: keyring needs the %s's URL", s.what)
		}
		if _, err := url.Parse(s.url); err != nil {
			return nil, fmt.Errorf("keysync: %s URL: %w", s.what, err)
		}
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
// plaintext to dst, as [OpenAppend] does, waiting for a missing key as
// [Keyring.Open] describes.
func (v *tenantView) openAppend(ctx context.Context, dst []byte, c *CellContext, cell string) ([]byte, error) {
	var w keyWait
	defer w.stop()
	for {
		out, err := OpenAppend(dst, v.ks, *c, cell)
		if err == nil || !v.wait(ctx, &w, err) {
			return out, err
		}
	}
}

// openTo is [openTo] through the view (c's tenant must be v's), waiting
// for a missing key as openAppend does.
func (v *tenantView) openTo(ctx context.Context, dst, scratch []byte, c *CellContext, cell string, checked bool) (out, scr []byte, err error) {
	var w keyWait
	defer w.stop()
	for {
		out, scratch, err = openTo(dst, scratch, v.ks, c, cell, checked)
		if err == nil || !v.wait(ctx, &w, err) {
			return out, scratch, err
		}
	}
}

// A keyWait is the deadline of one cell's wait for its key.
type keyWait struct{ t *time.Timer }

func (w *keyWait) stop() {
	if w.t != nil {
		w.t.Stop()
	}
}

// wait is called when opening a cell through v failed with err. When err
// is that the cell names a key the view's keyset lacks, it waits for the
// ring to change, up to the keyring's KeyWait from the first wait of w,
// and moves the view to every newer version of the ring it sees, so that
// the cells that follow are opened with the keyset that was waited for;
// it reports whether to try again. When it gives up, it rewrites err to
// say so, and remembers the miss, so that later cells naming the same key
// fail at once.
func (v *tenantView) wait(ctx context.Context, w *keyWait, err error) bool {
	if !errors.Is(err, ErrNoKey) {
		return false
	}
	oe, ok := errors.AsType[*OpenError](err)
	if !ok {
		return false
	}
	r := v.r
	held := v.st.keys[v.tenant] // nil when the ring holds no keyset for the tenant
	mk := missKey{v.tenant, oe.KeyID}
	if w.t == nil {
		if r.keyWait < 0 || r.missed(mk, held) {
			return false
		}
		w.t = time.NewTimer(r.keyWait)
	}
	select {
	case <-v.st.changed:
		v.load()
		return true
	case <-w.t.C:
	case <-ctx.Done():
		return false
	case <-r.closed:
	case <-r.stopped:
	}
	r.mu.Lock()
	r.misses[mk] = held
	r.mu.Unlock()
	oe.Err = detail(ErrNoKey, "key not in the keyring after waiting %s for the key shape", r.keyWait)
	return false
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
