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

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/keysync/chain"
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
// sealed with the tenant's current keyset and bound to their place by the
// table spec, and every value is sent as a bound parameter.
//
// Which keyset is current, and which KEK holds it, the Writer takes from
// the tenant's signed log (package chain), verified from the pinned roots
// and checked against its floor: never from an unsigned row. Before each
// row it asks Postgres how long the tenant's log is, and follows it when it
// grew, so rows written after a [Admin.Revoke] or [Admin.Rotate] are sealed
// with the new primary key; a log that shrank or changed is refused
// (*[chain.Error]), and a keyset row that is missing or is not the one the
// log names is refused (*[StateError]) — the Writer never falls back to an
// older key. It also asks Postgres for the text form of the tenant and
// row-key values (for example the canonical spelling of a UUID), which is
// what readers see and what the cells are bound to.
//
// A Writer is safe for concurrent use.
type Writer struct {
	spec TableSpec
	mode WriteMode
	opts WriterOptions

	mu      sync.Mutex
	types   map[string]string // column → SQL type
	tenants map[string]*writerTenant
}

// writerTenant is what a Writer holds of one tenant: its verified log and
// the keyset the log names.
type writerTenant struct {
	mu sync.Mutex
	st *chain.State
	ks *Keyset
}

// WriterOptions configure a [Writer].
type WriterOptions struct {
	// Roots are the pinned root keys the tenants' logs are verified
	// against. Required.
	Roots []VerifyKey
	// KEKs opens the KEK a log names; nil means [OpenKEK]. [UseKEK] allows
	// only the configured one.
	KEKs KEKSource
	// Floor keeps how far each log has been seen, so that a log cut back
	// after a revocation is refused even by a writer that restarted.
	// Required: [OpenFileFloor] for a writer that runs again,
	// [NewMemoryFloor] for one that keeps no state.
	Floor Floor
}

// NewWriter returns a Writer of rows of spec's table.
func NewWriter(spec TableSpec, mode WriteMode, opts WriterOptions) (*Writer, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if mode != Insert && len(spec.RowKey) == 0 {
		return nil, fmt.Errorf("keysync: writer: updates need row-key columns")
	}
	if len(opts.Roots) == 0 {
		return nil, errors.New("keysync: writer: no pinned roots (WriterOptions.Roots)")
	}
	if opts.Floor == nil {
		return nil, errors.New("keysync: writer: no floor (WriterOptions.Floor: OpenFileFloor, or NewMemoryFloor)")
	}
	return &Writer{spec: spec, mode: mode, opts: opts, types: map[string]string{}, tenants: map[string]*writerTenant{}}, nil
}

