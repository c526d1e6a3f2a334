package keysync

import (
	"context"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shapeseal/shapeseal/keysync/chain"
)

// LogTable is the table of tenant logs (package chain) that admin tools,
// writers and keyrings verify.
const LogTable = "shapeseal_log"

// QueryDB is a [DB] that can also run queries returning many rows:
// *pgx.Conn, *pgxpool.Pool and pgx.Tx all are.
type QueryDB interface {
	DB
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// LoadState reads tenant's log from shapeseal_log, verifies it from its
// first entry against the pinned roots, and checks it against floor (if not
// nil), which it then raises to the log's head. Errors are *[chain.Error]s
// (wrapping [chain.ErrNoLog] for a tenant without a log).
func LoadState(ctx context.Context, db QueryDB, roots []VerifyKey, tenant string, floor Floor) (*chain.State, error) {
	st := chain.NewState(tenant, roots)
	if err := extendState(ctx, db, st); err != nil {
		return nil, err
	}
	if st.Seq() == 0 {
		return nil, &chain.Error{Tenant: tenant, Err: chain.ErrNoLog}
	}
	return st, checkFloor(floor, st, 0)
}

// extendState appends to st the entries of its tenant's log after st's
// head, in order; a missing entry is a gap, and a log shorter than st a
// rollback.
func extendState(ctx context.Context, db QueryDB, st *chain.State) error {
	if st.Seq() >= math.MaxInt64 {
		return &chain.Error{Tenant: st.Tenant(), Err: chain.ErrBroken}
	}
	if st.Seq() > 0 {
		var n int64
		if err := db.QueryRow(ctx, `SELECT coalesce(max(seq), 0) FROM shapeseal_log WHERE tenant_id = $1`, st.Tenant()).Scan(&n); err != nil {
			return fmt.Errorf("keysync: read the log of tenant %q: %w", st.Tenant(), err)
		}
		if uint64(n) < st.Seq() {
			return &chain.Error{Tenant: st.Tenant(), Err: fmt.Errorf("%w: %d entries, %d seen before", chain.ErrRollback, n, st.Seq())}
		}
	}
	rows, err := db.Query(ctx, `SELECT seq, entry FROM shapeseal_log WHERE tenant_id = $1 AND seq > $2 ORDER BY seq`,
		st.Tenant(), int64(st.Seq()))
	if err != nil {
		return fmt.Errorf("keysync: read the log of tenant %q: %w", st.Tenant(), err)
	}
	defer rows.Close()
	var (
		seq   int64
		entry []byte
	)
	_, err = pgx.ForEachRow(rows, []any{&seq, &entry}, func() error {
		if uint64(seq) != st.Seq()+1 {
			return &chain.Error{Tenant: st.Tenant(), Seq: uint64(seq), Err: fmt.Errorf("%w: entry %d missing", chain.ErrBroken, st.Seq()+1)}
		}
		_, err := st.Append(entry)
		return err
	})
	if _, ok := errors.AsType[*chain.Error](err); ok {
		return err
	}
	if err != nil {
		return fmt.Errorf("keysync: read the log of tenant %q: %w", st.Tenant(), err)
	}
	return nil
}

// checkFloor checks st against floor's mark for its tenant and raises the
// mark to st's head, with generation gen (0: keep the mark's).
func checkFloor(floor Floor, st *chain.State, gen uint64) error {
	if floor == nil {
		return nil
	}
	m, err := floor.Mark(st.Tenant())
	if err != nil {
		return fmt.Errorf("keysync: floor: %w", err)
	}
	if err := checkMark(st, m); err != nil {
		return err
	}
	next := FloorMark{Seq: st.Seq(), Head: st.Head(), Generation: max(gen, m.Generation)}
	if err := floor.Raise(st.Tenant(), next); err != nil {
		return fmt.Errorf("keysync: floor: %w", err)
	}
	return nil
}

// appendEntry signs ops as the next entry of st's log with key, applies it
// to st (so an entry the log would refuse is never stored), and inserts it.
func appendEntry(ctx context.Context, tx pgx.Tx, st *chain.State, key chain.Signer, ops []chain.Op) error {
	e, err := chain.Sign(ctx, chain.Entry{Tenant: st.Tenant(), Seq: st.Seq() + 1, Prev: st.Head(), Ops: ops}, key)
	if err != nil {
		return err
	}
	if _, err := st.Append(e.Bytes()); err != nil {
		return err
	}
	_, err = tx.Exec(ctx, `INSERT INTO shapeseal_log (tenant_id, seq, entry) VALUES ($1, $2, $3)`,
		st.Tenant(), int64(e.Seq), e.Bytes())
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok && pe.Code == "23505" {
		return &chain.Error{Tenant: st.Tenant(), Seq: e.Seq, Err: fmt.Errorf("%w: entry %d was written concurrently", chain.ErrFork, e.Seq)}
	}
	if err != nil {
		return fmt.Errorf("keysync: store log entry %d of tenant %q: %w", e.Seq, st.Tenant(), err)
	}
	return nil
}
