package keysync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"iter"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/shapeseal/shapeseal/client"
)

// A CellError replaces, in a row that a [Decrypter] transformed, the value of
// a cell that could not be opened. It is never plaintext and never the
// ciphertext: readers of a decrypted row find either a string (the
// plaintext), nil (NULL) or a *CellError, and branch with a type switch or
// errors.Is on it.
//
// As JSON (in client.Message.MarshalJSON, and so in shapeseal tail) a
// CellError is an object
//
//	{"error": "no_key", "message": "keysync: open public.items.title (…): no key for cell"}
//
// whose "error" is one of no_key, auth, not_encrypted, malformed_cell,
// tenant_mismatch, invalid_context or error, after the sentinel it wraps.
type CellError struct {
	Column string
	Err    error // usually an *OpenError
}

func (e *CellError) Error() string { return e.Err.Error() }
func (e *CellError) Unwrap() error { return e.Err }

// Code returns the short name of the error, as in the JSON form.
func (e *CellError) Code() string {
	switch {
	case errors.Is(e.Err, ErrNoKey):
		return "no_key"
	case errors.Is(e.Err, ErrAuth):
		return "auth"
	case errors.Is(e.Err, ErrNotEncrypted):
		return "not_encrypted"
	case errors.Is(e.Err, ErrMalformedCell):
		return "malformed_cell"
	case errors.Is(e.Err, ErrTenantMismatch):
		return "tenant_mismatch"
	case errors.Is(e.Err, ErrInvalidContext):
		return "invalid_context"
	}
	return "error"
}

// MarshalJSON encodes the error as {"error": code, "message": text}.
func (e *CellError) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Error   string `json:"error"`
		Message string `json:"message"`
	}{e.Code(), e.Error()})
}

// CellErrors returns the cells of row that a [Decrypter] could not open.
func CellErrors(row client.Row) []*CellError {
	var errs []*CellError
	for _, v := range row {
		if e, ok := v.(*CellError); ok {
			errs = append(errs, e)
		}
	}
	return errs
}

// A Decrypter opens the encrypted cells of change messages with the keysets
// of a [Keyring]. Its Transform method is a client.Options.Transform. It is
// safe for concurrent use, so one decrypter may serve several streams.
type Decrypter struct {
	ring   *Keyring
	tables map[relation]*decTable
	only   *decTable // the table, when there is one

	lastRel atomic.Pointer[relCache]
	scratch atomic.Pointer[batchScratch] // one batch's scratch, kept for the next
	seed    maphash.Seed                 // for the hashes of row keys

	mu      sync.Mutex        // guards the tables' rows and the fields below
	tenant  string            // the tenant interned last
	tenants map[string]string // tenant ids, one copy of each
}

// relation is a message's relation header: schema and table.
type relation struct{ schema, table string }

// decTable is a table spec with what the decrypter derives from it once,
// rather than once per cell.
type decTable struct {
	spec   TableSpec
	table  string    // spec.QualifiedTable()
	rows   rowPlaces // guarded by Decrypter.mu, as is tenant
	tenant string    // the tenant of the first row seen: see rowPlaces
}

// place is what a row's cells are bound to besides their column: the text
// of the tenant and of the row-key columns. The decrypter keeps those its
// rows' later messages cannot tell again (see rowPlaces), so a place is
// kept small: the row key is one string, the values joined with NUL bytes
// (which Postgres text never holds), and so for a row key of one column
// (the usual case) it is that column's value.
type place struct {
	tenant string
	rowKey string
}

// rowKeyValue returns the i-th value of a joined row key.
func rowKeyValue(joined string, i int) string {
	for ; i > 0; i-- {
		_, joined, _ = strings.Cut(joined, "\x00")
	}
	v, _, _ := strings.Cut(joined, "\x00")
	return v
}

// NewDecrypter returns a decrypter for the tables of specs, each of which
// must be valid.
func NewDecrypter(ring *Keyring, specs ...TableSpec) (*Decrypter, error) {
	if ring == nil {
		return nil, errors.New("keysync: decrypter needs a keyring")
	}
	d := &Decrypter{ring: ring, tables: map[relation]*decTable{}, seed: maphash.MakeSeed()}
	for _, s := range specs {
		if err := s.Validate(); err != nil {
			return nil, err
		}
		t := &decTable{spec: s, table: s.QualifiedTable()}
		t.spec.Columns = slices.Clone(s.Columns) // the caller's slices may change later
		t.spec.RowKey = slices.Clone(s.RowKey)
		schema, table, _ := strings.Cut(t.table, ".")
		rel := relation{schema, table}
		if _, dup := d.tables[rel]; dup {
			return nil, fmt.Errorf("keysync: two table specs for %s", t.table)
		}
		d.tables[rel] = t
		d.only = t
	}
	if len(specs) != 1 {
		d.only = nil
	}
	return d, nil
}

