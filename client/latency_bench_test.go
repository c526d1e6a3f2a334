package client

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shapeseal/shapeseal/electrictest"
)

// BenchmarkLiveLatency measures commit-to-client latency in live mode,
// SSE (Options.LiveSSE) against long polling, with 1 and 1,000 followers
// per transport, against electrictest over a real PostgreSQL: from the
// moment an INSERT's COMMIT returns to the moment each follower's Shape
// has committed the new row (its Subscribe callback runs).
//
// Both transports follow at once, each its own table of one server (so
// each its own shape), and the rounds alternate between them (SSE first
// in odd rounds, long polls first in even ones), so that both see the same
// machine at the same minutes: read the ratios, not the milliseconds.
// Before each INSERT the benchmark waits for every follower to be back in
// a live request (20 ms + 20 µs per follower). A follower can commit the
// row before the INSERT's COMMIT has returned to the writer (the WAL is
// flushed before both, and with 1,000 followers busy the writer's
// goroutine may wake late); that counts as 0, and early-% says how often
// it happened.
//
// Reported: p50 and p99 in ms per transport (sse-p50-ms, lp-p50-ms, ...),
// and p50-ratio and p99-ratio, SSE over long polling (below 1: SSE is
// faster). ns/op means nothing here and is reported as 0. Run with a fixed
// count of rounds, e.g. -benchtime 100x (bench/sse-latency.sh does).
func BenchmarkLiveLatency(b *testing.B) {
	for _, n := range []int{1, 1000} {
		b.Run(fmt.Sprintf("followers=%d", n), func(b *testing.B) { benchLiveLatency(b, n) })
	}
}

func benchLiveLatency(b *testing.B, n int) {
	e := newEnv(b, electrictest.Options{LongPollTimeout: 20 * time.Second})
	e.exec(`CREATE TABLE sse_items (id bigserial PRIMARY KEY, title text);
		CREATE TABLE lp_items (id bigserial PRIMARY KEY, title text)`)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	hc := &http.Client{Transport: &http.Transport{MaxIdleConns: 2*n + 10, MaxIdleConnsPerHost: 2*n + 10}}
	defer hc.CloseIdleConnections()
	sse := startLatencyGroup(b, ctx, &wg, e.url, hc, "sse_items", true, n)
	lp := startLatencyGroup(b, ctx, &wg, e.url, hc, "lp_items", false, n)
	groups := []*latencyGroup{sse, lp}

	conn, err := pgx.Connect(ctx, e.db)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(context.Background())
	// A cluster with synchronous_commit=off would add the WAL writer's
	// delay (up to 200 ms) to both transports alike.
	if _, err := conn.Exec(ctx, "SET synchronous_commit = on"); err != nil {
		b.Fatal(err)
	}
	settle := 20*time.Millisecond + time.Duration(n)*20*time.Microsecond
	for _, g := range groups { // warm up: every connection open
		g.round(b, ctx, conn, settle)
		g.lat, g.early = g.lat[:0], 0
	}
	b.ResetTimer()
	for i := range b.N {
		for j := range groups {
			groups[(i+j)%2].round(b, ctx, conn, settle)
		}
	}
	b.StopTimer()
	if sse.stream.SSEFallback() {
		b.Fatal("an SSE follower fell back to long polling")
	}
	sp50, sp99 := sse.percentiles()
	lp50, lp99 := lp.percentiles()
	b.ReportMetric(sp50, "sse-p50-ms")
	b.ReportMetric(sp99, "sse-p99-ms")
	b.ReportMetric(lp50, "lp-p50-ms")
	b.ReportMetric(lp99, "lp-p99-ms")
	b.ReportMetric(sp50/lp50, "p50-ratio")
	b.ReportMetric(sp99/lp99, "p99-ratio")
	b.ReportMetric(100*float64(sse.early+lp.early)/float64(len(sse.lat)+len(lp.lat)), "early-%")
	b.ReportMetric(0, "ns/op")
}

// A latencyGroup is n followers of one table by one transport.
type latencyGroup struct {
	table  string
	n      int
	stream *ShapeStream // one of them, for SSEFallback
	cur    atomic.Pointer[latencyRound]
	rows   int // rows inserted so far
	lat    []time.Duration
	early  int
}

// A latencyRound is one INSERT: each follower notes when its Shape first
// holds rows rows.
type latencyRound struct {
	rows int
	at   []time.Time
	left atomic.Int32
	done chan struct{}
}

// startLatencyGroup starts n live Shapes on table and waits for their
// initial sync.
func startLatencyGroup(b *testing.B, ctx context.Context, wg *sync.WaitGroup, url string, hc *http.Client, table string, sse bool, n int) *latencyGroup {
	g := &latencyGroup{table: table, n: n}
	shapes := make([]*Shape, n)
	for p := range n {
		s, err := New(Options{URL: url, Params: Params{Table: table}, Live: true, LiveSSE: sse, HTTPClient: hc})
		if err != nil {
			b.Fatal(err)
		}
		g.stream = s
		sh := NewShape(s)
		var last *latencyRound // touched by this follower's goroutine only
		sh.Subscribe(func(sh *Shape) {
			rd := g.cur.Load()
			if rd == nil || rd == last || sh.Len() < rd.rows {
				return
			}
			rd.at[p] = time.Now()
			last = rd
			if rd.left.Add(-1) == 0 {
				close(rd.done)
			}
		})
		shapes[p] = sh
		wg.Go(func() {
			defer s.Close()
			if err := sh.Run(ctx); err != nil && ctx.Err() == nil {
				b.Errorf("%s follower: %v", table, err)
			}
		})
	}
	wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for _, sh := range shapes {
		if err := sh.Wait(wctx); err != nil {
			b.Fatalf("%s: initial sync: %v", table, err)
		}
	}
	return g
}

// round waits for every follower to be back in a live request, commits
// one INSERT and waits until every follower's Shape has it.
func (g *latencyGroup) round(b *testing.B, ctx context.Context, conn *pgx.Conn, settle time.Duration) {
	time.Sleep(settle)
	g.rows++
	rd := &latencyRound{rows: g.rows, at: make([]time.Time, g.n), done: make(chan struct{})}
	rd.left.Store(int32(g.n))
	g.cur.Store(rd)
	if _, err := conn.Exec(ctx, "INSERT INTO "+g.table+" (title) VALUES ('x')"); err != nil {
		b.Fatal(err)
	}
	committed := time.Now()
	select {
	case <-rd.done:
	case <-time.After(time.Minute):
		b.Fatalf("%s: %d of %d followers did not get row %d within a minute", g.table, rd.left.Load(), g.n, rd.rows)
	}
	for _, at := range rd.at {
		d := at.Sub(committed)
		if d < 0 {
			g.early++
			d = 0
		}
		g.lat = append(g.lat, d)
	}
}

// percentiles returns p50 and p99 in ms.
func (g *latencyGroup) percentiles() (p50, p99 float64) {
	slices.Sort(g.lat)
	pct := func(p float64) float64 {
		return float64(g.lat[int(p*float64(len(g.lat)-1))]) / float64(time.Millisecond)
	}
	return pct(0.50), pct(0.99)
}
