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
	w, err := NewWriter(spec, Upsert, WriterOptions{Roots: e.roots, KEKs: UseKEK(e.kek), Floor: NewMemoryFloor()})
	if err != nil {
		t.Fatal(err)
	}
	r := &revokedWriter{t: t, ctx: ctx, e: e, spec: spec, w: w}
	for i := range 5 {
		r.write(i)
	}
	r.kept = unwrapRow(t, e, "acme", "alice", "laptop", alice) // what alice keeps
	oldKey := r.kept.PrimaryKeyID()

	ks2, err := e.admin.Revoke(ctx, "acme", "alice")
	if err != nil {
		t.Fatal(err)
	}
	revokedAt := mustState(t, e, "acme").Seq()
	// Honest rows after the revocation: sealed with the new key.
	for i := 5; i < 7; i++ {
		r.write(i)
	}
	// alice forges two rows with the key she kept, after the revocation.
	r.forge(10)
	r.forge(11)

	res, err := e.admin.Reencrypt(ctx, spec, "acme", ReencryptOptions{BatchSize: 3, Retire: true})
	r.checkSuspects(res, err, oldKey, revokedAt)
	// The forged cells were left as they were.
	var cell string
	e.db.QueryRow(ctx, `SELECT title FROM items WHERE id = $1`, reencryptUUID(10)).Scan(&cell)
	if k, _ := CellKeyID(cell); k != oldKey {
		t.Fatal("a suspect cell was re-sealed")
	}
	var inUse *KeysInUseError
	if _, err := e.admin.RetireKeys(ctx, "acme", []TableSpec{spec}, oldKey); !errors.As(err, &inUse) {
		t.Fatalf("retire with suspect cells: %v", err)
	}
	if st := mustState(t, e, "acme"); st.Keyset().Generation != ks2.Generation() {
		t.Fatalf("retired: generation %d", st.Keyset().Generation)
	}

	// One forged row deleted: the other still holds the key in use.
	pgtest.Exec(t, e.url, `DELETE FROM items WHERE id = $1`, reencryptUUID(10))
	res, err = e.admin.Reencrypt(ctx, spec, "acme", ReencryptOptions{Retire: true})
	if !errors.As(err, &inUse) || res.Suspect != 1 || res.Rewritten != 0 {
		t.Fatalf("%+v, %v", res, err)
	}
	// The other, checked and accepted, is re-sealed; the old key retires.
	res, err = e.admin.Reencrypt(ctx, spec, "acme", ReencryptOptions{AcceptSuspect: true, Retire: true})
	if err != nil || res.Suspect != 0 || res.Rewritten != 1 || !slices.Equal(res.Retired, []uint32{oldKey}) {
		t.Fatalf("%+v, %v", res, err)
	}
	r.checkResealed(oldKey)
}

// reencryptUUID is the id of TestTrustReencryptAfterRevoke's row i.
func reencryptUUID(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }

// revokedWriter is TestTrustReencryptAfterRevoke's items table: the
// honest writer w, and the keyset a revoked member kept to forge rows.
type revokedWriter struct {
	t    *testing.T
	ctx  context.Context
	e    *trustEnv
	spec TableSpec
	w    *Writer
	kept *Keyset
}

// write writes the honest row i of acme.
func (r *revokedWriter) write(i int) {
	r.t.Helper()
	if err := r.w.Write(r.ctx, r.e.db, map[string]any{"id": reencryptUUID(i), "tenant_id": "acme", "title": fmt.Sprintf("title %d", i), "body": "honest"}); err != nil {
		r.t.Fatal(err)
	}
}

// forge inserts row i, its title sealed with the kept keyset.
func (r *revokedWriter) forge(i int) {
	t := r.t
	t.Helper()
	row := map[string]any{"id": reencryptUUID(i), "tenant_id": "acme", "title": "forged"}
	if err := r.spec.SealRow(r.kept, row); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, r.e.url, `INSERT INTO items (id, tenant_id, title) VALUES ($1, $2, $3)`, reencryptUUID(i), "acme", row["title"])
}

// checkSuspects checks the first Reencrypt with Retire: the two forged
// cells are suspect, a *SuspectCellError each, left alone, and keep the
// old key in use; the honest ones are re-sealed.
func (r *revokedWriter) checkSuspects(res *ReencryptResult, err error, oldKey uint32, revokedAt uint64) {
	t := r.t
	t.Helper()
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
	if !slices.Equal(suspects, []string{reencryptUUID(10), reencryptUUID(11)}) {
		t.Fatalf("suspect rows %v", suspects)
	}
}

// checkResealed: once the old key is retired, every row left opens with
// the current keyset and none with the kept one.
func (r *revokedWriter) checkResealed(oldKey uint32) {
	t, ctx, e := r.t, r.ctx, r.e
	t.Helper()
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
		if err := r.spec.OpenRow(cur, row); err != nil {
			t.Fatalf("row %s: %v", id, err)
		}
		if _, err := Open(r.kept, CellContext{Table: "public.items", Column: "title", Tenant: "acme", RowKey: []string{id}}, *title); !errors.Is(err, ErrNoKey) {
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
