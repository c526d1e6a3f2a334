package electrictest

import (
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// The doctests of Electric's Identifiers.parse/parse_relation and
// Plug.Utils.parse_columns_param, and electric-protocol.md §1.1 and §1.3.
func TestParseRelation(t *testing.T) {
	ok := []struct {
		in   string
		want Relation
	}{
		{"foo", Relation{"public", "foo"}},
		{"FooBar", Relation{"public", "foobar"}},
		{`"FooBar"`, Relation{"public", "FooBar"}},
		{"foo.bar", Relation{"foo", "bar"}},
		{`"foo"."bar"`, Relation{"foo", "bar"}},
		{`"foo.woah"."bar"`, Relation{"foo.woah", "bar"}},
		{`"foo".bar`, Relation{"foo", "bar"}},
		{`" "`, Relation{"public", " "}},
		{`"Foo""Bar"`, Relation{"public", `Foo"Bar`}},
		{`"we.ird/name"`, Relation{"public", "we.ird/name"}},
		{"_val1d_schëmaΦ$.Φtàble", Relation{"_val1d_schëmaΦ$", "Φtàble"}},
		{"ÀBC", Relation{"public", "Àbc"}}, // ASCII-only downcasing
		{"a$b", Relation{"public", "a$b"}},
		{"a1", Relation{"public", "a1"}},
		{strings.Repeat("a", 63), Relation{"public", strings.Repeat("a", 63)}},
		{`"` + strings.Repeat("é", 63) + `"`, Relation{"public", strings.Repeat("é", 63)}},
	}
	for _, c := range ok {
		got, err := ParseRelation(c.in)
		if err != nil || got != c.want {
			t.Errorf("ParseRelation(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	bad := []struct{ in, msg string }{
		{`Foo"Bar"`, `Invalid unquoted identifier contains special characters: Foo"Bar"`},
		{" ", "Invalid unquoted identifier contains special characters:  "},
		{"foob@r", "Invalid unquoted identifier contains special characters: foob@r"},
		{`"Foo"Bar"`, `Invalid identifier with unescaped quote: Foo"Bar`},
		{`""`, "Invalid zero-length delimited identifier"},
		{"", "Invalid zero-length delimited identifier"},
		{".invalid_shape", "Invalid zero-length delimited identifier"},
		{"foo.", "Invalid zero-length delimited identifier"},
		{strings.Repeat("a", 64), "Identifier is too long (max length is 63)"},
		{`"foo"."bar`, `Invalid unquoted identifier contains special characters: "bar`},
		{"foo.bar.baz", "Invalid relation identifier, too many delimiters: foo.bar.baz"},
		{"a.b.c.d", "Invalid relation identifier, too many delimiters: a.b.c.d"},
		{"1abc", "Invalid unquoted identifier contains special characters: 1abc"},
		{"$a", "Invalid unquoted identifier contains special characters: $a"},
		{"foo-bar", "Invalid unquoted identifier contains special characters: foo-bar"},
		{"\u0301a", "Invalid unquoted identifier contains special characters: \u0301a"},
		{"a١", "Invalid unquoted identifier contains special characters: a١"},
	}
	for _, c := range bad {
		got, err := ParseRelation(c.in)
		if err == nil || err.Error() != c.msg {
			t.Errorf("ParseRelation(%q) = %v, %v; want error %q", c.in, got, err, c.msg)
		}
	}
	for _, in := range []string{"\"a\x00b\"", "\"\xff\"", "\"a\xc3\""} {
		if got, err := ParseRelation(in); err == nil {
			t.Errorf("ParseRelation(%q) = %v, want an error", in, got)
		}
	}
}

func TestParseColumns(t *testing.T) {
	ok := []struct {
		in   string
		want []string
	}{
		{"id", []string{"id"}},
		{"id,name", []string{"id", "name"}},
		{`"PoT@To",PoTaTo`, []string{"PoT@To", "potato"}},
		{`"PoTaTo,sunday",foo`, []string{"PoTaTo,sunday", "foo"}},
		{`"fo""o",bar`, []string{`fo"o`, "bar"}},
		{`"id","title"`, []string{"id", "title"}}, // as the TS client sends them
		{"ID,Title", []string{"id", "title"}},
	}
	for _, c := range ok {
		got, err := ParseColumns(c.in)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("ParseColumns(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	bad := []struct{ in, msg string }{
		{"", "Invalid zero-length delimited identifier"},
		{"foo,", "Invalid zero-length delimited identifier"},
		{",foo", "Invalid zero-length delimited identifier"},
		{`"id,"name"`, `Invalid unquoted identifier contains special characters: "id`},
		{"a b", "Invalid unquoted identifier contains special characters: a b"},
	}
	for _, c := range bad {
		got, err := ParseColumns(c.in)
		if err == nil || err.Error() != c.msg {
			t.Errorf("ParseColumns(%q) = %q, %v; want error %q", c.in, got, err, c.msg)
		}
	}
}

// quote is how a client quotes an identifier.
func quote(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

func FuzzParseRelation(f *testing.F) {
	for _, s := range []string{"foo", "foo.bar", `"foo.woah"."bar"`, `"Foo""Bar"`, ".x", "a.b.c", `"a"b"`, "ÀBC", `"`, `"""`, `""""`, "\"\xff\""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		rel, err := ParseRelation(s)
		if err != nil {
			return
		}
		for _, part := range []string{rel.Schema, rel.Name} {
			if part == "" || !utf8.ValidString(part) || strings.IndexByte(part, 0) >= 0 || utf8.RuneCountInString(part) > 63 {
				t.Fatalf("ParseRelation(%q) = %q: invalid part", s, rel)
			}
		}
		// Quoting both parts round-trips.
		back, err := ParseRelation(quote(rel.Schema) + "." + quote(rel.Name))
		if err != nil || back != rel {
			t.Fatalf("ParseRelation(%q) = %q, but its quoted form gives %q, %v", s, rel, back, err)
		}
		if q := rel.Quoted(); q != quote(rel.Schema)+"."+quote(rel.Name) {
			t.Fatalf("Quoted() = %s", q)
		}
	})
}

func FuzzParseColumns(f *testing.F) {
	for _, s := range []string{"id", "id,name", `"PoT@To",PoTaTo`, `"PoTaTo,sunday",foo`, `"fo""o",bar`, `"id,"name"`, "foo,", `"a"",b"`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cols, err := ParseColumns(s)
		if err != nil {
			return
		}
		quoted := make([]string, len(cols))
		for i, c := range cols {
			if c == "" || !utf8.ValidString(c) || strings.IndexByte(c, 0) >= 0 {
				t.Fatalf("ParseColumns(%q) = %q: invalid column", s, cols)
			}
			quoted[i] = quote(c)
		}
		// The TS client's form (every name quoted) round-trips.
		back, err := ParseColumns(strings.Join(quoted, ","))
		if err != nil || !slices.Equal(back, cols) {
			t.Fatalf("ParseColumns(%q) = %q, but the quoted form gives %q, %v", s, cols, back, err)
		}
	})
}
