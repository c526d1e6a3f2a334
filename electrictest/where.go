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
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f':
			lastIdent, afterDot = prevIdent, prevDot
			i++
		case c == '.':
			// x.f is also a call of f(x) in Postgres (attribute notation).
			afterDot = true
			i++
		case c == '-' && i+1 < len(w) && w[i+1] == '-':
			return wc, whereErrorf("At location %d: comments are not allowed", i)
		case c == '/' && i+1 < len(w) && w[i+1] == '*':
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
		case c == '\'':
			j, err := skipString(w, i+1, false)
			if err != nil {
				return wc, err
			}
			i = j
		case (c == 'e' || c == 'E') && i+1 < len(w) && w[i+1] == '\'':
			j, err := skipString(w, i+2, true)
			if err != nil {
				return wc, err
			}
			i = j
		case c == '"':
			if i >= 2 && w[i-1] == '&' && (w[i-2] == 'u' || w[i-2] == 'U') {
				// U&"..." would let a name (say, of a function) hide from this check.
				return wc, whereErrorf("At location %d: Unicode escapes in identifiers are not allowed", i-2)
			}
			j := i + 1
			var name strings.Builder
			for {
				if j >= len(w) {
					return wc, whereErrorf("At location %d: unterminated quoted identifier", i)
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
			lastIdent = name.String()
			if prevDot {
				wc.functions = append(wc.functions, lastIdent)
			}
			i = j + 1
		case c == '$':
			j := i + 1
			for j < len(w) && w[j] >= '0' && w[j] <= '9' {
				j++
			}
			if j == i+1 {
				return wc, whereErrorf("At location %d: dollar-quoted strings are not allowed", i)
			}
			if n, err := strconv.Atoi(w[i+1 : j]); err == nil {
				if wc.params == nil {
					wc.params = map[int]int{}
				}
				if _, ok := wc.params[n]; !ok {
					wc.params[n] = i
				}
			}
			i = j
		case c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= 0x80:
			j := i + 1
			for j < len(w) && (w[j] == '_' || w[j] == '$' || w[j] >= 'a' && w[j] <= 'z' || w[j] >= 'A' && w[j] <= 'Z' || w[j] >= '0' && w[j] <= '9' || w[j] >= 0x80) {
				j++
			}
			word := strings.ToLower(w[i:j])
			if forbiddenWords[word] {
				return wc, whereErrorf("At location %d: %s is not allowed in a where clause", i, strings.ToUpper(word))
			}
			lastIdent = word
			if prevDot {
				wc.functions = append(wc.functions, word)
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
