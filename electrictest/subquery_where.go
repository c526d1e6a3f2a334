package electrictest

import (
	"errors"
	"slices"
	"strconv"
	"strings"
)

// The where clause of a subquery shape, split into the membership test's
// subquery and the rest (see subquery.go).

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
	sel, err := findSelect(toks)
	if err != nil || sel < 0 {
		return nil, err
	}
	p := &subqueryParser{w: w, toks: toks, sel: sel}
	sq := &subqueryWhere{}
	if err := p.parseTest(sq); err != nil {
		return nil, err
	}
	if err := p.parseSubquery(sq); err != nil {
		return nil, err
	}
	if err := p.checkConjuncts(sq); err != nil {
		return nil, err
	}
	if err := p.checkParts(sq); err != nil {
		return nil, err
	}
	return sq, nil
}

// findSelect returns the index of the clause's SELECT, -1 when there is
// none. Any other word that starts a subquery or a statement, or a second
// SELECT, makes the clause one of a form that is not supported.
func findSelect(toks []lexToken) (int, error) {
	sel := -1
	for i, t := range toks {
		if t.kind == 'w' && forbiddenWords[t.word] {
			if t.word != "select" || sel >= 0 {
				return -1, whereErrorf("At location %d: %s", t.start, subqueryForm)
			}
			sel = i
		}
	}
	return sel, nil
}

// subqueryParser reads the tokens of a where clause with a subquery for
// parseSubqueryWhere. Its fields are the indexes of tokens found so far.
type subqueryParser struct {
	w    string
	toks []lexToken
	sel  int // SELECT
	lhs  int // the test's column
	// relEnd follows the subquery's table name, closing is the
	// parenthesis that ends the subquery.
	relEnd, closing int
}

// bad is the error of a clause not of the supported form, at token i.
func (p *subqueryParser) bad(i int) error {
	at := 0
	if i >= 0 && i < len(p.toks) {
		at = p.toks[i].start
	}
	return whereErrorf("At location %d: %s", at, subqueryForm)
}

// isName reports whether token i is a name: quoted, or not a keyword.
func (p *subqueryParser) isName(i int) bool {
	return i >= 0 && i < len(p.toks) && (p.toks[i].kind == 'q' || p.toks[i].kind == 'w' && !sqlKeywords[p.toks[i].word])
}

// isWord reports whether token i is the unquoted word.
func (p *subqueryParser) isWord(i int, word string) bool {
	return i >= 0 && i < len(p.toks) && p.toks[i].kind == 'w' && p.toks[i].word == word
}

// parseTest checks that `column IN (` comes before the SELECT, outside any
// parentheses, and finds the column.
func (p *subqueryParser) parseTest(sq *subqueryWhere) error {
	toks, sel := p.toks, p.sel
	if sel < 3 || toks[sel-1].kind != '(' || !p.isWord(sel-2, "in") || !p.isName(sel-3) || (sel >= 4 && toks[sel-4].kind == '.') {
		if sel >= 3 && p.isWord(sel-2, "in") && p.isWord(sel-3, "not") {
			return whereErrorf("At location %d: NOT IN subqueries are not supported", toks[sel-3].start)
		}
		return p.bad(sel)
	}
	p.lhs = sel - 3
	if toks[p.lhs].depth != 0 {
		return p.bad(p.lhs)
	}
	return nil
}

// parseSubquery reads `SELECT column FROM [schema.]table [WHERE ...] )`
// and the test's column.
func (p *subqueryParser) parseSubquery(sq *subqueryWhere) error {
	toks, w, lhs := p.toks, p.w, p.lhs
	i := p.sel + 1
	if !p.isName(i) || !p.isWord(i+1, "from") || !p.isName(i+2) {
		return p.bad(i)
	}
	sq.lhs = w[toks[lhs].start:toks[lhs].end]
	cols, err := ParseColumns(w[toks[lhs].start:toks[lhs].end])
	if err != nil || len(cols) != 1 {
		return p.bad(lhs)
	}
	sq.lhsName = cols[0]
	if cols, err = ParseColumns(w[toks[i].start:toks[i].end]); err != nil || len(cols) != 1 {
		return p.bad(i)
	}
	sq.innerCol = cols[0]
	relEnd := i + 3
	if relEnd < len(toks) && toks[relEnd].kind == '.' {
		if !p.isName(relEnd + 1) {
			return p.bad(relEnd)
		}
		relEnd += 2
	}
	if sq.innerRel, err = ParseRelation(w[toks[i+2].start:toks[relEnd-1].end]); err != nil {
		return p.bad(i + 2)
	}
	closing := -1
	for j := relEnd; j < len(toks); j++ {
		if toks[j].kind == ')' && toks[j].depth == toks[p.sel-1].depth {
			closing = j
			break
		}
	}
	if closing < 0 {
		return p.bad(p.sel - 1)
	}
	switch {
	case closing == relEnd:
	case p.isWord(relEnd, "where") && closing > relEnd+1:
		sq.innerWhere = w[toks[relEnd].end:toks[closing].start]
	default:
		return p.bad(relEnd)
	}
	p.relEnd, p.closing = relEnd, closing
	return nil
}

// checkConjuncts checks that the test is one conjunct of an AND of simple
// conditions: then the clause is one disjunct, each conjunct one position.
// It splits the clause around the test and counts the positions.
func (p *subqueryParser) checkConjuncts(sq *subqueryWhere) error {
	toks, lhs, closing := p.toks, p.lhs, p.closing
	sq.prefix, sq.suffix = p.w[:toks[lhs].start], p.w[toks[closing].end:]
	outer := append(slices.Clip(toks[:lhs]), toks[closing+1:]...)
	if lhs > 0 && !p.isWord(lhs-1, "and") || closing+1 < len(toks) && !p.isWord(closing+1, "and") {
		return p.bad(lhs)
	}
	sq.npos = 1
	for n, t := range outer {
		if t.kind != 'w' {
			continue
		}
		switch t.word {
		case "and":
			if t.depth != 0 {
				return whereErrorf("At location %d: %s", t.start, "in a where clause with a subquery, AND may only join conditions at the top level")
			}
			sq.npos++
			if n < lhs {
				sq.pos++
			}
		case "or", "case", "between":
			return whereErrorf("At location %d: %s is not supported in a where clause with a subquery", t.start, strings.ToUpper(t.word))
		case "not":
			if n == 0 || outer[n-1].kind != 'w' || outer[n-1].word != "is" {
				return whereErrorf("At location %d: NOT is not supported in a where clause with a subquery", t.start)
			}
		}
	}
	return nil
}

// checkParts checks both parts of the clause, the rest of it and the
// subquery's filter, as filters of their own with checkWhere's rules (the
// filter cannot hold another subquery), and merges what they call and use.
func (p *subqueryParser) checkParts(sq *subqueryWhere) error {
	oc, err := checkWhere(sq.prefix + "true" + sq.suffix)
	if err != nil {
		return err
	}
	sq.check = oc
	if sq.innerWhere == "" {
		return nil
	}
	ic, err := checkWhere(sq.innerWhere)
	if err != nil {
		var we *whereError
		if errors.As(err, &we) {
			return whereErrorf("in the subquery: %s", we.msg)
		}
		return err
	}
	sq.check.functions = append(sq.check.functions, ic.functions...)
	for n, at := range ic.params {
		sq.check.noteParam(n, at+p.toks[p.relEnd].end)
	}
	return nil
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
