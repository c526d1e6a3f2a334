package keysync

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"filippo.io/age"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// unwrapRow returns the keyset of tenant wrapped for user's device, checked
// as a device checks it: signed by a key that may sign for the tenant, and
// the keyset the verified log names at the row's generation. nil if the
// device has no row.
func unwrapRow(t *testing.T, e *trustEnv, tenant, user, device string, id age.Identity) *Keyset {
	t.Helper()
	ctx := context.Background()
	var wrapped []byte
	var gen int64
	err := e.db.QueryRow(ctx, `SELECT generation, wrapped FROM shapeseal_tenant_keys WHERE tenant_id = $1 AND user_id = $2 AND device_id = $3`,
		tenant, user, device).Scan(&gen, &wrapped)
	if err != nil {
		return nil
	}
	st, err := e.admin.State(ctx, tenant)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := Unwrap(id, wrapped, tenant, append(e.roots, st.Admins()...))
	if err != nil || ks.Generation() != uint64(gen) {
		t.Fatalf("unwrap for %s/%s: %v (%v)", user, device, err, ks)
	}
	ref, ok := st.KeysetAt(ks.Generation())
	if !ok || ref.Commitment != ks.Commitment() {
		t.Fatalf("%s/%s holds generation %d, which the log does not name", user, device, ks.Generation())
	}
	return ks
}

// TestAdmin runs the life of a tenant against Postgres: create, certify,
// grant, write, rotate, revoke, reencrypt (resumable, idempotent,
// conflict-safe) and retire; a device's keyring follows it all. Each step
// is a method of adminLife, run in order on the state the steps before it
// left.
func TestAdmin(t *testing.T) {
	s := newAdminLife(t)
	s.createAndGrant()
	s.writeAndUpdate()
	s.revokeAndRotate()
	s.reencryptAndRetire()
	s.reencryptAgain()
}

// adminLife is the state TestAdmin's steps share.
type adminLife struct {
	t    *testing.T
	ctx  context.Context
	e    *trustEnv
	db   *pgxpool.Pool
	ids  map[string]*age.HybridIdentity // user → identity of their device d1
	ring *Keyring                       // bob's
	spec TableSpec
	opts WriterOptions
	w    *Writer // inserts
	ks3  *Keyset // the keyset of the rotation after alice's revocation
}

func newAdminLife(t *testing.T) *adminLife {
	ctx := context.Background()
	e := newTrustEnv(t)
	pgtest.Exec(t, e.url, `ALTER TABLE items ADD COLUMN n int`)
	return &adminLife{t: t, ctx: ctx, e: e, db: e.db, ids: map[string]*age.HybridIdentity{}}
}

// unwrap returns the keyset of acme wrapped for user's device d1 (nil if
// none), checked as a device checks it.
func (s *adminLife) unwrap(user string) *Keyset {
	s.t.Helper()
	return unwrapRow(s.t, s.e, "acme", user, "d1", s.ids[user])
}

func (s *adminLife) uuid(i int) string { return fmt.Sprintf("00000000-0000-4000-8000-%012d", i) }

// write inserts the rows from..to-1 of acme with s.w.
func (s *adminLife) write(from, to int) {
	t, ctx, db, w := s.t, s.ctx, s.db, s.w
	t.Helper()
	for i := from; i < to; i++ {
		row := map[string]any{"id": strings.ToUpper(s.uuid(i)), "tenant_id": "acme", "n": i, "title": fmt.Sprintf("title %d", i)}
		if i%3 != 0 {
			row["body"] = "body"
		}
		if err := w.Write(ctx, db, row); err != nil {
			t.Fatal(err)
		}
	}
}

