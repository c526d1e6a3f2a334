package electrictest

import (
	"context"
	"encoding/json"
	"errors"

	"github.com/jackc/pgx/v5/pgxpool"
)

// A column of a synced table as the catalog describes it.
type column struct {
	name     string
	typeOID  uint32
	sqlType  string // format_type(): usable in a cast, e.g. "character varying(20)"
	typname  string // the element type's name for arrays, as Electric's schema header gives it
	dims     int    // array dimensions, at least 1 for an array (0 otherwise)
	attndims int    // pg_attribute.attndims: 0 for arrays of tables made with LIKE or CREATE TABLE AS
	arrType  string // the type's own name (_int4 for int4[])
	notNull  bool
	pkIndex  int // position in the primary key, or -1
	typmod   int
	isBpchar bool
}

// table is the catalog's description of a relation at shape creation.
type table struct {
	oid     uint32 // a dropped and re-created table has a new one
	rel     Relation
	columns []column // non-generated columns, in attnum order
	pk      []int    // indices into columns, in primary key order
	// generated are the names of the generated columns, which Postgres
	// before 18 does not replicate: like Electric, the server refuses
	// shapes that would include them.
	generated []string
}

var errNoTable = errors.New("table not found")

const tableQuery = `
SELECT c.oid, a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod),
       COALESCE(et.typname, t.typname), t.typcategory = 'A', a.attndims, a.attnotnull, a.atttypmod,
       COALESCE((SELECT k.n - 1 FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(att, n)
                 WHERE i.indrelid = c.oid AND i.indisprimary AND k.att = a.attnum), -1),
       COALESCE(et.typname, t.typname) = 'bpchar', t.typname, a.attgenerated <> ''
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')
ORDER BY a.attnum`

func loadTable(ctx context.Context, pool *pgxpool.Pool, rel Relation) (*table, error) {
	t := &table{rel: rel}
	var pkCount int
	rows, err := pool.Query(ctx, tableQuery, rel.Schema, rel.Name)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var c column
		var isArray, generated bool
		var dims, typmod, pk int32
		if err := rows.Scan(&t.oid, &c.name, &c.typeOID, &c.sqlType, &c.typname, &isArray, &dims, &c.notNull, &typmod, &pk, &c.isBpchar, &c.arrType, &generated); err != nil {
			return nil, err
		}
		if generated {
			t.generated = append(t.generated, c.name)
			continue
		}
		c.typmod, c.pkIndex, c.attndims = int(typmod), int(pk), int(dims)
		if isArray {
			c.dims = max(int(dims), 1)
		}
		if c.pkIndex >= 0 {
			pkCount++
		}
		t.columns = append(t.columns, c)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if len(t.columns) == 0 {
		return nil, errNoTable
	}
	t.pk = make([]int, pkCount)
	for i, c := range t.columns {
		if c.pkIndex >= 0 && c.pkIndex < pkCount {
			t.pk[c.pkIndex] = i
		}
	}
	return t, nil
}

func (t *table) index(name string) int {
	for i, c := range t.columns {
		if c.name == name {
			return i
		}
	}
	return -1
}

// schemaHeader renders the electric-schema header for the selected columns,
// as Electric's Schema.from_column_info does.
func (t *table) schemaHeader(cols []int) string {
	type colSchema struct {
		Type      string `json:"type"`
		Dims      int    `json:"dims,omitempty"`
		PKIndex   *int   `json:"pk_index,omitempty"`
		NotNull   bool   `json:"not_null,omitempty"`
		MaxLength *int   `json:"max_length,omitempty"`
		Length    *int   `json:"length,omitempty"`
		Precision *int   `json:"precision,omitempty"`
		Scale     *int   `json:"scale,omitempty"`
		Fields    string `json:"fields,omitempty"`
		TypeMod   *int   `json:"type_mod,omitempty"`
	}
	ptr := func(v int) *int { return &v }
	m := make(map[string]colSchema, len(cols))
	for _, i := range cols {
		c := t.columns[i]
		s := colSchema{Type: c.typname, Dims: c.attndims, NotNull: c.notNull}
		if c.dims > 0 && c.attndims == 0 {
			// An array column whose dimensions the catalog does not
			// record (CREATE TABLE ... LIKE, CREATE TABLE AS): Electric
			// describes it by the array type's own name, without dims.
			s.Type = c.arrType
		}
		if c.pkIndex >= 0 {
			s.PKIndex = &c.pkIndex
		}
		tm := c.typmod
		switch {
		case tm > 0 && (s.Type == "varchar" || s.Type == "text"):
			s.MaxLength = ptr(tm - 4)
		case tm > 0 && s.Type == "bpchar":
			s.Length = ptr(tm - 4)
		case s.Type == "bit" || s.Type == "varbit":
			s.Length = ptr(tm) // -1 when unbounded, as in Electric
		case tm > -1 && s.Type == "interval":
			// The range (fields) is in the high 16 bits, the precision
			// in the low 16 bits; all range bits set means none given.
			rng, prec := int16(uint32(tm)>>16), int16(uint32(tm))
			if prec != -1 {
				s.Precision = ptr(int(prec))
			}
			if rng != 0x7fff {
				s.Fields = intervalFields(int(rng))
			}
		case tm > 0 && (s.Type == "timetz" || s.Type == "time" || s.Type == "timestamp" || s.Type == "timestamptz" || s.Type == "date"):
			s.Precision = ptr(tm)
		case tm > -1 && s.Type == "numeric":
			v := uint32(tm - 4)
			s.Precision, s.Scale = ptr(int(int16(v>>16))), ptr(int(int16(v)))
		case tm > -1:
			// A modifier Electric does not interpret (timestamp(0), a
			// custom type's, an array type's own name): sent as is.
			s.TypeMod = ptr(tm)
		}
		m[c.name] = s
	}
	b, _ := json.Marshal(m)
	return string(b)
}

// intervalFields names the fields of an interval type modifier's range, as
// Electric's Schema does: "YEAR", "DAY TO SECOND", ...
func intervalFields(rng int) string {
	masks := []struct {
		unit string
		mask int
	}{{"YEAR", 1 << 2}, {"MONTH", 1 << 1}, {"DAY", 1 << 3}, {"HOUR", 1 << 10}, {"MINUTE", 1 << 11}, {"SECOND", 1 << 12}}
	var units []string
	for _, m := range masks {
		if rng&m.mask != 0 {
			units = append(units, m.unit)
		}
	}
	switch len(units) {
	case 0:
		return ""
	case 1:
		return units[0]
	}
	return units[0] + " TO " + units[len(units)-1]
}
