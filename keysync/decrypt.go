package keysync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

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
// of a [Keyring]. Its Transform method is a client.Options.Transform.
type Decrypter struct {
	ring  *Keyring
	specs map[string]*TableSpec // by qualified table
	only  *TableSpec            // the spec, when there is one

	mu     sync.Mutex
	places map[string]place // by message key, for updates that omit them
}

// place is what a row's cells are bound to besides their column.
type place struct {
	tenant any
	rowKey []any
}

// NewDecrypter returns a decrypter for the tables of specs, each of which
// must be valid.
func NewDecrypter(ring *Keyring, specs ...TableSpec) (*Decrypter, error) {
	if ring == nil {
		return nil, errors.New("keysync: decrypter needs a keyring")
	}
	d := &Decrypter{ring: ring, specs: map[string]*TableSpec{}, places: map[string]place{}}
	for i := range specs {
		s := specs[i]
		if err := s.Validate(); err != nil {
			return nil, err
		}
		if _, dup := d.specs[s.QualifiedTable()]; dup {
			return nil, fmt.Errorf("keysync: two table specs for %s", s.QualifiedTable())
		}
		d.specs[s.QualifiedTable()] = &s
		d.only = &s
	}
	if len(specs) != 1 {
		d.only = nil
	}
	return d, nil
}

// spec returns the table spec of a message: by its relation header, or the
// only spec for a message without one.
func (d *Decrypter) spec(m *client.Message) *TableSpec {
	if r := m.Headers.Relation; len(r) == 2 {
		return d.specs[r[0]+"."+r[1]]
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
func (d *Decrypter) Transform(m *client.Message) error {
	return d.TransformContext(context.Background(), m)
}

// TransformContext is Transform with a context that bounds the wait for keys.
func (d *Decrypter) TransformContext(ctx context.Context, m *client.Message) error {
	if !m.IsChange() {
		return nil
	}
	s := d.spec(m)
	if s == nil {
		return nil
	}
	if m.Headers.Operation == client.Delete {
		d.mu.Lock()
		delete(d.places, m.Key)
		d.mu.Unlock()
	}
	d.mu.Lock()
	known, hasKnown := d.places[m.Key]
	d.mu.Unlock()

	// The row's place, from the value, the old value, then what was known.
	lookup := func(col string, i int) any {
		if v, ok := m.Value[col]; ok && v != nil {
			return v
		}
		if v, ok := m.OldValue[col]; ok && v != nil {
			return v
		}
		if hasKnown {
			if i < 0 {
				return known.tenant
			}
			if i < len(known.rowKey) {
				return known.rowKey[i]
			}
		}
		return nil
	}
	p := place{tenant: lookup(s.TenantColumn, -1)}
	if !s.UnboundRows {
		p.rowKey = make([]any, len(s.RowKey))
		for i, col := range s.RowKey {
			p.rowKey[i] = lookup(col, i)
		}
	}
	if m.Headers.Operation != client.Delete {
		d.mu.Lock()
		d.places[m.Key] = p
		d.mu.Unlock()
	}
	placeRow := make(map[string]any, 1+len(p.rowKey))
	placeRow[s.TenantColumn] = p.tenant
	for i, col := range s.RowKey {
		if i < len(p.rowKey) {
			placeRow[col] = p.rowKey[i]
		}
	}
	d.openRow(ctx, s, placeRow, m.Value)
	d.openRow(ctx, s, placeRow, m.OldValue)
	return nil
}

// openRow opens the cells of row in place, bound to placeRow.
func (d *Decrypter) openRow(ctx context.Context, s *TableSpec, placeRow map[string]any, row client.Row) {
	for _, col := range s.Columns {
		v, ok := row[col]
		if !ok || v == nil {
			continue
		}
		c, err := s.CellContext(placeRow, col)
		if err != nil {
			row[col] = &CellError{Column: col, Err: &OpenError{Table: s.QualifiedTable(), Column: col, Err: err}}
			continue
		}
		cell, ok := v.(string)
		if !ok {
			row[col] = &CellError{Column: col, Err: &OpenError{Table: c.Table, Column: col, Tenant: c.Tenant,
				Err: detail(ErrNotEncrypted, "value is %T, not text", v)}}
			continue
		}
		pt, err := d.ring.open(ctx, c, cell)
		if err != nil {
			row[col] = &CellError{Column: col, Err: err}
			continue
		}
		row[col] = pt
	}
}
