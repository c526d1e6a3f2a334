package electrictest

import (
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
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

// lexToken is a token of a where clause, for finding the subquery.
type lexToken struct {
	kind       byte   // 'w' word, 'q' quoted identifier, 's' string, '$' param, or the punctuation character
	word       string // lower-cased word, or the quoted identifier's name
	start, end int
	depth      int // parentheses open before the token
}

// lexWhere splits a where clause into tokens; ok is false when it cannot
// (checkWhere then reports why).
func lexWhere(w string) (toks []lexToken, ok bool) {
	depth := 0
	for i := 0; i < len(w); {
		c := w[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			i++
		case c == '\'' || (c == 'e' || c == 'E') && i+1 < len(w) && w[i+1] == '\'':
			start := i
			j := i + 1
			if c != '\'' {
				j = i + 2
			}
			j, err := skipString(w, j, c != '\'')
			if err != nil {
				return nil, false
			}
			toks = append(toks, lexToken{kind: 's', start: start, end: j, depth: depth})
			i = j
		case c == '"':
			j := i + 1
			var name strings.Builder
			for {
				if j >= len(w) {
					return nil, false
				}
				if w[j] == '"' {
					if j+1 < len(w) && w[j+1] == '"' {
						name.WriteByte('"')
						j += 2
						continue
					}
					break
				}
				name.WriteByte(w[j])
				j++
			}
			toks = append(toks, lexToken{kind: 'q', word: name.String(), start: i, end: j + 1, depth: depth})
			i = j + 1
		case c == '$':
			j := i + 1
			for j < len(w) && w[j] >= '0' && w[j] <= '9' {
				j++
			}
			if j == i+1 {
				return nil, false
			}
			toks = append(toks, lexToken{kind: '$', word: w[i+1 : j], start: i, end: j, depth: depth})
			i = j
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80:
			j := i + 1
			for j < len(w) && (w[j] == '_' || w[j] == '$' || w[j] >= 'a' && w[j] <= 'z' || w[j] >= 'A' && w[j] <= 'Z' || w[j] >= '0' && w[j] <= '9' || w[j] >= 0x80) {
				j++
			}
			toks = append(toks, lexToken{kind: 'w', word: strings.ToLower(w[i:j]), start: i, end: j, depth: depth})
			i = j
		case c == '(':
			toks = append(toks, lexToken{kind: '(', start: i, end: i + 1, depth: depth})
			depth++
			i++
		case c == ')':
			depth--
			toks = append(toks, lexToken{kind: ')', start: i, end: i + 1, depth: depth})
			i++
		default:
			toks = append(toks, lexToken{kind: c, start: i, end: i + 1, depth: depth})
			i++
		}
	}
	return toks, true
}

// subqueryWhere is a where clause with one membership subquery, split up.
type subqueryWhere struct {
	prefix, suffix string // the clause before the test's column and after its closing parenthesis
	lhs            string // the test's column as written
	lhsName        string
	innerRel       Relation
	innerCol       string
	innerWhere     string // "" when the subquery has no WHERE
	pos, npos      int    // the test's DNF position, and the number of positions
	check          whereCheck
}

const subqueryForm = "only one subquery is supported, as a condition of the form `column IN (SELECT column FROM table [WHERE ...])` ANDed with the rest of the clause"

// parseSubqueryWhere finds the membership subquery of a where clause. It
// returns nil (and no error) when the clause has no subquery at all.
func parseSubqueryWhere(w string) (*subqueryWhere, error) {
	if strings.IndexByte(w, 0) >= 0 {
		return nil, nil
	}
	toks, ok := lexWhere(w)
	if !ok {
		return nil, nil
	}
	sel := -1
	for i, t := range toks {
		if t.kind == 'w' && forbiddenWords[t.word] {
			if t.word != "select" || sel >= 0 {
				return nil, whereErrorf("At location %d: %s", t.start, subqueryForm)
			}
			sel = i
		}
	}
	if sel < 0 {
		return nil, nil
	}
	bad := func(i int) error {
		at := 0
		if i >= 0 && i < len(toks) {
			at = toks[i].start
		}
		return whereErrorf("At location %d: %s", at, subqueryForm)
	}
	isName := func(i int) bool {
		return i >= 0 && i < len(toks) && (toks[i].kind == 'q' || toks[i].kind == 'w' && !sqlKeywords[toks[i].word])
	}
	isWord := func(i int, word string) bool {
		return i >= 0 && i < len(toks) && toks[i].kind == 'w' && toks[i].word == word
	}
	// column IN ( SELECT
	if sel < 3 || toks[sel-1].kind != '(' || !isWord(sel-2, "in") || !isName(sel-3) || (sel >= 4 && toks[sel-4].kind == '.') {
		if sel >= 3 && isWord(sel-2, "in") && isWord(sel-3, "not") {
			return nil, whereErrorf("At location %d: NOT IN subqueries are not supported", toks[sel-3].start)
		}
		return nil, bad(sel)
	}
	lhs := sel - 3
	if toks[lhs].depth != 0 {
		return nil, bad(lhs)
	}
	// SELECT column FROM [schema.]table [WHERE ...] )
	i := sel + 1
	if !isName(i) || !isWord(i+1, "from") || !isName(i+2) {
		return nil, bad(i)
	}
	sq := &subqueryWhere{lhs: w[toks[lhs].start:toks[lhs].end]}
	cols, err := ParseColumns(w[toks[lhs].start:toks[lhs].end])
	if err != nil || len(cols) != 1 {
		return nil, bad(lhs)
	}
	sq.lhsName = cols[0]
	if cols, err = ParseColumns(w[toks[i].start:toks[i].end]); err != nil || len(cols) != 1 {
		return nil, bad(i)
	}
	sq.innerCol = cols[0]
	relEnd := i + 3
	if relEnd < len(toks) && toks[relEnd].kind == '.' {
		if !isName(relEnd + 1) {
			return nil, bad(relEnd)
		}
		relEnd += 2
	}
	if sq.innerRel, err = ParseRelation(w[toks[i+2].start:toks[relEnd-1].end]); err != nil {
		return nil, bad(i + 2)
	}
	closing := -1
	for j := relEnd; j < len(toks); j++ {
		if toks[j].kind == ')' && toks[j].depth == toks[sel-1].depth {
			closing = j
			break
		}
	}
	if closing < 0 {
		return nil, bad(sel - 1)
	}
	switch {
	case closing == relEnd:
	case isWord(relEnd, "where") && closing > relEnd+1:
		sq.innerWhere = w[toks[relEnd].end:toks[closing].start]
	default:
		return nil, bad(relEnd)
	}
	// The test must be one conjunct of an AND of simple conditions: then
	// the clause is one disjunct, each conjunct one position.
	sq.prefix, sq.suffix = w[:toks[lhs].start], w[toks[closing].end:]
	outer := append(slices.Clip(toks[:lhs]), toks[closing+1:]...)
	if lhs > 0 && !isWord(lhs-1, "and") || closing+1 < len(toks) && !isWord(closing+1, "and") {
		return nil, bad(lhs)
	}
	sq.npos = 1
	for n, t := range outer {
		if t.kind != 'w' {
			continue
		}
		switch t.word {
		case "and":
			if t.depth != 0 {
				return nil, whereErrorf("At location %d: %s", t.start, "in a where clause with a subquery, AND may only join conditions at the top level")
			}
			sq.npos++
			if n < lhs {
				sq.pos++
			}
		case "or", "case", "between":
			return nil, whereErrorf("At location %d: %s is not supported in a where clause with a subquery", t.start, strings.ToUpper(t.word))
		case "not":
			if n == 0 || outer[n-1].kind != 'w' || outer[n-1].word != "is" {
				return nil, whereErrorf("At location %d: NOT is not supported in a where clause with a subquery", t.start)
			}
		}
	}
	// Both parts are filters of their own, with checkWhere's rules; the
	// inner one cannot hold another subquery.
	oc, err := checkWhere(sq.prefix + "true" + sq.suffix)
	if err != nil {
		return nil, err
	}
	sq.check = oc
	if sq.innerWhere != "" {
		ic, err := checkWhere(sq.innerWhere)
		if err != nil {
			var we *whereError
			if errors.As(err, &we) {
				return nil, whereErrorf("in the subquery: %s", we.msg)
			}
			return nil, err
		}
		sq.check.functions = append(sq.check.functions, ic.functions...)
		for n, at := range ic.params {
			if sq.check.params == nil {
				sq.check.params = map[int]int{}
			}
			if _, ok := sq.check.params[n]; !ok {
				sq.check.params[n] = at + toks[relEnd].end
			}
		}
	}
	return sq, nil
}

// sqlKeywords cannot be a column or table name without quotes.
var sqlKeywords = map[string]bool{
	"select": true, "from": true, "where": true, "and": true, "or": true, "not": true, "in": true,
	"table": true, "values": true, "true": true, "false": true, "null": true, "is": true, "case": true,
}

// innerSQL is the subquery as the server runs it: its table fully qualified.
func (sq *subqueryWhere) innerSQL() string {
	s := "SELECT " + quoteIdent(sq.innerCol) + " FROM " + sq.innerRel.Quoted()
	if sq.innerWhere != "" {
		s += " WHERE (\n" + sq.innerWhere + "\n)"
	}
	return s
}

// full is the where clause for the shape's snapshot.
func (sq *subqueryWhere) full() string {
	return sq.prefix + sq.lhs + " IN (" + sq.innerSQL() + ")" + sq.suffix
}

// renumberParams renumbers the $n of a clause 1, 2, ... in order of first
// use and returns which original params (1-based) they are. A clause made of
// a part of the where clause may not use every param, and Postgres cannot
// type a param that is not used.
func renumberParams(w string) (string, []int) {
	toks, ok := lexWhere(w)
	if !ok {
		return w, nil
	}
	var b strings.Builder
	var used []int
	last := 0
	for _, t := range toks {
		if t.kind != '$' {
			continue
		}
		n, err := strconv.Atoi(t.word)
		if err != nil {
			continue
		}
		k := slices.Index(used, n)
		if k < 0 {
			used = append(used, n)
			k = len(used) - 1
		}
		b.WriteString(w[last:t.start])
		b.WriteString("$" + strconv.Itoa(k+1))
		last = t.end
	}
	b.WriteString(w[last:])
	return b.String(), used
}

func pickParams(params []string, used []int) [][]byte {
	out := make([][]byte, 0, len(used)+1)
	for _, n := range used {
		if n >= 1 && n <= len(params) {
			out = append(out, []byte(params[n-1]))
		} else {
			out = append(out, nil)
		}
	}
	return out
}

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

// textExpr is the SQL giving a column's text as replication writes it.
func textExpr(c column) string {
	q := quoteIdent(c.name)
	if c.isBpchar && c.dims == 0 {
		return fmt.Sprintf("CASE WHEN %s IS NULL THEN NULL ELSE concat(%s) END", q, q)
	}
	return q + "::text"
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
