package electrictest

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Subquery shapes: a where clause may contain one membership test
// `column IN (SELECT column FROM table [WHERE filter])`, as a conjunct of
// the clause (`a = 1 AND tenant_id IN (SELECT ...) AND ...`). As Electric
// 1.7 does, every row of such a shape carries tags (one per disjunct of the
// clause's disjunctive normal form, here exactly one) and
// active_conditions (one boolean per position of the DNF); rows that enter
// because the inner table changed arrive after a move-in event as inserts
// marked is_move_in, and rows that leave for that reason are announced by a
// move-out event whose patterns match their tags (no deletes are sent).
//
// Which inner values are in the subquery (the "view") is kept in memory:
// counted from the inner table in the shape's snapshot, then maintained
// from replicated changes of the inner table, whose rows Postgres judges
// against the inner filter. Outer rows are judged against the where clause
// with the subquery replaced by the view, so a change is judged against
// the view as of its transaction. The server also keeps a copy of the
// outer table's rows (those with a value in the subquery's column), so that
// a value entering the view brings exactly the rows it has as of the
// transaction that moved it in; Postgres judges them against the where
// clause with the subquery holding just the new values.

// subShape is the subquery part of a shape.
type subShape struct {
	sq       *subqueryWhere
	inner    *table
	innerCol int // index in inner.columns
	outerCol int // index in the shape table's columns
	stack    string

	// outerWhere is the where clause with the subquery replaced by the
	// values of a text[] param, numbered after outerUsed; it judges
	// replicated rows (evalSQL) and selects move-in rows.
	outerWhere string
	outerUsed  []int
	innerEval  string // evalSQL of the inner filter, after innerUsed
	innerUsed  []int
	innerWhere string // the inner filter, renumbered (or "true")
	relMap     map[*relMessage][]int

	// Guarded by shape.applyMu (after the snapshot).
	view map[string]int // inner value -> number of inner rows giving it
	// mirror holds every row of the shape's table whose subquery column
	// is not null (by row key): the rows a move-in may bring, as of the
	// transaction that moves them in.
	mirror map[string][]datum
}

func newSubShape(sq *subqueryWhere, outer, inner *table, stack string) (*subShape, error) {
	sub := &subShape{sq: sq, inner: inner, innerCol: inner.index(sq.innerCol), outerCol: outer.index(sq.lhsName), stack: stack, relMap: map[*relMessage][]int{}}
	if sub.outerCol < 0 {
		return nil, &requestError{"where", "unknown column reference " + strconv.Quote(sq.lhsName)}
	}
	if sub.innerCol < 0 {
		return nil, &requestError{"where", "unknown column reference " + strconv.Quote(sq.innerCol) + " in the subquery"}
	}
	tmpl := sq.prefix + sq.lhs + " IN (SELECT unnest(\x00::" + inner.columns[sub.innerCol].sqlType + "[]))" + sq.suffix
	w, used := renumberParams(tmpl)
	sub.outerWhere = strings.Replace(w, "\x00", "$"+strconv.Itoa(len(used)+1), 1)
	sub.outerUsed = used
	iw := sq.innerWhere
	if iw == "" {
		iw = "true"
	}
	sub.innerWhere, sub.innerUsed = renumberParams(iw)
	sub.innerEval = evalSQL(inner, sub.innerWhere, len(sub.innerUsed))
	return sub, nil
}

// viewQuery counts the inner rows of each subquery value.
func (sub *subShape) viewQuery() string {
	e := textExpr(sub.inner.columns[sub.innerCol])
	return "SELECT " + e + ", count(*) FROM " + sub.sq.innerRel.Quoted() + " WHERE (\n" + sub.innerWhere + "\n) AND " +
		quoteIdent(sub.inner.columns[sub.innerCol].name) + " IS NOT NULL GROUP BY 1"
}

// readView counts the subquery's values, as the snapshot being taken on pc
// sees them.
func (sh *shape) readView(ctx context.Context, pc *pgconn.PgConn) error {
	sub := sh.sub
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
	return nil
}

