package keysync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// writerEnv is a trustEnv with a docs table of many column types, and its
// spec.
func writerEnv(t *testing.T) (*trustEnv, TableSpec) {
	t.Helper()
	e := newTrustEnv(t)
	pgtest.Exec(t, e.url, `CREATE TABLE docs (id uuid PRIMARY KEY, tenant_id text NOT NULL, n int, flag bool, meta jsonb,
		title text, body text, blob text)`)
	return e, TableSpec{Table: "docs", Columns: []string{"title", "body", "blob"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
}

func writerOpts(e *trustEnv) WriterOptions {
	return WriterOptions{Roots: e.roots, KEKs: UseKEK(e.kek), Floor: NewMemoryFloor()}
}

func mustWriter(t *testing.T, spec TableSpec, mode WriteMode, opts WriterOptions) *Writer {
	t.Helper()
	w, err := NewWriter(spec, mode, opts)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// readRow reads a docs row and opens it with ks.
func readRow(t *testing.T, e *trustEnv, spec TableSpec, ks *Keyset, id string) map[string]any {
	t.Helper()
	var n *int
	var flag *bool
	var meta, title, body, blob *string
	var tenant, canon string
	err := e.db.QueryRow(context.Background(), `SELECT id::text, tenant_id, n, flag, meta::text, title, body, blob FROM docs WHERE id = $1`, id).
		Scan(&canon, &tenant, &n, &flag, &meta, &title, &body, &blob)
	if err != nil {
		t.Fatalf("row %s: %v", id, err)
	}
	row := map[string]any{"id": canon, "tenant_id": tenant}
	for c, v := range map[string]*string{"title": title, "body": body, "blob": blob} {
		if v != nil {
			if !strings.HasPrefix(*v, CellPrefix) {
				t.Fatalf("%s.%s holds plaintext: %q", id, c, *v)
			}
			row[c] = *v
		} else {
			row[c] = nil
		}
	}
	if err := spec.OpenRow(ks, row); err != nil {
		t.Fatalf("row %s: %v", id, err)
	}
	if n != nil {
		row["n"] = *n
	}
	if flag != nil {
		row["flag"] = *flag
	}
	if meta != nil {
		row["meta"] = *meta
	}
	return row
}

// currentKeyset returns the keyset tenant's log names.
func currentKeyset(t *testing.T, e *trustEnv, tenant string) *Keyset {
	t.Helper()
	ks, err := LoadKeyset(context.Background(), e.db, mustState(t, e, tenant), UseKEK(e.kek))
	if err != nil {
		t.Fatal(err)
	}
	return ks
}

func TestWriterOptions(t *testing.T) {
	spec := TableSpec{Table: "docs", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	ok := WriterOptions{Roots: testSigners, Floor: NewMemoryFloor()}
	if _, err := NewWriter(spec, Upsert, ok); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		spec TableSpec
		mode WriteMode
		opts WriterOptions
	}{
		"no roots":            {spec, Insert, WriterOptions{Floor: NewMemoryFloor()}},
		"no floor":            {spec, Insert, WriterOptions{Roots: testSigners}},
		"bad spec":            {TableSpec{Table: "docs", TenantColumn: "tenant_id", RowKey: []string{"id"}}, Insert, ok},
		"update without keys": {TableSpec{Table: "docs", Columns: []string{"title"}, TenantColumn: "tenant_id", UnboundRows: true}, Update, ok},
		"upsert without keys": {TableSpec{Table: "docs", Columns: []string{"title"}, TenantColumn: "tenant_id", UnboundRows: true}, Upsert, ok},
	} {
		if _, err := NewWriter(c.spec, c.mode, c.opts); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Insert into a table whose cells are not bound to rows needs no keys.
	unbound := TableSpec{Table: "docs", Columns: []string{"title"}, TenantColumn: "tenant_id", UnboundRows: true}
	if _, err := NewWriter(unbound, Insert, ok); err != nil {
		t.Fatal(err)
	}
}

// TestWriter: insert, update and upsert seal the encrypted columns with the
// keyset the log names, bound to the canonical text of the row key; other
// columns are cast by Postgres; NULL stays NULL.
func TestWriter(t *testing.T) {
	ctx := context.Background()
	e, spec := writerEnv(t)
	e.tenant("acme")
	e.tenant("globex")
	opts := writerOpts(e)
	ins := mustWriter(t, spec, Insert, opts)
	const id = "0B6C3F0E-6C4D-4B8E-9D3C-2F6F4C1D7A10" // written in upper case; Postgres prints it in lower
	canon := strings.ToLower(id)
	row := map[string]any{"id": id, "tenant_id": "acme", "n": 7, "flag": true, "meta": map[string]any{"k": "v"},
		"title": "Quarterly numbers", "body": []byte("bytes"), "blob": nil}
	if err := ins.Write(ctx, e.db, row); err != nil {
		t.Fatal(err)
	}
	if row["title"] != "Quarterly numbers" {
		t.Fatal("Write modified the row")
	}
	ks := currentKeyset(t, e, "acme")
	got := readRow(t, e, spec, ks, canon)
	if got["title"] != "Quarterly numbers" || got["body"] != "bytes" || got["blob"] != nil || got["n"] != 7 || got["flag"] != true || got["meta"] != `{"k": "v"}` {
		t.Fatalf("row %v", got)
	}
	if err := ins.Write(ctx, e.db, row); err == nil {
		t.Fatal("a second insert of the same row key")
	}

	// Update changes the columns given, only in the tenant's row; Upsert
	// inserts, then updates; never another tenant's row.
	checkWriterUpdate(t, e, spec, opts, ks, canon)
	up := mustWriter(t, spec, Upsert, opts)
	const id2 = "00000000-0000-4000-8000-000000000002"
	checkWriterUpsert(t, e, spec, up, ks, id2)

	// The cells are bound to their row: moved to another row, they fail.
	var cell string
	e.db.QueryRow(ctx, `SELECT title FROM docs WHERE id = $1`, id2).Scan(&cell)
	if _, err := Open(ks, CellContext{Table: "public.docs", Column: "title", Tenant: "acme", RowKey: []string{canon}}, cell); !errors.Is(err, ErrAuth) {
		t.Fatalf("a cell opened in another row: %v", err)
	}

	// Rows the writer refuses before writing anything.
	for name, r := range map[string]map[string]any{
		"no tenant":        {"id": id2, "title": "x"},
		"no row key":       {"tenant_id": "acme", "title": "x"},
		"NULL row key":     {"id": nil, "tenant_id": "acme", "title": "x"},
		"unknown column":   {"id": id2, "tenant_id": "acme", "nope": "x"},
		"bad value type":   {"id": id2, "tenant_id": "acme", "n": struct{}{}},
		"bad encrypted":    {"id": id2, "tenant_id": "acme", "title": 42},
		"bad row key text": {"id": "not a uuid", "tenant_id": "acme", "title": "x"},
	} {
		if err := up.Write(ctx, e.db, r); err == nil {
			t.Errorf("%s: written", name)
		}
	}
	var n int
	e.db.QueryRow(ctx, `SELECT count(*) FROM docs`).Scan(&n)
	if n != 2 {
		t.Fatalf("%d rows", n)
	}

	// In a transaction: rolled back, nothing is written.
	tx, err := e.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ins.Write(ctx, tx, map[string]any{"id": "00000000-0000-4000-8000-000000000003", "tenant_id": "acme", "title": "x"}); err != nil {
		t.Fatal(err)
	}
	tx.Rollback(ctx)
	e.db.QueryRow(ctx, `SELECT count(*) FROM docs`).Scan(&n)
	if n != 2 {
		t.Fatalf("%d rows after a rollback", n)
	}
}

// checkWriterUpdate: an Update writer changes the columns given, only in
// the tenant's row, and sets an encrypted column to NULL.
func checkWriterUpdate(t *testing.T, e *trustEnv, spec TableSpec, opts WriterOptions, ks *Keyset, canon string) {
	t.Helper()
	ctx := context.Background()
	upd := mustWriter(t, spec, Update, opts)
	if err := upd.Write(ctx, e.db, map[string]any{"id": canon, "tenant_id": "acme", "title": "Revised", "n": json.Number("8")}); err != nil {
		t.Fatal(err)
	}
	if got := readRow(t, e, spec, ks, canon); got["title"] != "Revised" || got["body"] != "bytes" || got["n"] != 8 {
		t.Fatalf("after update: %v", got)
	}
	if err := upd.Write(ctx, e.db, map[string]any{"id": canon, "tenant_id": "globex", "title": "x"}); err == nil {
		t.Fatal("updated another tenant's row")
	}
	if err := upd.Write(ctx, e.db, map[string]any{"id": "00000000-0000-4000-8000-000000000099", "tenant_id": "acme", "title": "x"}); err == nil {
		t.Fatal("update of a missing row")
	}
	// Setting an encrypted column to NULL.
	if err := upd.Write(ctx, e.db, map[string]any{"id": canon, "tenant_id": "acme", "body": nil}); err != nil {
		t.Fatal(err)
	}
	if got := readRow(t, e, spec, ks, canon); got["body"] != nil || got["title"] != "Revised" {
		t.Fatalf("after update to NULL: %v", got)
	}
}

// checkWriterUpsert: the Upsert writer up inserts row id2, then updates
// it; never another tenant's row.
func checkWriterUpsert(t *testing.T, e *trustEnv, spec TableSpec, up *Writer, ks *Keyset, id2 string) {
	t.Helper()
	ctx := context.Background()
	for _, title := range []string{"first", "second"} {
		if err := up.Write(ctx, e.db, map[string]any{"id": id2, "tenant_id": "acme", "title": title}); err != nil {
			t.Fatal(err)
		}
		if got := readRow(t, e, spec, ks, id2); got["title"] != title {
			t.Fatalf("after upsert: %v", got)
		}
	}
	if err := up.Write(ctx, e.db, map[string]any{"id": id2, "tenant_id": "globex", "title": "x"}); err == nil {
		t.Fatal("upsert into another tenant's row")
	}
	if got := readRow(t, e, spec, ks, id2); got["tenant_id"] != "acme" || got["title"] != "second" {
		t.Fatalf("after a refused upsert: %v", got)
	}
}

// TestWriterFollowsLog: one writer follows the tenant's log as it grows —
// rotations, a revocation, grants — without a restart, and seals each row
// with the primary key the log names at that moment.
func TestWriterFollowsLog(t *testing.T) {
	ctx := context.Background()
	e, spec := writerEnv(t)
	ks := e.tenant("acme")
	e.device("alice", "laptop")
	e.device("bob", "phone")
	e.grant("acme", "alice")
	w := mustWriter(t, spec, Upsert, writerOpts(e))
	i := 0
	writeKey := func() uint32 {
		t.Helper()
		i++
		id := fmt.Sprintf("00000000-0000-4000-8000-%012d", i)
		if err := w.Write(ctx, e.db, map[string]any{"id": id, "tenant_id": "acme", "title": fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
		var cell string
		e.db.QueryRow(ctx, `SELECT title FROM docs WHERE id = $1`, id).Scan(&cell)
		k, err := CellKeyID(cell)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	if k := writeKey(); k != ks.PrimaryKeyID() {
		t.Fatalf("key %08x, want %08x", k, ks.PrimaryKeyID())
	}
	ks2, err := e.admin.Rotate(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if k := writeKey(); k != ks2.PrimaryKeyID() {
		t.Fatalf("after rotate: key %08x, want %08x", k, ks2.PrimaryKeyID())
	}
	// A grant grows the log without changing the keyset.
	e.grant("acme", "bob")
	if k := writeKey(); k != ks2.PrimaryKeyID() {
		t.Fatalf("after grant: key %08x, want %08x", k, ks2.PrimaryKeyID())
	}
	ks3, err := e.admin.Revoke(ctx, "acme", "alice")
	if err != nil {
		t.Fatal(err)
	}
	if k := writeKey(); k != ks3.PrimaryKeyID() {
		t.Fatalf("after revoke: key %08x, want %08x", k, ks3.PrimaryKeyID())
	}
}

// TestWriterConcurrentRotation: one writer used by several goroutines
// while an admin rotates: every row is written with a keyset the log named,
// and opens with the newest.
func TestWriterConcurrentRotation(t *testing.T) {
	ctx := context.Background()
	e, spec := writerEnv(t)
	e.tenant("acme")
	w := mustWriter(t, spec, Upsert, writerOpts(e))
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for g := range 4 {
		wg.Go(func() {
			for j := range 10 {
				id := fmt.Sprintf("00000000-0000-4000-9000-%06d%06d", g, j)
				if err := w.Write(ctx, e.db, map[string]any{"id": id, "tenant_id": "acme", "title": id}); err != nil {
					errs <- err
				}
			}
		})
	}
	for range 3 {
		if _, err := e.admin.Rotate(ctx, "acme"); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	var rollbacks []error
	for err := range errs {
		if !errors.Is(err, chain.ErrRollback) {
			t.Fatal(err)
		}
		rollbacks = append(rollbacks, err)
	}
	last := currentKeyset(t, e, "acme")
	rows, err := e.db.Query(ctx, `SELECT id::text FROM docs`)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for rows.Next() {
		var id string
		rows.Scan(&id)
		ids = append(ids, id)
	}
	rows.Close()
	for _, id := range ids {
		readRow(t, e, spec, last, id)
	}
	if len(ids)+len(rollbacks) != 40 {
		t.Fatalf("%d rows, %d refused", len(ids), len(rollbacks))
	}
	if len(rollbacks) > 0 {
		adminBug(t, "writer.go (*Writer).Write/keyset: a stale log length is refused as a rollback (%d of 40 writes: %v); "+
			"see TestWriterStaleLogRead", len(rollbacks), rollbacks[0])
	}
}

// TestWriterRacingRevocation: honest writes racing revocations never leave
// a cell that re-encryption must treat as suspect (sealed with a revoked
// key, in a row written after the revocation point). Without the tenant
// lock that Write shares with key administration, a write that read the
// log just before a revocation committed just after it (found by the
// soak, bench/soak).
func TestWriterRacingRevocation(t *testing.T) {
	ctx := context.Background()
	e, spec := writerEnv(t)
	e.tenant("acme")
	users := []string{"bob", "carol", "dave"}
	for _, u := range users {
		e.device(u, "phone")
		e.grant("acme", u)
	}
	w := mustWriter(t, spec, Upsert, writerOpts(e))
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var writes atomic.Int64
	for g := range 4 {
		wg.Go(func() {
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				id := fmt.Sprintf("00000000-0000-4000-9000-%06d%06d", g, j%50)
				if err := w.Write(ctx, e.db, map[string]any{"id": id, "tenant_id": "acme", "title": id}); err != nil {
					t.Error(err)
					return
				}
				writes.Add(1)
			}
		})
	}
	for _, u := range users {
		for writes.Load() < 20 {
			time.Sleep(time.Millisecond)
		}
		writes.Store(0)
		if _, err := e.admin.Revoke(ctx, "acme", u); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	res, err := e.admin.Reencrypt(ctx, spec, "acme", ReencryptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Suspect != 0 || res.Failed != 0 {
		t.Fatalf("after honest writes racing 3 revocations: %d suspect cells, %d failed (of %d rows): %v", res.Suspect, res.Failed, res.Rows, res.Errors)
	}
}

// pauseLogRead is a QueryDB whose first read of the log's length returns
// its result only once released: a goroutine of a writer that read the
// length just before another goroutine followed the log further.
type pauseLogRead struct {
	QueryDB
	once     sync.Once
	read     chan struct{} // closed once the length was read
	released chan struct{}
}

type pausedRow struct {
	pgx.Row
	p *pauseLogRead
}

func (r pausedRow) Scan(dst ...any) error {
	err := r.Row.Scan(dst...)
	close(r.p.read)
	<-r.p.released
	return err
}

func (p *pauseLogRead) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	row := p.QueryDB.QueryRow(ctx, sql, args...)
	paused := false
	if strings.Contains(sql, "max(seq)") {
		p.once.Do(func() { paused = true })
	}
	if paused {
		return pausedRow{row, p}
	}
	return row
}

// TestWriterStaleLogRead: the deterministic form of a race of
// TestWriterConcurrentRotation. A write that read the log's length before
// a rotation, and reaches the writer's state after another write followed
// the rotation, is not a rollback: the log did not shrink.
func TestWriterStaleLogRead(t *testing.T) {
	ctx := context.Background()
	e, spec := writerEnv(t)
	e.tenant("acme")
	w := mustWriter(t, spec, Upsert, writerOpts(e))
	write := func(db QueryDB, i int) error {
		return w.Write(ctx, db, map[string]any{"id": fmt.Sprintf("00000000-0000-4000-8000-%012d", i), "tenant_id": "acme", "title": "x"})
	}
	if err := write(e.db, 1); err != nil {
		t.Fatal(err)
	}
	slow := &pauseLogRead{QueryDB: e.db, read: make(chan struct{}), released: make(chan struct{})}
	done := make(chan error, 1)
	go func() { done <- write(slow, 2) }()
	<-slow.read
	ks2, err := e.admin.Rotate(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if err := write(e.db, 3); err != nil {
		t.Fatal(err)
	}
	close(slow.released)
	if err := <-done; err != nil {
		if errors.Is(err, chain.ErrRollback) {
			adminBug(t, "writer.go (*Writer).Write/keyset: the log length is read (SELECT max(seq)) before the tenant's lock is "+
				"taken, so a write that read it just before another goroutine followed a rotation gets ErrRollback (%v); "+
				"a length below the held state must be checked again against the database under the lock, not refused", err)
		}
		t.Fatal(err)
	}
	var cell string
	e.db.QueryRow(ctx, `SELECT title FROM docs WHERE id = $1`, "00000000-0000-4000-8000-000000000002").Scan(&cell)
	if k, _ := CellKeyID(cell); k != ks2.PrimaryKeyID() {
		t.Fatalf("the late write sealed with %08x, want the rotated primary %08x", k, ks2.PrimaryKeyID())
	}
}

// TestWriterRefuses: a writer writes nothing for a tenant without a log, for
// a log its roots do not verify, or below its floor.
func TestWriterRefuses(t *testing.T) {
	ctx := context.Background()
	e, spec := writerEnv(t)
	row := func(tenant string) map[string]any {
		return map[string]any{"id": "00000000-0000-4000-8000-000000000001", "tenant_id": tenant, "title": "x"}
	}
	w := mustWriter(t, spec, Insert, writerOpts(e))
	// A keyset stored without a log is not used.
	ks := newTestKeyset(t, "acme")
	if err := StoreKeyset(ctx, e.db, e.kek, ks); err != nil {
		t.Fatal(err)
	}
	err := w.Write(ctx, e.db, row("acme"))
	if ce, ok := errors.AsType[*chain.Error](err); !ok || !errors.Is(err, chain.ErrNoLog) || ce.Tenant != "acme" {
		t.Fatalf("write without a log: %v", err)
	}
	pgtest.Exec(t, e.url, `DELETE FROM shapeseal_keysets`)

	// Other roots: the log does not verify.
	e.tenant("acme")
	other := mustWriter(t, spec, Insert, WriterOptions{Roots: []VerifyKey{mustSigner().Public()}, KEKs: UseKEK(e.kek), Floor: NewMemoryFloor()})
	if err := other.Write(ctx, e.db, row("acme")); !errors.Is(err, chain.ErrUnauthorized) {
		t.Fatalf("write under other roots: %v", err)
	}
	// A log that was seen longer, through a shared floor, is refused by a
	// new writer too.
	floor := NewMemoryFloor()
	if _, err := LoadState(ctx, e.db, e.roots, "acme", floor); err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.Rotate(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadState(ctx, e.db, e.roots, "acme", floor); err != nil {
		t.Fatal(err)
	}
	pgtest.Exec(t, e.url, `DELETE FROM shapeseal_log WHERE tenant_id = 'acme' AND seq = 2`)
	floored := mustWriter(t, spec, Insert, WriterOptions{Roots: e.roots, KEKs: UseKEK(e.kek), Floor: floor})
	if err := floored.Write(ctx, e.db, row("acme")); !errors.Is(err, chain.ErrRollback) {
		t.Fatalf("write below the floor: %v", err)
	}
	var n int
	e.db.QueryRow(ctx, `SELECT count(*) FROM docs`).Scan(&n)
	if n != 0 {
		t.Fatalf("%d rows written", n)
	}
	// The writer that never saw more (w's floor is its own) writes with
	// what the log names: the floor is what tells a cut log.
	if err := w.Write(ctx, e.db, row("acme")); err != nil {
		t.Fatal(err)
	}
}
