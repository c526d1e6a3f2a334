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
	e := newTrustEnv(t)
	url, db, admin := e.url, e.db, e.admin
	pgtest.Exec(t, url, `DROP TABLE items`)
	pgtest.Exec(t, url, `CREATE TABLE items (id int8 PRIMARY KEY, tenant_id text NOT NULL, title text, body text)`)
	pgtest.Exec(t, url, `CREATE TABLE notes (id int8 PRIMARY KEY, tenant_id text NOT NULL, note text)`)
	pgtest.Exec(t, url, `CREATE TABLE docs (id int8 PRIMARY KEY, org text NOT NULL, content text)`)
	items := TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	notes := TableSpec{Table: "notes", Columns: []string{"note"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	docs := TableSpec{Table: "docs", Columns: []string{"content"}, TenantColumn: "org", RowKey: []string{"id"}}
	acme := e.tenant("acme")
	globex := e.tenant("globex")
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
	if _, err := admin.Rotate(ctx, "acme"); err != nil {
		t.Fatal(err)
	}

	// logLen returns the length of acme's verified log: a refused
	// retirement appends nothing.
	logLen := func() uint64 {
		t.Helper()
		st, err := admin.State(ctx, "acme")
		if err != nil {
			t.Fatal(err)
		}
		return st.Seq()
	}
	// allOpen checks that every cell of the tenant opens with its current
	// keyset, and returns the keyset.
	allOpen := func(tenant string) *Keyset {
		t.Helper()
		st, err := admin.State(ctx, tenant)
		if err != nil {
			t.Fatal(err)
		}
		ks, err := LoadKeyset(ctx, db, st, admin.KEKs)
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
		ie, ok := errors.AsType[*KeysInUseError](err)
		if !ok || !errors.Is(err, ErrKeysInUse) {
			t.Fatalf("retire: %v, want a *KeysInUseError", err)
		}
		if ie.Tenant != "acme" || !slices.Equal(ie.Cells, want) {
			t.Fatalf("retire refused for %+v, want %+v", ie.Cells, want)
		}
	}

	seq := logLen()

	// Re-encrypting items and retiring: notes still holds old cells, and
	// is found by its tenant_id column without being named.
	res, err := admin.Reencrypt(ctx, items, "acme", ReencryptOptions{Retire: true})
	refused(err, KeyCells{"public.notes", "note", oldKey, 3})
	if res.Rewritten != 6 || len(res.Retired) != 0 || res.Remaining[oldKey] != 3 {
		t.Fatalf("%+v", res)
	}
	if ks := allOpen("acme"); ks.Generation() != 2 || !ks.HasKey(oldKey) {
		t.Fatalf("keyset after a refused retirement: %v", ks)
	}

	// Once notes is re-encrypted, docs still holds old cells: its tenant
	// column is named org, so it is counted when it is named.
	if _, err := admin.Reencrypt(ctx, notes, "acme", ReencryptOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = admin.Reencrypt(ctx, items, "acme", ReencryptOptions{Retire: true, OtherTables: []TableSpec{docs}})
	refused(err, KeyCells{"public.docs", "content", oldKey, 3})
	_, err = admin.RetireKeys(ctx, "acme", []TableSpec{items, docs}, oldKey)
	refused(err, KeyCells{"public.docs", "content", oldKey, 3})
	if _, err := admin.RetireKeys(ctx, "acme", nil, oldKey); err == nil || errors.Is(err, ErrKeysInUse) {
		t.Fatalf("retire without tables: %v", err)
	}
	if ks := allOpen("acme"); ks.Generation() != 2 || !ks.HasKey(oldKey) {
		t.Fatalf("keyset after a refused retirement: %v", ks)
	}
	if n := logLen(); n != seq {
		t.Fatalf("refused retirements appended to the log: %d entries, %d before", n, seq)
	}

	// With every table re-encrypted, the old key goes; every cell opens
	// without it, and the other tenant's are untouched.
	if _, err := admin.Reencrypt(ctx, docs, "acme", ReencryptOptions{}); err != nil {
		t.Fatal(err)
	}
	res, err = admin.Reencrypt(ctx, items, "acme", ReencryptOptions{Retire: true, OtherTables: []TableSpec{docs}})
	if err != nil || !slices.Equal(res.Retired, []uint32{oldKey}) || res.RetiredGeneration != 3 {
		t.Fatalf("%+v, %v", res, err)
	}
	if ks := allOpen("acme"); ks.HasKey(oldKey) || len(ks.KeyIDs()) != 1 {
		t.Fatalf("keyset after retirement: %v", ks)
	}
	allOpen("globex")

	// RetireKeys checks the same way.
	ks4, err := admin.Rotate(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	prev := ks4.KeyIDs()[0]
	_, err = admin.RetireKeys(ctx, "acme", []TableSpec{items, docs}, prev)
	refused(err, KeyCells{"public.docs", "content", prev, 3}, KeyCells{"public.items", "body", prev, 3},
		KeyCells{"public.items", "title", prev, 3}, KeyCells{"public.notes", "note", prev, 3})
	allOpen("acme")
	if _, err := admin.RetireKeys(ctx, "acme", []TableSpec{items}, ks4.PrimaryKeyID()); err == nil {
		t.Fatal("retired the primary key")
	}
	if _, err := admin.RetireKeys(ctx, "acme", []TableSpec{items}, 12345); err == nil {
		t.Fatal("retired a key the keyset does not hold")
	}
	// Once every table is re-encrypted, RetireKeys retires it: the log
	// names the keyset without the key.
	for _, s := range []TableSpec{items, notes, docs} {
		if res, err := admin.Reencrypt(ctx, s, "acme", ReencryptOptions{}); err != nil || res.Rewritten == 0 {
			t.Fatal(res, err)
		}
	}
	ks5, err := admin.RetireKeys(ctx, "acme", []TableSpec{items, docs}, prev)
	if err != nil || ks5.Generation() != 5 || ks5.HasKey(prev) {
		t.Fatal(ks5, err)
	}
	st, _ := admin.State(ctx, "acme")
	if ref := st.Keyset(); ref.Generation != 5 || !slices.Equal(ref.KeyIDs, []uint32{ks4.PrimaryKeyID()}) || ref.Commitment != ks5.Commitment() {
		t.Fatalf("the log names %+v after RetireKeys", ref)
	}
	allOpen("acme")
	allOpen("globex")
}
