package keysync

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// TestAdmin runs the life of a tenant against Postgres: create, grant,
// write, rotate, revoke, reencrypt (resumable, idempotent, conflict-safe)
// and retire.
func TestAdmin(t *testing.T) {
	ctx := context.Background()
	url, db := newAdminDB(t)
	pgtest.Exec(t, url, `CREATE TABLE items (id uuid PRIMARY KEY, tenant_id text NOT NULL, n int, title text, body text)`)
	kek := newLocalKEK(t)

	if _, err := CreateTenant(ctx, db, kek, "acme"); err != nil {
		t.Fatal(err)
	}
	if _, err := CreateTenant(ctx, db, kek, "acme"); !errors.Is(err, ErrGenerationExists) {
		t.Fatalf("second create: %v", err)
	}
	ids := map[string]*identityT{}
	for _, u := range []string{"alice", "bob"} {
		ids[u] = newIdentityT(t)
		if err := AddDevice(ctx, db, u, "d1", ids[u].rcpt); err != nil {
			t.Fatal(err)
		}
	}
	if err := AddDevice(ctx, db, "x", "d1", "ssh-ed25519 AAAA"); err == nil {
		t.Error("bad recipient accepted")
	}
	if _, err := Grant(ctx, db, kek, "acme", "carol"); !errors.Is(err, ErrNoDevices) {
		t.Errorf("grant without devices: %v", err)
	}
	for _, u := range []string{"alice", "bob"} {
		if n, err := Grant(ctx, db, kek, "acme", u); err != nil || n != 1 {
			t.Fatal(n, err)
		}
	}
	// The grants are signed by the KEK's signer, which devices trust.
	signer, err := EnsureSigner(ctx, db, kek)
	if err != nil {
		t.Fatal(err)
	}
	again, err := EnsureSigner(ctx, db, kek)
	if err != nil || again.VerifyKey() != signer.VerifyKey() {
		t.Fatalf("EnsureSigner made a second signer for one KEK: %v, %v", again, err)
	}
	trusted := []VerifyKey{signer.VerifyKey()}
	unwrap := func(user string) *Keyset {
		t.Helper()
		var wrapped []byte
		var gen int64
		err := db.QueryRow(ctx, `SELECT generation, wrapped FROM shapeseal_tenant_keys WHERE tenant_id = 'acme' AND user_id = $1`, user).Scan(&gen, &wrapped)
		if err != nil {
			return nil
		}
		ks, err := Unwrap(ids[user].id, wrapped, "acme", trusted)
		if err != nil || ks.Generation() != uint64(gen) {
			t.Fatalf("unwrap for %s: %v (%v)", user, err, ks)
		}
		return ks
	}
	if unwrap("alice").Generation() != 1 {
		t.Fatal("alice's generation")
	}

	spec := TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	w, err := NewWriter(spec, Insert, func(context.Context, string) (KEK, error) { return kek, nil })
	if err != nil {
		t.Fatal(err)
	}
	uuid := func(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }
	write := func(from, to int) {
		t.Helper()
		for i := from; i < to; i++ {
			row := map[string]any{"id": strings.ToUpper(uuid(i)), "tenant_id": "acme", "n": i, "title": fmt.Sprintf("title %d", i)}
			if i%3 != 0 {
				row["body"] = "body"
			}
			if err := w.Write(ctx, db, row); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(0, 10)
	// Open every cell with ks; return the key ids used.
	check := func(ks *Keyset, n int) map[uint32]int {
		t.Helper()
		rows, err := db.Query(ctx, `SELECT id::text, tenant_id, title, body FROM items ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		used := map[uint32]int{}
		count := 0
		for rows.Next() {
			var id, tenant string
			var title, body *string
			rows.Scan(&id, &tenant, &title, &body)
			count++
			row := map[string]any{"id": id, "tenant_id": tenant, "title": *title}
			if body != nil {
				row["body"] = *body
			}
			for _, c := range []*string{title, body} {
				if c != nil {
					k, err := CellKeyID(*c)
					if err != nil {
						t.Fatal(err)
					}
					used[k]++
				}
			}
			if err := spec.OpenRow(ks, row); err != nil {
				t.Fatalf("row %s: %v", id, err)
			}
			if !strings.HasPrefix(row["title"].(string), "title ") {
				t.Fatalf("row %s: %v", id, row)
			}
		}
		if rows.Err() != nil || count != n {
			t.Fatalf("%d rows, want %d: %v", count, n, rows.Err())
		}
		return used
	}
	check(unwrap("bob"), 10)

	// Update and upsert.
	up, _ := NewWriter(spec, Upsert, func(context.Context, string) (KEK, error) { return kek, nil })
	if err := up.Write(ctx, db, map[string]any{"id": uuid(1), "tenant_id": "acme", "title": "title upserted"}); err != nil {
		t.Fatal(err)
	}
	if err := up.Write(ctx, db, map[string]any{"id": uuid(1), "tenant_id": "globex", "title": "x"}); err == nil {
		t.Error("upsert into another tenant's row")
	}
	upd, _ := NewWriter(spec, Update, func(context.Context, string) (KEK, error) { return kek, nil })
	if err := upd.Write(ctx, db, map[string]any{"id": uuid(99), "tenant_id": "acme", "title": "x"}); err == nil {
		t.Error("update of a missing row")
	}

	// Revoke alice: her wrapped key goes, bob gets generation 2, and rows
	// written afterwards (the writer notices the new generation) are not
	// for her old keyset.
	old := unwrap("alice")
	ks2, err := Revoke(ctx, db, kek, "acme", "alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Revoke(ctx, db, kek, "acme", "alice"); !errors.Is(err, ErrNotMember) {
		t.Errorf("second revoke: %v", err)
	}
	if unwrap("alice") != nil || unwrap("bob").Generation() != ks2.Generation() {
		t.Fatal("revoke did not re-wrap")
	}
	write(10, 15)
	var cell string
	db.QueryRow(ctx, `SELECT title FROM items WHERE id = $1`, uuid(12)).Scan(&cell)
	if _, err := Open(old, CellContext{Table: "public.items", Column: "title", Tenant: "acme", RowKey: []string{uuid(12)}}, cell); !errors.Is(err, ErrNoKey) {
		t.Fatalf("revoked keyset opened a new cell: %v", err)
	}
	ks3, err := Rotate(ctx, db, kek, "acme")
	if err != nil || ks3.Generation() != 3 {
		t.Fatal(ks3, err)
	}
	if used := check(unwrap("bob"), 15); len(used) != 2 {
		t.Fatalf("keys in use before reencrypt: %v", used)
	}

	// Reencrypt in batches of 4, interrupted after the first batch, then
	// resumed from where it stopped.
	cctx, cancel := context.WithCancel(ctx)
	var last []string
	res, err := Reencrypt(cctx, db, kek, spec, "acme", ReencryptOptions{BatchSize: 4, Progress: func(p ReencryptProgress) {
		last = p.Last
		cancel()
	}})
	if !errors.Is(err, context.Canceled) || res.Rows != 4 || res.Rewritten != 6 {
		t.Fatalf("interrupted run: %+v, %v", res, err)
	}
	if len(last) != 1 || last[0] != uuid(3) {
		t.Fatalf("progress %v", last)
	}
	res, err = Reencrypt(ctx, db, kek, spec, "acme", ReencryptOptions{BatchSize: 4, After: last})
	if err != nil || res.Failed != 0 {
		t.Fatal(res, err)
	}
	res, err = Reencrypt(ctx, db, kek, spec, "acme", ReencryptOptions{BatchSize: 4, Retire: true})
	if err != nil || res.Failed != 0 || res.Conflicts != 0 {
		t.Fatal(res, err)
	}
	if len(res.Retired) != 2 || res.RetiredGeneration != 4 {
		t.Fatalf("retire: %+v", res)
	}
	bob := unwrap("bob")
	if used := check(bob, 15); len(used) != 1 || used[bob.PrimaryKeyID()] == 0 {
		t.Fatalf("keys in use after reencrypt: %v", used)
	}
	if len(bob.KeyIDs()) != 1 {
		t.Fatalf("bob's keyset after retire: %v", bob)
	}
	// Idempotent: nothing left to do.
	before := snapshot(t, db)
	res, err = Reencrypt(ctx, db, kek, spec, "acme", ReencryptOptions{BatchSize: 4, Retire: true})
	if err != nil || res.Rewritten != 0 || res.Rows != 15 || len(res.Retired) != 0 {
		t.Fatal(res, err)
	}
	if after := snapshot(t, db); after != before {
		t.Fatal("a second reencrypt changed the table")
	}
}

// TestReencryptConflict: a cell changed after the scan is not overwritten.
func TestReencryptConflict(t *testing.T) {
	ctx := context.Background()
	url, db := newAdminDB(t)
	pgtest.Exec(t, url, `CREATE TABLE items (id int8 PRIMARY KEY, tenant_id text NOT NULL, title text)`)
	kek := newLocalKEK(t)
	ks, _ := CreateTenant(ctx, db, kek, "acme")
	spec := TableSpec{Table: "items", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	for i := range 3 {
		row := map[string]any{"id": int64(i), "tenant_id": "acme", "title": "t"}
		spec.SealRow(ks, row)
		pgtest.Exec(t, url, `INSERT INTO items VALUES ($1, $2, $3)`, row["id"], row["tenant_id"], row["title"])
	}
	if _, err := Rotate(ctx, db, kek, "acme"); err != nil {
		t.Fatal(err)
	}
	// Simulate the race: a writer replaces row 1's cell (with another old
	// cell) while the batch is being rewritten, by a trigger-like rule on
	// the first rewrite of row 0.
	pgtest.Exec(t, url, `CREATE FUNCTION race() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.id = 0 THEN UPDATE items SET title = 'ss1:changed' WHERE id = 1; END IF; RETURN NEW; END $$`)
	pgtest.Exec(t, url, `CREATE TRIGGER race BEFORE UPDATE ON items FOR EACH ROW WHEN (pg_trigger_depth() = 0) EXECUTE FUNCTION race()`)
	res, err := Reencrypt(ctx, db, kek, spec, "acme", ReencryptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Rewritten != 2 || res.Conflicts != 1 {
		t.Fatalf("%+v", res)
	}
	var title string
	db.QueryRow(ctx, `SELECT title FROM items WHERE id = 1`).Scan(&title)
	if title != "ss1:changed" {
		t.Fatalf("concurrent write overwritten: %s", title)
	}
	// The changed cell is not a valid cell: reported; the old key, which no
	// cell names any more, is retired.
	res, err = Reencrypt(ctx, db, kek, spec, "acme", ReencryptOptions{Retire: true})
	if err != nil || res.Failed != 1 || len(res.Retired) != 1 {
		t.Fatalf("%+v %v", res, err)
	}
}

func snapshot(t *testing.T, db *pgxpool.Pool) string {
	t.Helper()
	var s string
	if err := db.QueryRow(context.Background(), `SELECT string_agg(i::text, ',' ORDER BY id) FROM items i`).Scan(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

type identityT struct {
	id   *age.HybridIdentity
	rcpt string
}

func newIdentityT(t *testing.T) *identityT {
	t.Helper()
	id, err := GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	r, err := RecipientOf(id)
	if err != nil {
		t.Fatal(err)
	}
	return &identityT{id, r}
}

// TestConcurrentAdmin: rotations and grants of one tenant serialize, so none
// fails and every member ends with the newest generation.
func TestConcurrentAdmin(t *testing.T) {
	ctx := context.Background()
	_, db := newAdminDB(t)
	kek := newLocalKEK(t)
	if _, err := CreateTenant(ctx, db, kek, "acme"); err != nil {
		t.Fatal(err)
	}
	users := []string{"u0", "u1", "u2", "u3"}
	for _, u := range users {
		AddDevice(ctx, db, u, "d1", newIdentityT(t).rcpt)
	}
	errs := make(chan error, 2*len(users))
	for _, u := range users {
		go func() { _, err := Rotate(ctx, db, kek, "acme"); errs <- err }()
		go func() { _, err := Grant(ctx, db, kek, "acme", u); errs <- err }()
	}
	for range 2 * len(users) {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var n, minGen int
	db.QueryRow(ctx, `SELECT count(*), min(generation) FROM shapeseal_tenant_keys WHERE tenant_id = 'acme'`).Scan(&n, &minGen)
	if n != len(users) || minGen != 1+len(users) {
		t.Fatalf("%d members, oldest generation %d", n, minGen)
	}
}

// newAdminDB returns a fresh database with shapeseal's schema, and a pool on
// it that the test closes.
func newAdminDB(t *testing.T) (url string, db *pgxpool.Pool) {
	t.Helper()
	url = pgtest.NewDB(t)
	db, err := pgxpool.New(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	if err := ApplySchema(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	return url, db
}
