// Package pgident parses Postgres identifiers as Electric reads them in a
// shape request: the table parameter ("items", "app.items",
// "\"My Schema\".\"Items\"") and the columns parameter ("id,\"Title\"").
//
// The rules are Postgres' own for identifiers in SQL text, which Electric
// applies to these parameters (Electric.Postgres.Identifiers and
// Electric.Plug.Utils.parse_columns_param):
//
//   - An identifier in double quotes is taken verbatim, with "" standing
//     for one quote character: "Foo""Bar" is Foo"Bar. It may contain any
//     character, dots and commas included, but must not be empty.
//   - An unquoted identifier starts with a letter or _ and continues with
//     letters, _, ASCII digits, $ or combining marks, and is folded to
//     lower case — ASCII letters only, as Postgres does in a UTF-8
//     database: ÀBC is Àbc.
//   - The result must be valid UTF-8 without NUL and at most 63 characters
//     (MaxLen).
//
// Both the proxy, which checks the columns a client names against a rule's
// allowlist, and electrictest, which serves shapes the way Electric does,
// use this package, so the two cannot drift apart on what a name means.
package pgident

import (
	"strings"
	"unicode"
	"unicode/utf8"
)

// MaxLen is the longest identifier accepted, in characters (Postgres'
// NAMEDATALEN - 1, which Postgres itself counts in bytes: a caller that
// compares with catalog names may also check len(name) <= MaxLen).
const MaxLen = 63

// DefaultSchema is the schema of a relation named without one.
const DefaultSchema = "public"

// Kind classifies why a name was refused.
type Kind int

const (
	// ZeroLength is an empty identifier, quoted ("") or not.
	ZeroLength Kind = iota + 1
	// UnescapedQuote is a lone " inside a quoted identifier.
	UnescapedQuote
	// SpecialChars is an unquoted identifier with a character that only a
	// quoted one may contain (a space, -, @, a leading digit, an
	// unbalanced quote...).
	SpecialChars
	// InvalidText is a name that is not valid UTF-8 or contains NUL:
	// Postgres could not even look it up.
	InvalidText
	// TooLong is a name over MaxLen characters.
	TooLong
	// TooManyParts is a relation with more than schema and name.
	TooManyParts
)

// String is a short description of the kind, without the refused text:
// for messages that must not repeat what a client sent.
func (k Kind) String() string {
	switch k {
	case ZeroLength:
		return "zero-length identifier"
	case UnescapedQuote:
		return "identifier with unescaped quote"
	case SpecialChars:
		return "invalid unquoted identifier"
	case InvalidText:
		return "invalid identifier"
	case TooLong:
		return "identifier is too long"
	case TooManyParts:
		return "too many dots in a relation name"
	}
	return "invalid identifier"
}

// Error is a refused name. Its message is Electric's, word for word,
// including the refused text; Kind.String gives one without it.
type Error struct {
	Kind  Kind
	Input string // the identifier (or relation) as given
}

func (e *Error) Error() string {
	switch e.Kind {
	case ZeroLength:
		return "Invalid zero-length delimited identifier"
	case UnescapedQuote:
		// Electric shows the text between the outer quotes.
		inner := e.Input
		if len(inner) >= 2 {
			inner = inner[1 : len(inner)-1]
		}
		return "Invalid identifier with unescaped quote: " + inner
	case SpecialChars:
		return "Invalid unquoted identifier contains special characters: " + e.Input
	case InvalidText:
		return "Invalid identifier, it must be valid UTF-8 without NUL characters: " + e.Input
	case TooLong:
		return "Identifier is too long (max length is 63)"
	case TooManyParts:
		return "Invalid relation identifier, too many delimiters: " + e.Input
	}
	return "Invalid identifier: " + e.Input
}