// table returns the table of a message: by its relation header, or the
// only table for a message without one.
func (d *Decrypter) table(m *client.Message) *decTable {
	if r := m.Headers.Relation; len(r) == 2 {
		// The client shares one relation slice among a shape's messages:
		// the table of the last one is at hand.
		if c := d.lastRel.Load(); c != nil && &r[0] == c.rel {
			return c.t
		}
		t := d.tables[relation{r[0], r[1]}]
		d.lastRel.Store(&relCache{&r[0], t})
		return t
	}
	return d.only
}

// relCache is the table of the last relation slice a decrypter saw.
type relCache struct {
	rel *string
	t   *decTable
}

// Transform replaces every encrypted cell of a change message, in Value and
// OldValue, by its plaintext (a string) or, if it cannot be opened, by a
// *[CellError]. NULL stays NULL. A cell whose key the keyring does not hold
// yet waits for it as [Keyring.Open] does. Messages of tables without a spec
// are left as they are. Transform never returns an error, so one bad cell
// never stops a stream.
//
// The tenant and row-key columns that bind a cell are read from the message;
// an update that omits them (replica=default sends only the primary key and
// the changed columns) uses those of the row's earlier messages.
//
// The plaintexts of one message share one allocation: each is a substring
// of a string holding them all, so a value kept after the rest of the
// message is dropped keeps its siblings' bytes alive too.
func (d *Decrypter) Transform(m *client.Message) error {
	return d.TransformContext(context.Background(), m)
}

// Forget drops what the decrypter remembers of rows: that it has seen each
// one, and the places some of them need kept for the updates that omit
// them (see rowPlaces: a few bytes a row). A row
// that leaves the shape without a delete — every row, when the stream must
// refetch (after a TRUNCATE, a shape rotated or evicted) — is otherwise
// remembered for as long as the decrypter lives. Read a stream through
// [WithDecrypter], as [Follow] does, rather than call Forget: it forgets
// the rows of that stream's table only, when it must refetch.
func (d *Decrypter) Forget() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, t := range d.tables {
		t.rows, t.tenant = rowPlaces{}, ""
	}
	d.tenant, d.tenants = "", nil
}

// forgetTable drops the places of t's rows.
func (d *Decrypter) forgetTable(t *decTable) {
	d.mu.Lock()
	defer d.mu.Unlock()
	t.rows, t.tenant = rowPlaces{}, ""
}

// WithDecrypter returns stream with a decrypter's memory of rows tied to
// it: when stream delivers a must-refetch message, d forgets the rows of
// the stream's table (see [Decrypter.Forget]). d must be stream's
// transform; it may serve streams of other tables too, but no other
// stream of this one's table. Read the returned stream instead of stream.
func WithDecrypter(stream client.Stream, d *Decrypter) client.Stream {
	return &forgetting{Stream: stream, d: d}
}

type forgetting struct {
	client.Stream
	d *Decrypter
	t *decTable // the stream's table, once a change showed it
}

// see forgets at a must-refetch, and learns the table from a change.
func (f *forgetting) see(m client.Message) {
	switch {
	case m.IsChange() && f.t == nil:
		f.t = f.d.table(&m)
	case m.IsMustRefetch() && f.t != nil:
		f.d.forgetTable(f.t)
	}
}

func (f *forgetting) Next(ctx context.Context) (client.Message, error) {
	m, err := f.Stream.Next(ctx)
	if err == nil {
		f.see(m)
	}
	return m, err
}

func (f *forgetting) Messages(ctx context.Context) iter.Seq2[client.Message, error] {
	return func(yield func(client.Message, error) bool) {
		for m, err := range f.Stream.Messages(ctx) {
			if err == nil {
				f.see(m)
			}
			if !yield(m, err) {
				return
			}
		}
	}
}

// Unwrap returns the stream f reads, for client's own look at it.
func (f *forgetting) Unwrap() client.Stream { return f.Stream }

// TransformContext is Transform with a context that bounds the wait for
// keys: it is a client.Options.TransformContext (and a
// client.WSStreamOptions.TransformContext), which the stream calls with
// the context of the Next that reads the message. When ctx ends before
// every cell of the message opened, it returns ctx.Err() rather than
// report cells as no_key that may yet open: the stream then delivers the
// message, read again, by the next call of Next. Otherwise it returns nil,
// as Transform does.
func (d *Decrypter) TransformContext(ctx context.Context, m *client.Message) error {
	one := [1]*client.Message{m}
	return d.TransformBatch(ctx, one[:])
}

// TransformBatch is TransformContext for a batch of messages, in order: it
// is a client.Options.TransformBatch, the fastest way to decrypt a stream,
// since what a message costs besides its crypto is paid once a batch.
func (d *Decrypter) TransformBatch(ctx context.Context, ms []*client.Message) error {
	sc := d.getScratch()
	defer d.putScratch(sc)
	d.mu.Lock()
	for _, m := range ms {
		d.collect(sc, m)
	}
	d.mu.Unlock()
	if failed := d.openAll(ctx, sc); failed {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
	}
	sc.publish()
	return nil
}

