package electrictest_test

// The conformance suite: raw HTTP (net/http, no client library) against an
// electrictest server over a real Postgres, with real writes, for the
// scenarios of electric-protocol.md §0–§5, §7, §8.1–8.2. Every test gets its
// own database (pgtest.NewDB) and server, so they run in parallel.
//
// This file holds initial sync, live mode, cursors, ETags, offset=now and
// changes_only; routes_test.go, refetch_test.go and sse_test.go the rest of
// the suite, and env_test.go and follower_test.go its harness.

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
)

// ---------------------------------------------------------------------------
// §3.1 Initial sync

const itemsTable = `CREATE TABLE items (id int8 PRIMARY KEY, title text NOT NULL, n int4, done bool)`

func TestInitialSync(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, itemsTable,
		`INSERT INTO items VALUES (1, 'a', 10, true), (2, 'b', NULL, false), (3, 'c', 30, NULL)`)

	r := e.shape("table", "items", "offset", "-1")
	r.expectStatus(t, 200)
	hdrIs(t, r, "content-type", jsonCT)
	hdrIs(t, r, "electric-offset", "0_0")
	hdrIs(t, r, "electric-has-data", "true")
	hdrIs(t, r, "cache-control", ccInitial)
	hdrIs(t, r, "access-control-allow-origin", "*")
	hdrIs(t, r, "access-control-expose-headers", exposeHdrs)
	hdrIs(t, r, "access-control-allow-methods", "GET, POST, HEAD, DELETE, OPTIONS")
	hdrAbsent(t, r, "electric-up-to-date", "electric-cursor", "electric-snapshot", "surrogate-control")
	if !strings.HasPrefix(r.header.Get("electric-server"), "ElectricSQL/") {
		t.Errorf("electric-server %q", r.header.Get("electric-server"))
	}
	if r.header.Get("x-request-id") == "" {
		t.Error("no x-request-id")
	}
	handle := r.header.Get("electric-handle")
	if !handleRE.MatchString(handle) {
		t.Fatalf("handle %q does not look like <phash2>-<unix µs>", handle)
	}
	hdrIs(t, r, "etag", `"`+handle+`:-1:0_0"`)
	mustJSON(t, r.header.Get("electric-schema"),
		`{"id":{"type":"int8","pk_index":0,"not_null":true},"title":{"type":"text","not_null":true},"n":{"type":"int4"},"done":{"type":"bool"}}`)

	checkInitialBody(t, r)

	// The same definition again: the same shape, the same body.
	r2 := e.shape("table", "items", "offset", "-1", "handle", "ignored-with-offset-1")
	r2.expectStatus(t, 200)
	if r2.header.Get("electric-handle") != handle || !bytes.Equal(r2.body, r.body) {
		t.Errorf("second initial request: handle %q body %s", r2.header.Get("electric-handle"), r2.body)
	}

	checkCatchUp(t, e, r, handle)
	checkHEAD(t, e, r)
}

// checkInitialBody checks TestInitialSync's initial body: the three rows,
// then a snapshot-end with xmin, xmax and xip_list as decimal strings.
func checkInitialBody(t *testing.T, r response) {
	t.Helper()
	msgs := r.msgs(t)
	if len(msgs) != 4 {
		t.Fatalf("want 3 inserts + snapshot-end, got %s", r.body)
	}
	want := []string{
		`{"key":"\"public\".\"items\"/\"1\"","value":{"id":"1","title":"a","n":"10","done":"true"},"headers":{"operation":"insert","relation":["public","items"]}}`,
		`{"key":"\"public\".\"items\"/\"2\"","value":{"id":"2","title":"b","n":null,"done":"false"},"headers":{"operation":"insert","relation":["public","items"]}}`,
		`{"key":"\"public\".\"items\"/\"3\"","value":{"id":"3","title":"c","n":"30","done":null},"headers":{"operation":"insert","relation":["public","items"]}}`,
	}
	got := map[string]string{}
	for _, m := range msgs[:3] {
		b, _ := json.Marshal(m)
		got[m.key()] = string(b)
	}
	for _, w := range want {
		var wm msg
		json.Unmarshal([]byte(w), &wm)
		mustJSON(t, got[wm.key()], w)
	}
	end := msgs[3].headers()
	if msgs[3].control() != "snapshot-end" || len(msgs[3]) != 1 {
		t.Fatalf("last message %v, want snapshot-end", msgs[3])
	}
	for _, k := range []string{"xmin", "xmax"} {
		if s, _ := end[k].(string); !digitsRE.MatchString(s) {
			t.Errorf("snapshot-end %s = %v, want a decimal string", k, end[k])
		}
	}
	if xip, ok := end["xip_list"].([]any); !ok {
		t.Errorf("snapshot-end xip_list = %v", end["xip_list"])
	} else {
		for _, x := range xip {
			if s, _ := x.(string); !digitsRE.MatchString(s) {
				t.Errorf("xip_list element %v is not a decimal string", x)
			}
		}
	}
	if len(end) != 4 {
		t.Errorf("snapshot-end headers %v", end)
	}
}