// Write seals row's encrypted columns and writes it with db (a connection or
// a transaction). Row maps column names to values: a string, []byte (only
// in encrypted columns), a number (int, int64, float64, json.Number), a bool,
// nil for NULL, or json.RawMessage; every value is sent as text and cast to
// its column's type by Postgres. row itself is not modified.
//
// When db can begin a transaction (a *pgx.Conn, a *pgxpool.Pool, or a
// pgx.Tx, where it is a savepoint), the row is written in one, under a
// shared lock of the tenant that key administration takes exclusively
// (see [Admin]): a revocation or rotation waits for the writes in flight,
// and the writes after it see its log entry. So an honest writer never
// seals a row with a key revoked before the row commits, which
// [Admin.Reencrypt] would have to treat as suspect. In a caller's
// transaction the lock is held until that transaction ends.
func (w *Writer) Write(ctx context.Context, db QueryDB, row map[string]any) error {
	b, ok := db.(interface {
		Begin(ctx context.Context) (pgx.Tx, error)
	})
	if !ok {
		return w.write(ctx, db, row, false)
	}
	tx, err := b.Begin(ctx)
	if err != nil {
		return fmt.Errorf("keysync: write %s: %w", w.spec.QualifiedTable(), err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := w.write(ctx, tx, row, true); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("keysync: write %s: %w", w.spec.QualifiedTable(), err)
	}
	return nil
}

// write is Write in db; with lock, it first takes the tenant's shared lock
// for the rest of db's transaction.
func (w *Writer) write(ctx context.Context, db QueryDB, row map[string]any, lock bool) error {
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

	place := slices.Concat([]string{s.TenantColumn}, s.RowKey)
	canon, seq, err := w.locate(ctx, db, place, types, vals, lock)
	if err != nil {
		return err
	}
	tenant := canon[0]
	if seq == nil {
		return &chain.Error{Tenant: tenant, Err: chain.ErrNoLog}
	}
	ks, err := w.keyset(ctx, db, tenant, uint64(*seq))
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

// locate returns the canonical text of the place columns (tenant, then row
// key) and the length of the tenant's log, nil if it has none; with lock,
// it first takes the tenant's shared lock for the rest of db's transaction.
func (w *Writer) locate(ctx context.Context, db QueryDB, place []string, types map[string]string, vals map[string]*string, lock bool) ([]string, *int64, error) {
	s := &w.spec
	tenantType := types[s.TenantColumn]
	if lock {
		q := `SELECT pg_advisory_xact_lock_shared(` + tenantLockClass + `, hashtext($1::text::` + tenantType + `::text))`
		if _, err := db.Exec(ctx, q, *vals[s.TenantColumn]); err != nil {
			return nil, nil, fmt.Errorf("keysync: write %s: lock tenant: %w", s.QualifiedTable(), err)
		}
	}
	var sel []string
	var args []any
	for i, c := range place {
		sel = append(sel, fmt.Sprintf("$%d::text::%s::text", i+1, types[c]))
		args = append(args, *vals[c])
	}
	sel = append(sel, "(SELECT max(seq) FROM shapeseal_log WHERE tenant_id = $1::text::"+tenantType+"::text)")
	canon := make([]string, len(place))
	dst := make([]any, 0, len(place)+1)
	for i := range canon {
		dst = append(dst, &canon[i])
	}
	var seq *int64
	dst = append(dst, &seq)
	if err := db.QueryRow(ctx, "SELECT "+strings.Join(sel, ", "), args...).Scan(dst...); err != nil {
		return nil, nil, fmt.Errorf("keysync: write %s: %w", s.QualifiedTable(), err)
	}
	return canon, seq, nil
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

// keyset returns the keyset that tenant's log names when the log has seq
// entries: the one held, or after following the log to seq.
func (w *Writer) keyset(ctx context.Context, db QueryDB, tenant string, seq uint64) (*Keyset, error) {
	w.mu.Lock()
	t := w.tenants[tenant]
	if t == nil {
		t = &writerTenant{}
		w.tenants[tenant] = t
	}
	w.mu.Unlock()
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.st != nil && t.st.Seq() == seq {
		return t.ks, nil
	}
	// The log has grown, or seq was read before another write followed it
	// further: either way, follow the log from the state held, which also
	// refuses a log that is now shorter than that state.
	st := t.st
	if st == nil {
		st = chain.NewState(tenant, w.opts.Roots)
	}
	held := t.ks
	t.st, t.ks = nil, nil // a failure below leaves nothing half-followed
	if err := extendState(ctx, db, st); err != nil {
		return nil, err
	}
	if st.Seq() == 0 {
		return nil, &chain.Error{Tenant: tenant, Err: chain.ErrNoLog}
	}
	ks := held
	if ks == nil || !ks.matches(st.Keyset().KeysetRef) {
		var err error
		if ks, err = LoadKeyset(ctx, db, st, w.opts.KEKs); err != nil {
			return nil, err
		}
	}
	if err := checkFloor(w.opts.Floor, st, ks.generation); err != nil {
		return nil, err
	}
	t.st, t.ks = st, ks
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
