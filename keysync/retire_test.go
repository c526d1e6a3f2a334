package keysync

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// TestRetireAcrossTables: a tenant's keyset seals the cells of every table,
// so retiring the old keys after re-encrypting one table is refused, with a
// *KeysInUseError naming the others, while any table still holds a cell
// under an old key: found by its tenant column's name (notes), or named by
// the caller (docs, whose tenant column is named otherwise). Nothing is
// retired, and every cell still opens. Each step is a method of
// retireTables, run in order on the state the steps before it left.
func TestRetireAcrossTables(t *testing.T) {
	s := newRetireTables(t)
	seq := s.logLen()
	s.refusedForNotes()
	s.refusedForDocs(seq)
	s.retiredOnceReencrypted()
	s.retireKeys()
}

// retireTables is the state TestRetireAcrossTables's steps share: three
// tables holding cells of acme and globex (notes only), acme's sealed under
// oldKey, which a rotation has since made not primary.
type retireTables struct {
	t                  *testing.T
	ctx                context.Context
	db                 *pgxpool.Pool
	admin              *Admin
	items, notes, docs TableSpec
	oldKey             uint32
}

func newRetireTables(t *testing.T) *retireTables {
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
	return &retireTables{t: t, ctx: ctx, db: db, admin: admin, items: items, notes: notes, docs: docs, oldKey: oldKey}
}

// logLen returns the length of acme's verified log: a refused
// retirement appends nothing.
func (s *retireTables) logLen() uint64 {
	t, ctx, admin := s.t, s.ctx, s.admin
	t.Helper()
	st, err := admin.State(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	return st.Seq()
}

// allOpen checks that every cell of the tenant opens with its current
// keyset, and returns the keyset.
func (s *retireTables) allOpen(tenant string) *Keyset {
	t, ctx, db, admin, items, notes, docs := s.t, s.ctx, s.db, s.admin, s.items, s.notes, s.docs
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

// refused fails unless err is a *KeysInUseError of acme naming want.
func (s *retireTables) refused(err error, want ...KeyCells) {
	t := s.t
	t.Helper()
	ie, ok := errors.AsType[*KeysInUseError](err)
	if !ok || !errors.Is(err, ErrKeysInUse) {
		t.Fatalf("retire: %v, want a *KeysInUseError", err)
	}
	if ie.Tenant != "acme" || !slices.Equal(ie.Cells, want) {
		t.Fatalf("retire refused for %+v, want %+v", ie.Cells, want)
	}
}

// refusedForNotes: re-encrypting items and retiring: notes still holds old
// cells, and is found by its tenant_id column without being named.
func (s *retireTables) refusedForNotes() {
	t, ctx, admin, items, oldKey := s.t, s.ctx, s.admin, s.items, s.oldKey
	res, err := admin.Reencrypt(ctx, items, "acme", ReencryptOptions{Retire: true})
	s.refused(err, KeyCells{"public.notes", "note", oldKey, 3})
	if res.Rewritten != 6 || len(res.Retired) != 0 || res.Remaining[oldKey] != 3 {
		t.Fatalf("%+v", res)
	}
	if ks := s.allOpen("acme"); ks.Generation() != 2 || !ks.HasKey(oldKey) {
		t.Fatalf("keyset after a refused retirement: %v", ks)
	}
}

// refusedForDocs: once notes is re-encrypted, docs still holds old cells:
// its tenant column is named org, so it is counted when it is named. seq
// is the length of acme's log before the refused retirements.
func (s *retireTables) refusedForDocs(seq uint64) {
	t, ctx, admin, items, notes, docs, oldKey := s.t, s.ctx, s.admin, s.items, s.notes, s.docs, s.oldKey
	if _, err := admin.Reencrypt(ctx, notes, "acme", ReencryptOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := admin.Reencrypt(ctx, items, "acme", ReencryptOptions{Retire: true, OtherTables: []TableSpec{docs}})
	s.refused(err, KeyCells{"public.docs", "content", oldKey, 3})
	_, err = admin.RetireKeys(ctx, "acme", []TableSpec{items, docs}, oldKey)
	s.refused(err, KeyCells{"public.docs", "content", oldKey, 3})
	if _, err := admin.RetireKeys(ctx, "acme", nil, oldKey); err == nil || errors.Is(err, ErrKeysInUse) {
		t.Fatalf("retire without tables: %v", err)
	}
	if ks := s.allOpen("acme"); ks.Generation() != 2 || !ks.HasKey(oldKey) {
		t.Fatalf("keyset after a refused retirement: %v", ks)
	}
	if n := s.logLen(); n != seq {
		t.Fatalf("refused retirements appended to the log: %d entries, %d before", n, seq)
	}
}

// retiredOnceReencrypted: with every table re-encrypted, the old key goes;
// every cell opens without it, and the other tenant's are untouched.
func (s *retireTables) retiredOnceReencrypted() {
	t, ctx, admin, items, docs, oldKey := s.t, s.ctx, s.admin, s.items, s.docs, s.oldKey
	if _, err := admin.Reencrypt(ctx, docs, "acme", ReencryptOptions{}); err != nil {
		t.Fatal(err)
	}
	res, err := admin.Reencrypt(ctx, items, "acme", ReencryptOptions{Retire: true, OtherTables: []TableSpec{docs}})
	if err != nil || !slices.Equal(res.Retired, []uint32{oldKey}) || res.RetiredGeneration != 3 {
		t.Fatalf("%+v, %v", res, err)
	}
	if ks := s.allOpen("acme"); ks.HasKey(oldKey) || len(ks.KeyIDs()) != 1 {
		t.Fatalf("keyset after retirement: %v", ks)
	}
	s.allOpen("globex")
}

// retireKeys: RetireKeys checks the same way.
func (s *retireTables) retireKeys() {
	t, ctx, admin, items, notes, docs := s.t, s.ctx, s.admin, s.items, s.notes, s.docs
	ks4, err := admin.Rotate(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	prev := ks4.KeyIDs()[0]
	_, err = admin.RetireKeys(ctx, "acme", []TableSpec{items, docs}, prev)
	s.refused(err, KeyCells{"public.docs", "content", prev, 3}, KeyCells{"public.items", "body", prev, 3},
		KeyCells{"public.items", "title", prev, 3}, KeyCells{"public.notes", "note", prev, 3})
	s.allOpen("acme")
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
	s.allOpen("acme")
	s.allOpen("globex")
}