// checkCatchUp: from 0_0, r's shape catches up to up-to-date at 0_inf,
// with no changes; at 0_inf, and at 0_00 (leading zeros are tolerated:
// 0_00 is 0_0), it is still up-to-date.
func checkCatchUp(t *testing.T, e *env, r response, handle string) {
	t.Helper()
	c := e.shape("table", "items", "offset", "0_0", "handle", handle)
	c.expectStatus(t, 200)
	hdrIs(t, c, "electric-offset", "0_inf")
	hdrIs(t, c, "electric-handle", handle)
	hdrIs(t, c, "electric-up-to-date", "")
	hdrIs(t, c, "cache-control", ccCatchUp)
	hdrAbsent(t, c, "electric-cursor")
	mustJSON(t, c.header.Get("electric-schema"), r.header.Get("electric-schema"))
	cm := c.msgs(t)
	if len(cm) != 1 || cm[0].control() != "up-to-date" || len(cm[0].headers()) != 2 {
		t.Fatalf("catch-up body %s", c.body)
	}
	if s, _ := cm[0].headers()["global_last_seen_lsn"].(string); !digitsRE.MatchString(s) {
		t.Errorf("global_last_seen_lsn %v", cm[0].headers()["global_last_seen_lsn"])
	}
	if et := c.header.Get("etag"); !strings.HasPrefix(et, `"`+handle+`:0_0:0_inf`) {
		t.Errorf("etag %s", et)
	}
	// At 0_inf: still up-to-date.
	c2 := e.shape("table", "items", "offset", "0_inf", "handle", handle)
	c2.expectStatus(t, 200)
	hdrIs(t, c2, "electric-offset", "0_inf")
	hdrIs(t, c2, "electric-up-to-date", "")
	// Leading zeros are tolerated (0_00 is 0_0).
	c3 := e.shape("table", "items", "offset", "0_00", "handle", handle)
	c3.expectStatus(t, 200)
	hdrIs(t, c3, "electric-offset", "0_inf")
}

// checkHEAD: HEAD of the initial request answers r's headers, no body.
func checkHEAD(t *testing.T, e *env, r response) {
	t.Helper()
	h := e.request("HEAD", "/v1/shape?"+qs("table", "items", "offset", "-1"))
	h.expectStatus(t, 200)
	if len(h.body) != 0 {
		t.Errorf("HEAD body %q", h.body)
	}
	for _, k := range []string{"electric-handle", "electric-offset", "electric-schema", "etag", "cache-control", "content-type", "electric-has-data"} {
		if h.header.Get(k) != r.header.Get(k) {
			t.Errorf("HEAD %s = %q, GET had %q", k, h.header.Get(k), r.header.Get(k))
		}
	}
}

func TestInitialSyncEmptyTable(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, itemsTable)
	r := e.shape("table", "items", "offset", "-1")
	r.expectStatus(t, 200)
	m := r.msgs(t)
	if len(m) != 1 || m[0].control() != "snapshot-end" {
		t.Fatalf("empty table: body %s, want only snapshot-end", r.body)
	}
	hdrIs(t, r, "electric-offset", "0_0")
	hdrAbsent(t, r, "electric-up-to-date")
	f := e.follow("table", "items")
	if len(f.rows) != 0 || f.offset != "0_inf" {
		t.Fatalf("rows %v offset %s", f.rows, f.offset)
	}
}

// ---------------------------------------------------------------------------
// §3.2 Live mode

