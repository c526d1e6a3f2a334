package keysync

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// As in admin_trust_test.go, the tests of this file play an active database
// operator who holds no root or admin key; here they plant cells sealed with
// a revoked key for re-encryption to seal under the new one.

// TestTrustReencryptAfterRevoke: a revoked member kept the old keys and
// can still write rows. A cell they forge with the old key after the
// revocation would open for every member until the old key is retired — and
// a re-encryption that re-sealed it would launder it under the new key.
// Reencrypt leaves such cells alone (ReencryptResult.Suspect, a
// *SuspectCellError each), so the old key stays in use and cannot be
// retired (KeysInUseError) until the rows are deleted or, once checked,
// re-sealed with AcceptSuspect. Honest cells written before the revocation
// are re-sealed.
func TestTrustReencryptAfterRevoke(t *testing.T) {
	ctx := context.Background()
	e := newTrustEnv(t)
	e.tenant("acme")
	alice := e.device("alice", "laptop")
	e.device("bob", "phone")
	e.grant("acme", "alice")
	e.grant("acme", "bob")
	spec := TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	uuid := func(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }
	w, err := NewWriter(spec, Upsert, WriterOptions{Roots: e.roots, KEKs: UseKEK(e.kek), Floor: NewMemoryFloor()})
	if err != nil {
		t.Fatal(err)
	}
	write := func(i int) {
		t.Helper()
		if err := w.Write(ctx, e.db, map[string]any{"id": uuid(i), "tenant_id": "acme", "title": fmt.Sprintf("title %d", i), "body": "honest"}); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 5 {
		write(i)
	}
	kept := unwrapRow(t, e, "acme", "alice", "laptop", alice) // what alice keeps
	oldKey := kept.PrimaryKeyID()

	ks2, err := e.admin.Revoke(ctx, "acme", "alice")
	if err != nil {
		t.Fatal(err)
	}
	revokedAt := mustState(t, e, "acme").Seq()
	// Honest rows after the revocation: sealed with the new key.
	for i := 5; i < 7; i++ {
		write(i)
	}
	// alice forges two rows with the key she kept, after the revocation.
	forge := func(i int) {
		t.Helper()
		row := map[string]any{"id": uuid(i), "tenant_id": "acme", "title": "forged"}
		if err := spec.SealRow(kept, row); err != nil {
			t.Fatal(err)
		}
		pgtest.Exec(t, e.url, `INSERT INTO items (id, tenant_id, title) VALUES ($1, $2, $3)`, uuid(i), "acme", row["title"])
	}
	forge(10)
	forge(11)

	res, err := e.admin.Reencrypt(ctx, spec, "acme", ReencryptOptions{BatchSize: 3, Retire: true})
	var inUse *KeysInUseError
	if !errors.As(err, &inUse) || !errors.Is(err, ErrKeysInUse) {
		t.Fatalf("reencrypt and retire with suspect cells: %v", err)
	}
	if res.Rows != 9 || res.Rewritten != 10 || res.Suspect != 2 || res.Failed != 0 || len(res.Retired) != 0 || res.Remaining[oldKey] != 2 {
		t.Fatalf("%+v", res)
	}
	if !slices.Equal(inUse.Cells, []KeyCells{{"public.items", "title", oldKey, 2}}) {
		t.Fatalf("keys in use: %+v", inUse.Cells)
	}
	var suspects []string
	for _, err := range res.Errors {
		var sc *SuspectCellError
		if !errors.As(err, &sc) || !errors.Is(err, ErrSuspectCell) {
			t.Fatalf("error %v is not a *SuspectCellError", err)
		}
		if sc.KeyID != oldKey || sc.RevokedAt != revokedAt || sc.Column != "title" || sc.Table != "public.items" || sc.Tenant != "acme" {
			t.Fatalf("%+v", sc)
		}
		suspects = append(suspects, sc.RowKey...)
	}
	if !slices.Equal(suspects, []string{uuid(10), uuid(11)}) {
		t.Fatalf("suspect rows %v", suspects)
	}
	// The forged cells were left as they were.
	var cell string
	e.db.QueryRow(ctx, `SELECT title FROM items WHERE id = $1`, uuid(10)).Scan(&cell)
	if k, _ := CellKeyID(cell); k != oldKey {
		t.Fatal("a suspect cell was re-sealed")
	}
	if _, err := e.admin.RetireKeys(ctx, "acme", []TableSpec{spec}, oldKey); !errors.As(err, &inUse) {
		t.Fatalf("retire with suspect cells: %v", err)
	}
	if st := mustState(t, e, "acme"); st.Keyset().Generation != ks2.Generation() {
		t.Fatalf("retired: generation %d", st.Keyset().Generation)
	}

	// One forged row deleted: the other still holds the key in use.
	pgtest.Exec(t, e.url, `DELETE FROM items WHERE id = $1`, uuid(10))
	res, err = e.admin.Reencrypt(ctx, spec, "acme", ReencryptOptions{Retire: true})
	if !errors.As(err, &inUse) || res.Suspect != 1 || res.Rewritten != 0 {
		t.Fatalf("%+v, %v", res, err)
	}
	// The other, checked and accepted, is re-sealed; the old key retires.
	res, err = e.admin.Reencrypt(ctx, spec, "acme", ReencryptOptions{AcceptSuspect: true, Retire: true})
	if err != nil || res.Suspect != 0 || res.Rewritten != 1 || !slices.Equal(res.Retired, []uint32{oldKey}) {
		t.Fatalf("%+v, %v", res, err)
	}
	st := mustState(t, e, "acme")
	cur, err := LoadKeyset(ctx, e.db, st, UseKEK(e.kek))
	if err != nil || cur.HasKey(oldKey) {
		t.Fatal(cur, err)
	}
	rows, _ := e.db.Query(ctx, `SELECT id::text, tenant_id, title, body FROM items ORDER BY id`)
	defer rows.Close()
	count := 0
	for rows.Next() {
		var id, tenant string
		var title, body *string
		rows.Scan(&id, &tenant, &title, &body)
		row := map[string]any{"id": id, "tenant_id": tenant, "title": *title}
		if body != nil {
			row["body"] = *body
		}
		if err := spec.OpenRow(cur, row); err != nil {
			t.Fatalf("row %s: %v", id, err)
		}
		if _, err := Open(kept, CellContext{Table: "public.items", Column: "title", Tenant: "acme", RowKey: []string{id}}, *title); !errors.Is(err, ErrNoKey) {
			t.Fatalf("row %s opens with the revoked keyset: %v", id, err)
		}
		count++
	}
	if count != 8 {
		t.Fatalf("%d rows", count)
	}
}

// TestTrustReencryptLongTransaction: the revoked member opens a transaction
// before the revocation (taking a transaction id), and inserts a cell forged
// with the old key in it after the revocation. The row's xmin is older
// than the revocation point's xid, but the row was committed after it: it
// must be suspect, not re-sealed under the new key.
func TestTrustReencryptLongTransaction(t *testing.T) {
	ctx := context.Background()
	e := newTrustEnv(t)
	e.tenant("acme")
	alice := e.device("alice", "laptop")
	e.device("bob", "phone")
	e.grant("acme", "alice")
	e.grant("acme", "bob")
	kept := unwrapRow(t, e, "acme", "alice", "laptop", alice)
	spec := TableSpec{Table: "items", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	tx, err := connect(t, e.url).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.Revoke(ctx, "acme", "alice"); err != nil {
		t.Fatal(err)
	}
	const id = "00000000-0000-4000-8000-000000000001"
	row := map[string]any{"id": id, "tenant_id": "acme", "title": "forged"}
	if err := spec.SealRow(kept, row); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO items (id, tenant_id, title) VALUES ($1, 'acme', $2)`, id, row["title"]); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := e.admin.Reencrypt(ctx, spec, "acme", ReencryptOptions{Retire: true})
	if res == nil {
		t.Fatal(err)
	}
	if res.Suspect != 1 || res.Rewritten != 0 || len(res.Retired) != 0 {
		adminBug(t, "tenant.go (*Admin).Revoke / reencrypt.go writtenAfter: the revocation point is the revoking "+
			"transaction's own xid, so a row committed after the revocation by a transaction that took its xid before "+
			"it (xmin < xid) counts as written before: the forged cell was re-sealed under the new key (rewritten %d, "+
			"suspect %d, retired %v, %v); record pg_snapshot_xmin(pg_current_snapshot()) as the point (every older "+
			"transaction had ended) and treat xmin >= it as after", res.Rewritten, res.Suspect, res.Retired, err)
	}
}
