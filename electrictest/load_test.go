package electrictest_test

// Many shapes, many pollers, chunked snapshots and logs, big transactions,
// writes racing the snapshot, and the fault injection options.

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
)

func TestManyShapes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 300 * time.Millisecond},
		`CREATE TABLE t1 (id int PRIMARY KEY, g int, v text)`,
		`CREATE TABLE t2 (id int PRIMARY KEY, g int, v text)`,
		`CREATE TABLE t3 (id int PRIMARY KEY, g int, v text)`,
		`INSERT INTO t1 SELECT i, i % 10, 'v' || i FROM generate_series(1, 200) i`,
		`INSERT INTO t2 SELECT i, i % 10, 'v' || i FROM generate_series(1, 200) i`,
		`INSERT INTO t3 SELECT i, i % 10, 'v' || i FROM generate_series(1, 200) i`)
	type sh struct {
		table, where string
		f            *follower
	}
	var shapes []*sh
	for _, tb := range []string{"t1", "t2", "t3"} {
		shapes = append(shapes, &sh{table: tb})
		for g := range 10 {
			shapes = append(shapes, &sh{table: tb, where: fmt.Sprintf("g = %d", g)})
		}
	}
	// All initial requests at once (raw), then followers one by one.
	var chans []<-chan response
	for _, s := range shapes {
		kv := []string{"table", s.table, "offset", "-1"}
		if s.where != "" {
			kv = append(kv, "where", s.where)
		}
		chans = append(chans, goFetch(t, "GET", e.srv.URL+"/v1/shape?"+qs(kv...)))
	}
	first := map[string]bool{}
	for i, ch := range chans {
		r := <-ch
		r.expectStatus(t, 200)
		if h := r.header.Get("electric-handle"); first[h] {
			t.Fatalf("shape %d: handle %s of another shape", i, h)
		} else {
			first[h] = true
		}
	}
	for _, s := range shapes {
		kv := []string{"table", s.table}
		if s.where != "" {
			kv = append(kv, "where", s.where)
		}
		s.f = e.follow(kv...)
		if !first[s.f.handle] {
			t.Fatalf("%s %s: handle %s, not the one of the first request", s.table, s.where, s.f.handle)
		}
	}
	e.exec(`UPDATE t1 SET g = (g + 1) % 10 WHERE id % 3 = 0;
		UPDATE t2 SET v = v || '!' WHERE id % 4 = 0;
		DELETE FROM t3 WHERE id % 5 = 0;
		INSERT INTO t1 SELECT i, i % 10, 'new' FROM generate_series(201, 250) i`)
	e.exec(`UPDATE t3 SET id = id + 1000, g = 0 WHERE id % 7 = 0`)
	for _, s := range shapes {
		q := fmt.Sprintf(`SELECT format('"public"."%s"/"%%s"', id), id::text, g::text, v FROM %s`, s.table, s.table)
		if s.where != "" {
			q += " WHERE " + s.where
		}
		s.f.converge(q)
	}
}

// All live pollers of a shape wake together on one commit.
func TestManyPollers(t *testing.T) {
	t.Parallel()
	const pollers = 300
	e := newEnv(t, electrictest.Options{LongPollTimeout: 20 * time.Second}, itemsTable)
	f := e.follow("table", "items")
	u := e.srv.URL + "/v1/shape?" + qs("table", "items", "offset", f.offset, "handle", f.handle, "live", "true")
	var started sync.WaitGroup
	results := make(chan response, pollers)
	for range pollers {
		started.Add(1)
		go func() {
			started.Done()
			r, err := fetch("GET", u)
			if err != nil {
				t.Error(err)
			}
			results <- r
		}()
	}
	started.Wait()
	time.Sleep(time.Second) // let them all reach the server and wait
	select {
	case r := <-results:
		t.Fatalf("a poller returned before any commit: %v", r)
	default:
	}
	commit := time.Now()
	e.exec(`INSERT INTO items VALUES (1, 'a', 1, true)`)
	var first []byte
	var slowest time.Duration
	for i := range pollers {
		var r response
		select {
		case r = <-results:
		case <-time.After(15 * time.Second):
			t.Fatalf("only %d of %d pollers woke up", i, pollers)
		}
		if r.status != 200 {
			t.Fatalf("poller: %v", r)
		}
		if first == nil {
			first = r.body
		} else if string(r.body) != string(first) {
			t.Fatalf("pollers got different bodies:\n%s\n%s", first, r.body)
		}
		slowest = max(slowest, time.Since(commit))
	}
	if m := (response{body: first}).msgs(t); len(m) != 2 || m[0].key() != itemKey("1") {
		t.Fatalf("body %s", first)
	}
	if slowest > 5*time.Second {
		t.Errorf("the last of %d pollers answered %v after the commit", pollers, slowest)
	}
	t.Logf("%d pollers woken within %v of the commit", pollers, slowest)
}

