package electrictest_test

// §5.1 of the conformance suite: 409 must-refetch, also after a schema
// change or a dropped table.

import (
	"strings"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
)

func TestMustRefetch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 5 * time.Second}, itemsTable, `INSERT INTO items VALUES (1, 'a', 1, true)`)
	f := e.follow("table", "items")
	check409 := func(r response, wantHandle string) string {
		t.Helper()
		r.expectStatus(t, 409)
		if string(r.body) != mustRefBody {
			t.Errorf("409 body %q, want %s", r.body, mustRefBody)
		}
		hdrIs(t, r, "cache-control", cc409)
		hdrIs(t, r, "content-type", jsonCT)
		// No electric-cursor, to live requests too: Electric's
		// Response.error/3 leaves out the request's parameters, and
		// put_cursor_headers adds the cursor only when they say live.
		hdrAbsent(t, r, "electric-schema", "electric-up-to-date", "surrogate-control", "electric-cursor")
		h := r.header.Get("electric-handle")
		if wantHandle != "" && h != wantHandle {
			t.Errorf("409 electric-handle %q, want %q", h, wantHandle)
		}
		if !handleRE.MatchString(h) {
			t.Errorf("409 electric-handle %q", h)
		}
		return h
	}

	// Unknown handle: 409 with the current handle.
	check409(e.shape("table", "items", "offset", "0_inf", "handle", "123-456"), f.handle)
	check409(e.shape("table", "items", "offset", "0_inf", "handle", "123-456", "live", "true"), f.handle)
	// A handle of another definition: 409 with this definition's handle.
	g := e.follow("table", "items", "where", "id > 0")
	check409(e.shape("table", "items", "where", "id > 1", "offset", g.offset, "handle", g.handle), "")
	h2 := e.shape("table", "items", "where", "id > 1", "offset", "-1").header.Get("electric-handle")
	if h2 == "" || h2 == g.handle {
		t.Errorf("handle of where id > 1: %q", h2)
	}

	// Rotate() wakes a waiting live request with a 409 without a handle
	// (Electric's hold_until_change learns of the rotation without a
	// replacement) and max-age=1.
	done := goFetch(t, "GET", e.srv.URL+"/v1/shape?"+qs("table", "items", "offset", f.offset, "handle", f.handle, "live", "true"))
	time.Sleep(300 * time.Millisecond)
	n, err := e.srv.Rotate("items")
	if err != nil || n != 3 { // the shapes of items, where id > 0, where id > 1
		t.Fatalf("Rotate: %d shapes, %v", n, err)
	}
	var r response
	select {
	case r = <-done:
	case <-time.After(3 * time.Second):
		t.Fatal("a live request was not woken by Rotate")
	}
	r.expectStatus(t, 409)
	if string(r.body) != mustRefBody {
		t.Errorf("409 body %q, want %s", r.body, mustRefBody)
	}
	hdrIs(t, r, "cache-control", cc409NoHandle)
	hdrAbsent(t, r, "electric-handle", "electric-cursor", "electric-schema", "surrogate-control")
	// Non-live with the old handle: a new handle.
	newHandle := check409(e.shape("table", "items", "offset", f.offset, "handle", f.handle), "")
	if newHandle == f.handle {
		t.Fatal("409 after Rotate gives the old handle")
	}
	// The follower recovers from the 409 and converges.
	f.step(false)
	if f.refetch != 1 || f.handle != newHandle || f.offset != "-1" {
		t.Fatalf("after 409: refetch %d handle %q offset %s", f.refetch, f.handle, f.offset)
	}
	f.catchUp()
	f.equal(e.rows(`SELECT format('"public"."items"/"%s"', id), id::text, title, n::text, done::text FROM items`))

	// RotateHandle and a bad table name.
	if !e.srv.RotateHandle(newHandle) || e.srv.RotateHandle(newHandle) {
		t.Error("RotateHandle")
	}
	if _, err := e.srv.Rotate("a.b.c"); err == nil {
		t.Error("Rotate(a.b.c) did not fail")
	}
	if n, _ := e.srv.Rotate("public.nothing"); n != 0 {
		t.Errorf("Rotate(nothing) = %d", n)
	}
	check409(e.shape("table", "items", "offset", f.offset, "handle", newHandle), "")
}

