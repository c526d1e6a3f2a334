package keysync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
)

// WriteMode is how a [Writer] writes a row.
type WriteMode int

const (
	// Insert inserts the row.
	Insert WriteMode = iota
	// Update updates the row with the same row key and tenant; a row that
	// does not exist is an error.
	Update
	// Upsert inserts the row or, when its row key exists for the same
	// tenant, updates it (INSERT … ON CONFLICT (row key) DO UPDATE). A row
	// key that exists for another tenant is an error.
	Upsert
)

// A Writer encrypts the encrypted columns of rows before writing them into
// Postgres, so that plaintext never reaches the database: the cells are
// sealed with the tenant's current keyset (loaded from shapeseal_keysets
// with a KEK) and bound to their place by the table spec, and every value is
// sent as a bound parameter.
//
// Before each row the Writer asks Postgres for the tenant's newest keyset
// generation, and reloads the keyset when it changed, so rows written after
// a [Revoke] or [Rotate] are sealed with the new primary key. It also asks
// Postgres for the text form of the tenant and row-key values (for example
// the canonical spelling of a UUID), which is what readers see and what the
// cells are bound to.
//
// A Writer is safe for concurrent use.
type Writer struct {
	spec TableSpec
	mode WriteMode
	kek  func(ctx context.Context, tenant string) (KEK, error)

	mu    sync.Mutex
	types map[string]string  // column → SQL type
	keys  map[string]*Keyset // tenant → keyset
}

// NewWriter returns a Writer of rows of spec's table. kek returns the KEK of
// a tenant's stored keyset; see [StoredKEKURI] to find which one it is.
func NewWriter(spec TableSpec, mode WriteMode, kek func(ctx context.Context, tenant string) (KEK, error)) (*Writer, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if mode != Insert && len(spec.RowKey) == 0 {
		return nil, fmt.Errorf("keysync: writer: updates need row-key columns")
	}
	if kek == nil {
		return nil, errors.New("keysync: writer: no KEK")
	}
	return &Writer{spec: spec, mode: mode, kek: kek, types: map[string]string{}, keys: map[string]*Keyset{}}, nil
}

// StoredKEKURI returns the URI of the KEK that tenant's newest keyset is
// stored under.
func StoredKEKURI(ctx context.Context, db DB, tenant string) (string, error) {
	var uri string
	err := db.QueryRow(ctx, `SELECT kek_uri FROM shapeseal_keysets WHERE tenant_id = $1 ORDER BY generation DESC LIMIT 1`, tenant).Scan(&uri)
	if err != nil {
		return "", detail(ErrKeysetNotFound, "tenant %q", tenant)
	}
	return uri, nil
}

// Write seals row's encrypted columns and writes it with db (a connection or
// a transaction). Row maps column names to values: a string, []byte (only
// in encrypted columns), a number (int, int64, float64, json.Number), a bool,
// nil for NULL, or json.RawMessage; every value is sent as text and cast to
// its column's type by Postgres. row itself is not modified.
func (w *Writer) Write(ctx context.Context, db DB, row map[string]any) error {
	s := &w.spec
	cols := make([]string, 0, len(row))
	for c := range row {
		cols = append(cols, c)
	}
	slices.Sort(cols)
	for _, c := range slices.Concat([]string{s.TenantColumn}, s.RowKey) {
		if row[c] == nil {
			return fmt.Errorf("keysync: write %s: column %q is missing or null", s.QualifiedTable(), c)
		}
	}
	types, err := w.columnTypes(ctx, db, cols)
	if err != nil {
		return err
	}
	vals := make(map[string]*string, len(row))
	for _, c := range cols {
		if s.Encrypts(c) {
			continue
		}
		v, err := textOf(row[c])
		if err != nil {
			return fmt.Errorf("keysync: write %s.%s: %w", s.QualifiedTable(), c, err)
		}
		vals[c] = v
	}

	// The canonical text of tenant and row key, and the newest generation.
	place := slices.Concat([]string{s.TenantColumn}, s.RowKey)
	var sel []string
	var args []any
	for i, c := range place {
		sel = append(sel, fmt.Sprintf("$%d::text::%s::text", i+1, types[c]))
		args = append(args, *vals[c])
	}
	sel = append(sel, "(SELECT max(generation) FROM shapeseal_keysets WHERE tenant_id = $1::text::"+types[s.TenantColumn]+"::text)")
	canon := make([]string, len(place))
	dst := make([]any, 0, len(place)+1)
	for i := range canon {
		dst = append(dst, &canon[i])
	}
	var gen *int64
	dst = append(dst, &gen)
	if err := db.QueryRow(ctx, "SELECT "+strings.Join(sel, ", "), args...).Scan(dst...); err != nil {
		return fmt.Errorf("keysync: write %s: %w", s.QualifiedTable(), err)
	}
	tenant := canon[0]
	if gen == nil {
		return detail(ErrKeysetNotFound, "tenant %q", tenant)
	}
	ks, err := w.keyset(ctx, db, tenant, uint64(*gen))
	if err != nil {
		return err
	}

	sealRow := make(map[string]any, len(place)+len(s.Columns))
	for i, c := range place {
		sealRow[c] = canon[i]
	}
	for _, c := range s.Columns {
		if v, ok := row[c]; ok {
			sealRow[c] = v
		}
	}
	if err := s.SealRow(ks, sealRow); err != nil {
		return err
	}
	for _, c := range s.Columns {
		if _, ok := row[c]; ok {
			switch v := sealRow[c].(type) {
			case string:
				vals[c] = &v
			default:
				vals[c] = nil
			}
		}
	}
	q, args := w.statement(cols, types, vals)
	tag, err := db.Exec(ctx, q, args...)
	if err != nil {
		return fmt.Errorf("keysync: write %s: %w", s.QualifiedTable(), err)
	}
	if tag.RowsAffected() != 1 {
		switch w.mode {
		case Update:
			return fmt.Errorf("keysync: update %s: no row of tenant %q with that row key", s.QualifiedTable(), tenant)
		default:
			return fmt.Errorf("keysync: upsert %s: the row key belongs to another tenant", s.QualifiedTable())
		}
	}
	return nil
}