// Parse returns the name one identifier stands for: the text between the
// quotes with "" unescaped, or the unquoted text folded to lower case.
// Errors are *Error.
func Parse(s string) (string, error) {
	var out string
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		inner := s[1 : len(s)-1]
		if inner == "" {
			return "", &Error{ZeroLength, s}
		}
		// Left to right, "" is one quote; any other quote ends the
		// identifier early, which is an error.
		var b strings.Builder
		b.Grow(len(inner))
		for i := 0; i < len(inner); i++ {
			if inner[i] == '"' {
				if i+1 == len(inner) || inner[i+1] != '"' {
					return "", &Error{UnescapedQuote, s}
				}
				i++
			}
			b.WriteByte(inner[i])
		}
		out = b.String()
	} else {
		if s == "" {
			return "", &Error{ZeroLength, s}
		}
		if !validUnquoted(s) {
			return "", &Error{SpecialChars, s}
		}
		out = downcaseASCII(s)
	}
	if !utf8.ValidString(out) || strings.IndexByte(out, 0) >= 0 {
		return "", &Error{InvalidText, s}
	}
	if utf8.RuneCountInString(out) > MaxLen {
		return "", &Error{TooLong, s}
	}
	return out, nil
}

// ParseList parses a comma-separated list of identifiers (the columns
// parameter). A comma inside quotes is part of a name.
//
// Like Electric, it splits at the commas followed by an even number of
// quotes. That is the same as splitting outside quotes from the left (Split)
// whenever the quotes are balanced; when they are not, some part has an odd
// number of quotes and is refused either way, and this choice only decides
// which part the error names.
func ParseList(s string) ([]string, error) {
	var parts []string
	start, after := 0, strings.Count(s, `"`)
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			after--
		case ',':
			if after%2 == 0 {
				parts = append(parts, s[start:i])
				start = i + 1
			}
		}
	}
	parts = append(parts, s[start:])
	names := make([]string, 0, len(parts))
	for _, p := range parts {
		n, err := Parse(p)
		if err != nil {
			return nil, err
		}
		names = append(names, n)
	}
	return names, nil
}

// ParseRelation parses a table name: "name" (in DefaultSchema) or
// "schema.name", each part an identifier; a dot inside quotes is part of a
// name.
func ParseRelation(s string) (schema, name string, err error) {
	parts := Split(s, '.')
	switch len(parts) {
	case 1:
		name, err = Parse(parts[0])
		if err != nil {
			return "", "", err
		}
		return DefaultSchema, name, nil
	case 2:
		if schema, err = Parse(parts[0]); err != nil {
			return "", "", err
		}
		if name, err = Parse(parts[1]); err != nil {
			return "", "", err
		}
		return schema, name, nil
	}
	return "", "", &Error{TooManyParts, s}
}

// Split splits s at each sep outside double quotes, scanning from the
// left: a quote opens or closes a quoted stretch ("" closes and reopens
// one, so it never ends a name early). It always returns at least one part.
func Split(s string, sep byte) []string {
	var parts []string
	start, quoted := 0, false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			quoted = !quoted
		case sep:
			if !quoted {
				parts = append(parts, s[start:i])
				start = i + 1
			}
		}
	}
	return append(parts, s[start:])
}

// Quote returns name as a quoted identifier, which Parse maps back to name.
func Quote(name string) string { return `"` + strings.ReplaceAll(name, `"`, `""`) + `"` }

// validUnquoted reports whether s may be written without quotes.
func validUnquoted(s string) bool {
	for i, r := range s {
		switch {
		case r == '_' || unicode.IsLetter(r):
		case i > 0 && (unicode.IsDigit(r) && r < utf8.RuneSelf || r == '$' || unicode.Is(unicode.M, r)):
		default:
			return false
		}
	}
	return true
}

// downcaseASCII folds A-Z only, as Postgres does for unquoted names.
func downcaseASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// TextArray writes ss as a Postgres text[] literal, every element quoted:
// {"acme","a \"b\""}. It is how a list travels as one shape parameter (a
// where clause then reads it as $1::text[]).
func TextArray(ss []string) string {
	var b strings.Builder
	b.WriteByte('{')
	for i, s := range ss {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('"')
		for _, r := range s {
			if r == '"' || r == '\\' {
				b.WriteByte('\\')
			}
			b.WriteRune(r)
		}
		b.WriteByte('"')
	}
	b.WriteByte('}')
	return b.String()
}