// A snapshot bigger than ChunkBytes is served in chunks 0_0, 0_1, ...; only
// the last one has snapshot-end and none is up-to-date.
func TestMultiChunkSnapshot(t *testing.T) {
	t.Parallel()
	const chunkBytes = 1024
	e := newEnv(t, electrictest.Options{ChunkBytes: chunkBytes}, itemsTable,
		`INSERT INTO items SELECT i, 'title ' || i, i, i % 2 = 0 FROM generate_series(1, 500) i`)
	f := e.newFollower("table", "items")
	var offsets []string
	for {
		r := e.request("GET", "/v1/shape?"+f.query(false))
		r.expectStatus(t, 200)
		wantCC := ccCatchUp
		if f.offset == "-1" {
			wantCC = ccInitial
		}
		hdrIs(t, r, "cache-control", wantCC)
		f.handle, f.offset = r.header.Get("electric-handle"), r.header.Get("electric-offset")
		msgs := r.msgs(t)
		f.apply(msgs)
		if _, ok := r.header["Electric-Up-To-Date"]; ok {
			if len(msgs) != 1 || msgs[0].control() != "up-to-date" || f.offset != "0_inf" {
				t.Fatalf("up-to-date response %s at %s", r.body, f.offset)
			}
			break
		}
		offsets = append(offsets, f.offset)
		hdrIs(t, r, "electric-has-data", "true")
		if len(r.body) > chunkBytes+200 {
			t.Errorf("chunk of %d bytes with ChunkBytes %d", len(r.body), chunkBytes)
		}
		isEnd := msgs[len(msgs)-1].control() == "snapshot-end"
		for _, m := range msgs[:len(msgs)-1] {
			if m.control() != "" {
				t.Fatalf("control message inside a chunk: %v", m)
			}
		}
		if want := "0_" + strconv.Itoa(len(offsets)-1); f.offset != want {
			t.Fatalf("chunk %d has offset %s, want %s", len(offsets), f.offset, want)
		}
		if isEnd != (len(f.rows) == 500) {
			t.Fatalf("snapshot-end after %d rows", len(f.rows))
		}
	}
	if len(offsets) < 20 {
		t.Errorf("only %d chunks", len(offsets))
	}
	f.equal(e.rows(`SELECT format('"public"."items"/"%s"', id), id::text, title, n::text, done::text FROM items`))
	// A chunk can be fetched again, identically.
	a := e.shape("table", "items", "offset", "0_3", "handle", f.handle)
	b := e.shape("table", "items", "offset", "0_3", "handle", f.handle)
	if a.status != 200 || string(a.body) != string(b.body) || a.header.Get("electric-offset") != "0_4" {
		t.Errorf("chunk 0_4 twice: %v / %v", a, b)
	}
}

