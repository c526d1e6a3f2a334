package electrictest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// A shape starts from a snapshot of its table, taken in a REPEATABLE READ
// transaction: the rows it sees are rendered into chunks, and replicated
// transactions it already sees are skipped.

// pgSnapshot is the visibility of the snapshot a shape started from.
type pgSnapshot struct {
	xmin, xmax uint32
	xip        map[uint32]bool
	text       [3]string // xmin, xmax and the xip list as sent in snapshot-end
}

func xidBefore(a, b uint32) bool { return int32(a-b) < 0 }

// visible reports whether the transaction's effects are already in the snapshot.
func (s *pgSnapshot) visible(xid uint32) bool {
	if xidBefore(xid, s.xmin) {
		return true
	}
	return xidBefore(xid, s.xmax) && !s.xip[xid]
}

func parseSnapshot(s string) (*pgSnapshot, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return nil, fmt.Errorf("electrictest: unexpected snapshot %q", s)
	}
	xmin, err1 := strconv.ParseUint(parts[0], 10, 64)
	xmax, err2 := strconv.ParseUint(parts[1], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("electrictest: unexpected snapshot %q: %w", s, err)
	}
	snap := &pgSnapshot{xmin: uint32(xmin), xmax: uint32(xmax), xip: map[uint32]bool{}}
	var xip []string
	if parts[2] != "" {
		for _, x := range strings.Split(parts[2], ",") {
			v, err := strconv.ParseUint(x, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("electrictest: unexpected snapshot %q: %w", s, err)
			}
			snap.xip[uint32(v)] = true
			xip = append(xip, strconv.Quote(x))
		}
	}
	snap.text = [3]string{parts[0], parts[1], "[" + strings.Join(xip, ",") + "]"}
	return snap, nil
}

// takeSnapshot fills the snapshot chunks and then applies the transactions
// that arrived meanwhile and are not visible in the snapshot.
func (s *Server) takeSnapshot(ctx context.Context, sh *shape) {
	err := s.snapshotRows(ctx, sh)
	if err == nil {
		sh.applyMu.Lock()
		sh.mu.Lock()
		pending := sh.pending
		sh.pending = nil
		sh.mu.Unlock()
		for _, p := range pending {
			if err = s.applyLocked(ctx, sh, p.tx, p.changes); err != nil {
				break
			}
		}
		sh.applyMu.Unlock()
	}
	if err != nil {
		sh.readyErr = err
		s.logger.Error("electrictest: snapshot failed", "table", sh.def.rel.String(), "handle", sh.handle, "err", err)
		s.dropShape(sh)
	}
	close(sh.ready)
}

// snapshotRows takes the shape's snapshot: for a subquery shape the view
// and the mirror, then the chunks of the rows in the shape.
func (s *Server) snapshotRows(ctx context.Context, sh *shape) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	pc := conn.Conn().PgConn()
	snap, err := beginSnapshot(ctx, pc, sh.mustSee)
	if err != nil {
		return err
	}
	defer func() { pc.Exec(context.Background(), "ROLLBACK").ReadAll() }()
	where := sh.def.where
	if sub := sh.sub; sub != nil {
		// The subquery's state, in the same snapshot as the rows.
		if err := sh.readView(ctx, pc); err != nil {
			return err
		}
		if err := sh.readMirror(ctx, pc); err != nil {
			return err
		}
		where = sub.sq.full()
	}
	chunks, err := s.snapshotChunks(ctx, pc, sh, where, snap)
	if err != nil {
		return err
	}
	sh.mu.Lock()
	sh.snap, sh.chunks = snap, chunks
	sh.mu.Unlock()
	return nil
}

// snapshotChunks renders the rows matching where (none with
// log=changes_only) as response bodies of about Options.ChunkBytes, the
// last one ending with snapshot-end.
func (s *Server) snapshotChunks(ctx context.Context, pc *pgconn.PgConn, sh *shape, where string, snap *pgSnapshot) ([]chunk, error) {
	var chunks []chunk
	var cur chunkWriter
	cur.start()
	if !sh.def.changesOnly {
		rr := pc.ExecParams(ctx, sh.snapshotQuery(where), textParams(sh.def.params), nil, nil, nil)
		row := make([]datum, len(sh.tbl.columns))
		for rr.NextRow() {
			for n, v := range rr.Values() {
				i := -1
				if n < len(sh.cols) {
					i = sh.cols[n]
				} else if sh.sub != nil {
					i = sh.sub.outerCol
				}
				row[i] = textDatum(v)
			}
			if sh.sub != nil {
				tag := sh.rowTag(row)
				cur.add(func(b []byte) []byte {
					return encodeTaggedRow(b, sh.tbl, sh.cols, sh.keyCols, row, tag, sh.sub.sq.npos, false)
				})
			} else {
				cur.add(func(b []byte) []byte { return encodeSnapshotRow(b, sh.tbl, sh.cols, sh.keyCols, row) })
			}
			if cur.size >= s.opts.ChunkBytes {
				chunks = append(chunks, cur.finish())
				cur.start()
			}
		}
		if _, err := rr.Close(); err != nil {
			return nil, err
		}
	}
	cur.add(func(b []byte) []byte { return appendSnapshotEnd(b, snap) })
	return append(chunks, cur.finish()), nil
}

