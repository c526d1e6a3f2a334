package electrictest

import (
	"slices"
	"strings"
	"testing"
)

// whereAttacks are where clauses that must never pass checkWhere (they are
// also seeds for FuzzCheckWhere). Attacks that only Postgres can refuse
// (volatile functions, non-boolean results) are in the conformance suite.
var whereAttacks = []string{
	``, ` `, "\n\t",
	`id = 1; DELETE FROM side`,
	`true; SELECT 1`,
	`id = 1;`,
	`1=1) OR (true`,
	`true) UNION SELECT true FROM (SELECT 1`,
	`id = 1) ; DELETE FROM items; SELECT (1`,
	`id = 1 /* ) OR (true */`,
	`id = 1 -- ) OR (true`,
	"id = 1 --\n) OR (true",
	`id IN (SELECT x FROM side)`,
	`EXISTS(SELECT 1 FROM side)`,
	`EXISTS (TABLE side)`,
	`id IN (VALUES (1))`,
	`(WITH w AS (SELECT 1) SELECT true)`,
	`id = (SeLeCt 1)`,
	`$$x$$ = 'x'`,
	`$tag$ ) OR (true $tag$ = ''`,
	`title = $q$'$q$`,
	`U&"\0070g_sleep"(10) IS NOT NULL`,
	`u&"x" = 1`,
	"id = 1\x00",
	`'unterminated`,
	`E'unterminated\'`,
	`"unterminated`,
	`(id = 1`,
	`id = 1)`,
	`)(`,
	`E'\'' ) OR (true`,
}

// whereOK are clauses checkWhere lets through (Postgres checks the rest).
var whereOK = []string{
	`id = 1`,
	`title = 'select'`,
	`title = ';'`,
	`title = '--'`,
	`title = '/*'`,
	`title = ')'`,
	`title = 'a''b'`,
	`title = E'\''`,
	`title = E'\\'`,
	`title = e'x\'y'`,
	`"title" = 'x'`,
	`"we""ird" = 'x'`,
	`"select" = 1`,
	`"tab;le" = 1`,
	`title LIKE '%;%'`,
	`lower(title) = 'a'`,
	`id = $1 AND n > $2`,
	`a$b = 1`,
	`(id = 1) OR (id = 2)`,
	`x - 1 > 0`,
	`x / 2 > 0`,
	`x::text = '1'`,
	`arr[1] = 2`,
	`ts::timestamptz > '2024-01-01'`,
	`n IS NOT NULL`,
	`title = U&'\0041'`,
	`title = 'é☃'`,
	`ts > '2024-01-01'::timestamp with time zone`,
	`t::time with time zone > '10:00'`,
}

func TestCheckWhere(t *testing.T) {
	for _, w := range whereAttacks {
		if _, err := checkWhere(w); err == nil {
			t.Errorf("checkWhere(%q) accepted an attack", w)
		} else if _, ok := err.(*whereError); !ok {
			t.Errorf("checkWhere(%q): error %T %v", w, err, err)
		}
	}
	for _, w := range whereOK {
		if _, err := checkWhere(w); err != nil {
			t.Errorf("checkWhere(%q): %v", w, err)
		}
	}
}

func TestCheckWhereFunctions(t *testing.T) {
	cases := []struct {
		where string
		want  []string
	}{
		{`pg_sleep(1) IS NULL`, []string{"pg_sleep"}},
		{`PG_SLEEP (1) IS NULL`, []string{"pg_sleep"}},
		{`pg_catalog.pg_sleep(1) IS NULL`, []string{"pg_sleep"}},
		{`"Evil"()`, []string{"Evil"}},
		{`"other"."evil"()`, []string{"evil"}},
		{`items.evil_row`, []string{"evil_row"}},
		{`items."Evil"`, []string{"Evil"}},
		{`lower(upper(x)) = 'a'`, []string{"lower", "upper"}},
		{`x IN (1, 2)`, []string{"in"}},
		{`'pg_sleep(1)' = x`, nil},
		{`"pg_sleep(1)" = x`, nil},
	}
	for _, c := range cases {
		wc, err := checkWhere(c.where)
		if err != nil {
			t.Errorf("checkWhere(%q): %v", c.where, err)
			continue
		}
		for _, f := range c.want {
			if !slices.Contains(wc.functions, f) {
				t.Errorf("checkWhere(%q).functions = %q, want it to contain %q", c.where, wc.functions, f)
			}
		}
		if c.want == nil && len(wc.functions) > 0 {
			t.Errorf("checkWhere(%q).functions = %q, want none", c.where, wc.functions)
		}
	}
	wc, err := checkWhere(`id = $2 OR n = $1 OR m = $2`)
	if err != nil || wc.params[1] != 15 || wc.params[2] != 5 || len(wc.params) != 2 {
		t.Errorf("params %v, %v", wc.params, err)
	}
}

// FuzzCheckWhere checks the property the server's security rests on: a
// clause checkWhere accepts can never close the parentheses it is wrapped in
// nor end the statement; wrapping it again keeps it accepted.
func FuzzCheckWhere(f *testing.F) {
	for _, w := range whereAttacks {
		f.Add(w)
	}
	for _, w := range whereOK {
		f.Add(w)
	}
	f.Fuzz(func(t *testing.T, w string) {
		wc, err := checkWhere(w)
		if err != nil {
			if _, ok := err.(*whereError); !ok {
				t.Fatalf("checkWhere(%q): error of type %T", w, err)
			}
			return
		}
		if strings.ContainsRune(w, 0) {
			t.Fatalf("accepted a NUL: %q", w)
		}
		for _, suffix := range []string{")", ") OR (true", "\n) OR (true", ";", "\n;", " OR (SELECT true)"} {
			if _, err := checkWhere(w + suffix); err == nil {
				t.Fatalf("checkWhere(%q) accepts %q appended", w, suffix)
			}
		}
		if _, err := checkWhere("(" + w + "\n)"); err != nil {
			t.Fatalf("checkWhere(%q) ok but not wrapped in parentheses: %v", w, err)
		}
		for n := range wc.params {
			if n < 0 {
				t.Fatalf("negative param $%d", n)
			}
		}
	})
}

func TestArrayLiteral(t *testing.T) {
	got := arrayLiteral([]datum{{kind: 't', text: `a"b\c`}, {kind: 'n'}, {kind: 't', text: ""}, {kind: 't', text: "NULL"}})
	if want := `{"a\"b\\c",NULL,"","NULL"}`; got != want {
		t.Errorf("arrayLiteral = %s, want %s", got, want)
	}
}