func TestLiveLongPoll(t *testing.T) {
	t.Parallel()
	const timeout = 3 * time.Second
	e := newEnv(t, electrictest.Options{LongPollTimeout: timeout}, itemsTable)
	f := e.follow("table", "items")
	handle, start := f.handle, f.offset

	// A live request that starts before the commit returns the change.
	done := goFetch(t, "GET", e.srv.URL+"/v1/shape?"+qs("table", "items", "offset", start, "handle", handle, "live", "true", "cursor", ""))
	time.Sleep(300 * time.Millisecond)
	var xid string
	commitAt := time.Now()
	tx, err := e.pool.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	tx.Exec(context.Background(), `INSERT INTO items VALUES (7, 'seven', 7, true)`)
	tx.QueryRow(context.Background(), `SELECT pg_current_xact_id()::text`).Scan(&xid)
	if err := tx.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	var r response
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("live request did not return")
	}
	if lat := time.Since(commitAt); lat > timeout-time.Second {
		t.Errorf("live request returned %v after the commit: it was not woken by it", lat)
	}
	r.expectStatus(t, 200)
	hdrIs(t, r, "electric-handle", handle)
	hdrIs(t, r, "electric-has-data", "true")
	hdrIs(t, r, "electric-up-to-date", "")
	hdrIs(t, r, "cache-control", ccLive)
	hdrAbsent(t, r, "electric-schema")
	if c := r.header.Get("electric-cursor"); !digitsRE.MatchString(c) {
		t.Errorf("electric-cursor %q", c)
	}
	msgs := r.msgs(t)
	if len(msgs) != 2 {
		t.Fatalf("body %s", r.body)
	}
	h := msgs[0].headers()
	lsn, _ := h["lsn"].(string)
	if !digitsRE.MatchString(lsn) || lsn == "0" {
		t.Fatalf("lsn %v", h["lsn"])
	}
	mustJSON(t, mustMarshal(msgs[0]), fmt.Sprintf(
		`{"key":"\"public\".\"items\"/\"7\"","value":{"id":"7","title":"seven","n":"7","done":"t"},
		  "headers":{"operation":"insert","relation":["public","items"],"lsn":%q,"op_position":0,"txids":[%s],"last":true}}`, lsn, xid))
	mustJSON(t, mustMarshal(msgs[1]), fmt.Sprintf(`{"headers":{"control":"up-to-date","global_last_seen_lsn":%q}}`, lsn))
	hdrIs(t, r, "electric-offset", lsn+"_0")
	off := lsn + "_0"

	// Nothing more: the live request times out with 200 + up-to-date,
	// electric-has-data: false and the offset unchanged.
	r = e.shape("table", "items", "offset", off, "handle", handle, "live", "true", "cursor", r.header.Get("electric-cursor"))
	r.expectStatus(t, 200)
	if r.elapsed < timeout-200*time.Millisecond {
		t.Errorf("live request returned after %v, before the long-poll timeout %v", r.elapsed, timeout)
	}
	hdrIs(t, r, "electric-offset", off)
	hdrIs(t, r, "electric-has-data", "false")
	hdrIs(t, r, "electric-up-to-date", "")
	hdrIs(t, r, "cache-control", ccLive)
	hdrAbsent(t, r, "electric-schema")
	mustJSON(t, string(r.body), fmt.Sprintf(`[{"headers":{"control":"up-to-date","global_last_seen_lsn":%q}}]`, lsn))
	if et := strings.Split(strings.Trim(r.header.Get("etag"), `"`), ":"); len(et) != 4 {
		t.Errorf("no-change etag %q should have 4 segments", r.header.Get("etag"))
	}

	// live=1 and a bare &live count as live too; live=false does not.
	for _, q := range []string{"&live=1", "&live", "&live=yes"} {
		r := e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "0_0", "handle", handle)+q)
		r.expectStatus(t, 200)
		if r.header.Get("electric-cursor") == "" {
			t.Errorf("%s: not treated as live", q)
		}
	}
	r = e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "0_0", "handle", handle, "live", "false"))
	r.expectStatus(t, 200)
	hdrAbsent(t, r, "electric-cursor")
	if r.header.Get("electric-schema") == "" {
		t.Error("live=false: no electric-schema")
	}
}

