package pgident

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParse(t *testing.T) {
	ok := []struct{ in, want string }{
		{"foo", "foo"},
		{"FooBar", "foobar"},
		{`"FooBar"`, "FooBar"},
		{`" "`, " "},
		{`"Foo""Bar"`, `Foo"Bar`},
		{`""""`, `"`},
		{`"a.b,c"`, "a.b,c"},
		{"_x", "_x"},
		{"a$b", "a$b"},
		{"a1", "a1"},
		{"ÀBC", "Àbc"},           // only ASCII is folded
		{"éa\u0301", "éa\u0301"}, // a combining mark after the first character
		{"Φtàble", "Φtàble"},
		{strings.Repeat("A", MaxLen), strings.Repeat("a", MaxLen)},
		{`"` + strings.Repeat("é", MaxLen) + `"`, strings.Repeat("é", MaxLen)}, // characters, not bytes
	}
	for _, c := range ok {
		got, err := Parse(c.in)
		if err != nil || got != c.want {
			t.Errorf("Parse(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	bad := []struct {
		in   string
		kind Kind
		msg  string
	}{
		{"", ZeroLength, "Invalid zero-length delimited identifier"},
		{`""`, ZeroLength, "Invalid zero-length delimited identifier"},
		{`"Foo"Bar"`, UnescapedQuote, `Invalid identifier with unescaped quote: Foo"Bar`},
		{`"a"b""`, UnescapedQuote, `Invalid identifier with unescaped quote: a"b"`},
		{`"`, SpecialChars, `Invalid unquoted identifier contains special characters: "`},
		{`"abc`, SpecialChars, `Invalid unquoted identifier contains special characters: "abc`},
		{`Foo"Bar"`, SpecialChars, `Invalid unquoted identifier contains special characters: Foo"Bar"`},
		{"1abc", SpecialChars, "Invalid unquoted identifier contains special characters: 1abc"},
		{"$a", SpecialChars, "Invalid unquoted identifier contains special characters: $a"},
		{"a b", SpecialChars, "Invalid unquoted identifier contains special characters: a b"},
		{"a-b", SpecialChars, "Invalid unquoted identifier contains special characters: a-b"},
		{"a.b", SpecialChars, "Invalid unquoted identifier contains special characters: a.b"},
		{"\u0301a", SpecialChars, "Invalid unquoted identifier contains special characters: \u0301a"},
		{"a١", SpecialChars, "Invalid unquoted identifier contains special characters: a١"}, // a non-ASCII digit
		{"a\xff", SpecialChars, "Invalid unquoted identifier contains special characters: a\xff"},
		{"\"a\x00b\"", InvalidText, "Invalid identifier, it must be valid UTF-8 without NUL characters: \"a\x00b\""},
		{"\"\xff\"", InvalidText, "Invalid identifier, it must be valid UTF-8 without NUL characters: \"\xff\""},
		{strings.Repeat("a", MaxLen+1), TooLong, "Identifier is too long (max length is 63)"},
		{`"` + strings.Repeat("é", MaxLen+1) + `"`, TooLong, "Identifier is too long (max length is 63)"},
	}
	for _, c := range bad {
		got, err := Parse(c.in)
		var e *Error
		if !errors.As(err, &e) || e.Kind != c.kind || e.Input != c.in || err.Error() != c.msg {
			t.Errorf("Parse(%q) = %q, %v; want %v %q", c.in, got, err, c.kind, c.msg)
			continue
		}
		if strings.Contains(e.Kind.String(), c.in) && c.in != "" {
			t.Errorf("Kind.String() of %q repeats the input: %s", c.in, e.Kind)
		}
	}
}

func TestParseList(t *testing.T) {
	ok := []struct {
		in   string
		want []string
	}{
		{"id", []string{"id"}},
		{"id,Title", []string{"id", "title"}},
		{`"id","title"`, []string{"id", "title"}}, // as the TypeScript client sends them
		{`"PoT@To",PoTaTo`, []string{"PoT@To", "potato"}},
		{`"PoTaTo,sunday",foo`, []string{"PoTaTo,sunday", "foo"}},
		{`"fo""o",bar`, []string{`fo"o`, "bar"}},
		{`"a,""b"`, []string{`a,"b`}},
	}
	for _, c := range ok {
		got, err := ParseList(c.in)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("ParseList(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	bad := []struct {
		in   string
		kind Kind
	}{
		{"", ZeroLength},
		{"foo,", ZeroLength},
		{",foo", ZeroLength},
		{"a,,b", ZeroLength},
		{`"id,"name"`, SpecialChars}, // Electric splits it into "id and "name"
		{`"unterminated`, SpecialChars},
		{"a b", SpecialChars},
	}
	for _, c := range bad {
		got, err := ParseList(c.in)
		var e *Error
		if !errors.As(err, &e) || e.Kind != c.kind {
			t.Errorf("ParseList(%q) = %q, %v; want %v", c.in, got, err, c.kind)
		}
	}
}

func TestParseRelation(t *testing.T) {
	ok := []struct{ in, schema, name string }{
		{"foo", "public", "foo"},
		{"Foo", "public", "foo"},
		{"app.Items", "app", "items"},
		{`"foo.woah"."bar"`, "foo.woah", "bar"},
		{`"foo".bar`, "foo", "bar"},
		{`"we.ird/name"`, "public", "we.ird/name"},
	}
	for _, c := range ok {
		schema, name, err := ParseRelation(c.in)
		if err != nil || schema != c.schema || name != c.name {
			t.Errorf("ParseRelation(%q) = %q, %q, %v; want %q, %q", c.in, schema, name, err, c.schema, c.name)
		}
	}
	bad := []struct {
		in   string
		kind Kind
		msg  string
	}{
		{"a.b.c", TooManyParts, "Invalid relation identifier, too many delimiters: a.b.c"},
		{".x", ZeroLength, "Invalid zero-length delimited identifier"},
		{"x.", ZeroLength, "Invalid zero-length delimited identifier"},
		{`"foo"."bar`, SpecialChars, `Invalid unquoted identifier contains special characters: "bar`},
	}
	for _, c := range bad {
		_, _, err := ParseRelation(c.in)
		var e *Error
		if !errors.As(err, &e) || e.Kind != c.kind || err.Error() != c.msg {
			t.Errorf("ParseRelation(%q): %v; want %v %q", c.in, err, c.kind, c.msg)
		}
	}
}

func TestSplit(t *testing.T) {
	for in, want := range map[string][]string{
		"":            {""},
		"a.b":         {"a", "b"},
		`"a.b".c`:     {`"a.b"`, "c"},
		`"a"".b".c`:   {`"a"".b"`, "c"},
		`"open.a.b`:   {`"open.a.b`},
		`a."b.c"."d"`: {"a", `"b.c"`, `"d"`},
	} {
		if got := Split(in, '.'); !slices.Equal(got, want) {
			t.Errorf("Split(%q) = %q, want %q", in, got, want)
		}
	}
}

// valid is what every accepted name must be.
func valid(t *testing.T, in, name string) {
	t.Helper()
	if name == "" || !utf8.ValidString(name) || strings.IndexByte(name, 0) >= 0 || utf8.RuneCountInString(name) > MaxLen {
		t.Fatalf("%q gave the invalid name %q", in, name)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"foo", "FooBar", `"Foo""Bar"`, `""`, `"`, `"""`, `""""`, "ÀBC", "a\u0301", "1a", "\"\xff\"", "\"a\x00\""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		name, err := Parse(s)
		if err != nil {
			var e *Error
			if !errors.As(err, &e) || e.Kind < ZeroLength || e.Kind > TooLong || e.Input != s {
				t.Fatalf("Parse(%q): untyped or unexpected error %v", s, err)
			}
			return
		}
		valid(t, s, name)
		// The quoted form means the same name; an unquoted name is
		// already folded, so parsing it again changes nothing.
		if back, err := Parse(Quote(name)); err != nil || back != name {
			t.Fatalf("Parse(%q) = %q, but Parse(Quote(...)) = %q, %v", s, name, back, err)
		}
		if s[0] != '"' {
			if again, err := Parse(name); err != nil || again != name {
				t.Fatalf("Parse(%q) = %q, which parses again as %q, %v", s, name, again, err)
			}
		}
	})
}

// FuzzParseList also checks the claim in ParseList's comment: splitting
// outside quotes from the left accepts exactly the same lists, with the
// same names.
func FuzzParseList(f *testing.F) {
	for _, s := range []string{"id", "id,name", `"PoT@To",PoTaTo`, `"PoTaTo,sunday",foo`, `"fo""o",bar`, `"id,"name"`, "foo,", `"a"",b"`, `","`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		names, err := ParseList(s)
		var left []string
		var leftErr error
		for _, p := range Split(s, ',') {
			n, err := Parse(p)
			if err != nil {
				leftErr = err
				break
			}
			left = append(left, n)
		}
		if (err == nil) != (leftErr == nil) || err == nil && !slices.Equal(names, left) {
			t.Fatalf("ParseList(%q) = %q, %v; splitting from the left gives %q, %v", s, names, err, left, leftErr)
		}
		if err != nil {
			return
		}
		quoted := make([]string, len(names))
		for i, n := range names {
			valid(t, s, n)
			quoted[i] = Quote(n)
		}
		if back, err := ParseList(strings.Join(quoted, ",")); err != nil || !slices.Equal(back, names) {
			t.Fatalf("ParseList(%q) = %q, but its quoted form gives %q, %v", s, names, back, err)
		}
	})
}

func FuzzParseRelation(f *testing.F) {
	for _, s := range []string{"foo", "foo.bar", `"foo.woah"."bar"`, `"Foo""Bar"`, ".x", "a.b.c", `"a"b"`, `"a.b`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		schema, name, err := ParseRelation(s)
		if err != nil {
			return
		}
		valid(t, s, schema)
		valid(t, s, name)
		if sc, n, err := ParseRelation(Quote(schema) + "." + Quote(name)); err != nil || sc != schema || n != name {
			t.Fatalf("ParseRelation(%q) = %q.%q, but its quoted form gives %q.%q, %v", s, schema, name, sc, n, err)
		}
	})
}
