package client

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shapeseal/shapeseal/electrictest"
)

var (
	propSchedules = flag.Int("property.schedules", 200, "fault schedules run by TestPropertyShapeEqualsTable (40 with -short)")
	propSeed      = flag.Uint64("property.seed", 0, "seed of TestPropertyShapeEqualsTable (0: time-based)")
	propParallel  = flag.Int("property.parallel", 10, "schedules run at once")
)

// TestPropertyShapeEqualsTable runs many random schedules of writes and
// faults (409 rotations, 5xx/429 bursts, bodies cut mid-message, expired
// tokens), each against its own table and shape, all on one server so the
// server-wide faults also hit neighbouring streams. Once a schedule's
// writes stop, its materialized Shape must equal its table, and its stream
// must never have delivered a change twice.
func TestPropertyShapeEqualsTable(t *testing.T) {
	n := *propSchedules
	if testing.Short() && n > 40 {
		n = 40
	}
	seed := *propSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (rerun with -property.seed=%d), %d schedules", seed, seed, n)

	e := newEnv(t, electrictest.Options{LongPollTimeout: 250 * time.Millisecond, ChunkBytes: 1500,
		SSETimeout: 500 * time.Millisecond, SSEKeepAlive: 100 * time.Millisecond})
	ap := newAuthProxy(e.srv.Server)
	front := httptest.NewServer(ap)
	defer front.Close()
	hc := testClient()
	defer hc.CloseIdleConnections()

	var faultMu sync.Mutex // FailNext/CutNext are global counters: set one at a time
	sem := make(chan struct{}, *propParallel)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			rng := rand.New(rand.NewPCG(seed, uint64(i)))
			runSchedule(t, e, ap, front.URL+"/v1/shape", hc, i, rng, &faultMu)
		})
		if t.Failed() {
			break
		}
	}
	wg.Wait()
	ap.mu.Lock()
	refused := ap.refused
	ap.mu.Unlock()
	t.Logf("across %d schedules: %d must-refetches, %d retries (5xx/429/cut bodies), %d 401s, %d tokens minted, %d recoveries, %d fast-loop backoffs, %d SSE requests",
		n, stats.refetches.Load(), stats.retries.Load(), refused, ap.minted, stats.recoveries.Load(), stats.loops.Load(), stats.sse.Load())
	if !testing.Short() && n >= 200 && (stats.refetches.Load() < 10 || stats.retries.Load() < 50 || refused < 10) {
		t.Errorf("too few faults exercised")
	}
}

var stats struct {
	refetches, retries, recoveries, loops, sse atomic.Int64
}

// countingHandler counts the stream's retry warnings.
type countingHandler struct{ slog.Handler }

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countingHandler) Handle(_ context.Context, r slog.Record) error {
	switch r.Message {
	case "shape request failed; retrying":
		stats.retries.Add(1)
	case "shape request":
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == "sse" && a.Value.Bool() {
				stats.sse.Add(1)
			}
			return true
		})
	case "shape stream recovering after error":
		stats.recoveries.Add(1)
	case "shape requests loop without progress; backing off":
		stats.loops.Add(1)
	}
	return nil
}

// schedule is one run of runSchedule: its table, the connection that
// writes it, its random source and the ids the table holds.
type schedule struct {
	t       *testing.T
	e       *env
	ap      *authProxy
	i       int
	rng     *rand.Rand
	faultMu *sync.Mutex
	table   string
	conn    *pgx.Conn
	ids     map[int]bool
	nextID  int
}

func runSchedule(t *testing.T, e *env, ap *authProxy, url string, hc *http.Client, i int, rng *rand.Rand, faultMu *sync.Mutex) {
	start := time.Now()
	sc := &schedule{t: t, e: e, ap: ap, i: i, rng: rng, faultMu: faultMu,
		table: "prop" + strconv.Itoa(i), ids: map[int]bool{}, nextID: 1}
	conn, err := pgx.Connect(context.Background(), e.db)
	if err != nil {
		t.Error(err)
		return
	}
	defer conn.Close(context.Background())
	sc.conn = conn
	if !sc.seed() {
		return
	}
	s, err := sc.stream(url, hc)
	if err != nil {
		t.Error(err)
		return
	}
	sh := NewShape(nil)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- consumeChecked(ctx, s, sh) }()

	ops := 3 + rng.IntN(10)
	for range ops {
		// A transaction of 1–3 writes.
		if !sc.exec(sc.transaction() + "COMMIT") {
			return
		}
		// A fault, sometimes.
		sc.fault()
		if rng.IntN(3) == 0 {
			time.Sleep(time.Duration(rng.IntN(20)) * time.Millisecond)
		}
	}

	writesDone := time.Now()
	defer func() {
		if testing.Verbose() {
			t.Logf("schedule %d: writes %v, converge %v", i, writesDone.Sub(start), time.Since(writesDone))
		}
	}()
	sc.converge(sh, errc)
}

func (sc *schedule) exec(sql string) bool {
	if _, err := sc.conn.Exec(context.Background(), sql); err != nil {
		sc.t.Errorf("schedule %d: %s: %v", sc.i, sql, err)
		return false
	}
	return true
}

