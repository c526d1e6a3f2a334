package electrictest

import (
	"context"
	"errors"
	"slices"

	"github.com/jackc/pgx/v5/pgconn"
)

// Replicated transactions become messages of a shape's log here: each row
// change is judged against the where clause by Postgres, then written as
// Electric writes it.

// apply adds a committed transaction's changes to the shape's log, or keeps
// them for later while the snapshot is still being taken.
func (s *Server) apply(ctx context.Context, sh *shape, tx *txn, changes []change) error {
	sh.applyMu.Lock()
	defer sh.applyMu.Unlock()
	sh.mu.Lock()
	if sh.gone {
		sh.mu.Unlock()
		return nil
	}
	if sh.snap == nil || len(sh.pending) > 0 {
		// Also while takeSnapshot has yet to apply the pending
		// transactions: this one must come after them.
		sh.pending = append(sh.pending, pendingTxn{tx, changes})
		sh.mu.Unlock()
		return nil
	}
	sh.mu.Unlock()
	return s.applyLocked(ctx, sh, tx, changes)
}

// rowPair holds a change's old and new rows in the shape table's column
// order, and whether each is in the shape.
type rowPair struct {
	c        *change
	old, new []datum
	inOld    bool
	inNew    bool
}

// applyLocked adds a transaction's changes to the shape's log, with
// sh.applyMu held and the snapshot taken; a transaction that the snapshot
// already sees is skipped.
func (s *Server) applyLocked(ctx context.Context, sh *shape, tx *txn, changes []change) error {
	if sh.snap.visible(tx.xid) {
		return nil
	}
	pairs := sh.rowPairs(changes)
	if sh.evalSQL != "" {
		if err := s.matchWhere(ctx, sh, pairs); err != nil {
			return err
		}
	}
	if sh.sub != nil {
		// The mirror of the table follows every change, in the shape or not.
		sh.followMirror(pairs)
	}
	msgs := sh.changeMessages(pairs)
	entries := make([]logEntry, len(msgs))
	for i := range msgs {
		entries[i] = logEntry{off: Offset{Tx: tx.lsn, Op: msgs[i].pos}, msg: encodeChange(sh.tbl, &msgs[i], tx.lsn, tx.xid)}
	}
	if sh.sub != nil {
		// The subquery's table: after the outer rows, which were judged
		// against the view as it was before this transaction.
		moves, err := s.moveEntries(ctx, sh, tx, changes)
		if err != nil {
			return err
		}
		entries = append(entries, moves...)
	}
	sh.appendLog(entries)
	return nil
}

// rowPairs maps the changes of the shape's table (not those of its
// subquery's table) to the table's column order. Until the where clause is
// evaluated, a row is in the shape when it exists.
func (sh *shape) rowPairs(changes []change) []rowPair {
	pairs := make([]rowPair, 0, len(changes))
	for n := range changes {
		c := &changes[n]
		if c.rel.rel != sh.def.rel {
			continue // the subquery's table
		}
		old, nw := projectChange(sh.tbl, sh.relMap, c)
		pairs = append(pairs, rowPair{c: c, old: old, new: nw, inOld: c.old != nil, inNew: c.new != nil})
	}
	return pairs
}

// matchWhere judges the old and new rows of pairs against the shape's where
// clause, all in one query, and sets inOld and inNew to the verdicts.
func (s *Server) matchWhere(ctx context.Context, sh *shape, pairs []rowPair) error {
	var rows [][]datum
	for _, p := range pairs {
		if p.old != nil {
			rows = append(rows, p.old)
		}
		if p.new != nil {
			rows = append(rows, p.new)
		}
	}
	match, err := s.evalWhere(ctx, sh, rows)
	if err != nil {
		return err
	}
	k := 0
	for n := range pairs {
		if pairs[n].old != nil {
			pairs[n].inOld = match[k]
			k++
		}
		if pairs[n].new != nil {
			pairs[n].inNew = match[k]
			k++
		}
	}
	return nil
}

// changeMessages turns row changes into the shape's messages: an insert for
// a row that enters the shape, a delete for one that leaves it, and
// updates for one that stays (see appendUpdate). The last is marked last.
func (sh *shape) changeMessages(pairs []rowPair) []changeMsg {
	t := sh.tbl
	var msgs []changeMsg
	full := sh.def.replica == "full"
	for _, p := range pairs {
		switch {
		case p.inOld && p.inNew:
			msgs = sh.appendUpdate(msgs, p, full)
		case p.inOld:
			msgs = append(msgs, changeMsg{op: "delete", key: rowKey(t.rel, t, sh.keyCols, p.old), value: sh.deleteCols(full), row: p.old, pos: p.c.pos, tags: sh.tagsOf(p.old)})
		case p.inNew:
			msgs = append(msgs, changeMsg{op: "insert", key: rowKey(t.rel, t, sh.keyCols, p.new), value: sh.cols, row: p.new, pos: p.c.pos, tags: sh.tagsOf(p.new)})
		}
	}
	if sh.sub != nil {
		for i := range msgs {
			msgs[i].conds = sh.sub.sq.npos
		}
	}
	if len(msgs) > 0 {
		msgs[len(msgs)-1].last = true
	}
	return msgs
}

