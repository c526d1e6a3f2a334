package keysync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/internal/b64url"
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

	mu     sync.Mutex
	places map[string]place // by message key, for updates that omit them
	tenant string           // the tenant of the place recorded last
}

// relation is a message's relation header: schema and table.
type relation struct{ schema, table string }

// decTable is a table spec with what the decrypter derives from it once,
// rather than once per cell.
type decTable struct {
	spec  TableSpec
	table string // spec.QualifiedTable()
}

// place is what a row's cells are bound to besides their column: the text
// of the tenant and of the row-key columns. The decrypter keeps one per row
// it has seen, so a place is kept small: the row key is one string, the
// values joined with NUL bytes (which Postgres text never holds), and so
// for a row key of one column (the usual case) it is that column's value,
// and recording the place allocates nothing.
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
	d := &Decrypter{ring: ring, tables: map[relation]*decTable{}, places: map[string]place{}}
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
		return d.tables[relation{r[0], r[1]}]
	}
	return d.only
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

// TransformContext is Transform with a context that bounds the wait for keys.
func (d *Decrypter) TransformContext(ctx context.Context, m *client.Message) error {
	if !m.IsChange() {
		return nil
	}
	t := d.table(m)
	if t == nil {
		return nil
	}
	p, err := d.place(m, &t.spec)

	sc := rowScratchPool.Get().(*rowScratch)
	defer sc.release()
	c := CellContext{Table: t.table, Tenant: p.tenant}
	if err == nil && !t.spec.UnboundRows {
		if len(t.spec.RowKey) == 1 {
			sc.rowKey = append(sc.rowKey, p.rowKey)
		} else {
			for i := range t.spec.RowKey {
				sc.rowKey = append(sc.rowKey, rowKeyValue(p.rowKey, i))
			}
		}
		c.RowKey = sc.rowKey
	}
	var v tenantView // the tenant's keyset, looked up at the message's first cell
	d.openRow(ctx, sc, t, &c, err, &v, m.Value)
	d.openRow(ctx, sc, t, &c, err, &v, m.OldValue)
	sc.publish()
	return nil
}

