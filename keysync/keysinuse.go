package keysync

import (
	"cmp"
	"context"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// ErrKeysInUse means a key was not retired because cells sealed with it
// remain: retiring it would leave them unreadable. The error is a
// *[KeysInUseError], which says where they are.
var ErrKeysInUse = errors.New("keysync: keys still seal cells")

// KeysInUseError refuses a retirement: cells of the tenant sealed with keys
// that were to be retired remain in the tables listed. Nothing was retired.
// Re-encrypt those tables ([Admin.Reencrypt]), then retire again.
type KeysInUseError struct {
	Tenant string
	Cells  []KeyCells // sorted by table, column and key
}

// KeyCells counts the cells of one column sealed with one key.
type KeyCells struct {
	Table  string // schema.table
	Column string
	KeyID  uint32
	Cells  int
}

func (e *KeysInUseError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "keysync: not retiring keys of tenant %q: cells still sealed with them remain in", e.Tenant)
	for i, kc := range e.Cells {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, " %s.%s (key %08x, %d cells)", kc.Table, kc.Column, kc.KeyID, kc.Cells)
	}
	b.WriteString("; re-encrypt them first")
	return b.String()
}

func (e *KeysInUseError) Unwrap() error { return ErrKeysInUse }

// keysInUse counts the tenant's cells sealed with any of ids, and returns
// a *KeysInUseError if there are some (nil if none).
//
// A tenant's keyset seals cells in every table with encrypted columns, so
// the count does not stop at specs: it takes in every text column of every
// table that has a column named like one of specs' tenant columns, which
// finds the tables of a schema that names its tenant column the same way
// everywhere. Tables whose tenant column has another name are counted only
// if specs name them.
//
// The count is done in Postgres, one query per column, grouping the cells
// by their first characters after "ss1:", which hold the key id (see
// keyIDOfHead), so that only a few rows per key come back.
func keysInUse(ctx context.Context, db AdminDB, tenant string, specs []TableSpec, ids []uint32) (*KeysInUseError, error) {
	// The columns to count, by table.
	type target struct {
		table        string // schema.table
		tenantColumn string
		tenantType   string // the tenant column's SQL type, when the catalog said
		columns      []string
	}
	var targets []*target
	byTable := map[string]*target{}
	add := func(table, tenantColumn, column string) *target {
		t := byTable[table]
		if t == nil {
			t = &target{table: table, tenantColumn: tenantColumn}
			byTable[table] = t
			targets = append(targets, t)
		}
		if t.tenantColumn == tenantColumn && !slices.Contains(t.columns, column) {
			t.columns = append(t.columns, column)
		}
		return t
	}
	var tenantColumns []string
	for i := range specs {
		s := &specs[i]
		for _, c := range s.Columns {
			add(s.QualifiedTable(), s.TenantColumn, c)
		}
		if !slices.Contains(tenantColumns, s.TenantColumn) {
			tenantColumns = append(tenantColumns, s.TenantColumn)
		}
	}
	// Every table with such a tenant column, and its text columns.
	// shapeseal's own tables hold no cells.
	rows, err := db.Query(ctx, `SELECT n.nspname || '.' || c.relname, t.attname, format_type(t.atttypid, t.atttypmod), a.attname
		FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace
		JOIN pg_attribute t ON t.attrelid = c.oid AND t.attnum > 0 AND NOT t.attisdropped AND t.attname = ANY ($1::text[])
		JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attname <> t.attname
		WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition
			AND a.atttypid IN ('text'::regtype, 'varchar'::regtype)
			AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\_%'
			AND c.relname NOT LIKE 'shapeseal\_%'
		ORDER BY 1, 2, 4`, tenantColumns)
	if err != nil {
		return nil, fmt.Errorf("keysync: find tables with cells: %w", err)
	}
	var table, tenantColumn, tenantType, column string
	_, err = pgx.ForEachRow(rows, []any{&table, &tenantColumn, &tenantType, &column}, func() error {
		if t := add(table, tenantColumn, column); t.tenantColumn == tenantColumn {
			t.tenantType = tenantType // from the catalog, so safe to splice into SQL
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("keysync: find tables with cells: %w", err)
	}

	e := &KeysInUseError{Tenant: tenant}
	for _, t := range targets {
		n, err := countKeys(ctx, db, t.table, t.tenantColumn, t.tenantType, t.columns, tenant)
		if err != nil {
			return nil, fmt.Errorf("keysync: count cells of %s: %w", t.table, err)
		}
		for i, col := range t.columns {
			for _, id := range ids {
				if c := n[columnKey{i, id}]; c > 0 {
					e.Cells = append(e.Cells, KeyCells{Table: t.table, Column: col, KeyID: id, Cells: c})
				}
			}
		}
	}
	if len(e.Cells) == 0 {
		return nil, nil
	}
	slices.SortFunc(e.Cells, func(a, b KeyCells) int {
		return cmp.Or(cmp.Compare(a.Table, b.Table), cmp.Compare(a.Column, b.Column), cmp.Compare(a.KeyID, b.KeyID))
	})
	return e, nil
}

// columnKey is a column (by index) and a key id.
type columnKey struct {
	column int
	id     uint32
}

// countKeys counts the tenant's cells in columns of table, by column and key
// id, in one scan of the tenant's rows. Values that are not cells, or whose
// head is malformed (they open with no key), are not counted.
func countKeys(ctx context.Context, db AdminDB, table, tenantColumn, tenantType string, columns []string, tenant string) (map[columnKey]int, error) {
	schema, name, _ := strings.Cut(table, ".")
	// Columns are qualified with the table's alias, t, as a column may be
	// named like those of x.
	cond := "t." + ident(tenantColumn) + "::text = $1"
	if tenantType != "" {
		cond = "t." + ident(tenantColumn) + " = $1::text::" + tenantType // can use an index
	}
	values := make([]string, len(columns))
	for i, c := range columns {
		values[i] = fmt.Sprintf("(%d, t.%s::text)", i, ident(c))
	}
	rows, err := db.Query(ctx, `SELECT x.i, substr(x.v, 5, 7), count(*) FROM `+pgx.Identifier{schema, name}.Sanitize()+
		` t, LATERAL (VALUES `+strings.Join(values, ", ")+`) x (i, v) WHERE `+cond+` AND x.v LIKE 'ss1:%' GROUP BY 1, 2`, tenant)
	if err != nil {
		return nil, err
	}
	n := map[columnKey]int{}
	var i, count int
	var head string
	_, err = pgx.ForEachRow(rows, []any{&i, &head, &count}, func() error {
		if id, ok := keyIDOfHead(head); ok {
			n[columnKey{i, id}] += count
		}
		return nil
	})
	return n, err
}

// keyIDOfHead reads the key id from the first 7 characters of a cell after
// "ss1:". The ciphertext starts with the byte 0x01 and the 4-byte key id;
// 7 base64 characters hold those 40 bits and 2 bits of the nonce, so a key's
// cells fall into at most 4 groups of heads. Decoding needs a multiple of 4
// characters: an 8th character, whatever it is, completes the 6th byte.
func keyIDOfHead(head string) (uint32, bool) {
	if len(head) != 7 {
		return 0, false
	}
	b, err := base64.RawURLEncoding.DecodeString(head + "A")
	if err != nil || b[0] != tinkPrefixTink {
		return 0, false
	}
	return binary.BigEndian.Uint32(b[1:keyPrefixLen]), true
}
