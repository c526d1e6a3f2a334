package electrictest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// shapeDef is a shape definition: what makes two requests share one log.
type shapeDef struct {
	rel         Relation
	where       string
	params      []string
	columns     []string // nil: every column (or every queryable column)
	queryable   []string // queryable_columns; nil: every column
	replica     string   // "default" or "full"
	changesOnly bool
}

func (d shapeDef) key() string {
	return strconv.Quote(d.rel.Schema) + "." + strconv.Quote(d.rel.Name) + "|" + strconv.Quote(d.where) + "|" +
		fmt.Sprintf("%q|%q|%q|%s|%t", d.params, d.columns, d.queryable, d.replica, d.changesOnly)
}

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

type logEntry struct {
	off Offset
	msg []byte
}

type pendingTxn struct {
	tx      *txn
	changes []change
}

// A shape is one shape log: the snapshot chunks and the changes after them.
type shape struct {
	def      shapeDef
	handle   string
	tbl      *table
	cols     []int // selected columns
	keyCols  []int // columns forming the row key
	evalSQL  string
	sub      *subShape // for a where clause with a subquery
	schema   string    // electric-schema header
	ready    chan struct{}
	readyErr error    // set before ready is closed
	mustSee  []uint32 // xids already routed when the shape was registered

	applyMu sync.Mutex // serializes changes into the log
	relMap  map[*relMessage][]int

	cacheMu sync.Mutex
	cache   renderedLog // the last rendered log response, shared by pollers

	mu      sync.Mutex
	snap    *pgSnapshot
	pending []pendingTxn
	chunks  []chunk // the snapshot, as complete JSON response bodies
	log     []logEntry
	latest  Offset
	notify  chan struct{} // closed when the log grows or the shape goes
	gone    bool
}

func newShape(def shapeDef, handle string, t *table, cols, keyCols []int, evalSQL string) *shape {
	return &shape{
		def: def, handle: handle, tbl: t, cols: cols, keyCols: keyCols, evalSQL: evalSQL,
		schema: t.schemaHeader(cols), ready: make(chan struct{}), relMap: map[*relMessage][]int{},
		latest: SnapshotEnd, notify: make(chan struct{}),
	}
}

// invalidate marks the shape gone and wakes its waiters.
func (sh *shape) invalidate() {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if !sh.gone {
		sh.gone = true
		close(sh.notify)
	}
}

// read returns log entries after off, at most about maxBytes of them (at
// least one), and whether they reach the end of the log.
func (sh *shape) read(off Offset, maxBytes int) (entries []logEntry, end bool, latest Offset, notify chan struct{}, gone bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i := sort.Search(len(sh.log), func(i int) bool { return sh.log[i].off.Compare(off) > 0 })
	j, size := i, 0
	for j < len(sh.log) && (j == i || size+len(sh.log[j].msg) <= maxBytes) {
		size += len(sh.log[j].msg) + 1
		j++
	}
	return sh.log[i:j:j], j == len(sh.log), sh.latest, sh.notify, sh.gone
}

type renderedLog struct {
	from     Offset
	n        int
	upToDate bool
	lsn      uint64
	body     []byte
}

// render returns the JSON body for entries read after from. Live pollers at
// the same offset all get the same body, so the last one is kept.
func (sh *shape) render(from Offset, entries []logEntry, upToDate bool, lsn uint64) []byte {
	key := renderedLog{from: from, n: len(entries), upToDate: upToDate, lsn: lsn}
	sh.cacheMu.Lock()
	defer sh.cacheMu.Unlock()
	if c := sh.cache; c.body != nil && c.from == key.from && c.n == key.n && c.upToDate == key.upToDate && c.lsn == key.lsn {
		return c.body
	}
	size := 2 + len(entries)
	for _, e := range entries {
		size += len(e.msg)
	}
	if upToDate {
		size += 80
	}
	b := make([]byte, 0, size)
	b = append(b, '[')
	for i, e := range entries {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, e.msg...)
	}
	if upToDate {
		b = appendUpToDate(append(b, ','), lsn)
	}
	b = append(b, ']')
	key.body = b
	sh.cache = key
	return b
}