// place returns the place of a message's row: each column from the value,
// then the old value, then what an earlier message of the row said. It
// records the place for the row's later messages, and forgets it at a
// delete. The error, if not nil, is the reason the row has no place (it
// wraps ErrInvalidContext): every cell of the message fails with it.
func (d *Decrypter) place(m *client.Message, s *TableSpec) (place, error) {
	// What is known of the row is looked up only for a message that lacks
	// part of its place, so an insert costs one map write, not two.
	var known place
	hasKnown := false
	if !holdsPlace(m, s) {
		d.mu.Lock()
		known, hasKnown = d.places[m.Key]
		d.mu.Unlock()
	}
	var p place
	var err error
	text := func(col, fallback string) string {
		if err != nil {
			return ""
		}
		var v string
		switch {
		case present(m.Value, col):
			v, err = textValue(m.Value, col)
		case present(m.OldValue, col):
			v, err = textValue(m.OldValue, col)
		case hasKnown:
			v = fallback
		default:
			err = detail(ErrInvalidContext, "column %q is missing or NULL", col)
		}
		return v
	}
	p.tenant = text(s.TenantColumn, known.tenant)
	if !s.UnboundRows {
		if len(s.RowKey) == 1 {
			p.rowKey = text(s.RowKey[0], known.rowKey)
		} else {
			var b strings.Builder
			for i, col := range s.RowKey {
				v := text(col, rowKeyValue(known.rowKey, i))
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
	d.mu.Lock()
	if m.Headers.Operation == client.Delete {
		delete(d.places, m.Key)
	} else if err == nil {
		// The rows of a shape share a few tenants: keep one copy of each
		// tenant's id rather than the copy every message brings.
		if p.tenant == d.tenant {
			p.tenant = d.tenant
		} else {
			d.tenant = p.tenant
		}
		d.places[m.Key] = p
	}
	d.mu.Unlock()
	return p, err
}

// holdsPlace reports whether m holds every column of its row's place.
func holdsPlace(m *client.Message, s *TableSpec) bool {
	has := func(col string) bool { return present(m.Value, col) || present(m.OldValue, col) }
	if !has(s.TenantColumn) {
		return false
	}
	if !s.UnboundRows {
		for _, col := range s.RowKey {
			if !has(col) {
				return false
			}
		}
	}
	return true
}

// present reports whether row has a value, not NULL, for col.
func present(row client.Row, col string) bool {
	v, ok := row[col]
	return ok && v != nil
}

// openRow opens the cells of row, bound to c (with placeErr, if not nil,
// the reason the row has no place), through the tenant's view v. Cells that
// do not open are replaced at once by a *CellError; the plaintexts are
// packed into sc and replace their cells at sc.publish.
func (d *Decrypter) openRow(ctx context.Context, sc *rowScratch, t *decTable, c *CellContext, placeErr error, v *tenantView, row client.Row) {
	for _, col := range t.spec.Columns {
		val, ok := row[col]
		if !ok || val == nil {
			continue
		}
		if placeErr != nil {
			row[col] = &CellError{Column: col, Err: &OpenError{Table: t.table, Column: col, Err: placeErr}}
			continue
		}
		cell, ok := val.(string)
		if !ok {
			row[col] = &CellError{Column: col, Err: &OpenError{Table: t.table, Column: col, Tenant: c.Tenant,
				Err: detail(ErrNotEncrypted, "value is %T, not text", val)}}
			continue
		}
		if v.r == nil {
			*v = d.ring.view(c.Tenant)
		}
		c.Column = col
		if err := sc.open(ctx, v, c, cell, row, col); err != nil {
			row[col] = &CellError{Column: col, Err: err}
		}
	}
}

// A rowScratch holds what opening the cells of one message needs, reused
// from message to message through rowScratchPool, so that the only
// allocations of a message are its plaintext and the interface values that
// hold its parts.
//
// The cells are opened one after the other into buf with [OpenAppend], so
// buf holds their plaintexts back to back; publish then copies them all
// into one string, and each cell gets its substring. Opening a cell writes
// past its plaintext too (ciphertext, associated data, and the last bytes
// of the plaintext before OpenAppend moves it into place), so release
// clears all that was written, and buf keeps no plaintext in the pool.
type rowScratch struct {
	buf    []byte
	used   int          // bytes of buf written, to clear
	rowKey []string     // the message's row-key values
	opened []openedCell // the cells whose plaintext is in buf
}

// An openedCell is a cell whose plaintext is buf[off:end].
type openedCell struct {
	row      client.Row
	col      string
	off, end int
}

var rowScratchPool = sync.Pool{New: func() any { return new(rowScratch) }}

// open opens cell, bound to c, into sc.buf and notes that its plaintext
// replaces row[col].
func (sc *rowScratch) open(ctx context.Context, v *tenantView, c *CellContext, cell string, row client.Row, col string) error {
	off := len(sc.buf)
	// OpenAppend needs room for the decoded cell and its associated data;
	// making it here lets the old buffer be cleared when it is replaced.
	need := off + b64url.DecodedLen(len(cell)) + c.adLen()
	if need > cap(sc.buf) {
		grown := make([]byte, off, max(need, 2*cap(sc.buf)))
		copy(grown, sc.buf)
		clear(sc.buf[:sc.used])
		sc.buf, sc.used = grown, off
	}
	sc.used = max(sc.used, need)
	out, err := v.openAppend(ctx, sc.buf, c, cell)
	if err != nil {
		return err
	}
	if cap(out) != cap(sc.buf) {
		// OpenAppend grew the buffer after all: clear the old one, and all
		// of the new one at release.
		clear(sc.buf[:sc.used])
		sc.used = cap(out)
	}
	sc.buf = out
	sc.opened = append(sc.opened, openedCell{row, col, off, len(out)})
	return nil
}

// publish replaces the opened cells by their plaintexts: substrings of one
// string that holds them all, the message's one allocation for plaintext.
func (sc *rowScratch) publish() {
	if len(sc.opened) == 0 {
		return
	}
	all := string(sc.buf)
	for _, o := range sc.opened {
		o.row[o.col] = all[o.off:o.end]
	}
}

// release clears sc, so that it holds neither plaintext nor references to
// the message, and returns it to the pool unless it grew large.
func (sc *rowScratch) release() {
	clear(sc.buf[:sc.used])
	clear(sc.rowKey)
	clear(sc.opened)
	sc.buf, sc.used, sc.rowKey, sc.opened = sc.buf[:0], 0, sc.rowKey[:0], sc.opened[:0]
	const maxPooled = 64 << 10
	if cap(sc.buf) <= maxPooled {
		rowScratchPool.Put(sc)
	}
}
