package keysync

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"path/filepath"
	"testing"

	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// As in admin_trust_test.go, the tests of this file play an active database
// operator who holds no root or admin key; here they attack the keyset rows
// (taking one away, putting one in), the KEK and the log itself.

// TestTrustKeysetRowMissing: the operator deletes the newest keyset row, or
// replaces it with another keyset's ciphertext, hoping that writers and
// admins fall back to the previous generation (which the revoked member
// holds). Rotate, Grant and writers refuse with ErrStateMismatch (or a
// *KEKError for a ciphertext that does not decrypt), and nothing is sealed
// or wrapped under the previous generation.
func TestTrustKeysetRowMissing(t *testing.T) {
	ctx := context.Background()
	e := newTrustEnv(t)
	ks1 := e.tenant("acme")
	e.tenant("globex")
	e.device("alice", "laptop")
	e.device("bob", "phone")
	e.grant("acme", "alice")
	e.grant("acme", "bob")
	ks2, err := e.admin.Revoke(ctx, "acme", "alice")
	if err != nil {
		t.Fatal(err)
	}
	spec := TableSpec{Table: "items", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	var saved []byte
	e.db.QueryRow(ctx, `SELECT encrypted_keyset FROM shapeseal_keysets WHERE tenant_id = 'acme' AND generation = $1`, int64(ks2.Generation())).Scan(&saved)
	r := &keysetRowWriter{t: t, ctx: ctx, e: e, spec: spec}

	// Deleted: the previous generation is still stored, and not used.
	pgtest.Exec(t, e.url, `DELETE FROM shapeseal_keysets WHERE tenant_id = 'acme' AND generation = $1`, int64(ks2.Generation()))
	r.refused("deleted", ErrStateMismatch)
	if err := r.write(); !errors.As(err, new(*StateError)) {
		t.Fatalf("writer: %v, want a *StateError", err)
	}

	// Another keyset of the same generation, validly encrypted under the
	// KEK (a writer can make one): not the one the log commits to.
	other, _ := ks1.Rotate()
	enc, err := EncryptKeyset(other, e.kek)
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, e.url, `INSERT INTO shapeseal_keysets (tenant_id, generation, kek_uri, encrypted_keyset) VALUES ('acme', $1, $2, $3)`,
		int64(ks2.Generation()), e.kek.URI(), enc)
	r.refused("replaced by another keyset", ErrStateMismatch)

	// Another tenant's ciphertext: does not decrypt as acme's.
	pgtest.Exec(t, e.url, `UPDATE shapeseal_keysets SET encrypted_keyset = (SELECT encrypted_keyset FROM shapeseal_keysets
		WHERE tenant_id = 'globex' AND generation = 1) WHERE tenant_id = 'acme' AND generation = $1`, int64(ks2.Generation()))
	var ke *KEKError
	if err := r.write(); !errors.As(err, &ke) || ke.Tenant != "acme" {
		t.Fatalf("writer with globex's ciphertext: %v", err)
	}
	if _, err := e.admin.Rotate(ctx, "acme"); !errors.As(err, &ke) {
		t.Fatalf("rotate with globex's ciphertext: %v", err)
	}

	// Put back, everything works again, with the log's generation.
	pgtest.Exec(t, e.url, `UPDATE shapeseal_keysets SET encrypted_keyset = $2 WHERE tenant_id = 'acme' AND generation = $1`, int64(ks2.Generation()), saved)
	if err := r.write(); err != nil {
		t.Fatal(err)
	}
	var cell string
	e.db.QueryRow(ctx, `SELECT title FROM items`).Scan(&cell)
	if k, _ := CellKeyID(cell); k != ks2.PrimaryKeyID() {
		t.Fatalf("written with key %08x, want %08x", k, ks2.PrimaryKeyID())
	}
}

// keysetRowWriter is TestTrustKeysetRowMissing's writes of acme's items,
// each a new row.
type keysetRowWriter struct {
	t    *testing.T
	ctx  context.Context
	e    *trustEnv
	spec TableSpec
	id   int
}

