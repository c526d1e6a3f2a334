package keysync

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/keysync/chain"
)

// ReencryptOptions configures [Admin.Reencrypt].
type ReencryptOptions struct {
	// BatchSize is the number of rows read and rewritten per transaction;
	// 500 if zero.
	BatchSize int
	// After resumes the scan after this row key (the text of the row-key
	// columns, as ReencryptProgress.Last reported). Re-encryption is
	// idempotent, so starting over is always correct too, only slower.
	After []string
	// Retire, after the rewrite, removes every non-primary key from the
	// keyset and re-wraps the new generation for every member, but only if
	// no cell of the tenant sealed with one of those keys remains anywhere
	// it can look (see [Admin.RetireKeys]): in this table, in OtherTables, and in
	// the text columns of every table with a column named like a tenant
	// column of those. If one does, nothing is retired, Remaining counts
	// them, and Reencrypt returns a *[KeysInUseError].
	Retire bool
	// OtherTables names the other tables that hold the tenant's cells, for
	// Retire: a tenant's keyset seals the cells of every table with
	// encrypted columns, and a table whose tenant column has another name
	// than this one's is found only if it is named here.
	OtherTables []TableSpec
	// Progress, if set, is called after every batch.
	Progress func(ReencryptProgress)
	// AcceptSuspect re-seals suspect cells too (see
	// ReencryptResult.Suspect), once the administrator has checked them.
	AcceptSuspect bool
}

// ReencryptProgress reports the progress of [Admin.Reencrypt] after a batch.
type ReencryptProgress struct {
	Rows      int      // rows read so far
	Rewritten int      // cells rewritten so far
	Last      []string // row key of the last row read, for ReencryptOptions.After
}

// ReencryptResult is what [Admin.Reencrypt] did.
type ReencryptResult struct {
	Generation uint64 // generation of the keyset whose primary key sealed the new cells
	PrimaryKey uint32
	Rows       int // rows read
	Rewritten  int // cells re-sealed under the primary key
	// Conflicts counts cells that changed between the read and the rewrite
	// (a concurrent writer won); they were left alone. Run Reencrypt again.
	Conflicts int
	// Failed counts cells that did not open (tampered with, moved, or sealed
	// with a key the keyset does not hold); they were left alone. Errors
	// holds the first few of their errors.
	Failed int
	// Suspect counts cells sealed with a key that a revocation point of the
	// tenant's log revoked, in rows written after that point: a revoked
	// member may have forged them with the key they kept. They are left
	// alone (unless AcceptSuspect) and counted, each with a
	// *[SuspectCellError] in Errors; they keep the old key in use, so the
	// old keys cannot be retired until they are dealt with (deleted, or
	// checked and re-sealed with AcceptSuspect).
	Suspect int
	Errors  []error
	// Retired lists the keys removed with ReencryptOptions.Retire, and
	// RetiredGeneration is the keyset generation without them.
	Retired           []uint32
	RetiredGeneration uint64
	// Remaining counts, with ReencryptOptions.Retire, the cells still
	// sealed with each non-primary key, in every table counted; when it is
	// not empty, no key was retired.
	Remaining map[uint32]int
}

const maxReencryptErrors = 10

// SuspectCellError is a cell that [Admin.Reencrypt] did not re-seal
// because it was written with a revoked key after the revocation. It
// wraps [ErrSuspectCell].
type SuspectCellError struct {
	Table, Column, Tenant string
	RowKey                []string // the row's key, to find it
	KeyID                 uint32
	RevokedAt             uint64 // the log entry that revoked the key
}

func (e *SuspectCellError) Error() string {
	return fmt.Sprintf("keysync: %s.%s row %v of tenant %q: sealed with key %08x, revoked at log entry %d, in a row written after that: not re-sealed",
		e.Table, e.Column, e.RowKey, e.Tenant, e.KeyID, e.RevokedAt)
}

func (e *SuspectCellError) Unwrap() error { return ErrSuspectCell }

// revokedAt maps each key that a revocation point of st revoked to the
// first such point.
func revokedAt(st *chain.State) map[uint32]chain.Revocation {
	m := map[uint32]chain.Revocation{}
	for _, r := range st.Revocations() {
		for _, id := range r.KeyIDs {
			if _, ok := m[id]; !ok {
				m[id] = r
			}
		}
	}
	return m
}

