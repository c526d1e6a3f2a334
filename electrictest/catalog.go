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
	dims     int
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
}

var errNoTable = errors.New("table not found")

const tableQuery = `
SELECT c.oid, a.attname, a.atttypid, format_type(a.atttypid, a.atttypmod),
       COALESCE(et.typname, t.typname), t.typcategory = 'A', a.attndims, a.attnotnull, a.atttypmod,
       COALESCE((SELECT k.n - 1 FROM pg_index i, unnest(i.indkey) WITH ORDINALITY AS k(att, n)
                 WHERE i.indrelid = c.oid AND i.indisprimary AND k.att = a.attnum), -1),
       COALESCE(et.typname, t.typname) = 'bpchar'
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
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
		var isArray bool
		var dims, typmod, pk int32
		if err := rows.Scan(&t.oid, &c.name, &c.typeOID, &c.sqlType, &c.typname, &isArray, &dims, &c.notNull, &typmod, &pk, &c.isBpchar); err != nil {
			return nil, err
		}
		c.typmod, c.pkIndex = int(typmod), int(pk)
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

// schemaHeader renders the electric-schema header for the selected columns.
func (t *table) schemaHeader(cols []int) string {
	type colSchema struct {
		Type      string `json:"type"`
		Dims      int    `json:"dims,omitempty"`
		PKIndex   *int   `json:"pk_index,omitempty"`
		NotNull   bool   `json:"not_null,omitempty"`
		MaxLength int    `json:"max_length,omitempty"`
		Length    int    `json:"length,omitempty"`
		Precision *int   `json:"precision,omitempty"`
		Scale     *int   `json:"scale,omitempty"`
	}
	m := make(map[string]colSchema, len(cols))
	for _, i := range cols {
		c := t.columns[i]
		s := colSchema{Type: c.typname, Dims: c.dims, NotNull: c.notNull}
		if c.pkIndex >= 0 {
			s.PKIndex = &c.pkIndex
		}
		switch c.typname {
		case "varchar":
			if c.typmod >= 4 {
				s.MaxLength = c.typmod - 4
			}
		case "bpchar":
			if c.typmod >= 4 {
				s.Length = c.typmod - 4
			}
		case "bit", "varbit":
			if c.typmod >= 0 {
				s.Length = c.typmod
			}
		case "numeric":
			if c.typmod >= 4 {
				p, sc := ((c.typmod-4)>>16)&0xffff, (c.typmod-4)&0xffff
				s.Precision, s.Scale = &p, &sc
			}
		case "time", "timetz", "timestamp", "timestamptz":
			if c.typmod > 0 { // as Electric's Schema: timestamp(0) has no precision
				p := c.typmod
				s.Precision = &p
			}
		}
		m[c.name] = s
	}
	b, _ := json.Marshal(m)
	return string(b)
}