// A transaction with many changes: one lsn, distinct increasing
// op_positions, last on the last one only, the log served in bounded
// chunks, and the end result equal to the table.
func TestBigTransaction(t *testing.T) {
	t.Parallel()
	const chunkBytes = 8192
	e := newEnv(t, electrictest.Options{ChunkBytes: chunkBytes, LongPollTimeout: 500 * time.Millisecond},
		`CREATE TABLE items (id int PRIMARY KEY, v text, n int)`,
		`INSERT INTO items SELECT i, 'v' || i, i FROM generate_series(1, 1000) i`)
	f := e.follow("table", "items")
	g := e.follow("table", "items", "where", "n % 2 = 0", "replica", "full")
	e.exec(`BEGIN;
		INSERT INTO items SELECT i, 'v' || i, i FROM generate_series(1001, 3000) i;
		UPDATE items SET n = n + 1 WHERE id % 3 = 0;
		DELETE FROM items WHERE id % 5 = 0;
		UPDATE items SET id = id + 10000 WHERE id % 7 = 0;
		COMMIT`)
	for _, fl := range []*follower{f, g} {
		before := len(fl.log)
		q := `SELECT format('"public"."items"/"%s"', id), id::text, v, n::text FROM items`
		if fl == g {
			q += " WHERE n % 2 = 0"
		}
		fl.converge(q)
		changes := fl.log[before:]
		if len(changes) < 100 {
			t.Fatalf("only %d changes", len(changes))
		}
		lsn := changes[0].headers()["lsn"]
		prev := -1.0
		for i, m := range changes {
			h := m.headers()
			if h["lsn"] != lsn {
				t.Fatalf("change %d has lsn %v, want %v", i, h["lsn"], lsn)
			}
			pos, _ := h["op_position"].(float64)
			if pos <= prev {
				t.Fatalf("op_position %v after %v", pos, prev)
			}
			prev = pos
			if _, last := h["last"]; last != (i == len(changes)-1) {
				t.Fatalf("change %d of %d: last=%v", i, len(changes), last)
			}
		}
	}
	// The catch-up of a new client at 0_inf reads the transaction in chunks
	// that are not up-to-date until the last one.
	r := e.shape("table", "items", "offset", "0_inf", "handle", f.handle)
	n := 0
	for {
		r.expectStatus(t, 200)
		n++
		if _, ok := r.header["Electric-Up-To-Date"]; ok {
			break
		}
		if len(r.body) > chunkBytes+1000 {
			t.Errorf("log chunk of %d bytes", len(r.body))
		}
		r = e.shape("table", "items", "offset", r.header.Get("electric-offset"), "handle", f.handle)
	}
	if n < 10 {
		t.Errorf("the transaction came in %d responses", n)
	}
}

// Writes racing shape creation and the snapshot: nothing lost, nothing
// doubled (the follower fails on an insert of a present row, or an update
// or delete of an absent one), and the end state equals the table.
func TestConcurrentWritesDuringSnapshot(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 300 * time.Millisecond},
		`CREATE TABLE items (id int PRIMARY KEY, v int, g int)`,
		`INSERT INTO items SELECT i, i, i % 10 FROM generate_series(1, 10000) i`)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	var ops atomic.Int64
	for w := 1; w <= 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			next := 100000 * w
			for ctx.Err() == nil {
				var stmts []string
				for k := rng.IntN(8); k >= 0; k-- {
					id := 1 + rng.IntN(10000)
					switch rng.IntN(5) {
					case 0:
						next++
						stmts = append(stmts, fmt.Sprintf("INSERT INTO items VALUES (%d, %d, %d)", next, rng.IntN(100), rng.IntN(10)))
					case 1, 2:
						stmts = append(stmts, fmt.Sprintf("UPDATE items SET v = v + 1, g = %d WHERE id = %d", rng.IntN(10), id))
					case 3:
						stmts = append(stmts, fmt.Sprintf("DELETE FROM items WHERE id = %d", id))
					case 4:
						stmts = append(stmts, fmt.Sprintf("UPDATE items SET id = id + 1000000 WHERE id = %d", id))
					}
				}
				sql := strings.Join(stmts, ";")
				if len(stmts) > 1 {
					sql = "BEGIN;" + sql + ";COMMIT"
				}
				if _, err := e.pool.Exec(ctx, sql); err != nil && ctx.Err() == nil {
					t.Errorf("writer: %v", err)
					return
				}
				ops.Add(int64(len(stmts)))
				// Each transaction costs the server a query per filtered
				// shape: keep the replication lag reasonable.
				time.Sleep(3 * time.Millisecond)
			}
		}()
	}
	defs := [][]string{
		{"table", "items"},
		{"table", "items", "where", "g < 5"},
		{"table", "items", "replica", "full"},
		{"table", "items", "columns", "id,v"},
		{"table", "items", "where", "v % 3 = 0", "replica", "full"},
		{"table", "items", "where", "g = 7"},
	}
	var followers []*follower
	for _, d := range defs {
		time.Sleep(150 * time.Millisecond)
		f := e.follow(d...)
		followers = append(followers, f)
		f.step(true) // some changes
	}
	time.Sleep(500 * time.Millisecond)
	cancel()
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("%d write operations during the snapshots", ops.Load())
	queries := []string{
		`SELECT format('"public"."items"/"%s"', id), id::text, v::text, g::text FROM items`,
		`SELECT format('"public"."items"/"%s"', id), id::text, v::text, g::text FROM items WHERE g < 5`,
		`SELECT format('"public"."items"/"%s"', id), id::text, v::text, g::text FROM items`,
		`SELECT format('"public"."items"/"%s"', id), id::text, v::text FROM items`,
		`SELECT format('"public"."items"/"%s"', id), id::text, v::text, g::text FROM items WHERE v % 3 = 0`,
		`SELECT format('"public"."items"/"%s"', id), id::text, v::text, g::text FROM items WHERE g = 7`,
	}
	for i, f := range followers {
		f.converge(queries[i])
	}
}

