package electrictest_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// TestManualPublication serves shapes as a role that is no superuser and
// owns no table (REPLICATION and SELECT only) from a publication made by
// hand (Options.Publication, like ELECTRIC_MANUAL_TABLE_PUBLISHING): the
// published table syncs, changes included; a table missing from the
// publication, or without REPLICA IDENTITY FULL, is answered 503 with
// Electric's message until it is published by hand; the publication and
// the tables are never changed, and the publication outlives the server.
func TestManualPublication(t *testing.T) {
	t.Parallel()
	db := pgtest.NewDB(t)
	const pub = "Manual Pub" // a name that needs quoting
	role, roleURL := newReplicationRole(t, db, pub)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := electrictest.New(ctx, electrictest.Options{DatabaseURL: roleURL, Publication: "no_such_publication"}); err == nil ||
		!strings.Contains(err.Error(), "no_such_publication") {
		t.Fatalf("New with a publication that does not exist: %v", err)
	}
	// Without Options.Publication the role may not create one.
	if srv, err := electrictest.New(ctx, electrictest.Options{DatabaseURL: roleURL}); err == nil {
		srv.Close()
		t.Fatal("New without Options.Publication, as a role that may not create publications: no error")
	}

	e, closeSrv := newRoleEnv(t, ctx, db, roleURL, pub)

	// Electric's connection is the role's, replication included.
	if got := e.scalar(`SELECT string_agg(DISTINCT usename::text, ',') FROM pg_stat_activity WHERE datname = current_database() AND application_name = 'electrictest'`); got != role {
		t.Errorf("electrictest connects as %s, want %s", got, role)
	}

	const itemsQ = `SELECT format('"public"."items"/"%s"', id), id::text, title FROM items`
	const otherQ = `SELECT format('"public"."other"/"%s"', id), id::text, title FROM other`
	f := e.follow("table", "items")
	f.equal(e.rows(itemsQ))
	e.exec(`INSERT INTO items VALUES (3, 'c'); UPDATE items SET title = 'B' WHERE id = 2; DELETE FROM items WHERE id = 1`)
	f.converge(itemsQ)

	wantUnpublished(t, e, "other", `Database table "public"."other" is missing from the publication "Manual Pub"`)
	wantUnpublished(t, e, "noident", `Database table "public"."noident" does not have its replica identity set to FULL`)
	// A subquery's table must be published too.
	r := e.shape("table", "items", "offset", "-1", "where", "id IN (SELECT id FROM other)")
	if r.status != http.StatusServiceUnavailable || !strings.Contains(string(r.body), "missing from the publication") {
		t.Errorf("subquery shape on an unpublished table: %d %s", r.status, r.body)
	}

	// Nothing was changed: not the publication, not the replica identities.
	pubTables := `SELECT string_agg(tablename::text, ',' ORDER BY tablename) FROM pg_publication_tables WHERE pubname = '` + pub + `'`
	idents := `SELECT string_agg(relname || '=' || relreplident::text, ',' ORDER BY relname) FROM pg_class WHERE relname IN ('items', 'other', 'noident')`
	if got := e.scalar(pubTables); got != "items,noident" {
		t.Errorf("published tables: %s", got)
	}
	if got := e.scalar(idents); got != "items=f,noident=d,other=d" {
		t.Errorf("replica identities: %s", got)
	}

	// Published by hand, the tables serve: the failure was not remembered.
	e.exec(`ALTER PUBLICATION "` + pub + `" ADD TABLE other; ALTER TABLE other REPLICA IDENTITY FULL; ALTER TABLE noident REPLICA IDENTITY FULL`)
	o := e.follow("table", "other")
	o.equal(e.rows(otherQ))
	e.exec(`UPDATE other SET title = 'y' WHERE id = 1`)
	o.converge(otherQ)
	e.follow("table", "noident")

	closeSrv()
	if got := e.scalar(pubTables); got != "items,noident,other" {
		t.Errorf("after Close, published tables: %s", got)
	}
}

// newReplicationRole creates a role of TestManualPublication that may
// only log in, replicate and read the tables, and the publication pub of
// items and noident (made by hand, as an operator would); it returns the
// role's name and its URL for db.
func newReplicationRole(t *testing.T, db, pub string) (role, roleURL string) {
	t.Helper()
	var b [4]byte
	rand.Read(b[:])
	role = "electrictest_ro_" + hex.EncodeToString(b[:])
	pgtest.Exec(t, db, `CREATE TABLE items (id int PRIMARY KEY, title text);
		CREATE TABLE other (id int PRIMARY KEY, title text);
		CREATE TABLE noident (id int PRIMARY KEY, title text);
		INSERT INTO items VALUES (1, 'a'), (2, 'b');
		INSERT INTO other VALUES (1, 'x');
		ALTER TABLE items REPLICA IDENTITY FULL;
		CREATE PUBLICATION "`+pub+`" FOR TABLE items, noident;
		CREATE ROLE `+role+` LOGIN REPLICATION NOSUPERUSER PASSWORD 'pw';
		GRANT SELECT ON items, other, noident TO `+role)
	t.Cleanup(func() { pgtest.Exec(t, db, `DROP OWNED BY `+role+`; DROP ROLE `+role) })
	u, err := url.Parse(db)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(role, "pw")
	roleURL = u.String()
	return role, roleURL
}

// newRoleEnv serves db's shapes from the publication pub as the role at
// roleURL, with an env whose pool is db's own. closeSrv closes the
// server, once; the test's cleanup calls it too.
func newRoleEnv(t *testing.T, ctx context.Context, db, roleURL, pub string) (e *env, closeSrv func()) {
	t.Helper()
	srv, err := electrictest.New(ctx, electrictest.Options{DatabaseURL: roleURL, Publication: pub, LongPollTimeout: 500 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv)
	closed := false
	closeSrv = func() {
		if !closed {
			closed = true
			hs.CloseClientConnections()
			srv.Close()
			hs.Close()
		}
	}
	t.Cleanup(closeSrv)
	cfg, err := pgxpool.ParseConfig(db)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	e = &env{t: t, db: db, pool: pool, srv: &electrictest.TestServer{Server: srv, URL: hs.URL}}
	return e, closeSrv
}

// wantUnpublished: the shape of table is answered 503, retry-after 10,
// with a message that holds want.
func wantUnpublished(t *testing.T, e *env, table, want string) {
	t.Helper()
	r := e.shape("table", table, "offset", "-1")
	var body map[string]string
	json.Unmarshal(r.body, &body)
	if r.status != http.StatusServiceUnavailable || r.header.Get("retry-after") != "10" || !strings.Contains(body["message"], want) {
		t.Errorf("shape of %s: %d, retry-after %q, body %s; want 503, 10, a message with %q", table, r.status, r.header.Get("retry-after"), r.body, want)
	}
}