// snapshotQuery selects, from the rows matching where, the shape's columns
// as text and, for a subquery shape, the subquery's column (for the tags).
func (sh *shape) snapshotQuery(where string) string {
	var sel strings.Builder
	for n, i := range sh.cols {
		if n > 0 {
			sel.WriteString(", ")
		}
		sel.WriteString(textExpr(sh.tbl.columns[i]))
	}
	if sh.sub != nil {
		fmt.Fprintf(&sel, ", %s", textExpr(sh.tbl.columns[sh.sub.outerCol]))
	}
	if where != "" {
		where = " WHERE (\n" + where + "\n)"
	}
	return "SELECT " + sel.String() + " FROM " + sh.def.rel.Quoted() + where
}

// textExpr is the SQL giving a column's text as replication writes it.
func textExpr(c column) string {
	q := quoteIdent(c.name)
	if c.isBpchar && c.dims == 0 {
		return fmt.Sprintf("CASE WHEN %s IS NULL THEN NULL ELSE concat(%s) END", q, q)
	}
	return q + "::text"
}

// textDatum is a value as a query in text format returns it: nil is NULL.
func textDatum(v []byte) datum {
	if v == nil {
		return datum{kind: 'n'}
	}
	return datum{kind: 't', text: string(v)}
}

// A chunk is one response body of the snapshot, kept in segments of about
// 64 KiB so that building a 10 MiB chunk never copies it.
type chunk [][]byte

type chunkWriter struct {
	segs  [][]byte
	seg   []byte
	size  int
	count int
}

const segmentSize = 64 << 10

func (c *chunkWriter) start() {
	*c = chunkWriter{seg: append(make([]byte, 0, segmentSize), '[')}
}

// add appends one message rendered by enc.
func (c *chunkWriter) add(enc func([]byte) []byte) {
	if c.count > 0 {
		c.seg = append(c.seg, ',')
	}
	c.count++
	n := len(c.seg)
	c.seg = enc(c.seg)
	c.size += len(c.seg) - n
	if len(c.seg) >= segmentSize-segmentSize/8 {
		c.segs = append(c.segs, c.seg)
		c.seg = make([]byte, 0, segmentSize)
	}
}

func (c *chunkWriter) finish() chunk {
	return append(c.segs, append(c.seg, ']'))
}

// beginSnapshot opens the REPEATABLE READ transaction of a shape snapshot
// and returns its snapshot, which sees every transaction in mustSee.
//
// Postgres flushes a commit record, and so may ship it to the replication
// stream, a moment before the transaction becomes visible to new snapshots.
// A transaction that onCommit routed before the shape was registered never
// reaches the shape's log, so the snapshot must contain it, or its rows are
// lost (with a TRUNCATE in it, even the rows that were there before): until
// the snapshot sees all of them, it is taken again.
func beginSnapshot(ctx context.Context, pc *pgconn.PgConn, mustSee []uint32) (*pgSnapshot, error) {
	deadline := time.Now().Add(10 * time.Second)
	for wait := time.Millisecond; ; wait = min(2*wait, 20*time.Millisecond) {
		if _, err := pc.Exec(ctx, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").ReadAll(); err != nil {
			return nil, err
		}
		res := pc.ExecParams(ctx, "SELECT pg_current_snapshot()::text", nil, nil, nil, nil).Read()
		var snap *pgSnapshot
		err := res.Err
		if err == nil {
			snap, err = parseSnapshot(string(res.Rows[0][0]))
		}
		if err != nil {
			pc.Exec(context.Background(), "ROLLBACK").ReadAll()
			return nil, err
		}
		var missing []uint32
		for _, xid := range mustSee {
			if !snap.visible(xid) {
				missing = append(missing, xid)
			}
		}
		if len(missing) == 0 {
			return snap, nil
		}
		pc.Exec(context.Background(), "ROLLBACK").ReadAll()
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("electrictest: replicated transactions %v are still not visible to a new snapshot", missing)
		}
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		}
	}
}

func textParams(params []string) [][]byte {
	out := make([][]byte, len(params))
	for i, p := range params {
		out[i] = []byte(p)
	}
	return out
}
