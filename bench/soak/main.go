// Command soak runs the whole shapeseal stack on this machine for a while,
// with parts failing on a random schedule, and checks that every reader
// ends with exactly Postgres' rows, decrypted, and that the long-lived
// processes' memory, goroutines and open files stay flat.
//
// Usage (bench/soak.sh does this, after raising the open-file limit):
//
//	go run ./bench/soak [-duration 60s] [-clients 100] [-seed S]
//
// The stack, on loopback only: a private Postgres; the shape server
// (`shapeseal devserver`) behind a fault gate (a TCP relay that can stall
// or cut responses); two `shapeseal proxy` processes on that upstream, as
// behind a load balancer; a root key, a local KEK, and tenants whose signed
// logs grant members' certified devices.
//
// Readers (-clients, plus two revokees and two grantees of the churn
// tenant t0) each hold a Keyring and decrypting client.Shapes, following
// through the proxies by long polls, SSE, or one WebSocket carrying two
// shapes; each connects through its own balancer, which fails over when a
// proxy dies and which the soak switches to the other proxy at random
// moments (cutting the reader's connections). Writers seal rows with
// keysync.Writer (inserts, updates, deletes, a few a second per tenant),
// while an admin grants, revokes, rotates and re-encrypts t0 (retiring the
// old keys). The first quarter of -duration (at least 15 s) is a warm-up
// with writes and proxy switches only; faults (see faultKinds) and the key
// churn are spread over the rest.
//
// When writes stop, the soak waits (-settle at most) until every reader's
// Shapes equal the rows of its token's tenants as an oracle decrypts them
// from Postgres with the tenant keysets, and prints the figures, ending
// with exactly one line
//
//	soak: C clients, W writes, F faults, lost L, duplicated D, converged K/C, heap growth G%
//
// lost counts rows a reader missed or holds stale or should not hold at the
// end, and updates or deletes delivered for rows never delivered;
// duplicated, rows delivered twice; heap growth is the largest growth of
// the live heap (after a GC) of the processes that live through the run
// (proxy-0 and the soak's own, which holds the readers), between two
// snapshots taken in the same state — after the warm-up, and once the
// readers converged — with every reader moved to proxy-0 and up to date.
// Heap, goroutines and open files of every process are also sampled every
// second (with -keep, into samples.csv), for the peaks. It exits 1 when L or D is not zero, when a
// reader did not converge, when a reader received a row of another tenant,
// or when a revokee opened a cell sealed after its revocation.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

var (
	duration   = flag.Duration("duration", 60*time.Second, "how long writes and faults go on")
	clients    = flag.Int("clients", 100, "readers (plus two revokees and two grantees)")
	seedFlag   = flag.Uint64("seed", 0, "seed of every random choice (0: from the clock; printed)")
	tenants    = flag.Int("tenants", 4, "tenants")
	writeRate  = flag.Float64("write-rate", 20, "writes per second, in all")
	faultEvery = flag.Duration("fault-every", 4*time.Second, "mean time between faults (after the warm-up)")
	settleMax  = flag.Duration("settle", 2*time.Minute, "how long readers may take to converge once writes stop")
	keep       = flag.String("keep", "", "keep the stack's files (logs, keys, config) in this directory")
	verbose    = flag.Bool("v", false, "log every fault, churn step and recovery")
)

func logf(format string, args ...any) {
	if *verbose || strings.HasPrefix(format, "soak:") {
		fmt.Fprintf(os.Stderr, "soak: "+strings.TrimPrefix(format, "soak: ")+"\n", args...)
	}
}