func (sh *shape) appendLog(entries []logEntry) {
	if len(entries) == 0 {
		return
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.gone {
		return
	}
	sh.log = append(sh.log, entries...)
	sh.latest = entries[len(entries)-1].off
	close(sh.notify)
	sh.notify = make(chan struct{})
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
	var chunks []chunk
	var cur chunkWriter
	cur.start()
	query := sh.def.where
	if sub := sh.sub; sub != nil {
		// The subquery's values, in the same snapshot as the rows.
		view := map[string]int{}
		rr := pc.ExecParams(ctx, sub.viewQuery(), pickParams(sh.def.params, sub.innerUsed), nil, nil, nil)
		for rr.NextRow() {
			v := rr.Values()
			n, _ := strconv.Atoi(string(v[1]))
			view[string(v[0])] = n
		}
		if _, err := rr.Close(); err != nil {
			return err
		}
		sub.view = view
		// Every row of the table with a subquery value, for move-ins.
		var all strings.Builder
		for i, c := range sh.tbl.columns {
			if i > 0 {
				all.WriteString(", ")
			}
			all.WriteString(textExpr(c))
		}
		mirror := map[string][]datum{}
		rr = pc.ExecParams(ctx, "SELECT "+all.String()+" FROM "+sh.def.rel.Quoted()+" WHERE "+
			quoteIdent(sh.tbl.columns[sub.outerCol].name)+" IS NOT NULL", nil, nil, nil, nil)
		for rr.NextRow() {
			row := make([]datum, len(sh.tbl.columns))
			for i, v := range rr.Values() {
				if v == nil {
					row[i] = datum{kind: 'n'}
				} else {
					row[i] = datum{kind: 't', text: string(v)}
				}
			}
			mirror[rowKey(sh.tbl.rel, sh.tbl, sh.keyCols, row)] = row
		}
		if _, err := rr.Close(); err != nil {
			return err
		}
		sub.mirror = mirror
		query = sub.sq.full()
	}
	if !sh.def.changesOnly {
		var sel strings.Builder
		for n, i := range sh.cols {
			if n > 0 {
				sel.WriteString(", ")
			}
			q := quoteIdent(sh.tbl.columns[i].name)
			if sh.tbl.columns[i].isBpchar && sh.tbl.columns[i].dims == 0 {
				fmt.Fprintf(&sel, "CASE WHEN %s IS NULL THEN NULL ELSE concat(%s) END", q, q)
			} else {
				fmt.Fprintf(&sel, "%s::text", q)
			}
		}
		if sh.sub != nil {
			// The subquery's column, for the tags.
			fmt.Fprintf(&sel, ", %s", textExpr(sh.tbl.columns[sh.sub.outerCol]))
		}
		if query != "" {
			query = " WHERE (\n" + query + "\n)"
		}
		query = "SELECT " + sel.String() + " FROM " + sh.def.rel.Quoted() + query
		rr := pc.ExecParams(ctx, query, textParams(sh.def.params), nil, nil, nil)
		row := make([]datum, len(sh.tbl.columns))
		for rr.NextRow() {
			for n, v := range rr.Values() {
				i := -1
				if n < len(sh.cols) {
					i = sh.cols[n]
				} else if sh.sub != nil {
					i = sh.sub.outerCol
				}
				if v == nil {
					row[i] = datum{kind: 'n'}
				} else {
					row[i] = datum{kind: 't', text: string(v)}
				}
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
			return err
		}
	}
	cur.add(func(b []byte) []byte {
		return append(b, `{"headers":{"control":"snapshot-end","xmin":"`+snap.text[0]+`","xmax":"`+snap.text[1]+`","xip_list":`+snap.text[2]+`}}`...)
	})
	chunks = append(chunks, cur.finish())

	sh.mu.Lock()
	sh.snap, sh.chunks = snap, chunks
	sh.mu.Unlock()
	return nil
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

// rowPair holds a change's old and new rows in the shape table's column order.
type rowPair struct {
	c        *change
	old, new []datum
	inOld    bool
	inNew    bool
}

func (s *Server) applyLocked(ctx context.Context, sh *shape, tx *txn, changes []change) error {
	if sh.snap.visible(tx.xid) {
		return nil
	}
	t := sh.tbl
	sub := sh.sub
	pairs := make([]rowPair, 0, len(changes))
	for n := range changes {
		c := &changes[n]
		if c.rel.rel != sh.def.rel {
			continue // the subquery's table
		}
		idx := sh.relMap[c.rel]
		if idx == nil {
			idx = make([]int, len(c.rel.columns))
			for ri, rc := range c.rel.columns {
				idx[ri] = t.index(rc.name)
			}
			sh.relMap[c.rel] = idx
		}
		p := rowPair{c: c, old: project(t, idx, c.old), new: project(t, idx, c.new), inOld: c.old != nil, inNew: c.new != nil}
		if p.old != nil && p.new != nil {
			for i := range p.new {
				if p.new[i].kind == 'u' {
					p.new[i] = p.old[i]
				}
			}
		}
		pairs = append(pairs, p)
	}
	if sh.evalSQL != "" {
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
	}
	if sub != nil {
		// The mirror of the table follows every change, in the shape or not.
		for _, p := range pairs {
			if p.old != nil {
				delete(sub.mirror, rowKey(t.rel, t, sh.keyCols, p.old))
			}
			if p.new != nil && p.new[sub.outerCol].kind != 'n' {
				sub.mirror[rowKey(t.rel, t, sh.keyCols, p.new)] = p.new
			}
		}
	}
	tagOf := func(row []datum) []string {
		if sub == nil {
			return nil
		}
		return []string{sh.rowTag(row)}
	}
	var msgs []changeMsg
	full := sh.def.replica == "full"
	for _, p := range pairs {
		switch {
		case p.inOld && p.inNew:
			oldKey, newKey := rowKey(t.rel, t, sh.keyCols, p.old), rowKey(t.rel, t, sh.keyCols, p.new)
			newTags, removed := tagOf(p.new), []string(nil)
			if sub != nil {
				removed = []string{}
				if oldTag := sh.rowTag(p.old); oldTag != newTags[0] {
					removed = append(removed, oldTag)
				}
			}
			if oldKey != newKey {
				msgs = append(msgs,
					changeMsg{op: "delete", key: oldKey, value: sh.deleteCols(full), row: p.old, pos: p.c.pos, keyChangeTo: newKey, tags: append(slices.Clip(newTags), removed...)},
					changeMsg{op: "insert", key: newKey, value: sh.cols, row: p.new, pos: p.c.pos + 1, keyChangeFrom: oldKey, tags: newTags})
				continue
			}
			var changed []int
			for _, i := range sh.cols {
				if p.old[i] != p.new[i] {
					changed = append(changed, i)
				}
			}
			if len(changed) == 0 && len(removed) == 0 {
				continue
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
			msgs = append(msgs, m)
		case p.inOld:
			msgs = append(msgs, changeMsg{op: "delete", key: rowKey(t.rel, t, sh.keyCols, p.old), value: sh.deleteCols(full), row: p.old, pos: p.c.pos, tags: tagOf(p.old)})
		case p.inNew:
			msgs = append(msgs, changeMsg{op: "insert", key: rowKey(t.rel, t, sh.keyCols, p.new), value: sh.cols, row: p.new, pos: p.c.pos, tags: tagOf(p.new)})
		}
	}
	if sub != nil {
		for i := range msgs {
			msgs[i].conds = sub.sq.npos
		}
	}
	if len(msgs) > 0 {
		msgs[len(msgs)-1].last = true
	}
	entries := make([]logEntry, len(msgs))
	for i := range msgs {
		entries[i] = logEntry{off: Offset{Tx: tx.lsn, Op: msgs[i].pos}, msg: encodeChange(t, &msgs[i], tx.lsn, tx.xid)}
	}
	if sub != nil {
		// The subquery's table: after the outer rows, which were judged
		// against the view as it was before this transaction.
		in, out, err := s.applyInner(ctx, sh, changes)
		if err != nil {
			return err
		}
		op := 2 * uint64(len(tx.changes))
		add := func(msg []byte) {
			entries = append(entries, logEntry{off: Offset{Tx: tx.lsn, Op: op}, msg: msg})
			op++
		}
		if len(out) > 0 {
			add(sh.moveEvent("move-out", out, tx.xid))
		}
		if len(in) > 0 {
			rows, err := s.moveIn(ctx, sh, in)
			if err != nil {
				return err
			}
			add(sh.moveEvent("move-in", in, tx.xid))
			for _, r := range rows {
				add(r)
			}
		}
	}
	sh.appendLog(entries)
	return nil
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