// appendUpdate appends the messages of a row that stays in the shape: a
// delete and an insert when its key changed, else an update of the columns
// that changed (nothing when none did and its tag is the same).
func (sh *shape) appendUpdate(msgs []changeMsg, p rowPair, full bool) []changeMsg {
	t := sh.tbl
	oldKey, newKey := rowKey(t.rel, t, sh.keyCols, p.old), rowKey(t.rel, t, sh.keyCols, p.new)
	newTags, removed := sh.tagsOf(p.new), []string(nil)
	if sh.sub != nil {
		removed = []string{}
		if oldTag := sh.rowTag(p.old); oldTag != newTags[0] {
			removed = append(removed, oldTag)
		}
	}
	if oldKey != newKey {
		return append(msgs,
			changeMsg{op: "delete", key: oldKey, value: sh.deleteCols(full), row: p.old, pos: p.c.pos, keyChangeTo: newKey, tags: append(slices.Clip(newTags), removed...)},
			changeMsg{op: "insert", key: newKey, value: sh.cols, row: p.new, pos: p.c.pos + 1, keyChangeFrom: oldKey, tags: newTags})
	}
	var changed []int
	for _, i := range sh.cols {
		if p.old[i] != p.new[i] {
			changed = append(changed, i)
		}
	}
	if len(changed) == 0 && len(removed) == 0 {
		return msgs
	}
	m := changeMsg{op: "update", key: newKey, row: p.new, old: p.old, pos: p.c.pos, tags: newTags, removedTags: removed}
	if full {
		m.value, m.oldValue = sh.cols, changed
		if m.oldValue == nil {
			m.oldValue = []int{}
		}
	} else {
		m.value = sh.withKey(changed)
	}
	return append(msgs, m)
}

// projectChange maps a change's old and new rows to t's column order
// (relMap keeps the mapping of each relation message). A TOASTed value
// that an update left unchanged is taken from the old row.
func projectChange(t *table, relMap map[*relMessage][]int, c *change) (old, nw []datum) {
	idx := relMap[c.rel]
	if idx == nil {
		idx = make([]int, len(c.rel.columns))
		for ri, rc := range c.rel.columns {
			idx[ri] = t.index(rc.name)
		}
		relMap[c.rel] = idx
	}
	old, nw = project(t, idx, c.old), project(t, idx, c.new)
	if old != nil && nw != nil {
		for i := range nw {
			if nw[i].kind == 'u' {
				nw[i] = old[i]
			}
		}
	}
	return old, nw
}

// project maps a replicated row to the table's column order.
func project(t *table, idx []int, d []datum) []datum {
	if d == nil {
		return nil
	}
	out := make([]datum, len(t.columns))
	for i := range out {
		out[i].kind = 'n'
	}
	for ri, ti := range idx {
		if ti >= 0 && ri < len(d) {
			out[ti] = d[ri]
		}
	}
	return out
}

// deleteCols is what a delete message carries: the key (replica=default) or
// the whole old row (replica=full).
func (sh *shape) deleteCols(full bool) []int {
	if full {
		return sh.cols
	}
	return sh.keyCols
}

// withKey returns the key columns plus changed, in column order.
func (sh *shape) withKey(changed []int) []int {
	var out []int
	for _, i := range sh.cols {
		if slices.Contains(sh.keyCols, i) || slices.Contains(changed, i) {
			out = append(out, i)
		}
	}
	return out
}

// evalWhere asks Postgres whether each row matches the shape's where clause.
func (s *Server) evalWhere(ctx context.Context, sh *shape, rows [][]datum) ([]bool, error) {
	params := textParams(sh.def.params)
	if sh.sub != nil {
		params = append(pickParams(sh.def.params, sh.sub.outerUsed), sh.sub.viewParam())
	}
	return s.evalRows(ctx, sh.evalSQL, params, sh.tbl, rows)
}

// evalRows runs an evalSQL query of table t for rows, after params.
func (s *Server) evalRows(ctx context.Context, evalSQL string, prefix [][]byte, t *table, rows [][]datum) ([]bool, error) {
	match := make([]bool, len(rows))
	if len(rows) == 0 {
		return match, nil
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	pc := conn.Conn().PgConn()
	run := func(rows [][]datum, match []bool) error {
		params := append([][]byte(nil), prefix...)
		col := make([]datum, len(rows))
		for i := range t.columns {
			for r := range rows {
				col[r] = rows[r][i]
			}
			params = append(params, []byte(arrayLiteral(col)))
		}
		res := pc.ExecParams(ctx, evalSQL, params, nil, nil, nil).Read()
		if res.Err != nil {
			return res.Err
		}
		for i, r := range res.Rows {
			if i < len(match) {
				match[i] = len(r[0]) == 1 && r[0][0] == 't'
			}
		}
		return nil
	}
	err = run(rows, match)
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && len(rows) > 1 {
		// One row failed to evaluate (say, a division by zero): judge each
		// row alone, a row that cannot be evaluated does not match.
		for i := range rows {
			if err := run(rows[i:i+1], match[i:i+1]); err != nil && !errors.As(err, &pgErr) {
				return nil, err
			}
		}
		return match, nil
	}
	if errors.As(err, &pgErr) {
		return match, nil
	}
	return match, err
}