// readMirror copies every row of the shape's table with a subquery value,
// for move-ins, as the snapshot being taken on pc sees them.
func (sh *shape) readMirror(ctx context.Context, pc *pgconn.PgConn) error {
	var all strings.Builder
	for i, c := range sh.tbl.columns {
		if i > 0 {
			all.WriteString(", ")
		}
		all.WriteString(textExpr(c))
	}
	mirror := map[string][]datum{}
	rr := pc.ExecParams(ctx, "SELECT "+all.String()+" FROM "+sh.def.rel.Quoted()+" WHERE "+
		quoteIdent(sh.tbl.columns[sh.sub.outerCol].name)+" IS NOT NULL", nil, nil, nil, nil)
	for rr.NextRow() {
		row := make([]datum, len(sh.tbl.columns))
		for i, v := range rr.Values() {
			row[i] = textDatum(v)
		}
		mirror[rowKey(sh.tbl.rel, sh.tbl, sh.keyCols, row)] = row
	}
	if _, err := rr.Close(); err != nil {
		return err
	}
	sh.sub.mirror = mirror
	return nil
}

// followMirror applies replicated changes of the shape's table to the
// mirror.
func (sh *shape) followMirror(pairs []rowPair) {
	t, sub := sh.tbl, sh.sub
	for _, p := range pairs {
		if p.old != nil {
			delete(sub.mirror, rowKey(t.rel, t, sh.keyCols, p.old))
		}
		if p.new != nil && p.new[sub.outerCol].kind != 'n' {
			sub.mirror[rowKey(t.rel, t, sh.keyCols, p.new)] = p.new
		}
	}
}

// valueHash is Electric's tag of a subquery value: md5 of the stack id, the
// shape handle and the value namespaced ("v:" prefix, "NULL" for null).
func valueHash(stack, handle string, v datum) string {
	ns := "NULL"
	if v.kind != 'n' {
		ns = "v:" + v.text
	}
	sum := md5.Sum([]byte(stack + handle + ns))
	return hex.EncodeToString(sum[:])
}

// rowTag is the row's tag: one slot per DNF position joined by "/", the
// subquery's slot the hash of the row's value, the others "1".
func (sh *shape) rowTag(row []datum) string {
	sub := sh.sub
	var b strings.Builder
	for p := 0; p < sub.sq.npos; p++ {
		if p > 0 {
			b.WriteByte('/')
		}
		if p == sub.sq.pos {
			b.WriteString(valueHash(sub.stack, sh.handle, row[sub.outerCol]))
		} else {
			b.WriteByte('1')
		}
	}
	return b.String()
}

// tagsOf is the tags of a row of the shape: none without a subquery.
func (sh *shape) tagsOf(row []datum) []string {
	if sh.sub == nil {
		return nil
	}
	return []string{sh.rowTag(row)}
}

// viewParam is the current view as a text[] literal.
func (sub *subShape) viewParam() []byte {
	vals := make([]datum, 0, len(sub.view))
	for v := range sub.view {
		vals = append(vals, datum{kind: 't', text: v})
	}
	return []byte(arrayLiteral(vals))
}

// moveEntries applies a transaction's changes of the subquery's table to
// the view and returns the log entries of the moves: a move-out event for
// the values that left it, a move-in event and the rows it brings for those
// that entered. They follow the transaction's own changes, whose op
// positions end before 2 × its number of changes.
func (s *Server) moveEntries(ctx context.Context, sh *shape, tx *txn, changes []change) ([]logEntry, error) {
	in, out, err := s.applyInner(ctx, sh, changes)
	if err != nil {
		return nil, err
	}
	var entries []logEntry
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
			return nil, err
		}
		add(sh.moveEvent("move-in", in, tx.xid))
		for _, r := range rows {
			add(r)
		}
	}
	return entries, nil
}