// seed creates the schedule's table and fills it with up to 39 rows; it
// reports whether the table was created.
func (sc *schedule) seed() bool {
	if !sc.exec(fmt.Sprintf(itemsDDL, sc.table)) {
		return false
	}
	if k := sc.rng.IntN(40); k > 0 {
		sc.exec(fmt.Sprintf(`INSERT INTO %s (id, title, n) SELECT g, 'init ' || g, g FROM generate_series(1, %d) g`, sc.table, k))
		for j := 1; j <= k; j++ {
			sc.ids[j] = true
		}
		sc.nextID = k + 1
	}
	return true
}

// stream opens the schedule's live stream, with a random replica mode.
func (sc *schedule) stream(url string, hc *http.Client) (*ShapeStream, error) {
	replica := ""
	if sc.rng.IntN(2) == 0 {
		replica = "full"
	}
	return New(Options{
		URL: url, Params: Params{Table: sc.table, Replica: replica}, Live: true,
		LiveSSE:     sc.i%3 == 0, // a third of the schedules follow the shape with SSE
		TokenSource: NewSharedTokenSource(sc.ap.mintFor(sc.table)), HTTPClient: hc,
		Logger:  slog.New(countingHandler{}),
		Backoff: Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond, MaxRetryAfter: 10 * time.Millisecond},
	})
}

func (sc *schedule) randomID() (int, bool) {
	if len(sc.ids) == 0 {
		return 0, false
	}
	k := sc.rng.IntN(len(sc.ids))
	for id := range sc.ids {
		if k == 0 {
			return id, true
		}
		k--
	}
	return 0, false
}

// transaction returns "BEGIN;" and 1–3 random writes, keeping ids up to
// date; the caller adds the COMMIT.
func (sc *schedule) transaction() string {
	rng, table := sc.rng, sc.table
	stmts := "BEGIN;"
	for range 1 + rng.IntN(3) {
		switch r := rng.IntN(10); {
		case r < 4 || len(sc.ids) == 0:
			stmts += fmt.Sprintf(`INSERT INTO %s (id, title, flag) VALUES (%d, 'v%d', %v);`, table, sc.nextID, rng.IntN(100), rng.IntN(2) == 0)
			sc.ids[sc.nextID] = true
			sc.nextID++
		case r < 7:
			id, _ := sc.randomID()
			stmts += fmt.Sprintf(`UPDATE %s SET title = 'u%d', n = %d WHERE id = %d;`, table, rng.IntN(100), rng.IntN(5), id)
		case r < 9:
			id, _ := sc.randomID()
			stmts += fmt.Sprintf(`DELETE FROM %s WHERE id = %d;`, table, id)
			delete(sc.ids, id)
		default:
			id, _ := sc.randomID()
			stmts += fmt.Sprintf(`UPDATE %s SET id = %d WHERE id = %d;`, table, sc.nextID, id)
			delete(sc.ids, id)
			sc.ids[sc.nextID] = true
			sc.nextID++
		}
	}
	return stmts
}

// fault injects a random fault, or none (half the time).
func (sc *schedule) fault() {
	rng, e := sc.rng, sc.e
	switch r := rng.IntN(12); r {
	case 0:
		e.srv.Rotate(sc.table)
	case 1, 2:
		sc.faultMu.Lock()
		e.srv.FailNext(1+rng.IntN(3), []int{500, 502, 503, 429}[rng.IntN(4)], 0)
		sc.faultMu.Unlock()
	case 3, 4:
		sc.faultMu.Lock()
		e.srv.CutNext(1, rng.IntN(800))
		sc.faultMu.Unlock()
	case 5:
		// Tokens of this schedule expire, once the last refreshed one
		// was used: a token refused right after its refresh is an
		// AuthError by design.
		sc.ap.expireIfUsed(sc.table)
	}
}

// converge waits until sh equals the table and is up to date, failing if
// the stream ends or 15 seconds pass first.
func (sc *schedule) converge(sh *Shape, errc <-chan error) {
	t, i, table, ap := sc.t, sc.i, sc.table, sc.ap
	deadline := time.Now().Add(15 * time.Second)
	want := sc.e.tableRows(table)
	for {
		select {
		case err := <-errc:
			t.Errorf("schedule %d: stream ended: %v", i, err)
			ap.mu.Lock()
			for _, l := range ap.tokLog {
				if strings.Contains(l, table+"-") || strings.Contains(l, "EXPIRE "+table) || strings.Contains(l, " "+table+" ") {
					t.Log(l)
				}
			}
			ap.mu.Unlock()
			return
		default:
		}
		d := diffRows(sh.Rows(), want)
		if d == "" && sh.IsUpToDate() {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("schedule %d (%s): shape differs from the table: %s", i, table, d)
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// consumeChecked applies the stream to sh and checks that no change is
// delivered twice between two must-refetches: snapshot rows are unique by
// key, replicated changes strictly increase in (lsn, op_position).
func consumeChecked(ctx context.Context, s *ShapeStream, sh *Shape) error {
	snap := map[string]bool{}
	var last pos
	hasLast := false
	for {
		m, err := s.Next(ctx)
		if err != nil {
			return err
		}
		switch {
		case m.IsMustRefetch():
			stats.refetches.Add(1)
			clear(snap)
			hasLast = false
		case m.IsChange():
			if p, ok := m.position(); ok {
				if hasLast && !p.after(last) {
					return fmt.Errorf("change %s at %v delivered after %v", m.Raw(), p, last)
				}
				last, hasLast = p, true
			} else {
				if snap[m.Key] {
					return fmt.Errorf("snapshot row %s delivered twice", m.Key)
				}
				snap[m.Key] = true
			}
		}
		sh.Apply(m)
	}
}
