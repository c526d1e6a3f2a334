package electrictest

import "github.com/shapeseal/shapeseal/internal/pgident"

// Relation names a table: schema and name, both as stored in the catalog.
type Relation struct {
	Schema, Name string
}

// Quoted returns the relation as a fully quoted SQL identifier.
func (r Relation) Quoted() string { return quoteIdent(r.Schema) + "." + quoteIdent(r.Name) }

func (r Relation) String() string { return r.Schema + "." + r.Name }

func quoteIdent(s string) string { return pgident.Quote(s) }

// ParseRelation parses a table parameter with Postgres' identifier rules, as
// Electric does: an unquoted part is downcased, a quoted part is taken
// verbatim, one part means schema "public". Errors are *pgident.Error,
// worded as Electric's.
func ParseRelation(s string) (Relation, error) {
	schema, name, err := pgident.ParseRelation(s)
	if err != nil {
		return Relation{}, err
	}
	return Relation{schema, name}, nil
}

// ParseColumns parses a comma-separated column list (the columns parameter)
// as Electric's parse_columns_param does. Errors are *pgident.Error.
func ParseColumns(s string) ([]string, error) { return pgident.ParseList(s) }
