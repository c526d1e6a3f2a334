package keysync

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// TestRetireAcrossTables: a tenant's keyset seals the cells of every table,
// so retiring the old keys after re-encrypting one table is refused, with a
// *KeysInUseError naming the others, while any table still holds a cell
// under an old key: found by its tenant column's name (notes), or named by
// the caller (docs, whose tenant column is named otherwise). Nothing is
// retired, and every cell still opens.
func TestRetireAcrossTables(t *testing.T) {
	ctx := context.Background()
	url, db := newAdminDB(t)
	pgtest.Exec(t, url, `CREATE TABLE items (id int8 PRIMARY KEY, tenant_id text NOT NULL, title text, body text)`)
	pgtest.Exec(t, url, `CREATE TABLE notes (id int8 PRIMARY KEY, tenant_id text NOT NULL, note text)`)
	pgtest.Exec(t, url, `CREATE TABLE docs (id int8 PRIMARY KEY, org text NOT NULL, content text)`)
	items := TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	notes := TableSpec{Table: "notes", Columns: []string{"note"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	docs := TableSpec{Table: "docs", Columns: []string{"content"}, TenantColumn: "org", RowKey: []string{"id"}}
	kek := newLocalKEK(t)
	acme, err := CreateTenant(ctx, db, kek, "acme")
	if err != nil {
		t.Fatal(err)
	}
	globex, err := CreateTenant(ctx, db, kek, "globex")
	if err != nil {
		t.Fatal(err)
	}
	insert := func(s TableSpec, ks *Keyset, id int) {
		t.Helper()
		row := map[string]any{"id": int64(id), s.TenantColumn: ks.Tenant()}
		for _, c := range s.Columns {
			row[c] = fmt.Sprintf("%s %s %d", ks.Tenant(), c, id)
		}
		if err := s.SealRow(ks, row); err != nil {
			t.Fatal(err)
		}
		cols := append([]string{"id", s.TenantColumn}, s.Columns...)
		vals := make([]any, len(cols))
		for i, c := range cols {
			vals[i] = row[c]
		}
		if _, err := db.CopyFrom(ctx, pgx.Identifier{s.Table}, cols, pgx.CopyFromRows([][]any{vals})); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		insert(items, acme, i)
		insert(notes, acme, i)
		insert(docs, acme, i)
		insert(notes, globex, 10+i) // another tenant's cells, under another keyset
	}
	oldKey := acme.PrimaryKeyID()
	if _, err := Rotate(ctx, db, kek, "acme"); err != nil {
		t.Fatal(err)
	}

	// allOpen checks that every cell of the tenant opens with its current
	// keyset, and returns the keyset.
	allOpen := func(tenant string) *Keyset {
		t.Helper()
		ks, err := LoadKeyset(ctx, db, kek, tenant)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []TableSpec{items, notes, docs} {
			rows, _ := db.Query(ctx, fmt.Sprintf(`SELECT * FROM %s WHERE %s = $1`, s.Table, s.TenantColumn), tenant)
			got, err := pgx.CollectRows(rows, pgx.RowToMap)
			if err != nil {
				t.Fatal(err)
			}
			for _, row := range got {
				row["id"] = fmt.Sprint(row["id"])
				if err := s.OpenRow(ks, row); err != nil {
					t.Fatalf("%s: %v", s.Table, err)
				}
			}
		}
		return ks
	}
	refused := func(err error, want ...KeyCells) {
		t.Helper()
		e, ok := errors.AsType[*KeysInUseError](err)
		if !ok || !errors.Is(err, ErrKeysInUse) {
			t.Fatalf("retire: %v, want a *KeysInUseError", err)
		}
		if e.Tenant != "acme" || !slices.Equal(e.Cells, want) {
			t.Fatalf("retire refused for %+v, want %+v", e.Cells, want)
		}
	}

	// Re-encrypting items and retiring: notes still holds old cells, and
	// is found by its tenant_id column without being named.
	res, err := Reencrypt(ctx, db, kek, items, "acme", ReencryptOptions{Retire: true})
	refused(err, KeyCells{"public.notes", "note", oldKey, 3})
	if res.Rewritten != 6 || len(res.Retired) != 0 || res.Remaining[oldKey] != 3 {
		t.Fatalf("%+v", res)
	}
	if ks := allOpen("acme"); ks.Generation() != 2 || !ks.HasKey(oldKey) {
		t.Fatalf("keyset after a refused retirement: %v", ks)
	}

	// Once notes is re-encrypted, docs still holds old cells: its tenant
	// column is named org, so it is counted when it is named.
	if _, err := Reencrypt(ctx, db, kek, notes, "acme", ReencryptOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = Reencrypt(ctx, db, kek, items, "acme", ReencryptOptions{Retire: true, OtherTables: []TableSpec{docs}})
	refused(err, KeyCells{"public.docs", "content", oldKey, 3})
	_, err = RetireKeys(ctx, db, kek, "acme", []TableSpec{items, docs}, oldKey)
	refused(err, KeyCells{"public.docs", "content", oldKey, 3})
	if _, err := RetireKeys(ctx, db, kek, "acme", nil, oldKey); err == nil || errors.Is(err, ErrKeysInUse) {
		t.Fatalf("retire without tables: %v", err)
	}
	if ks := allOpen("acme"); ks.Generation() != 2 || !ks.HasKey(oldKey) {
		t.Fatalf("keyset after a refused retirement: %v", ks)
	}

	// With every table re-encrypted, the old key goes; every cell opens
	// without it, and the other tenant's are untouched.
	if _, err := Reencrypt(ctx, db, kek, docs, "acme", ReencryptOptions{}); err != nil {
		t.Fatal(err)
	}
	res, err = Reencrypt(ctx, db, kek, items, "acme", ReencryptOptions{Retire: true, OtherTables: []TableSpec{docs}})
	if err != nil || !slices.Equal(res.Retired, []uint32{oldKey}) || res.RetiredGeneration != 3 {
		t.Fatalf("%+v, %v", res, err)
	}
	if ks := allOpen("acme"); ks.HasKey(oldKey) || len(ks.KeyIDs()) != 1 {
		t.Fatalf("keyset after retirement: %v", ks)
	}
	allOpen("globex")

	// RetireKeys checks the same way.
	ks4, err := Rotate(ctx, db, kek, "acme")
	if err != nil {
		t.Fatal(err)
	}
	prev := ks4.KeyIDs()[0]
	_, err = RetireKeys(ctx, db, kek, "acme", []TableSpec{items, docs}, prev)
	refused(err, KeyCells{"public.docs", "content", prev, 3}, KeyCells{"public.items", "body", prev, 3},
		KeyCells{"public.items", "title", prev, 3}, KeyCells{"public.notes", "note", prev, 3})
	allOpen("acme")
}
