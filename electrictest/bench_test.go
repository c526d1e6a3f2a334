package electrictest_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// BenchmarkSnapshot measures the initial sync of a 100k-row shape: creating
// the shape (the snapshot query) and reading every chunk up to
// snapshot-end, as a client does. Reported: rows/s and MB/s of body.
func BenchmarkSnapshot(b *testing.B) {
	const rows = 100_000
	db := pgtest.NewDB(b)
	pgtest.Exec(b, db, `CREATE TABLE items (id bigint PRIMARY KEY, title text NOT NULL, n int8, done bool, created timestamptz);
		INSERT INTO items SELECT i, 'item number ' || i, i * 7, i % 2 = 0, '2026-01-01'::timestamptz + i * interval '1 second' FROM generate_series(1, 100000) i`)
	srv := electrictest.StartTest(b, electrictest.Options{DatabaseURL: db})
	client := &http.Client{}
	var total int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		srv.Rotate("items")
		n, got := fetchSnapshot(b, client, srv.URL+"/v1/shape?table=items")
		if got != rows {
			b.Fatalf("snapshot has %d rows, want %d", got, rows)
		}
		total += n
	}
	b.StopTimer()
	sec := b.Elapsed().Seconds()
	b.ReportMetric(float64(rows*b.N)/sec, "rows/s")
	b.ReportMetric(float64(total)/sec/1e6, "MB/s")
	b.SetBytes(total / int64(b.N))
}

// fetchSnapshot follows a shape from offset -1 to snapshot-end and returns
// the body bytes and the number of rows.
func fetchSnapshot(tb testing.TB, client *http.Client, shapeURL string) (bytesRead int64, rows int) {
	offset, handle := "-1", ""
	var body bytes.Buffer
	for {
		u := shapeURL + "&offset=" + offset
		if handle != "" {
			u += "&handle=" + handle
		}
		resp, err := client.Get(u)
		if err != nil {
			tb.Fatal(err)
		}
		body.Reset()
		_, err = body.ReadFrom(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			tb.Fatalf("GET %s: %d %v", u, resp.StatusCode, err)
		}
		bytesRead += int64(body.Len())
		rows += bytes.Count(body.Bytes(), []byte(`"operation":"insert"`))
		offset, handle = resp.Header.Get("electric-offset"), resp.Header.Get("electric-handle")
		if bytes.Contains(body.Bytes(), []byte(`"snapshot-end"`)) {
			return bytesRead, rows
		}
	}
}

// BenchmarkCommitToResponse measures the time from a committed INSERT to
// each waiting live poller having read its response, with 1 and 1,000
// concurrent pollers on one shape. Reported: p50 and p99 in ms.
func BenchmarkCommitToResponse(b *testing.B) {
	for _, pollers := range []int{1, 1000} {
		b.Run(fmt.Sprintf("pollers=%d", pollers), func(b *testing.B) { benchLive(b, pollers) })
	}
}

func benchLive(b *testing.B, pollers int) {
	db := pgtest.NewDB(b)
	pgtest.Exec(b, db, `CREATE TABLE items (id bigserial PRIMARY KEY, title text)`)
	srv := electrictest.StartTest(b, electrictest.Options{DatabaseURL: db, LongPollTimeout: 30 * time.Second})
	client := &http.Client{}
	shapeURL := srv.URL + "/v1/shape?table=items"
	if _, rows := fetchSnapshot(b, client, shapeURL); rows != 0 {
		b.Fatal("table not empty")
	}
	// Catch up to the live edge once to learn the handle and offset.
	resp, err := client.Get(shapeURL + "&offset=-1")
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	ctx := context.Background()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close(ctx)

	l := &livePollers{b: b, ctx: ctx, db: conn, handle: resp.Header.Get("electric-handle"),
		addr: strings.TrimPrefix(srv.URL, "http://"), offsets: make([]string, pollers)}
	for i := range l.offsets {
		l.offsets[i] = "0_0"
	}
	// Each poller keeps one keep-alive connection and speaks HTTP/1.1 on it
	// directly, so the measurement is the server's, not a client's pool.
	l.conns = make([]*bufio.ReadWriter, pollers)
	for p := range l.conns {
		c, err := net.Dial("tcp", l.addr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		l.conns[p] = bufio.NewReadWriter(bufio.NewReader(c), bufio.NewWriter(c))
	}
	l.round() // warm up: open the connections
	l.latencies = l.latencies[:0]
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		l.round()
	}
	b.StopTimer()
	slices.Sort(l.latencies)
	pct := func(p float64) float64 {
		return float64(l.latencies[int(p*float64(len(l.latencies)-1))]) / float64(time.Millisecond)
	}
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(0, "ns/op")
}

// livePollers is benchLive's pollers: one connection and offset each,
// on the shape with handle at addr, and the latencies from each commit
// on db to each poller's response.
type livePollers struct {
	b       *testing.B
	ctx     context.Context
	db      *pgx.Conn
	handle  string
	addr    string
	conns   []*bufio.ReadWriter
	offsets []string

	mu        sync.Mutex
	latencies []time.Duration
	commitAt  time.Time
}

// round sends every poller's live request, commits a row once they all
// reached the server, and waits for every response.
func (l *livePollers) round() {
	b, pollers := l.b, len(l.conns)
	var started, done sync.WaitGroup
	started.Add(pollers)
	done.Add(pollers)
	for p := 0; p < pollers; p++ {
		go l.poll(p, &started, &done)
	}
	started.Wait()
	b.StopTimer()
	time.Sleep(20*time.Millisecond + time.Duration(pollers)*20*time.Microsecond) // let every poll reach the server
	b.StartTimer()
	l.mu.Lock()
	l.commitAt = time.Now()
	l.mu.Unlock()
	if _, err := l.db.Exec(l.ctx, "INSERT INTO items (title) VALUES ('x')"); err != nil {
		b.Fatal(err)
	}
	done.Wait()
}

// poll sends poller p's live request, marks it started, and records its
// response's offset and latency.
func (l *livePollers) poll(p int, started, done *sync.WaitGroup) {
	b := l.b
	defer done.Done()
	rw := l.conns[p]
	fmt.Fprintf(rw, "GET /v1/shape?table=items&handle=%s&offset=%s&live=true HTTP/1.1\r\nHost: %s\r\n\r\n", l.handle, l.offsets[p], l.addr)
	err := rw.Flush()
	started.Done()
	if err != nil {
		b.Error(err)
		return
	}
	resp, err := http.ReadResponse(rw.Reader, nil)
	if err != nil {
		b.Error(err)
		return
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	at := time.Now()
	if resp.StatusCode != 200 {
		b.Errorf("status %d", resp.StatusCode)
	}
	l.offsets[p] = resp.Header.Get("electric-offset")
	l.mu.Lock()
	l.latencies = append(l.latencies, at.Sub(l.commitAt))
	l.mu.Unlock()
}