// writtenAfter reports whether a row whose xmin is the 32-bit transaction
// id xmin was written after revocation r: by a transaction r's snapshot
// did not see, one in progress then or one not yet started (r.XID or
// later). It compares modulo 2^32 as Postgres does, which holds within
// 2^31 transactions. A frozen row (xmin below 3) is older than any
// revocation.
func writtenAfter(xmin uint32, r chain.Revocation) bool {
	if xmin < 3 {
		return false
	}
	if int32(xmin-uint32(r.XID)) >= 0 {
		return true
	}
	return slices.ContainsFunc(r.InProgress, func(x uint64) bool { return uint32(x) == xmin })
}

// Reencrypt rewrites the cells of spec's encrypted columns, in the rows of
// tenant, that are sealed with a key other than the keyset's primary key:
// each is opened and sealed again with the primary key. Rows are read in
// batches in row-key order (spec.RowKey must name the table's primary key,
// even with UnboundRows), and each batch is rewritten in its own short
// transaction, so readers stay live: every reader that holds a keyset can
// open a cell before and after its rewrite.
//
// Only cells under a non-primary key are touched, and each UPDATE is
// conditional on the cell still holding the value that was read, so a
// concurrent writer is never overwritten (that cell counts as a conflict).
// Running Reencrypt again changes nothing once every cell is under the
// primary key; an interrupted run can resume from ReencryptProgress.Last.
//
// Reencrypt refuses to launder forgeries: a cell sealed with a key revoked
// at a revocation point of the log (see [Admin.Revoke]), in a row written
// after that point, is left alone and reported (ReencryptResult.Suspect).
// Run it right after a revocation ([Admin.Revoke], then Reencrypt with
// Retire) so that honest rows changed in between are few.
func (a *Admin) Reencrypt(ctx context.Context, spec TableSpec, tenant string, opts ReencryptOptions) (*ReencryptResult, error) {
	if a.DB == nil || a.Key == nil || len(a.Roots) == 0 {
		return nil, errors.New("keysync: an Admin needs DB, Roots and Key")
	}
	if err := checkReencrypt(&spec, &opts); err != nil {
		return nil, err
	}
	st, err := a.State(ctx, tenant)
	if err != nil {
		return nil, err
	}
	if err := a.mayAct(st); err != nil {
		return nil, err
	}
	ks, err := LoadKeyset(ctx, a.DB, st, a.KEKs)
	if err != nil {
		return nil, err
	}
	sc, err := newScanner(ctx, a.DB, &spec, tenant, opts.BatchSize)
	if err != nil {
		return nil, err
	}
	rw := &rewriter{db: a.DB, spec: &spec, tenant: tenant, ks: ks, revoked: revokedAt(st), sc: sc, opts: &opts,
		res: &ReencryptResult{Generation: ks.generation, PrimaryKey: ks.primaryID}}
	after := opts.After
	for {
		rows, err := sc.batch(ctx, a.DB, after)
		if err != nil {
			return rw.res, err
		}
		if err := rw.rewrite(ctx, rows); err != nil {
			return rw.res, err
		}
		if len(rows) > 0 {
			after = rows[len(rows)-1].key
			if opts.Progress != nil {
				opts.Progress(ReencryptProgress{Rows: rw.res.Rows, Rewritten: rw.res.Rewritten, Last: after})
			}
		}
		if len(rows) < opts.BatchSize {
			break
		}
	}
	if !opts.Retire {
		return rw.res, nil
	}
	return rw.res, a.retireOld(ctx, &spec, tenant, ks, &opts, rw.res)
}

// checkReencrypt validates Reencrypt's arguments and fills in defaults.
func checkReencrypt(spec *TableSpec, opts *ReencryptOptions) error {
	if err := spec.Validate(); err != nil {
		return err
	}
	if len(spec.RowKey) == 0 {
		return fmt.Errorf("keysync: reencrypt %s: no row-key columns to page by", spec.QualifiedTable())
	}
	if opts.After != nil && len(opts.After) != len(spec.RowKey) {
		return fmt.Errorf("keysync: reencrypt: resume position has %d values, the row key %d", len(opts.After), len(spec.RowKey))
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 500
	}
	for i := range opts.OtherTables {
		if err := opts.OtherTables[i].Validate(); err != nil {
			return err
		}
	}
	return nil
}