// write writes a new row with a new Writer.
func (r *keysetRowWriter) write() error {
	w, err := NewWriter(r.spec, Insert, WriterOptions{Roots: r.e.roots, KEKs: UseKEK(r.e.kek), Floor: NewMemoryFloor()})
	if err != nil {
		r.t.Fatal(err)
	}
	r.id++
	return w.Write(r.ctx, r.e.db, map[string]any{"id": fmt.Sprintf("00000000-0000-4000-8000-%012d", r.id), "tenant_id": "acme", "title": "secret"})
}

// refused checks that Rotate, Grant and a writer fail with want, and
// change neither the log, nor the key rows, nor the items.
func (r *keysetRowWriter) refused(what string, want error) {
	t, ctx, e := r.t, r.ctx, r.e
	t.Helper()
	seq := mustState(t, e, "acme").Seq()
	rows := keyRows(t, e, "acme")
	if _, err := e.admin.Rotate(ctx, "acme"); !errors.Is(err, want) {
		t.Fatalf("%s: rotate: %v", what, err)
	}
	if _, err := e.admin.Grant(ctx, "acme", "bob"); !errors.Is(err, want) {
		t.Fatalf("%s: grant: %v", what, err)
	}
	if _, err := e.admin.Grant(ctx, "acme", "alice"); !errors.Is(err, want) {
		t.Fatalf("%s: grant of alice: %v", what, err)
	}
	if err := r.write(); !errors.Is(err, want) {
		t.Fatalf("%s: writer: %v", what, err)
	}
	if st := mustState(t, e, "acme"); st.Seq() != seq || st.IsMember("alice") {
		t.Fatalf("%s: the refused operations changed the log", what)
	}
	if got := keyRows(t, e, "acme"); !maps.Equal(got, rows) {
		t.Fatalf("%s: key rows %v, were %v", what, got, rows)
	}
	var n int
	e.db.QueryRow(ctx, `SELECT count(*) FROM items`).Scan(&n)
	if n != 0 {
		t.Fatalf("%s: a row was written", what)
	}
}

// TestTrustKeysetRowInjected: the operator inserts the next generation's
// keyset row themselves — a keyset of their making, under a KEK of theirs
// that the writer could even open. The writer ignores it: it seals with the
// generation the log names, whose row it checks against the log's
// commitment, and the injected keyset is never adopted.
func TestTrustKeysetRowInjected(t *testing.T) {
	ctx := context.Background()
	e := newTrustEnv(t)
	ks1 := e.tenant("acme")
	alice := e.device("alice", "laptop")
	e.grant("acme", "alice")
	ks2, err := e.admin.Rotate(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	evilKEK := newLocalKEK(t)
	// A keyset of the operator's making, at generation 3.
	injected := newTestKeyset(t, "acme")
	for injected.Generation() < 3 {
		injected, _ = injected.Rotate()
	}
	enc, err := EncryptKeyset(injected, evilKEK)
	if err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, e.url, `INSERT INTO shapeseal_keysets (tenant_id, generation, kek_uri, encrypted_keyset) VALUES ('acme', 3, $1, $2)`,
		evilKEK.URI(), enc)

	// A writer that opens any KEK a URI names (OpenKEK) could open the
	// operator's: it is never asked to.
	st := checkWriterSkipsInjected(t, e, ks1, ks2, injected)

	// The device holds the log's keyset.
	if got := unwrapRow(t, e, "acme", "alice", "laptop", alice); got.Commitment() != st.Keyset().Commitment {
		t.Fatalf("alice holds %v", got)
	}

	// The admin does not adopt it either: a rotation, which stores
	// generation 3, must not end with the log naming the operator's keyset.
	_, rotErr := e.admin.Rotate(ctx, "acme")
	st = mustState(t, e, "acme")
	if st.Keyset().Commitment == injected.Commitment() || st.Keyset().KEK == evilKEK.URI() {
		t.Fatal("the log names the injected keyset")
	}
	if rotErr == nil {
		if got := unwrapRow(t, e, "acme", "alice", "laptop", alice); got.Commitment() != st.Keyset().Commitment {
			t.Fatalf("alice holds %v after the rotation", got)
		}
	} else if !errors.Is(rotErr, ErrGenerationExists) {
		t.Fatalf("rotate: %v", rotErr)
	}
	// Nor may the row stop a revocation.
	_, revErr := e.admin.Revoke(ctx, "acme", "alice")
	if rotErr != nil || revErr != nil {
		adminBug(t, "tenant.go (*Admin).rotateIn: a shapeseal_keysets row the log does not name, at the next generation, "+
			"makes StoreKeyset fail with ErrGenerationExists, so an operator who inserts one blocks Rotate (%v) and Revoke (%v) "+
			"until it is deleted by hand; under the tenant lock, rows above the log's generation can only be unsigned "+
			"leftovers: delete them (reporting a *StateError) before storing", rotErr, revErr)
	}
	if mustState(t, e, "acme").IsMember("alice") {
		t.Fatal("alice is still a member")
	}
}