// statement builds the INSERT, UPDATE or upsert of the columns cols.
func (w *Writer) statement(cols []string, types map[string]string, vals map[string]*string) (string, []any) {
	s := &w.spec
	table := sqlTable(s)
	var args []any
	param := func(c string) string {
		var a any
		if v := vals[c]; v != nil {
			a = *v
		}
		args = append(args, a)
		return fmt.Sprintf("$%d::text::%s", len(args), types[c])
	}
	isPlace := func(c string) bool { return c == s.TenantColumn || slices.Contains(s.RowKey, c) }
	if w.mode == Update {
		var set, where []string
		for _, c := range cols {
			if !isPlace(c) {
				set = append(set, ident(c)+" = "+param(c))
			}
		}
		if len(set) == 0 {
			set = append(set, ident(s.TenantColumn)+" = "+ident(s.TenantColumn))
		}
		for _, c := range slices.Concat([]string{s.TenantColumn}, s.RowKey) {
			where = append(where, ident(c)+" = "+param(c))
		}
		return "UPDATE " + table + " SET " + strings.Join(set, ", ") + " WHERE " + strings.Join(where, " AND "), args
	}
	var names, ps []string
	for _, c := range cols {
		names = append(names, ident(c))
		ps = append(ps, param(c))
	}
	q := "INSERT INTO " + table + " AS t (" + strings.Join(names, ", ") + ") VALUES (" + strings.Join(ps, ", ") + ")"
	if w.mode == Upsert {
		var keys, set []string
		for _, c := range s.RowKey {
			keys = append(keys, ident(c))
		}
		for _, c := range cols {
			if !isPlace(c) {
				set = append(set, ident(c)+" = excluded."+ident(c))
			}
		}
		if len(set) == 0 {
			set = append(set, ident(s.TenantColumn)+" = excluded."+ident(s.TenantColumn))
		}
		q += " ON CONFLICT (" + strings.Join(keys, ", ") + ") DO UPDATE SET " + strings.Join(set, ", ") +
			" WHERE t." + ident(s.TenantColumn) + " = excluded." + ident(s.TenantColumn)
	}
	return q, args
}

func (w *Writer) columnTypes(ctx context.Context, db DB, cols []string) (map[string]string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var missing []string
	for _, c := range slices.Concat(cols, []string{w.spec.TenantColumn}, w.spec.RowKey) {
		if _, ok := w.types[c]; !ok && !slices.Contains(missing, c) {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		types, err := columnTypes(ctx, db, &w.spec, missing)
		if err != nil {
			return nil, err
		}
		for i, c := range missing {
			w.types[c] = types[i]
		}
	}
	out := make(map[string]string, len(cols)+1+len(w.spec.RowKey))
	for _, c := range slices.Concat(cols, []string{w.spec.TenantColumn}, w.spec.RowKey) {
		out[c] = w.types[c]
	}
	return out, nil
}

// keyset returns tenant's keyset at generation gen, from the cache or
// loaded again.
func (w *Writer) keyset(ctx context.Context, db DB, tenant string, gen uint64) (*Keyset, error) {
	w.mu.Lock()
	ks := w.keys[tenant]
	w.mu.Unlock()
	if ks != nil && ks.generation >= gen {
		return ks, nil
	}
	kek, err := w.kek(ctx, tenant)
	if err != nil {
		return nil, err
	}
	if ks, err = LoadKeyset(ctx, db, kek, tenant); err != nil {
		return nil, err
	}
	w.mu.Lock()
	if old := w.keys[tenant]; old == nil || old.generation < ks.generation {
		w.keys[tenant] = ks
	}
	w.mu.Unlock()
	return ks, nil
}

// textOf returns the text of a non-encrypted value, nil for NULL.
func textOf(v any) (*string, error) {
	var s string
	switch v := v.(type) {
	case nil:
		return nil, nil
	case string:
		s = v
	case json.Number:
		s = v.String()
	case json.RawMessage:
		s = string(v)
	case bool:
		s = strconv.FormatBool(v)
	case int:
		s = strconv.Itoa(v)
	case int64:
		s = strconv.FormatInt(v, 10)
	case int32:
		s = strconv.FormatInt(int64(v), 10)
	case float64:
		s = strconv.FormatFloat(v, 'g', -1, 64)
	case map[string]any, []any:
		b, err := json.Marshal(v)
		if err != nil {
			return nil, err
		}
		s = string(b)
	default:
		return nil, fmt.Errorf("unsupported value of type %T", v)
	}
	return &s, nil
}