// rewriter re-seals the cells of one Reencrypt run.
type rewriter struct {
	db      AdminDB
	spec    *TableSpec
	tenant  string
	ks      *Keyset
	revoked map[uint32]chain.Revocation
	sc      *scanner
	opts    *ReencryptOptions
	res     *ReencryptResult
}

func (rw *rewriter) note(err error) {
	if len(rw.res.Errors) < maxReencryptErrors {
		rw.res.Errors = append(rw.res.Errors, err)
	}
}

// rewrite re-seals, in one short transaction, the cells of a batch of rows
// that are under a key other than the primary, and are not suspect.
func (rw *rewriter) rewrite(ctx context.Context, rows []scanRow) error {
	spec, ks, res := rw.spec, rw.ks, rw.res
	res.Rows += len(rows)
	b := &pgx.Batch{}
	for _, r := range rows {
		for i, col := range spec.Columns {
			old := r.cells[i]
			if old == nil {
				continue
			}
			id, err := CellKeyID(*old)
			if err != nil {
				res.Failed++
				rw.note(&OpenError{Table: spec.QualifiedTable(), Column: col, Tenant: rw.tenant, Generation: ks.generation, Err: err})
				continue
			}
			if id == ks.primaryID {
				continue
			}
			if rev, ok := rw.revoked[id]; ok && !rw.opts.AcceptSuspect && writtenAfter(r.xmin, rev) {
				res.Suspect++
				rw.note(&SuspectCellError{Table: spec.QualifiedTable(), Column: col, Tenant: rw.tenant, RowKey: r.key, KeyID: id, RevokedAt: rev.Seq})
				continue
			}
			c := CellContext{Table: spec.QualifiedTable(), Column: col, Tenant: rw.tenant}
			if !spec.UnboundRows {
				c.RowKey = r.key
			}
			pt, err := Open(ks, c, *old)
			if err != nil {
				res.Failed++
				rw.note(err)
				continue
			}
			cell, err := Seal(ks, c, pt)
			clear(pt)
			if err != nil {
				return err
			}
			b.Queue(rw.sc.update[i], append([]any{cell, rw.tenant, *old}, stringsToAny(r.key)...)...)
		}
	}
	if b.Len() == 0 {
		return nil
	}
	n, conflicts, err := runBatch(ctx, rw.db, b)
	if err != nil {
		return fmt.Errorf("keysync: reencrypt %s: %w", spec.QualifiedTable(), err)
	}
	res.Rewritten += n
	res.Conflicts += conflicts
	return nil
}

// retireOld retires, under the tenant's lock, every key of ks but its
// primary, unless a cell of the tenant sealed with one remains.
func (a *Admin) retireOld(ctx context.Context, spec *TableSpec, tenant string, ks *Keyset, opts *ReencryptOptions, res *ReencryptResult) error {
	return a.tx(ctx, tenant, true, func(tx pgx.Tx, st *chain.State) error {
		cur, err := LoadKeyset(ctx, tx, st, a.KEKs)
		if err != nil {
			return err
		}
		if cur.generation != ks.generation {
			return fmt.Errorf("keysync: reencrypt: the keyset of tenant %q changed during the run (generation %d, now %d); run reencrypt again before retiring", tenant, ks.generation, cur.generation)
		}
		var retire []uint32
		for _, id := range cur.KeyIDs() {
			if id != cur.primaryID {
				retire = append(retire, id)
			}
		}
		if len(retire) == 0 {
			return nil
		}
		// Count, under the tenant lock, the cells still sealed with them.
		inUse, err := keysInUse(ctx, tx, tenant, append([]TableSpec{*spec}, opts.OtherTables...), retire)
		if err != nil {
			return err
		}
		if inUse != nil {
			res.Remaining = map[uint32]int{}
			for _, kc := range inUse.Cells {
				res.Remaining[kc.KeyID] += kc.Cells
			}
			return inUse
		}
		next, err := a.rotateIn(ctx, tx, st, func(ks *Keyset) (*Keyset, error) { return ks.retire(retire) }, nil)
		if err != nil {
			return err
		}
		res.Retired, res.RetiredGeneration = retire, next.generation
		return nil
	})
}

func stringsToAny(s []string) []any {
	a := make([]any, len(s))
	for i, v := range s {
		a[i] = v
	}
	return a
}

