package electrictest

import (
	"fmt"
	"strconv"
	"strings"
)

// A where clause is handed to Postgres, which evaluates it for the snapshot
// and for every replicated row, so both follow the same SQL semantics. Before
// that, checkWhere makes sure it can only be a boolean filter: one
// expression, balanced parentheses, no statement separator and no subquery.
// (A subquery shape's clause is first split by parseSubqueryWhere, and each
// part goes through checkWhere.)
// The server additionally refuses volatile functions (pg_sleep, nextval, ...)
// and runs every query in read-only transactions with a statement timeout.

// whereCheck is what checkWhere learns about a where clause.
type whereCheck struct {
	functions []string    // names of called functions, lower-cased, last part only
	params    map[int]int // $n placeholders: n -> location of its first use
}

// forbiddenWords start a subquery or a statement; none has a place in a
// boolean row filter. (WITH is not one of them: a subquery expression with
// a WITH clause still needs SELECT, VALUES or TABLE, and "timestamp with
// time zone" is a type.)
var forbiddenWords = map[string]bool{"select": true, "values": true, "table": true}

type whereError struct{ msg string }

func (e *whereError) Error() string { return e.msg }

func whereErrorf(format string, args ...any) error {
	return &whereError{fmt.Sprintf(format, args...)}
}

// checkWhere tokenizes a where clause with Postgres' lexical rules.
func checkWhere(w string) (whereCheck, error) {
	var wc whereCheck
	if strings.TrimSpace(w) == "" {
		return wc, whereErrorf("can't be blank")
	}
	if i := strings.IndexByte(w, 0); i >= 0 {
		return wc, whereErrorf("At location %d: NUL characters are not allowed", i)
	}
	depth := 0
	lastIdent := ""
	afterDot := false
	for i := 0; i < len(w); {
		c := w[i]
		prevIdent, prevDot := lastIdent, afterDot
		lastIdent, afterDot = "", false
		switch {
		case isSpace(c):
			lastIdent, afterDot = prevIdent, prevDot
			i++
		case c == '.':
			// x.f is also a call of f(x) in Postgres (attribute notation).
			afterDot = true
			i++
		case c == '-' && i+1 < len(w) && w[i+1] == '-', c == '/' && i+1 < len(w) && w[i+1] == '*':
			return wc, whereErrorf("At location %d: comments are not allowed", i)
		case c == ';':
			return wc, whereErrorf("At location %d: only a single expression is allowed", i)
		case c == '(':
			if prevIdent != "" {
				wc.functions = append(wc.functions, prevIdent)
			}
			depth++
			i++
		case c == ')':
			depth--
			if depth < 0 {
				return wc, whereErrorf("At location %d: unbalanced parentheses", i)
			}
			i++
		case isStringStart(w, i):
			j, err := stringEnd(w, i)
			if err != nil {
				return wc, err
			}
			i = j
		case c == '"' || isIdentStart(c):
			name, j, err := readName(w, i)
			if err != nil {
				return wc, err
			}
			lastIdent = name
			if prevDot {
				wc.functions = append(wc.functions, name)
			}
			i = j
		case c == '$':
			j := digitsEnd(w, i+1)
			if j == i+1 {
				return wc, whereErrorf("At location %d: dollar-quoted strings are not allowed", i)
			}
			if n, err := strconv.Atoi(w[i+1 : j]); err == nil {
				wc.noteParam(n, i)
			}
			i = j
		default:
			i++
		}
	}
	if depth != 0 {
		return wc, whereErrorf("unbalanced parentheses")
	}
	return wc, nil
}

// readName reads the name (an identifier or a keyword, quoted or not) at
// i, as Postgres reads it: unquoted, it is lower-cased. It returns the index
// after it. Words that start a subquery or a statement are refused, and so
// are Unicode escapes.
func readName(w string, i int) (string, int, error) {
	if w[i] != '"' {
		j := identEnd(w, i)
		word := strings.ToLower(w[i:j])
		if forbiddenWords[word] {
			return "", 0, whereErrorf("At location %d: %s is not allowed in a where clause", i, strings.ToUpper(word))
		}
		return word, j, nil
	}
	if i >= 2 && w[i-1] == '&' && (w[i-2] == 'u' || w[i-2] == 'U') {
		// U&"..." would let a name (say, of a function) hide from this check.
		return "", 0, whereErrorf("At location %d: Unicode escapes in identifiers are not allowed", i-2)
	}
	name, j, ok := quotedIdent(w, i)
	if !ok {
		return "", 0, whereErrorf("At location %d: unterminated quoted identifier", i)
	}
	return name, j, nil
}

