package electrictest

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Relation names a table: schema and name, both as stored in the catalog.
type Relation struct {
	Schema, Name string
}

// Quoted returns the relation as a fully quoted SQL identifier.
func (r Relation) Quoted() string { return quoteIdent(r.Schema) + "." + quoteIdent(r.Name) }

func (r Relation) String() string { return r.Schema + "." + r.Name }

func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// ParseRelation parses a table parameter with Postgres' identifier rules, as
// Electric does: an unquoted part is downcased, a quoted part is taken
// verbatim, one part means schema "public".
func ParseRelation(s string) (Relation, error) {
	parts, err := splitOutsideQuotes(s, '.')
	if err != nil {
		return Relation{}, err
	}
	switch len(parts) {
	case 1:
		name, err := parseIdent(parts[0])
		return Relation{"public", name}, err
	case 2:
		schema, err := parseIdent(parts[0])
		if err != nil {
			return Relation{}, err
		}
		name, err := parseIdent(parts[1])
		return Relation{schema, name}, err
	default:
		return Relation{}, fmt.Errorf("Invalid relation identifier, too many delimiters: %s", s)
	}
}

// ParseColumns parses a comma-separated column list (the columns parameter).
func ParseColumns(s string) ([]string, error) {
	// As Electric's parse_columns_param: split at the commas followed by an
	// even number of double quotes (which differs from scanning from the
	// start only when the quotes are unbalanced).
	var parts []string
	start, quotes := 0, strings.Count(s, `"`)
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			quotes--
		case ',':
			if quotes%2 == 0 {
				parts = append(parts, s[start:i])
				start = i + 1
			}
		}
	}
	parts = append(parts, s[start:])
	cols := make([]string, 0, len(parts))
	for _, p := range parts {
		c, err := parseIdent(p)
		if err != nil {
			return nil, err
		}
		cols = append(cols, c)
	}
	return cols, nil
}

func splitOutsideQuotes(s string, sep byte) ([]string, error) {
	var parts []string
	start, inQuotes := 0, false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			inQuotes = !inQuotes
		case sep:
			if !inQuotes {
				parts = append(parts, s[start:i])
				start = i + 1
			}
		}
	}
	return append(parts, s[start:]), nil
}

func parseIdent(s string) (string, error) {
	var out string
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		inner := s[1 : len(s)-1]
		if inner == "" {
			return "", fmt.Errorf("Invalid zero-length delimited identifier")
		}
		var b strings.Builder
		for i := 0; i < len(inner); i++ {
			if inner[i] == '"' {
				if i+1 < len(inner) && inner[i+1] == '"' {
					b.WriteByte('"')
					i++
					continue
				}
				return "", fmt.Errorf("Invalid identifier with unescaped quote: %s", inner)
			}
			b.WriteByte(inner[i])
		}
		out = b.String()
	} else {
		if s == "" {
			return "", fmt.Errorf("Invalid zero-length delimited identifier")
		}
		if !validUnquoted(s) {
			return "", fmt.Errorf("Invalid unquoted identifier contains special characters: %s", s)
		}
		out = downcaseASCII(s)
	}
	if !utf8.ValidString(out) || strings.IndexByte(out, 0) >= 0 {
		// Postgres could not even look such a name up.
		return "", fmt.Errorf("Invalid identifier, it must be valid UTF-8 without NUL characters: %s", s)
	}
	if utf8.RuneCountInString(out) > 63 {
		return "", fmt.Errorf("Identifier is too long (max length is 63)")
	}
	return out, nil
}

func validUnquoted(s string) bool {
	for i, r := range s {
		switch {
		case r == '_' || unicode.IsLetter(r):
		case i > 0 && (unicode.IsDigit(r) && r < 128 || r == '$' || unicode.Is(unicode.M, r)):
		default:
			return false
		}
	}
	return true
}

func downcaseASCII(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}