func TestFaults(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, itemsTable,
		`INSERT INTO items SELECT i, 'title ' || i, i, true FROM generate_series(1, 100) i`)
	q := qs("table", "items", "offset", "-1")

	e.srv.FailNext(2, 503, 2*time.Second)
	for range 2 {
		r := e.request("GET", "/v1/shape?"+q)
		r.expectStatus(t, 503)
		hdrIs(t, r, "retry-after", "2")
		hdrIs(t, r, "cache-control", "no-store")
		hdrIs(t, r, "content-type", jsonCT)
		if !strings.HasPrefix(string(r.body), "{") {
			t.Errorf("503 body %q", r.body)
		}
	}
	// Health, OPTIONS and root are not affected, and the third request is fine.
	e.srv.FailNext(1, 0, 0)
	e.request("GET", "/v1/health").expectStatus(t, 200)
	e.request("OPTIONS", "/v1/shape").expectStatus(t, 204)
	r := e.request("GET", "/v1/shape?"+q)
	r.expectStatus(t, 503)
	hdrAbsent(t, r, "retry-after")
	e.request("GET", "/v1/shape?"+q).expectStatus(t, 200)
	e.srv.FailNext(1, 500, 1500*time.Millisecond)
	r = e.request("GET", "/v1/shape?"+q)
	r.expectStatus(t, 500)
	hdrIs(t, r, "retry-after", "2")

	// CutNext: the body stops after N bytes and the connection is cut.
	full := e.request("GET", "/v1/shape?"+q)
	full.expectStatus(t, 200)
	e.srv.CutNext(1, 100)
	c := e.request("GET", "/v1/shape?"+q)
	if c.status != 200 || c.err == nil || len(c.body) > 100 || string(c.body) != string(full.body[:len(c.body)]) {
		t.Errorf("cut response: status %d, %d bytes, err %v", c.status, len(c.body), c.err)
	}
	if r := e.request("GET", "/v1/shape?"+q); r.err != nil || string(r.body) != string(full.body) {
		t.Errorf("after the cut: %v", r.err)
	}

	// SetDelay delays every shape response.
	e.srv.SetDelay(400 * time.Millisecond)
	r = e.request("GET", "/v1/shape?"+q)
	r.expectStatus(t, 200)
	if r.elapsed < 400*time.Millisecond {
		t.Errorf("delayed response after %v", r.elapsed)
	}
	e.srv.SetDelay(0)
	if r = e.request("GET", "/v1/shape?"+q); r.elapsed > 300*time.Millisecond {
		t.Errorf("undelayed response after %v", r.elapsed)
	}
}