// check opens every cell with ks, and fails unless there are n rows; it
// returns the key ids used.
func (s *adminLife) check(ks *Keyset, n int) map[uint32]int {
	t, ctx, db, spec := s.t, s.ctx, s.db, s.spec
	t.Helper()
	rows, err := db.Query(ctx, `SELECT id::text, tenant_id, title, body FROM items ORDER BY id`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	used := map[uint32]int{}
	count := 0
	for rows.Next() {
		var id, tenant string
		var title, body *string
		if err := rows.Scan(&id, &tenant, &title, &body); err != nil {
			t.Fatal(err)
		}
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

// createAndGrant creates acme, certifies a device each for alice and bob
// and grants them; bob's device starts a ring.
func (s *adminLife) createAndGrant() {
	t, ctx, e, db, ids := s.t, s.ctx, s.e, s.db, s.ids
	e.tenant("acme")
	if _, err := e.admin.CreateTenant(ctx, e.kek, "acme"); !errors.Is(err, ErrTenantExists) {
		t.Fatalf("second create: %v", err)
	}
	for _, u := range []string{"alice", "bob"} {
		ids[u] = e.device(u, "d1")
	}
	if err := e.admin.CertifyDevice(ctx, "x", "d1", "ssh-ed25519 AAAA"); err == nil {
		t.Error("bad recipient accepted")
	}
	if _, err := e.admin.Grant(ctx, "acme", "carol"); !errors.Is(err, ErrNoDevices) {
		t.Errorf("grant without devices: %v", err)
	}
	if _, err := e.admin.Grant(ctx, "nobody", "alice"); !errors.Is(err, chain.ErrNoLog) {
		t.Errorf("grant of a tenant without a log: %v", err)
	}
	for _, u := range []string{"alice", "bob"} {
		if n, err := e.admin.Grant(ctx, "acme", u); err != nil || n != 1 {
			t.Fatal(n, err)
		}
	}
	// Granting again changes nothing: no new log entry.
	st, _ := e.admin.State(ctx, "acme")
	if n, err := e.admin.Grant(ctx, "acme", "alice"); err != nil || n != 1 {
		t.Fatal(n, err)
	}
	if again, _ := e.admin.State(ctx, "acme"); again.Seq() != st.Seq() || st.Seq() != 3 {
		t.Fatalf("log of %d entries after a repeated grant, %d before", again.Seq(), st.Seq())
	}
	if !slices.Equal(st.Members(), []string{"alice", "bob"}) || len(st.Devices()) != 2 {
		t.Fatalf("members %v, devices %v", st.Members(), st.Devices())
	}
	if s.unwrap("alice").Generation() != 1 {
		t.Fatal("alice's generation")
	}
	// The grants are signed by the root key: a device that pins another
	// key refuses them.
	var wrapped []byte
	db.QueryRow(ctx, `SELECT wrapped FROM shapeseal_tenant_keys WHERE user_id = 'alice'`).Scan(&wrapped)
	if _, err := Unwrap(ids["alice"], wrapped, "acme", []VerifyKey{mustSigner().Public()}); !errors.Is(err, ErrUntrustedKeyset) {
		t.Fatalf("unwrap with another trusted key: %v", err)
	}
	s.ring, _ = e.ring("bob", "d1", ids["bob"], nil)
	waitGen(t, s.ring, "acme", 1)
}

// writeAndUpdate writes ten rows, which bob and his ring open, and checks
// that updates and upserts stay within the tenant's rows.
func (s *adminLife) writeAndUpdate() {
	t, ctx, e, db := s.t, s.ctx, s.e, s.db
	s.spec = TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	s.opts = WriterOptions{Roots: e.roots, KEKs: UseKEK(e.kek), Floor: NewMemoryFloor()}
	spec, opts := s.spec, s.opts
	w, err := NewWriter(spec, Insert, opts)
	if err != nil {
		t.Fatal(err)
	}
	s.w = w
	s.write(0, 10)
	s.check(s.unwrap("bob"), 10)
	s.check(s.ring.Keyset("acme"), 10)

	// Update and upsert.
	up, _ := NewWriter(spec, Upsert, opts)
	if err := up.Write(ctx, db, map[string]any{"id": s.uuid(1), "tenant_id": "acme", "title": "title upserted"}); err != nil {
		t.Fatal(err)
	}
	e.tenant("globex")
	if err := up.Write(ctx, db, map[string]any{"id": s.uuid(1), "tenant_id": "globex", "title": "x"}); err == nil {
		t.Error("upsert into another tenant's row")
	}
	upd, _ := NewWriter(spec, Update, opts)
	if err := upd.Write(ctx, db, map[string]any{"id": s.uuid(99), "tenant_id": "acme", "title": "x"}); err == nil {
		t.Error("update of a missing row")
	}
}

// revokeAndRotate revokes alice: her wrapped key goes, bob gets generation
// 2, and rows written afterwards (the writer follows the log) are not for
// her old keyset. Then a rotation makes generation 3.
func (s *adminLife) revokeAndRotate() {
	t, ctx, e, db := s.t, s.ctx, s.e, s.db
	old := s.unwrap("alice")
	ks2, err := e.admin.Revoke(ctx, "acme", "alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.Revoke(ctx, "acme", "alice"); !errors.Is(err, ErrNotMember) {
		t.Errorf("second revoke: %v", err)
	}
	if s.unwrap("alice") != nil || s.unwrap("bob").Generation() != ks2.Generation() {
		t.Fatal("revoke did not re-wrap")
	}
	st, _ := e.admin.State(ctx, "acme")
	if revs := st.Revocations(); len(revs) != 1 || revs[0].Seq != st.Seq() || !slices.Equal(revs[0].KeyIDs, old.KeyIDs()) {
		t.Fatalf("revocation points %+v", revs)
	}
	if st.IsMember("alice") || !slices.Equal(st.Members(), []string{"bob"}) {
		t.Fatalf("members after revoke: %v", st.Members())
	}
	waitGen(t, s.ring, "acme", ks2.Generation())
	s.write(10, 15)
	var cell string
	db.QueryRow(ctx, `SELECT title FROM items WHERE id = $1`, s.uuid(12)).Scan(&cell)
	if _, err := Open(old, CellContext{Table: "public.items", Column: "title", Tenant: "acme", RowKey: []string{s.uuid(12)}}, cell); !errors.Is(err, ErrNoKey) {
		t.Fatalf("revoked keyset opened a new cell: %v", err)
	}
	ks3, err := e.admin.Rotate(ctx, "acme")
	if err != nil || ks3.Generation() != 3 {
		t.Fatal(ks3, err)
	}
	s.ks3 = ks3
	if used := s.check(s.unwrap("bob"), 15); len(used) != 2 {
		t.Fatalf("keys in use before reencrypt: %v", used)
	}
}

// reencryptAndRetire reencrypts in batches of 4, interrupted after the
// first batch, then resumed from where it stopped, and retires the old
// keys. Every row was written honestly, before the revocation or with the
// new keys: nothing is suspect.
func (s *adminLife) reencryptAndRetire() {
	t, ctx, e, spec, ks3 := s.t, s.ctx, s.e, s.spec, s.ks3
	cctx, cancel := context.WithCancel(ctx)
	var last []string
	res, err := e.admin.Reencrypt(cctx, spec, "acme", ReencryptOptions{BatchSize: 4, Progress: func(p ReencryptProgress) {
		last = p.Last
		cancel()
	}})
	if !errors.Is(err, context.Canceled) || res.Rows != 4 || res.Rewritten != 6 {
		t.Fatalf("interrupted run: %+v, %v", res, err)
	}
	if len(last) != 1 || last[0] != s.uuid(3) {
		t.Fatalf("progress %v", last)
	}
	if _, err := e.admin.Reencrypt(ctx, spec, "acme", ReencryptOptions{After: []string{"a", "b"}}); err == nil {
		t.Error("resume position of two values accepted for a one-column row key")
	}
	res, err = e.admin.Reencrypt(ctx, spec, "acme", ReencryptOptions{BatchSize: 4, After: last})
	if err != nil || res.Failed != 0 || res.Suspect != 0 || res.Rows != 11 || res.Generation != 3 || res.PrimaryKey != ks3.PrimaryKeyID() {
		t.Fatal(res, err)
	}
	res, err = e.admin.Reencrypt(ctx, spec, "acme", ReencryptOptions{BatchSize: 4, Retire: true})
	if err != nil || res.Failed != 0 || res.Conflicts != 0 || res.Suspect != 0 {
		t.Fatal(res, err)
	}
	if len(res.Retired) != 2 || res.RetiredGeneration != 4 {
		t.Fatalf("retire: %+v", res)
	}
	bob := s.unwrap("bob")
	if used := s.check(bob, 15); len(used) != 1 || used[bob.PrimaryKeyID()] == 0 {
		t.Fatalf("keys in use after reencrypt: %v", used)
	}
	if len(bob.KeyIDs()) != 1 || bob.Generation() != 4 {
		t.Fatalf("bob's keyset after retire: %v", bob)
	}
	waitGen(t, s.ring, "acme", 4)
	s.check(s.ring.Keyset("acme"), 15)
}

// reencryptAgain: a reencrypt is idempotent — nothing left to do, and no
// new log entry — and the log holds what the life made.
func (s *adminLife) reencryptAgain() {
	t, ctx, e, db, spec := s.t, s.ctx, s.e, s.db, s.spec
	before := snapshot(t, db)
	st, _ := e.admin.State(ctx, "acme")
	res, err := e.admin.Reencrypt(ctx, spec, "acme", ReencryptOptions{BatchSize: 4, Retire: true})
	if err != nil || res.Rewritten != 0 || res.Rows != 15 || len(res.Retired) != 0 {
		t.Fatal(res, err)
	}
	if after := snapshot(t, db); after != before {
		t.Fatal("a second reencrypt changed the table")
	}
	if again, _ := e.admin.State(ctx, "acme"); again.Seq() != st.Seq() {
		t.Fatalf("a reencrypt with nothing to retire appended to the log (%d → %d)", st.Seq(), again.Seq())
	}
	// The log: create, two grants, revoke, rotate, retire; each keyset op
	// names a stored generation under the env's KEK.
	if st.Seq() != 6 || st.Keyset().Generation != 4 || st.Keyset().KEK != e.kek.URI() {
		t.Fatalf("log of %d entries, keyset %+v", st.Seq(), st.Keyset())
	}
	for g := uint64(1); g <= 4; g++ {
		if _, ok := st.KeysetAt(g); !ok {
			t.Errorf("the log does not name generation %d", g)
		}
	}
}

// TestReencryptConflict: a cell changed after the scan is not overwritten.
func TestReencryptConflict(t *testing.T) {
	ctx := context.Background()
	e := newTrustEnv(t)
	pgtest.Exec(t, e.url, `CREATE TABLE notes (id int8 PRIMARY KEY, tenant_id text NOT NULL, title text)`)
	ks := e.tenant("acme")
	spec := TableSpec{Table: "notes", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	for i := range 3 {
		row := map[string]any{"id": fmt.Sprint(i), "tenant_id": "acme", "title": "t"}
		if err := spec.SealRow(ks, row); err != nil {
			t.Fatal(err)
		}
		pgtest.Exec(t, e.url, `INSERT INTO notes VALUES ($1, $2, $3)`, int64(i), row["tenant_id"], row["title"])
	}
	if _, err := e.admin.Rotate(ctx, "acme"); err != nil {
		t.Fatal(err)
	}
	// Simulate the race: a writer replaces row 1's cell while the batch is
	// being rewritten, by a trigger on the first rewrite of row 0.
	pgtest.Exec(t, e.url, `CREATE FUNCTION race() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.id = 0 THEN UPDATE notes SET title = 'ss1:changed' WHERE id = 1; END IF; RETURN NEW; END $$`)
	pgtest.Exec(t, e.url, `CREATE TRIGGER race BEFORE UPDATE ON notes FOR EACH ROW WHEN (pg_trigger_depth() = 0) EXECUTE FUNCTION race()`)
	res, err := e.admin.Reencrypt(ctx, spec, "acme", ReencryptOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if res.Rewritten != 2 || res.Conflicts != 1 {
		t.Fatalf("%+v", res)
	}
	var title string
	e.db.QueryRow(ctx, `SELECT title FROM notes WHERE id = 1`).Scan(&title)
	if title != "ss1:changed" {
		t.Fatalf("concurrent write overwritten: %s", title)
	}
	// The changed cell is not a valid cell: reported; the old key, which no
	// cell names any more, is retired.
	res, err = e.admin.Reencrypt(ctx, spec, "acme", ReencryptOptions{Retire: true})
	if err != nil || res.Failed != 1 || len(res.Retired) != 1 || len(res.Errors) != 1 || !errors.Is(res.Errors[0], ErrMalformedCell) {
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

// TestConcurrentAdmin: rotations and grants of one tenant, by the root and
// by a delegated admin, serialize under the tenant's lock, so none fails,
// the log never forks, and every member ends with the newest generation.
func TestConcurrentAdmin(t *testing.T) {
	ctx := context.Background()
	e := newTrustEnv(t)
	adminKey := fixedSigner("concurrent admin")
	delegated := e.adminWith(adminKey)

	// Concurrent creations of one tenant: one wins.
	errs := make(chan error, 8)
	for range 4 {
		go func() { _, err := e.admin.CreateTenant(ctx, e.kek, "acme", adminKey.Public()); errs <- err }()
	}
	created := 0
	for range 4 {
		switch err := <-errs; {
		case err == nil:
			created++
		case !errors.Is(err, ErrTenantExists):
			t.Fatal(err)
		}
	}
	if created != 1 {
		t.Fatalf("%d concurrent creations succeeded", created)
	}

	users := []string{"u0", "u1", "u2", "u3"}
	for _, u := range users {
		e.device(u, "d1")
	}
	for i, u := range users {
		rotator, granter := e.admin, delegated
		if i%2 == 1 {
			rotator, granter = delegated, e.admin
		}
		go func() { _, err := rotator.Rotate(ctx, "acme"); errs <- err }()
		go func() { _, err := granter.Grant(ctx, "acme", u); errs <- err }()
	}
	for range 2 * len(users) {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	var n, minGen int
	e.db.QueryRow(ctx, `SELECT count(*), min(generation) FROM shapeseal_tenant_keys WHERE tenant_id = 'acme'`).Scan(&n, &minGen)
	if n != len(users) || minGen != 1+len(users) {
		t.Fatalf("%d members, oldest generation %d", n, minGen)
	}
	st, err := e.admin.State(ctx, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if st.Seq() != uint64(1+2*len(users)) || st.Keyset().Generation != uint64(1+len(users)) || !slices.Equal(st.Members(), users) {
		t.Fatalf("log of %d entries, generation %d, members %v", st.Seq(), st.Keyset().Generation, st.Members())
	}
	var stored int
	e.db.QueryRow(ctx, `SELECT count(*) FROM shapeseal_keysets WHERE tenant_id = 'acme'`).Scan(&stored)
	if stored != 1+len(users) {
		t.Fatalf("%d keyset generations stored", stored)
	}
}

// TestAdminIncomplete: an Admin without its database, roots or key fails
// with an error, whatever it is asked.
func TestAdminIncomplete(t *testing.T) {
	ctx := context.Background()
	kek := newLocalKEK(t)
	for _, c := range []struct {
		name string
		a    *Admin
	}{
		{"no roots", &Admin{Key: testSigner}},
		{"no db", &Admin{Roots: testSigners, Key: testSigner}},
		{"no key", &Admin{Roots: testSigners}}, // last: it may stop the test
	} {
		name, a := c.name, c.a
		func() {
			defer func() {
				if p := recover(); p != nil {
					adminBug(t, "tenant.go (*Admin).CreateTenant calls a.Key.Public() before a.tx checks that the Admin has "+
						"a Key: %s panics (%v); check a.Key == nil first", name, p)
				}
			}()
			if _, err := a.CreateTenant(ctx, kek, "acme"); err == nil {
				t.Errorf("%s: CreateTenant succeeded", name)
			}
			if _, err := a.Rotate(ctx, "acme"); err == nil {
				t.Errorf("%s: Rotate succeeded", name)
			}
			if _, err := a.Grant(ctx, "acme", "alice"); err == nil {
				t.Errorf("%s: Grant succeeded", name)
			}
		}()
	}
}