// runBatch runs the conditional UPDATEs of b in one transaction and returns
// how many changed a row and how many found the cell changed.
func runBatch(ctx context.Context, db AdminDB, b *pgx.Batch) (n, conflicts int, err error) {
	tx, err := db.Begin(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	br := tx.SendBatch(ctx, b)
	for range b.Len() {
		tag, err := br.Exec()
		if err != nil {
			br.Close()
			return 0, 0, err
		}
		if tag.RowsAffected() == 1 {
			n++
		} else {
			conflicts++
		}
	}
	if err := br.Close(); err != nil {
		return 0, 0, err
	}
	return n, conflicts, tx.Commit(ctx)
}

// scanner reads a tenant's rows of a table in row-key order.
type scanner struct {
	spec          *TableSpec
	first, next   string   // SELECTs of the first and the following batches
	update        []string // UPDATE of each encrypted column
	tenant        string
	limit         int
	keyCols       int
	encryptedCols int
}

type scanRow struct {
	key   []string
	cells []*string
	xmin  uint32 // the transaction that last wrote the row
}

func newScanner(ctx context.Context, db DB, s *TableSpec, tenant string, limit int) (*scanner, error) {
	types, err := columnTypes(ctx, db, s, append([]string{s.TenantColumn}, s.RowKey...))
	if err != nil {
		return nil, err
	}
	if _, err := columnTypes(ctx, db, s, s.Columns); err != nil {
		return nil, err
	}
	table := sqlTable(s)
	tenantCond := ident(s.TenantColumn) + " = $1::text::" + types[0]
	var keys, keyText, keyParams, keyEq []string
	for i, c := range s.RowKey {
		keys = append(keys, ident(c))
		keyText = append(keyText, ident(c)+"::text")
		keyParams = append(keyParams, fmt.Sprintf("$%d::text::%s", i+2, types[i+1]))
		keyEq = append(keyEq, fmt.Sprintf("%s = $%d::text::%s", ident(c), i+4, types[i+1]))
	}
	var cols []string
	for _, c := range s.Columns {
		cols = append(cols, ident(c)+"::text")
	}
	sel := "SELECT " + strings.Join(slices.Concat(keyText, cols), ", ") + ", xmin::text::int8 FROM " + table + " WHERE " + tenantCond
	order := " ORDER BY " + strings.Join(keys, ", ") + fmt.Sprintf(" LIMIT %d", limit)
	sc := &scanner{
		spec:          s,
		first:         sel + order,
		next:          sel + " AND (" + strings.Join(keys, ", ") + ") > (" + strings.Join(keyParams, ", ") + ")" + order,
		tenant:        tenant,
		limit:         limit,
		keyCols:       len(s.RowKey),
		encryptedCols: len(s.Columns),
	}
	for _, c := range s.Columns {
		// $1 new cell, $2 tenant, $3 old cell, $4… row key
		sc.update = append(sc.update, "UPDATE "+table+" SET "+ident(c)+" = $1 WHERE "+
			ident(s.TenantColumn)+" = $2::text::"+types[0]+" AND "+ident(c)+" = $3 AND "+strings.Join(keyEq, " AND "))
	}
	return sc, nil
}

func (sc *scanner) batch(ctx context.Context, db AdminDB, after []string) ([]scanRow, error) {
	q, args := sc.first, []any{sc.tenant}
	if after != nil {
		q, args = sc.next, append(args, stringsToAny(after)...)
	}
	rows, err := db.Query(ctx, q, args...)
	if err != nil {
		return nil, fmt.Errorf("keysync: read %s: %w", sc.spec.QualifiedTable(), err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (scanRow, error) {
		sr := scanRow{key: make([]string, sc.keyCols), cells: make([]*string, sc.encryptedCols)}
		dst := make([]any, 0, sc.keyCols+sc.encryptedCols)
		keys := make([]*string, sc.keyCols)
		for i := range keys {
			dst = append(dst, &keys[i])
		}
		for i := range sr.cells {
			dst = append(dst, &sr.cells[i])
		}
		var xmin int64
		if err := r.Scan(append(dst, &xmin)...); err != nil {
			return sr, err
		}
		sr.xmin = uint32(xmin)
		for i, k := range keys {
			if k == nil {
				return sr, errors.New("NULL row-key value")
			}
			sr.key[i] = *k
		}
		return sr, nil
	})
	if err != nil {
		return nil, fmt.Errorf("keysync: read %s: %w", sc.spec.QualifiedTable(), err)
	}
	return out, nil
}