func TestTruncate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 5 * time.Second}, itemsTable, `INSERT INTO items VALUES (1, 'a', 1, true), (2, 'b', 2, false)`)
	f := e.follow("table", "items")
	g := e.follow("table", "items", "where", "n > 1")
	done := goFetch(t, "GET", e.srv.URL+"/v1/shape?"+qs("table", "items", "offset", f.offset, "handle", f.handle, "live", "true"))
	time.Sleep(300 * time.Millisecond)
	e.exec(`TRUNCATE items`)
	var r response
	select {
	case r = <-done:
	case <-time.After(4 * time.Second):
		t.Fatal("TRUNCATE did not wake the live request")
	}
	r.expectStatus(t, 409)
	if string(r.body) != mustRefBody {
		t.Errorf("body %s", r.body)
	}
	// A live wait ended by the rotation: no handle, max-age=1 (§5.1).
	hdrAbsent(t, r, "electric-handle")
	hdrIs(t, r, "cache-control", cc409NoHandle)
	// The other shape of the table is invalidated too.
	e.shape("table", "items", "where", "n > 1", "offset", g.offset, "handle", g.handle).expectStatus(t, 409)

	// Refetch: the table as it is now.
	e.exec(`INSERT INTO items VALUES (3, 'c', 3, true)`)
	f.step(true)
	if f.refetch != 1 {
		t.Fatalf("refetch %d", f.refetch)
	}
	f.converge(`SELECT format('"public"."items"/"%s"', id), id::text, title, n::text, done::text FROM items`)
}

// §5.1: a schema change of the table invalidates its shapes (409), and the
// refetched shape has the new schema.
func TestSchemaChange(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 5 * time.Second}, itemsTable, `INSERT INTO items VALUES (1, 'a', 1, true)`)
	f := e.follow("table", "items")
	done := goFetch(t, "GET", e.srv.URL+"/v1/shape?"+qs("table", "items", "offset", f.offset, "handle", f.handle, "live", "true"))
	time.Sleep(300 * time.Millisecond)
	e.exec(`ALTER TABLE items ADD COLUMN extra text DEFAULT 'x'`)
	e.exec(`INSERT INTO items VALUES (2, 'b', 2, false, 'y')`)
	var r response
	select {
	case r = <-done:
	case <-time.After(4 * time.Second):
		t.Fatal("the schema change did not end the live request")
	}
	r.expectStatus(t, 409)
	if string(r.body) != mustRefBody || r.header.Get("electric-handle") == f.handle {
		t.Fatalf("409 %s handle %s", r.body, r.header.Get("electric-handle"))
	}
	f.step(false)
	f.catchUp()
	if !strings.Contains(f.schema, `"extra":{"type":"text"}`) {
		t.Errorf("schema after the change: %s", f.schema)
	}
	f.converge(`SELECT format('"public"."items"/"%s"', id), id::text, title, n::text, done::text, extra FROM items`)
}

// A dropped and re-created table has a new OID: shapes of the old one are
// invalidated (no change of it will ever arrive again), and the new table is
// published afresh, so its changes do arrive.
func TestDropAndRecreate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 5 * time.Second}, itemsTable, `INSERT INTO items VALUES (1, 'a', 1, true)`)
	f := e.follow("table", "items")
	done := goFetch(t, "GET", e.srv.URL+"/v1/shape?"+qs("table", "items", "offset", f.offset, "handle", f.handle, "live", "true"))
	time.Sleep(300 * time.Millisecond)
	e.exec(`DROP TABLE items`)
	e.exec(itemsTable)
	e.exec(`INSERT INTO items VALUES (7, 'new', 7, false)`)
	var r response
	select {
	case r = <-done:
	case <-time.After(4 * time.Second):
		t.Fatal("dropping the table did not end the live request")
	}
	r.expectStatus(t, 409)
	f.step(false)
	f.catchUp()
	e.exec(`INSERT INTO items VALUES (8, 'newer', 8, true)`)
	f.converge(`SELECT format('"public"."items"/"%s"', id), id::text, title, n::text, done::text FROM items`)
}