// place returns the place of a message's row: each column from the value,
// then the old value, then what an earlier message of the row said. It
// records the place for the row's later messages, and forgets it at a
// delete. The error, if not nil, is the reason the row has no place (it
// wraps ErrInvalidContext): every cell of the message fails with it. d.mu
// is held.
func (d *Decrypter) place(m *client.Message, t *decTable) (place, error) {
	// What is known of the row is looked up only for a message that lacks
	// part of its place, so an insert costs one write, not a lookup too.
	// A delete without cells (replica=default sends the primary key only)
	// needs no place: it only ends the row's.
	s := &t.spec
	key := maphash.String(d.seed, m.Key)
	p, missing, err := placeOf(m, s, nil)
	if missing && !(m.Headers.Operation == client.Delete && !hasCells(m, s)) {
		if known, ok := t.rows.lookup(key, m.Key, t); ok {
			p, _, err = placeOf(m, s, &known)
		}
	}
	switch {
	case m.Headers.Operation == client.Delete:
		t.rows.record(key, deletedRow)
	case err == nil:
		p.tenant = d.intern(p.tenant)
		if t.tenant == "" {
			t.tenant = p.tenant
		}
		if p.tenant == t.tenant && (s.UnboundRows || keyHolds(m.Key, p.rowKey, len(s.RowKey))) {
			t.rows.record(key, toldAgain)
		} else {
			t.rows.record(key, t.rows.keep(place{p.tenant, strings.Clone(p.rowKey)}))
		}
	}
	return p, err
}

// intern returns the decrypter's copy of a tenant id: the rows of a shape
// share a few tenants, and a remembered place holds a copy, not the
// message's memory. d.mu is held.
func (d *Decrypter) intern(tenant string) string {
	if tenant == d.tenant {
		return d.tenant
	}
	v, ok := d.tenants[tenant]
	if !ok {
		v = strings.Clone(tenant)
		if d.tenants == nil {
			d.tenants = map[string]string{}
		}
		if len(d.tenants) < maxTenants {
			d.tenants[v] = v
		}
	}
	d.tenant = v
	return v
}

// maxTenants bounds the tenant ids a decrypter keeps one copy of.
const maxTenants = 1024

// placeOf reads the place of a message's row: each column from the value,
// then the old value, then known (if not nil). missing reports a column
// found in neither message value; err is the first column's error.
func placeOf(m *client.Message, s *TableSpec, known *place) (p place, missing bool, err error) {
	text := func(col string, fallback func() string) string {
		v, ok := m.Value[col]
		if !ok || v == nil {
			v, ok = m.OldValue[col]
		}
		if !ok || v == nil {
			missing = true
			if known != nil {
				return fallback()
			}
			if err == nil {
				err = detail(ErrInvalidContext, "column %q is missing or NULL", col)
			}
			return ""
		}
		t, terr := valueText(v, col)
		if terr != nil && err == nil {
			err = terr
		}
		return t
	}
	p.tenant = text(s.TenantColumn, func() string { return known.tenant })
	if !s.UnboundRows {
		if len(s.RowKey) == 1 {
			p.rowKey = text(s.RowKey[0], func() string { return known.rowKey })
		} else {
			var b strings.Builder
			for i, col := range s.RowKey {
				v := text(col, func() string { return rowKeyValue(known.rowKey, i) })
				if hasNUL(v) && err == nil {
					err = detail(ErrInvalidContext, "NUL byte in row key")
				}
				if i > 0 {
					b.WriteByte(0)
				}
				b.WriteString(v)
			}
			p.rowKey = b.String()
		}
	}
	if err != nil {
		return place{}, missing, err
	}
	return p, missing, nil
}

// valueText returns the text of a place column's value: a string, or an
// integer in decimal.
func valueText(v any, col string) (string, error) {
	switch v := v.(type) {
	case string:
		return v, nil
	case int64:
		return strconv.FormatInt(v, 10), nil
	case int32:
		return strconv.FormatInt(int64(v), 10), nil
	case int:
		return strconv.Itoa(v), nil
	}
	return "", detail(ErrInvalidContext, "column %q is %T, want its text", col, v)
}

// hasCells reports whether m has a value, not NULL, in an encrypted column.
func hasCells(m *client.Message, s *TableSpec) bool {
	for _, col := range s.Columns {
		if present(m.Value, col) || present(m.OldValue, col) {
			return true
		}
	}
	return false
}

// present reports whether row has a value, not NULL, for col.
func present(row client.Row, col string) bool {
	v, ok := row[col]
	return ok && v != nil
}