// noteParam records that $n is used at location at, unless it was before.
func (wc *whereCheck) noteParam(n, at int) {
	if wc.params == nil {
		wc.params = map[int]int{}
	}
	if _, ok := wc.params[n]; !ok {
		wc.params[n] = at
	}
}

// skipString returns the index after the closing quote of a string literal
// whose body starts at i.
func skipString(w string, i int, backslash bool) (int, error) {
	start := i - 1
	for i < len(w) {
		switch {
		case backslash && w[i] == '\\':
			i += 2
		case w[i] == '\'':
			if i+1 < len(w) && w[i+1] == '\'' {
				i += 2
				continue
			}
			return i + 1, nil
		default:
			i++
		}
	}
	return 0, whereErrorf("At location %d: unterminated string literal", start)
}

// stringEnd returns the index after the string literal ('...' or E'...')
// that starts at i.
func stringEnd(w string, i int) (int, error) {
	if w[i] == '\'' {
		return skipString(w, i+1, false)
	}
	return skipString(w, i+2, true)
}

// isStringStart reports whether a string literal ('...' or E'...') starts
// at i.
func isStringStart(w string, i int) bool {
	c := w[i]
	return c == '\'' || (c == 'e' || c == 'E') && i+1 < len(w) && w[i+1] == '\''
}

// quotedIdent reads the quoted identifier that starts at i: its name and
// the index after its closing quote; ok is false when it is unterminated.
func quotedIdent(w string, i int) (name string, end int, ok bool) {
	var b strings.Builder
	for j := i + 1; j < len(w); j++ {
		if w[j] != '"' {
			b.WriteByte(w[j])
			continue
		}
		if j+1 < len(w) && w[j+1] == '"' {
			b.WriteByte('"')
			j++
			continue
		}
		return b.String(), j + 1, true
	}
	return "", 0, false
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' }

// isIdentStart reports whether c starts an identifier or a keyword.
func isIdentStart(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80
}

// identEnd returns the index after the identifier or keyword at i.
func identEnd(w string, i int) int {
	j := i + 1
	for j < len(w) && (isIdentStart(w[j]) || w[j] == '$' || w[j] >= '0' && w[j] <= '9') {
		j++
	}
	return j
}

// digitsEnd returns the index after the ASCII digits starting at i.
func digitsEnd(w string, i int) int {
	for i < len(w) && w[i] >= '0' && w[i] <= '9' {
		i++
	}
	return i
}

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
		case isSpace(c):
			i++
		case isStringStart(w, i):
			j, err := stringEnd(w, i)
			if err != nil {
				return nil, false
			}
			toks = append(toks, lexToken{kind: 's', start: i, end: j, depth: depth})
			i = j
		case c == '"':
			name, j, ok := quotedIdent(w, i)
			if !ok {
				return nil, false
			}
			toks = append(toks, lexToken{kind: 'q', word: name, start: i, end: j, depth: depth})
			i = j
		case c == '$':
			j := digitsEnd(w, i+1)
			if j == i+1 {
				return nil, false
			}
			toks = append(toks, lexToken{kind: '$', word: w[i+1 : j], start: i, end: j, depth: depth})
			i = j
		case isIdentStart(c):
			j := identEnd(w, i)
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

// arrayLiteral renders values as a Postgres text[] literal.
func arrayLiteral(vals []datum) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, v := range vals {
		if i > 0 {
			b.WriteByte(',')
		}
		if v.kind == 'n' {
			b.WriteString("NULL")
			continue
		}
		b.WriteByte('"')
		for j := 0; j < len(v.text); j++ {
			if v.text[j] == '"' || v.text[j] == '\\' {
				b.WriteByte('\\')
			}
			b.WriteByte(v.text[j])
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}

// evalSQL builds the query that evaluates where for replicated rows: every
// column arrives as a text[] parameter (after the shape's own params), is
// cast back to its type, and the rows are named like the table so the where
// clause reads as it does in the snapshot query.
func evalSQL(t *table, where string, nparams int) string {
	var inner, arrays, names strings.Builder
	for i, c := range t.columns {
		q := quoteIdent(c.name)
		fmt.Fprintf(&inner, ", u.%s::%s AS %s", q, c.sqlType, q)
		if i > 0 {
			arrays.WriteString(", ")
		}
		fmt.Fprintf(&arrays, "$%d::text[]", nparams+i+1)
		names.WriteString(q + ", ")
	}
	return fmt.Sprintf("SELECT (\n%s\n) FROM (SELECT u.__electrictest_ord%s FROM unnest(%s) WITH ORDINALITY AS u(%s__electrictest_ord)) AS %s ORDER BY __electrictest_ord",
		where, inner.String(), arrays.String(), names.String(), quoteIdent(t.rel.Name))
}