// §3.3 electric-cursor.
func TestCursor(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 2 * time.Second}, itemsTable)
	f := e.follow("table", "items")
	// One change, so live requests from 0_inf answer at once.
	e.exec(`INSERT INTO items VALUES (1, 'a', 1, true)`)
	f.liveUntil(5*time.Second, func() bool { return len(f.rows) == 1 })
	epoch := time.Date(2024, 10, 9, 0, 0, 0, 0, time.UTC)
	live := func(cursor string, withCursor bool) int64 {
		kv := []string{"table", "items", "offset", "0_inf", "handle", f.handle, "live", "true"}
		if withCursor {
			kv = append(kv, "cursor", cursor)
		}
		r := e.shape(kv...)
		r.expectStatus(t, 200)
		c, err := strconv.ParseInt(r.header.Get("electric-cursor"), 10, 64)
		if err != nil {
			t.Fatalf("electric-cursor %q", r.header.Get("electric-cursor"))
		}
		return c
	}
	now := func() int64 { return int64(time.Since(epoch) / time.Second) }

	before := now()
	c := live("", false)
	after := now()
	if c%2 != 0 || c < before || c > after+2 {
		t.Errorf("cursor %d: want the next multiple of 2 s since 2024-10-09 in [%d, %d]", c, before, after+2)
	}
	for _, garbage := range []string{"", "abc", "-5", "1.5"} {
		if g := live(garbage, true); g%2 != 0 || g < before || g > now()+2 {
			t.Errorf("cursor=%q: got %d, want the interval bucket", garbage, g)
		}
	}
	// Echoing the cursor never gives it back.
	for range 3 {
		n := live(strconv.FormatInt(c, 10), true)
		if n <= c || n > c+3600 {
			t.Errorf("cursor=%d: got %d, want in (cursor, cursor+3600]", c, n)
		}
		c = n
	}
	big := int64(99_999_999_999)
	if n := live(strconv.FormatInt(big, 10), true); n <= big || n > big+3600 {
		t.Errorf("cursor=%d: got %d", big, n)
	}

	// A long-poll timeout under a second gives cursor 0.
	srv := electrictest.StartTest(t, electrictest.Options{DatabaseURL: e.db, LongPollTimeout: 500 * time.Millisecond})
	r := doRequest(t, "GET", srv.URL+"/v1/shape?"+qs("table", "items", "offset", "-1"))
	r = doRequest(t, "GET", srv.URL+"/v1/shape?"+qs("table", "items", "offset", "0_0", "handle", r.header.Get("electric-handle"), "live", "true"))
	r.expectStatus(t, 200)
	hdrIs(t, r, "electric-cursor", "0")
}

// ---------------------------------------------------------------------------
// §2 ETag / If-None-Match, §3.1 HEAD

func TestETag(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, itemsTable, `INSERT INTO items VALUES (1, 'a', 1, true)`)
	r := e.shape("table", "items", "offset", "-1")
	r.expectStatus(t, 200)
	handle := r.header.Get("electric-handle")
	etag := r.header.Get("etag")

	nm := e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "-1"), "If-None-Match", etag)
	nm.expectStatus(t, 304)
	if len(nm.body) != 0 {
		t.Errorf("304 with a body: %q", nm.body)
	}
	hdrIs(t, nm, "etag", etag)
	hdrIs(t, nm, "electric-handle", handle)
	hdrIs(t, nm, "electric-offset", "0_0")
	hdrIs(t, nm, "cache-control", ccInitial)
	hdrAbsent(t, nm, "electric-schema")

	// A list, unquoted entries, and a non-matching tag.
	e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "-1"), "If-None-Match", `"nope", `+etag).expectStatus(t, 304)
	e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "-1"), "If-None-Match", strings.Trim(etag, `"`)).expectStatus(t, 304)
	e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "-1"), "If-None-Match", `"`+handle+`:-1:0_1"`).expectStatus(t, 200)

	// Catch-up responses with data.
	e.exec(`INSERT INTO items VALUES (2, 'b', 2, false)`)
	f := e.follow("table", "items")
	f.converge(`SELECT format('"public"."items"/"%s"', id), id::text, title, n::text, done::text FROM items`)
	c := e.shape("table", "items", "offset", "0_inf", "handle", handle)
	c.expectStatus(t, 200)
	if len(c.msgs(t)) != 2 {
		t.Fatalf("catch-up %s", c.body)
	}
	ct := c.header.Get("etag")
	if want := `"` + handle + `:0_inf:` + c.header.Get("electric-offset") + `"`; ct != want {
		t.Errorf("etag %s, want %s", ct, want)
	}
	nm = e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "0_inf", "handle", handle), "If-None-Match", ct)
	nm.expectStatus(t, 304)
	hdrAbsent(t, nm, "electric-schema")
	hdrIs(t, nm, "cache-control", ccCatchUp)
	// Live with data: 304 carries electric-cursor.
	nm = e.request("GET", "/v1/shape?"+qs("table", "items", "offset", "0_inf", "handle", handle, "live", "true"), "If-None-Match", ct)
	nm.expectStatus(t, 304)
	if nm.header.Get("electric-cursor") == "" {
		t.Error("304 to a live request without electric-cursor")
	}
	hdrIs(t, nm, "cache-control", ccLive)

	// A non-live catch-up that finds nothing new is an ordinary log
	// response in Electric (do_serve_shape_log): has-data true, a 3-part
	// etag, revalidatable.
	u := e.shape("table", "items", "offset", f.offset, "handle", handle)
	u.expectStatus(t, 200)
	hdrIs(t, u, "electric-has-data", "true")
	hdrIs(t, u, "electric-up-to-date", "")
	if want := `"` + handle + ":" + f.offset + ":" + f.offset + `"`; u.header.Get("etag") != want {
		t.Errorf("catch-up with nothing new: etag %s, want %s", u.header.Get("etag"), want)
	}
	e.request("GET", "/v1/shape?"+qs("table", "items", "offset", f.offset, "handle", handle), "If-None-Match", u.header.Get("etag")).expectStatus(t, 304)

	// No-change responses (offset=now, a live timeout) can never be
	// revalidated: has-data false and a 4th etag segment.
	for _, kv := range [][]string{
		{"table", "items", "offset", "now"},
		{"table", "items", "offset", f.offset, "handle", handle, "live", "true"},
	} {
		u := e.shape(kv...)
		u.expectStatus(t, 200)
		hdrIs(t, u, "electric-has-data", "false")
		if parts := strings.Split(strings.Trim(u.header.Get("etag"), `"`), ":"); len(parts) != 4 {
			t.Errorf("%v: etag %s, want 4 parts", kv, u.header.Get("etag"))
		}
		e.request("GET", "/v1/shape?"+qs(kv...), "If-None-Match", u.header.Get("etag")).expectStatus(t, 200)
	}
}