// checkWriterSkipsInjected: a writer with no KEKs of its own seals with
// the keyset the log names (ks2), never the injected one, and the log's
// keyset opens the cell, generation 1 (ks1) does not. It returns acme's
// state.
func checkWriterSkipsInjected(t *testing.T, e *trustEnv, ks1, ks2, injected *Keyset) *chain.State {
	t.Helper()
	ctx := context.Background()
	spec := TableSpec{Table: "items", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	const rowID = "00000000-0000-4000-8000-000000000001"
	w, err := NewWriter(spec, Insert, WriterOptions{Roots: e.roots, Floor: NewMemoryFloor()})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(ctx, e.db, map[string]any{"id": rowID, "tenant_id": "acme", "title": "secret"}); err != nil {
		t.Fatal(err)
	}
	var cell string
	e.db.QueryRow(ctx, `SELECT title FROM items WHERE id = $1`, rowID).Scan(&cell)
	st := mustState(t, e, "acme")
	logKS, err := LoadKeyset(ctx, e.db, st, UseKEK(e.kek))
	if err != nil {
		t.Fatal(err)
	}
	if k, _ := CellKeyID(cell); k != st.Keyset().Primary || k != ks2.PrimaryKeyID() || injected.HasKey(k) {
		t.Fatalf("the writer sealed with key %08x; the log's primary is %08x", k, st.Keyset().Primary)
	}
	place := CellContext{Table: "public.items", Column: "title", Tenant: "acme", RowKey: []string{rowID}}
	if pt, err := Open(logKS, place, cell); err != nil || string(pt) != "secret" {
		t.Fatalf("the log's keyset does not open the cell: %q, %v", pt, err)
	}
	if _, err := Open(ks1, place, cell); !errors.Is(err, ErrNoKey) {
		t.Fatalf("generation 1 opened the cell: %v", err)
	}
	return st
}

// TestTrustWriterKEKMismatch: a writer (or admin) configured with one KEK
// refuses a tenant whose log names another, with a *KEKMismatchError, rather
// than follow the log to a KEK the operator did not configure.
func TestTrustWriterKEKMismatch(t *testing.T) {
	ctx := context.Background()
	e := newTrustEnv(t)
	kekB := newLocalKEK(t)
	if _, err := e.admin.CreateTenant(ctx, kekB, "acme"); err != nil {
		t.Fatal(err)
	}
	kekA := e.kek
	spec := TableSpec{Table: "items", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	w, err := NewWriter(spec, Insert, WriterOptions{Roots: e.roots, KEKs: UseKEK(kekA), Floor: NewMemoryFloor()})
	if err != nil {
		t.Fatal(err)
	}
	err = w.Write(ctx, e.db, map[string]any{"id": "00000000-0000-4000-8000-000000000001", "tenant_id": "acme", "title": "x"})
	var km *KEKMismatchError
	if !errors.As(err, &km) || km.Tenant != "acme" || km.Log != kekB.URI() || km.Configured != kekA.URI() {
		t.Fatalf("writer: %v, want a *KEKMismatchError", err)
	}
	// e.admin allows only kekA too.
	if _, err := e.admin.Rotate(ctx, "acme"); !errors.As(err, &km) {
		t.Fatalf("admin: %v, want a *KEKMismatchError", err)
	}
	// Configured with kekB, both work.
	w, _ = NewWriter(spec, Insert, WriterOptions{Roots: e.roots, KEKs: UseKEK(kekB), Floor: NewMemoryFloor()})
	if err := w.Write(ctx, e.db, map[string]any{"id": "00000000-0000-4000-8000-000000000001", "tenant_id": "acme", "title": "x"}); err != nil {
		t.Fatal(err)
	}
	b := e.adminWith(e.root)
	b.KEKs = UseKEK(kekB)
	if _, err := b.Rotate(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
}

// TestTrustLogTruncated: after a revocation, the operator deletes the log's
// newest entry, so that the log names the keyset the revoked member holds
// again. A writer that saw the revocation — the same process, or a new one
// reading the same FileFloor — refuses the shorter log with
// chain.ErrRollback, and so does an admin with that floor or that signed
// the revocation.
//
// A writer with a fresh floor (a new MemoryFloor, or a FileFloor whose file
// was lost) cannot tell: it verifies the shorter log, which is a valid
// log, and would seal with the revoked generation. That is what the floor
// is for; keep it across runs (OpenFileFloor).
func TestTrustLogTruncated(t *testing.T) {
	ctx := context.Background()
	e := newTrustEnv(t)
	e.tenant("acme")
	e.device("alice", "laptop")
	e.device("bob", "phone")
	e.grant("acme", "alice")
	e.grant("acme", "bob")
	spec := TableSpec{Table: "items", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	floorPath := filepath.Join(t.TempDir(), "writer.floor")
	newWriter := func() *Writer {
		t.Helper()
		floor, err := OpenFileFloor(floorPath)
		if err != nil {
			t.Fatal(err)
		}
		w, err := NewWriter(spec, Insert, WriterOptions{Roots: e.roots, KEKs: UseKEK(e.kek), Floor: floor})
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	id := 0
	write := func(w *Writer) error {
		id++
		return w.Write(ctx, e.db, map[string]any{"id": fmt.Sprintf("00000000-0000-4000-8000-%012d", id), "tenant_id": "acme", "title": "t"})
	}
	w := newWriter()
	if err := write(w); err != nil {
		t.Fatal(err)
	}
	ks2, err := e.admin.Revoke(ctx, "acme", "alice")
	if err != nil {
		t.Fatal(err)
	}
	if err := write(w); err != nil {
		t.Fatal(err)
	}
	seq := mustState(t, e, "acme").Seq()
	var entry []byte
	e.db.QueryRow(ctx, `SELECT entry FROM shapeseal_log WHERE tenant_id = 'acme' AND seq = $1`, int64(seq)).Scan(&entry)
	pgtest.Exec(t, e.url, `DELETE FROM shapeseal_log WHERE tenant_id = 'acme' AND seq = $1`, int64(seq))

	if err := write(w); !errors.Is(err, chain.ErrRollback) {
		t.Fatalf("the writer that saw the revocation: %v", err)
	}
	if err := write(newWriter()); !errors.Is(err, chain.ErrRollback) {
		t.Fatalf("a new writer on the same floor file: %v", err)
	}
	floor, _ := OpenFileFloor(floorPath)
	floored := e.adminWith(e.root)
	floored.Floor = floor
	if _, err := floored.Rotate(ctx, "acme"); !errors.Is(err, chain.ErrRollback) {
		t.Fatalf("an admin with the floor: %v", err)
	}
	// The admin that signed the revocation remembers the log it verified.
	if _, err := e.admin.Rotate(ctx, "acme"); !errors.Is(err, chain.ErrRollback) {
		t.Fatalf("the admin that revoked: %v", err)
	}
	var n int
	e.db.QueryRow(ctx, `SELECT count(*) FROM items`).Scan(&n)
	if n != 2 {
		t.Fatalf("%d rows written, want 2", n)
	}

	// With the entry back, the writers go on, with the revocation's keyset.
	pgtest.Exec(t, e.url, `INSERT INTO shapeseal_log (tenant_id, seq, entry) VALUES ('acme', $1, $2)`, int64(seq), entry)
	if err := write(newWriter()); err != nil {
		t.Fatal(err)
	}
	var cell string
	e.db.QueryRow(ctx, `SELECT title FROM items WHERE id = $1`, fmt.Sprintf("00000000-0000-4000-8000-%012d", id)).Scan(&cell)
	if k, _ := CellKeyID(cell); k != ks2.PrimaryKeyID() {
		t.Fatalf("sealed with %08x, want %08x", k, ks2.PrimaryKeyID())
	}
}