func main() {
	flag.Parse()
	ok, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

func run() (bool, error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	logf("soak: seed %d, %d clients, %s", seed, *clients, *duration)
	rng := mrand.New(mrand.NewPCG(seed, 1))

	dir := *keep
	if dir == "" {
		d, err := os.MkdirTemp("", "shapeseal-soak-")
		if err != nil {
			return false, err
		}
		defer os.RemoveAll(d)
		dir = d
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return false, err
	}
	st, err := startStack(ctx, dir)
	if st != nil {
		defer st.close()
	}
	if err != nil {
		return false, err
	}
	w, err := setupWorld(ctx, dir, st.dbURL, rng, *tenants, *clients)
	if err != nil {
		return false, err
	}
	defer w.db.Close()
	if err := st.startServers(ctx); err != nil {
		return false, err
	}
	return soak(ctx, st, w, rng, seed)
}

// A fleet is the soak's readers.
type fleet struct {
	st *stack
	w  *world

	mu      sync.Mutex
	readers []*reader
}

func (f *fleet) all() []*reader {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.readers
}

var modes = []string{"http", "sse", "ws"}

// start starts a reader for u, the i-th (which sets its mode and first
// proxy), following until ctx ends.
func (f *fleet) start(ctx context.Context, u *user, i int) error {
	r := &reader{u: u, mode: modes[i%len(modes)], lb: newLB(f.st.proxyAddr, i%2), tok: newTokens(f.st.jwtKey, u), stats: &readerStats{}}
	if err := r.start(ctx, f.st, f.w); err != nil {
		return fmt.Errorf("reader %s: %w", u.name, err)
	}
	f.mu.Lock()
	f.readers = append(f.readers, r)
	f.mu.Unlock()
	return nil
}

// soak runs readers, writers, churn and faults, settles, and reports.
func soak(ctx context.Context, st *stack, w *world, rng *mrand.Rand, seed uint64) (bool, error) {
	readCtx, stopReaders := context.WithCancel(ctx)
	defer stopReaders()
	f := &fleet{st: st, w: w}
	for i, u := range w.users {
		if u.role == "grantee" {
			continue // they start when granted
		}
		if err := f.start(readCtx, u, i); err != nil {
			return false, err
		}
		time.Sleep(20 * time.Millisecond) // a gentler start than all at once
	}
	logf("soak: %d readers started", len(f.all()))

	smp := newSampler(st)
	sampleCtx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	go smp.run(sampleCtx)

	c := &chaos{st: st, w: w, readers: f.all, rng: mrand.New(mrand.NewPCG(seed, 2))}
	ws, err := newWriters(w)
	if err != nil {
		return false, err
	}
	switchRng := mrand.New(mrand.NewPCG(seed, 3))
	var switches int
	writing := func(ctx context.Context) { ws.run(ctx, seed, *writeRate, 4) }
	switching := func(ctx context.Context) { switches += c.switchReaders(ctx, switchRng, 500*time.Millisecond) }

	// Warm-up: writes and proxy switches only, then the first snapshot.
	warm := max(15*time.Second, *duration/4)
	during(ctx, warm, writing, switching)
	before, err := c.snapshot(ctx, smp, "before")
	if err != nil {
		return false, err
	}
	// The run: writes, switches, faults and key churn.
	main := max(*duration-warm, time.Second)
	during(ctx, main, writing, switching,
		func(ctx context.Context) { c.run(ctx, main, schedule(rng, int(main / *faultEvery))) },
		func(ctx context.Context) {
			c.churn(ctx, main, func(u *user) error { return f.start(readCtx, u, len(f.all())) })
		})
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	logf("soak: writes stopped: %d writes (%d failed and were not retried), %d faults, %d proxy switches; settling", ws.writes.Load(), ws.failed.Load(), c.faults, switches)

	rs := f.all()
	lagging, err := settle(ctx, w, rs, *settleMax)
	if err != nil {
		return false, err
	}
	after, err := c.snapshot(ctx, smp, "after")
	if err != nil {
		return false, err
	}
	stopSampling()
	if *keep != "" {
		if err := smp.writeCSV(filepath.Join(*keep, "samples.csv")); err != nil {
			return false, err
		}
	}
	return report(rs, lagging, ws.writes.Load(), c.faults, smp.growths(before, after)), nil
}

// during runs fns together for d, and returns once they all have.
func during(ctx context.Context, d time.Duration, fns ...func(context.Context)) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var wg sync.WaitGroup
	for _, f := range fns {
		wg.Go(func() { f(ctx) })
	}
	wg.Wait()
}

// report prints the figures and the final line, and says whether the run
// passed.
func report(rs []*reader, lagging map[*reader]int, writes int64, faults int, gs []growth) bool {
	var lost, dup, foreign, leaks, refused, recovered int64
	for _, r := range rs {
		lost += r.stats.lost.Load() + int64(lagging[r])
		dup += r.stats.duplicated.Load()
		foreign += r.stats.foreign.Load()
		leaks += r.stats.leaks.Load()
		refused += r.stats.refused.Load()
		recovered += r.stats.recovered.Load()
	}
	heapGrowth := 0.0
	for _, g := range gs {
		note := ""
		if g.name == "shape-server" {
			note = " (its shape logs hold every change in memory, by design)"
		} else {
			heapGrowth = max(heapGrowth, g.heapPct())
		}
		fmt.Printf("soak: %s%s\n", g, note)
	}
	fmt.Printf("soak: rows of another tenant %d, messages sealed after a revocation that the revokee opened %d (and could not open: %d), stream errors resumed %d\n",
		foreign, leaks, refused, recovered)
	c, k := len(rs), len(rs)-len(lagging)
	fmt.Printf("soak: %d clients, %d writes, %d faults, lost %d, duplicated %d, converged %d/%d, heap growth %.1f%%\n",
		c, writes, faults, lost, dup, k, c, heapGrowth)
	return lost == 0 && dup == 0 && k == c && foreign == 0 && leaks == 0
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}
