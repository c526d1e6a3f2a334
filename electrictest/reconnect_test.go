package electrictest_test

import (
	"context"
	"errors"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// TestPostgresRestart: when Postgres restarts (a fast shutdown), the
// replication stream breaks and its temporary slot goes, so changes made
// meanwhile could be missed. The server answers 503 while it reconnects,
// then resumes with a new slot: clients of the old shapes get 409 and
// refetch, and changes after the restart reach them live.
func TestPostgresRestart(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cl, err := pgtest.Start(ctx, pgtest.Options{Install: os.Getenv("CI") == "true"})
	if errors.Is(err, pgtest.ErrNotInstalled) && os.Getenv("CI") != "true" {
		t.Skip(err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Stop() })
	e := newEnvOn(t, cl.URL(), electrictest.Options{},
		`CREATE TABLE items (id int PRIMARY KEY, title text)`,
		`INSERT INTO items VALUES (1, 'before')`)
	f := e.follow("table", "items")
	oldHandle := f.handle

	// A fast shutdown waits for every walsender to have its WAL
	// confirmed: a server that never acknowledged the WAL end between
	// transactions held it until pgtest gave up (60 s) and killed it.
	start := time.Now()
	if err := cl.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("the fast shutdown took %s: the walsender waited for an acknowledgement", d)
	}
	// Until replication is back, shape requests are 503 and health says
	// "starting"; then health is active again.
	deadline := time.Now().Add(30 * time.Second)
	for {
		r := e.request("GET", "/v1/health")
		if r.status == http.StatusOK {
			break
		}
		if r.status != http.StatusAccepted && r.err == nil {
			t.Fatalf("health during the reconnection: %v", r)
		}
		if time.Now().After(deadline) {
			t.Fatalf("replication not back 30 s after the restart: %v", r)
		}
		time.Sleep(50 * time.Millisecond)
	}
	e.pool.Reset() // the test's own connections ended with the restart
	e.exec(`INSERT INTO items VALUES (2, 'after')`)

	// The old shape is gone: the follower gets 409 and refetches.
	f.converge(`SELECT format('"public"."items"/"%s"', id), id::text AS id, title FROM items`)
	if f.refetch == 0 || f.handle == oldHandle {
		t.Errorf("after the restart: %d refetches, handle %s (was %s); want a 409 and a new handle", f.refetch, f.handle, oldHandle)
	}
	// Changes reach it live on the new slot.
	e.exec(`UPDATE items SET title = 'live' WHERE id = 1`)
	f.converge(`SELECT format('"public"."items"/"%s"', id), id::text AS id, title FROM items`)
}