// applyInner updates the view with the inner table's changes of a
// transaction and returns the values that entered and left it.
func (s *Server) applyInner(ctx context.Context, sh *shape, changes []change) (in, out []string, err error) {
	sub := sh.sub
	var rows [][]datum
	for n := range changes {
		c := &changes[n]
		if c.rel.rel != sub.sq.innerRel {
			continue
		}
		old, nw := projectChange(sub.inner, sub.relMap, c)
		if old != nil {
			rows = append(rows, old)
		}
		if nw != nil {
			rows = append(rows, nw)
		}
	}
	if len(rows) == 0 {
		return nil, nil, nil
	}
	// Rows alternate old/new in change order; an old row leaves the view,
	// a new one enters, so their order only matters through the counts.
	match, err := s.evalRows(ctx, sub.innerEval, pickParams(sh.def.params, sub.innerUsed), sub.inner, rows)
	if err != nil {
		return nil, nil, err
	}
	before := map[string]bool{}
	k := 0
	for n := range changes {
		c := &changes[n]
		if c.rel.rel != sub.sq.innerRel {
			continue
		}
		for side, img := range [][]datum{c.old, c.new} {
			if img == nil {
				continue
			}
			row, m := rows[k], match[k]
			k++
			v := row[sub.innerCol]
			if !m || v.kind == 'n' {
				continue
			}
			if _, seen := before[v.text]; !seen {
				before[v.text] = sub.view[v.text] > 0
			}
			if side == 0 {
				if sub.view[v.text]--; sub.view[v.text] <= 0 {
					delete(sub.view, v.text)
				}
			} else {
				sub.view[v.text]++
			}
		}
	}
	for v, was := range before {
		now := sub.view[v] > 0
		switch {
		case now && !was:
			in = append(in, v)
		case was && !now:
			out = append(out, v)
		}
	}
	slices.Sort(in)
	slices.Sort(out)
	return in, out, nil
}

// moveEvent renders a move-in or move-out event message.
func (sh *shape) moveEvent(event string, values []string, xid uint32) []byte {
	b := []byte(`{"headers":{"event":"` + event + `","patterns":[`)
	for i, v := range values {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"pos":`...)
		b = strconv.AppendInt(b, int64(sh.sub.sq.pos), 10)
		b = append(b, `,"value":"`...)
		b = append(b, valueHash(sh.sub.stack, sh.handle, datum{kind: 't', text: v})...)
		b = append(b, `"}`...)
	}
	b = append(b, `],"txids":[`...)
	b = strconv.AppendUint(b, uint64(xid), 10)
	return append(b, "]}}"...)
}

// moveIn returns the insert messages of the rows that the values bring into
// the shape, as of the transaction being applied, followed by snapshot-end
// (nothing when there are none). The rows come from the mirror, judged by
// Postgres against the where clause with the subquery holding just values.
func (s *Server) moveIn(ctx context.Context, sh *shape, values []string) ([][]byte, error) {
	sub := sh.sub
	in := map[string]bool{}
	vals := make([]datum, len(values))
	for i, v := range values {
		in[v] = true
		vals[i] = datum{kind: 't', text: v}
	}
	var keys []string
	for k, row := range sub.mirror {
		if in[row[sub.outerCol].text] {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil, nil
	}
	slices.Sort(keys)
	rows := make([][]datum, len(keys))
	for i, k := range keys {
		rows[i] = sub.mirror[k]
	}
	params := append(pickParams(sh.def.params, sub.outerUsed), []byte(arrayLiteral(vals)))
	match, err := s.evalRows(ctx, sh.evalSQL, params, sh.tbl, rows)
	if err != nil {
		return nil, err
	}
	var msgs [][]byte
	for i, row := range rows {
		if match[i] {
			msgs = append(msgs, encodeTaggedRow(nil, sh.tbl, sh.cols, sh.keyCols, row, sh.rowTag(row), sub.sq.npos, true))
		}
	}
	if len(msgs) == 0 {
		return nil, nil
	}
	// Clients ignore it; Electric sends the move-in query's snapshot.
	var snapText string
	if err := s.pool.QueryRow(ctx, "SELECT pg_current_snapshot()::text").Scan(&snapText); err != nil {
		return nil, err
	}
	snap, err := parseSnapshot(snapText)
	if err != nil {
		return nil, err
	}
	return append(msgs, appendSnapshotEnd(nil, snap)), nil
}
