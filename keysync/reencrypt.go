package keysync

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ReencryptOptions configures [Reencrypt].
type ReencryptOptions struct {
	// BatchSize is the number of rows read and rewritten per transaction;
	// 500 if zero.
	BatchSize int
	// After resumes the scan after this row key (the text of the row-key
	// columns, as ReencryptProgress.Last reported). Re-encryption is
	// idempotent, so starting over is always correct too, only slower.
	After []string
	// Retire, after the rewrite, removes from the keyset every non-primary
	// key that no cell of the table uses any more, and re-wraps the new
	// generation for every member. Only use it when the table is the only
	// one holding the tenant's cells: cells of other tables sealed with a
	// retired key would no longer open.
	Retire bool
	// Progress, if set, is called after every batch.
	Progress func(ReencryptProgress)
}

// ReencryptProgress reports the progress of [Reencrypt] after a batch.
type ReencryptProgress struct {
	Rows      int      // rows read so far
	Rewritten int      // cells rewritten so far
	Last      []string // row key of the last row read, for ReencryptOptions.After
}

// ReencryptResult is what [Reencrypt] did.
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
	Errors []error
	// Retired lists the keys removed with ReencryptOptions.Retire, and
	// RetiredGeneration is the keyset generation without them.
	Retired           []uint32
	RetiredGeneration uint64
	// Remaining counts, with ReencryptOptions.Retire, the cells of the table
	// still sealed with each non-primary key (those keys were not retired).
	Remaining map[uint32]int
}

const maxReencryptErrors = 10

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
func Reencrypt(ctx context.Context, db AdminDB, kek KEK, spec TableSpec, tenant string, opts ReencryptOptions) (*ReencryptResult, error) {
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if len(spec.RowKey) == 0 {
		return nil, fmt.Errorf("keysync: reencrypt %s: no row-key columns to page by", spec.QualifiedTable())
	}
	if opts.After != nil && len(opts.After) != len(spec.RowKey) {
		return nil, fmt.Errorf("keysync: reencrypt: resume position has %d values, the row key %d", len(opts.After), len(spec.RowKey))
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 500
	}
	ks, err := LoadKeyset(ctx, db, kek, tenant)
	if err != nil {
		return nil, err
	}
	sc, err := newScanner(ctx, db, &spec, tenant, opts.BatchSize)
	if err != nil {
		return nil, err
	}
	res := &ReencryptResult{Generation: ks.generation, PrimaryKey: ks.primaryID}
	fail := func(err error) {
		res.Failed++
		if len(res.Errors) < maxReencryptErrors {
			res.Errors = append(res.Errors, err)
		}
	}
	after := opts.After
	for {
		rows, err := sc.batch(ctx, db, after)
		if err != nil {
			return res, err
		}
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
					fail(&OpenError{Table: spec.QualifiedTable(), Column: col, Tenant: tenant, Generation: ks.generation, Err: err})
					continue
				}
				if id == ks.primaryID {
					continue
				}
				c := CellContext{Table: spec.QualifiedTable(), Column: col, Tenant: tenant}
				if !spec.UnboundRows {
					c.RowKey = r.key
				}
				pt, err := Open(ks, c, *old)
				if err != nil {
					fail(err)
					continue
				}
				cell, err := Seal(ks, c, pt)
				clear(pt)
				if err != nil {
					return res, err
				}
				args := append([]any{cell, tenant, *old}, stringsToAny(r.key)...)
				b.Queue(sc.update[i], args...)
			}
		}
		if b.Len() > 0 {
			n, conflicts, err := runBatch(ctx, db, b)
			if err != nil {
				return res, fmt.Errorf("keysync: reencrypt %s: %w", spec.QualifiedTable(), err)
			}
			res.Rewritten += n
			res.Conflicts += conflicts
		}
		if len(rows) > 0 {
			after = rows[len(rows)-1].key
			if opts.Progress != nil {
				opts.Progress(ReencryptProgress{Rows: res.Rows, Rewritten: res.Rewritten, Last: after})
			}
		}
		if len(rows) < opts.BatchSize {
			break
		}
	}
	if !opts.Retire {
		return res, nil
	}
	err = inTx(ctx, db, tenant, func(tx pgx.Tx) error {
		cur, err := LoadKeyset(ctx, tx, kek, tenant)
		if err != nil {
			return err
		}
		if cur.generation != ks.generation {
			return fmt.Errorf("keysync: reencrypt: the keyset of tenant %q changed during the run (generation %d, now %d); run reencrypt again before retiring", tenant, ks.generation, cur.generation)
		}
		// Count, under the tenant lock, the cells still sealed with each key.
		used := map[uint32]int{}
		var last []string
		for {
			rows, err := sc.batch(ctx, tx, last)
			if err != nil {
				return err
			}
			for _, r := range rows {
				for _, cell := range r.cells {
					if cell == nil {
						continue
					}
					if id, err := CellKeyID(*cell); err == nil && id != cur.primaryID {
						used[id]++
					}
				}
			}
			if len(rows) < opts.BatchSize {
				break
			}
			last = rows[len(rows)-1].key
		}
		var retire []uint32
		for _, id := range cur.KeyIDs() {
			if id != cur.primaryID && used[id] == 0 {
				retire = append(retire, id)
			}
		}
		if len(used) > 0 {
			res.Remaining = used
		}
		if len(retire) == 0 {
			return nil
		}
		next, err := rotateIn(ctx, tx, kek, tenant, func(ks *Keyset) (*Keyset, error) { return ks.retire(retire) })
		if err != nil {
			return err
		}
		res.Retired, res.RetiredGeneration = retire, next.generation
		return nil
	})
	return res, err
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
	sel := "SELECT " + strings.Join(slices.Concat(keyText, cols), ", ") + " FROM " + table + " WHERE " + tenantCond
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
		if err := r.Scan(dst...); err != nil {
			return sr, err
		}
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