// ---------------------------------------------------------------------------
// §1.2 offset=now, §1 log=changes_only

func TestOffsetNow(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, itemsTable, `INSERT INTO items VALUES (1, 'a', 1, true)`)
	r := e.shape("table", "items", "offset", "now", "handle", "whatever")
	r.expectStatus(t, 200)
	hdrIs(t, r, "electric-offset", "0_inf")
	hdrIs(t, r, "electric-has-data", "false")
	hdrIs(t, r, "electric-up-to-date", "")
	m := r.msgs(t)
	if len(m) != 1 || m[0].control() != "up-to-date" {
		t.Fatalf("offset=now body %s", r.body)
	}
	if r.header.Get("electric-schema") == "" {
		t.Error("offset=now: no electric-schema")
	}
	handle := r.header.Get("electric-handle")
	if !handleRE.MatchString(handle) {
		t.Fatalf("handle %q", handle)
	}

	// Continue from there: only changes after it.
	e.exec(`INSERT INTO items VALUES (2, 'b', 2, false)`)
	f := e.newFollower("table", "items")
	f.handle, f.offset, f.lenient = handle, "0_inf", false
	f.liveUntil(5*time.Second, func() bool { return len(f.rows) == 1 })
	if _, ok := f.rows[itemKey("2")]; !ok {
		t.Fatalf("rows %v", f.rows)
	}
	// offset=now again: the latest offset of the shape.
	r = e.shape("table", "items", "offset", "now")
	r.expectStatus(t, 200)
	hdrIs(t, r, "electric-offset", f.offset)
	hdrIs(t, r, "electric-handle", handle)
	hdrIs(t, r, "electric-has-data", "false")
}

func TestChangesOnly(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, itemsTable, `INSERT INTO items VALUES (1, 'a', 1, true), (2, 'b', 2, true)`)
	r := e.shape("table", "items", "offset", "-1", "log", "changes_only")
	r.expectStatus(t, 200)
	m := r.msgs(t)
	if len(m) != 1 || m[0].control() != "snapshot-end" {
		t.Fatalf("changes_only initial body %s, want only snapshot-end", r.body)
	}
	full := e.shape("table", "items", "offset", "-1", "log", "full")
	if full.header.Get("electric-handle") == r.header.Get("electric-handle") {
		t.Error("log=full and log=changes_only share a shape")
	}
	if len(full.msgs(t)) != 3 {
		t.Errorf("log=full body %s", full.body)
	}
	f := e.newFollower("table", "items", "log", "changes_only")
	f.lenient = true
	f.catchUp()
	if len(f.rows) != 0 {
		t.Fatalf("rows %v", f.rows)
	}
	e.exec(`UPDATE items SET title = 'A' WHERE id = 1; INSERT INTO items VALUES (3, 'c', 3, false)`)
	var got []msg
	for len(got) < 2 {
		got = append(got, f.live()...)
	}
	if got[0].op() != "update" || got[0].key() != itemKey("1") || got[1].op() != "insert" || got[1].key() != itemKey("3") {
		t.Fatalf("changes %v", got)
	}
}
