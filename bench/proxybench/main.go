// Command proxybench compares shapeseal's proxy (the `shapeseal proxy`
// binary) with going direct to Electric and with an Express proxy written
// as Electric's docs show (bench/peers/express), on one machine, in one
// run, and prints ratios.
//
// Usage (from the module root; bench/proxy.sh does this, after installing
// the Express peer and raising the open-file limit):
//
//	go run ./internal/pgtest/cmd/withpg -- go run ./bench/proxybench [-latency-n 2000] [-snapshot-mb 50] [-rounds 5] [-polls 10000]
//
// Upstream is electrictest over a fresh PostgreSQL database (DATABASE_URL,
// or a private cluster), behind a loopback mux in this process that also
//
//   - replays one real snapshot response of the "big" table (≈50 MB, made
//     by electrictest from Postgres and captured once) from memory, so
//     that the snapshot figures measure the proxies, not the database;
//   - holds live requests on the "hold" table until released, so that
//     thousands of polls can be held at once.
//
// Both proxies run as their own processes (their memory is their own):
// the shapeseal binary built from this checkout with a generated YAML
// config, and `node bench/peers/express/server.mjs`. Both verify an HS256
// JWT on every request. It measures:
//
//	(a) added latency of a small live response (one change + up-to-date,
//	    answered at once by Electric because the offset is behind the
//	    log's head): direct, via shapeseal, via Express, interleaved
//	    request by request on keep-alive connections; p50 and p99, and the
//	    latency each proxy adds over direct;
//	(b) a snapshot of -snapshot-mb MB read through each proxy, -rounds
//	    alternating rounds: MB/s (median), and each proxy's peak RSS (and
//	    Go heap / V8 heap) while it streams;
//	(c) -polls live polls held at once through shapeseal's proxy, by a
//	    child process of this program (-hold-clients), distinct (one
//	    upstream request each; fewer when the open-file limit cannot
//	    hold 2 sockets per poll in the proxy) then identical (coalesced):
//	    the growth of its Go heap + goroutine stacks (after a forced GC)
//	    and of its RSS per held poll, where the heap goes (its heap
//	    profile, from `shapeseal proxy --debug-listen`) and where its
//	    goroutines wait; then all are released and answered.
package main

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/bench/internal/benchenv"
	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

var (
	latencyN    = flag.Int("latency-n", 2000, "small live requests per path for (a)")
	snapshotMB  = flag.Int("snapshot-mb", 50, "snapshot size for (b), in MB")
	rounds      = flag.Int("rounds", 5, "alternating snapshot rounds per proxy for (b)")
	polls       = flag.Int("polls", 10000, "live polls to hold through shapeseal's proxy for (c)")
	parts       = flag.String("parts", "abc", "which parts to run: any of a, b, c")
	profileDir  = flag.String("profile", "", "write CPU profiles of `shapeseal proxy` during (a) and (b) to this directory (a-cpu.pprof, b-cpu.pprof)")
	profileSecs = flag.Int("profile-seconds", 5, "length of each -profile profile")
	summaryFile = flag.String("summary-file", "", "write the one-line summary here instead of printing it last (bench/proxy.sh prints it at its very end)")

	// The poll-holding child process of (c) (see holdClients).
	holdChild  = flag.Bool("hold-clients", false, "internal: be the process holding (c)'s client connections")
	holdURL    = flag.String("hold-url", "", "internal: the proxy's base URL, for -hold-clients")
	holdN      = flag.Int("hold-n", 0, "internal: polls to hold, for -hold-clients")
	holdShared = flag.Bool("hold-shared", false, "internal: identical polls, for -hold-clients")
)

const (
	upSecret  = "bench-electric-secret"
	jwtSecret = "bench-jwt-secret-bench-jwt-secret-0123"
)

func main() {
	flag.Parse()
	if *holdChild {
		if err := holdClients(); err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "proxybench:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, "proxybench: "+format+"\n", args...) }

func run() (err error) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The summary line: (b)'s throughput ratio and (a)'s added latencies
	// for `shapeseal proxy`, and (b)'s Express/shapeseal peak RSS; "-" for
	// a part not run.
	sumR, sumA, sumB, sumM := "-", "-", "-", "-"
	defer func() {
		if err != nil {
			return
		}
		line := fmt.Sprintf("proxy: throughput %s× direct, added p50 %s µs, added p99 %s µs, Express/shapeseal RSS %s×\n", sumR, sumA, sumB, sumM)
		if *summaryFile != "" {
			err = os.WriteFile(*summaryFile, []byte(line), 0o644)
			return
		}
		fmt.Print("\n" + line)
	}()
	root, err := benchenv.ModuleRoot()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "proxybench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	// Postgres and electrictest.
	cl, err := pgtest.Open(ctx, pgtest.Options{Logf: logf})
	if err != nil {
		return err
	}
	defer cl.Stop()
	admin, err := pgx.Connect(ctx, cl.URL())
	if err != nil {
		return err
	}
	defer admin.Close(context.Background())
	var pgVersion string
	admin.QueryRow(ctx, "SELECT current_setting('server_version')").Scan(&pgVersion)
	dbURL, drop, err := cl.CreateDB(ctx, "shapeseal_proxybench")
	if err != nil {
		return err
	}
	defer func() {
		if derr := drop(); derr != nil && err == nil {
			err = derr
		}
	}()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	// ≈1 KB of JSON per big row.
	bigRows := *snapshotMB * 1000
	if _, err := conn.Exec(ctx, `
		CREATE TABLE small (id int8 PRIMARY KEY, title text);
		INSERT INTO small SELECT i, 'small ' || i FROM generate_series(1, 10) i;
		CREATE TABLE big (id int8 PRIMARY KEY, body text);
		CREATE TABLE bench_hold (id int8 PRIMARY KEY)`); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `INSERT INTO big SELECT i, repeat(md5(i::text), 28) FROM generate_series(1, $1::int8) i`, bigRows); err != nil {
		return err
	}
	es, err := electrictest.New(ctx, electrictest.Options{DatabaseURL: dbURL, Secret: upSecret, ChunkBytes: 1 << 30})
	if err != nil {
		return err
	}
	defer es.Close()
	up := &upstream{electric: es, release: make(chan struct{})}
	ups := httptest.NewServer(up)
	defer func() {
		ups.CloseClientConnections()
		ups.Close()
	}()

	// Capture the big snapshot once.
	logf("capturing the %d-row snapshot of big from electrictest", bigRows)
	resp, err := http.Get(ups.URL + "/v1/shape?table=big&offset=-1&secret=" + upSecret)
	if err != nil {
		return err
	}
	up.bigBody, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		return fmt.Errorf("big snapshot: %d %v", resp.StatusCode, err)
	}
	up.bigHeader = resp.Header.Clone()
	up.bigHeader.Del("Date")
	up.bigHeader.Del("Content-Length")

	// The small shape's position, and one change behind it: a live request
	// at that offset is answered at once with one change and up-to-date.
	smallQ := "table=small&secret=" + upSecret
	handle, offset, err := catchUp(ups.URL+"/v1/shape?"+smallQ, "")
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `INSERT INTO small VALUES (11, 'the change')`); err != nil {
		return err
	}
	livePos := "live=true&handle=" + url.QueryEscape(handle) + "&offset=" + url.QueryEscape(offset)

	// The proxies.
	logf("building shapeseal and shapeseal-proxy")
	bin := filepath.Join(tmp, "shapeseal")
	soloBin := filepath.Join(tmp, "shapeseal-proxy") // the proxy alone
	for out, pkg := range map[string]string{bin: "./cmd/shapeseal", soloBin: "./cmd/shapeseal-proxy"} {
		build := exec.Command("go", "build", "-o", out, pkg)
		build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("go build %s: %w", pkg, err)
		}
	}
	cfgFile := filepath.Join(tmp, "proxy.yaml")
	os.WriteFile(cfgFile, []byte(`auth:
  algorithms: [HS256]
shapes:
  - {name: small, table: small}
  - {name: big, table: big}
  - {name: hold, table: bench_hold}
limits: {requests_per_second: -1, max_live_per_user: -1}
`), 0o600)
	auditLog, err := os.Create(filepath.Join(tmp, "shapeseal-proxy.log"))
	if err != nil {
		return err
	}
	defer auditLog.Close()
	env := append(os.Environ(), "ELECTRIC_URL="+ups.URL, "ELECTRIC_SECRET="+upSecret, "JWT_SECRET="+jwtSecret)
	startGo := func() (*proc, error) {
		// --debug-listen: Go's profiles on a port of their own, to force a
		// GC before measuring and to break the memory down in (c).
		debugAddr, err := benchenv.FreeAddr()
		if err != nil {
			return nil, err
		}
		pr, err := startProc(ctx, exec.Command(bin, "proxy", "--config", cfgFile, "--listen", "127.0.0.1:0", "--debug-listen", debugAddr), env, auditLog, "shapeseal proxy ready ")
		if pr != nil {
			pr.debugURL = "http://" + debugAddr
		}
		return pr, err
	}
	goProxy, err := startGo()
	if err != nil {
		return err
	}
	defer func() { goProxy.stop() }()
	// The standalone binary, for the memory comparison of (b).
	solo, err := startProc(ctx, exec.Command(soloBin, "--config", cfgFile, "--listen", "127.0.0.1:0"), env, io.Discard, "shapeseal proxy ready ")
	if err != nil {
		return err
	}
	defer solo.stop()
	expressDir := filepath.Join(root, "bench", "peers", "express")
	node := exec.Command("node", "server.mjs")
	node.Dir = expressDir
	nodeVersion, _ := exec.Command("node", "--version").Output()
	expProxy, err := startProc(ctx, node, append(env, `SHAPES={"small":"small","big":"big","hold":"bench_hold"}`, "BENCH_MEM=1"), os.Stderr, "express proxy ready ")
	if err != nil {
		return err
	}
	defer expProxy.stop()
	expressVersion, _ := benchenv.PackageVersion(filepath.Join(expressDir, "node_modules", "express"))

	tok := signHS256(map[string]any{"sub": "bench", "exp": time.Now().Add(time.Hour).Unix()})
	fmt.Printf("\nproxy bench: shapeseal proxy vs direct vs Express %s (node %s), all on loopback, one run\n", expressVersion, strings.TrimSpace(string(nodeVersion)))
	fmt.Printf("machine: %s/%s, %d CPUs; %s; PostgreSQL %s\n", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), pgVersion)

	// (a) latency.
	if strings.Contains(*parts, "a") {
		logf("(a) %d small live responses per path", *latencyN)
		paths := []struct {
			name, url string
			auth      bool
		}{
			{"direct", ups.URL + "/v1/shape?" + smallQ + "&" + livePos, false},
			{"shapeseal", goProxy.url + "/v1/shapes/small?" + livePos, true},
			{"solo", solo.url + "/v1/shapes/small?" + livePos, true}, // so that (b) compares warmed processes
			{"express", expProxy.url + "/v1/shapes/small?" + livePos, true},
		}
		lat := make([][]float64, len(paths))
		var size int
		var prof func()
		for i := -200; i < *latencyN; i++ { // 200 warm-up rounds
			if i == 0 {
				prof = profile(goProxy, "a")
			}
			for j, p := range paths {
				d, n, err := timedGet(p.url, tok, p.auth)
				if err != nil {
					return fmt.Errorf("(a) %s: %w", p.name, err)
				}
				size = n
				if i >= 0 {
					lat[j] = append(lat[j], d.Seconds()*1e6)
				}
			}
		}
		prof()
		fmt.Printf("\n(a) small live response (%d B body), %d requests per path, interleaved, keep-alive:\n", size, *latencyN)
		fmt.Printf("  %-10s %10s %10s %14s %14s\n", "", "p50 µs", "p99 µs", "added p50 µs", "added p99 µs")
		d50, d99 := pct(lat[0], 50), pct(lat[0], 99)
		added := map[string][2]float64{}
		for j, p := range paths {
			p50, p99 := pct(lat[j], 50), pct(lat[j], 99)
			added[p.name] = [2]float64{p50 - d50, p99 - d99}
			fmt.Printf("  %-10s %10.0f %10.0f %14.0f %14.0f\n", p.name, p50, p99, p50-d50, p99-d99)
		}
		fmt.Printf("  ratio Express added / shapeseal added: p50 %.1f×, p99 %.1f× (issue target for shapeseal and solo: added ≤ 150 µs p50, ≤ 1 ms p99)\n",
			added["express"][0]/added["shapeseal"][0], added["express"][1]/added["shapeseal"][1])
		sumA, sumB = fmt.Sprintf("%.0f", added["shapeseal"][0]), fmt.Sprintf("%.0f", added["shapeseal"][1])

	}

	// (b) snapshot throughput and memory.
	if strings.Contains(*parts, "b") {
		logf("(b) %d rounds of a %.1f MB snapshot", *rounds, float64(len(up.bigBody))/1e6)
		type tput struct {
			mbps        []float64
			peakRSS     uint64
			baseRSS     uint64
			peakHeap    float64
			heapMetric  string
			sampleHeaps func() (float64, error)
		}
		targets := []struct {
			name string
			url  string
			proc *proc
			t    *tput
		}{
			{"direct", ups.URL + "/v1/shape?table=big&offset=-1&secret=" + upSecret, nil, &tput{}},
			{"shapeseal", goProxy.url + "/v1/shapes/big?offset=-1", goProxy, &tput{heapMetric: "Go heap", sampleHeaps: func() (float64, error) {
				m, err := scrape(goProxy.url + "/metrics")
				return m["go_memstats_heap_alloc_bytes"], err
			}}},
			{"solo", solo.url + "/v1/shapes/big?offset=-1", solo, &tput{heapMetric: "Go heap", sampleHeaps: func() (float64, error) {
				m, err := scrape(solo.url + "/metrics")
				return m["go_memstats_heap_alloc_bytes"], err
			}}},
			{"express", expProxy.url + "/v1/shapes/big?offset=-1", expProxy, &tput{heapMetric: "V8 heap", sampleHeaps: func() (float64, error) {
				var m struct {
					HeapUsed float64 `json:"heapUsed"`
				}
				err := getJSON(expProxy.url+"/__bench/mem", &m)
				return m.HeapUsed, err
			}}},
		}
		for _, tg := range targets {
			if tg.proc != nil {
				tg.t.baseRSS, _ = benchenv.ProcStatus(tg.proc.Pid(), "VmRSS")
			}
		}
		var prof func()
		for r := 0; r < *rounds+1; r++ { // round 0 warms up
			if r == 1 {
				prof = profile(goProxy, "b")
			}
			for _, tg := range targets {
				stopSampling := make(chan struct{})
				sampled := make(chan struct{})
				go func() { // sample the proxy's memory while it streams
					defer close(sampled)
					for {
						if tg.proc != nil {
							if rss, err := benchenv.ProcStatus(tg.proc.Pid(), "VmRSS"); err == nil && rss > tg.t.peakRSS && r > 0 {
								tg.t.peakRSS = rss
							}
							if h, err := tg.t.sampleHeaps(); err == nil && h > tg.t.peakHeap && r > 0 {
								tg.t.peakHeap = h
							}
						}
						select {
						case <-stopSampling:
							return
						case <-time.After(20 * time.Millisecond):
						}
					}
				}()
				d, n, err := timedGet(tg.url, tok, tg.proc != nil)
				close(stopSampling)
				<-sampled
				if err != nil {
					return fmt.Errorf("(b) %s: %w", tg.name, err)
				}
				if n != len(up.bigBody) {
					return fmt.Errorf("(b) %s: %d bytes, want %d", tg.name, n, len(up.bigBody))
				}
				if r > 0 {
					tg.t.mbps = append(tg.t.mbps, float64(n)/1e6/d.Seconds())
				}
			}
		}
		prof()
		fmt.Printf("\n(b) one %.1f MB snapshot response (real electrictest bytes, replayed from memory), %d rounds, alternating:\n", float64(len(up.bigBody))/1e6, *rounds)
		fmt.Printf("  %-10s %9s %18s %14s %14s\n", "", "MB/s", "(rounds)", "RSS before MB", "peak RSS MB")
		for _, tg := range targets {
			fmt.Printf("  %-10s %9.0f %18s", tg.name, median(tg.t.mbps), spread(tg.t.mbps))
			if tg.proc != nil {
				fmt.Printf(" %14.1f %14.1f   peak %s %.1f MB", float64(tg.t.baseRSS)/1e6, float64(tg.t.peakRSS)/1e6, tg.t.heapMetric, tg.t.peakHeap/1e6)
			}
			fmt.Println()
		}
		fmt.Println("  (solo: the standalone shapeseal-proxy binary, which links the proxy alone; shapeseal: `shapeseal proxy`)")
		d, g, so, e := targets[0].t, targets[1].t, targets[2].t, targets[3].t
		fmt.Printf("  ratio shapeseal/Express throughput: %.1f× (solo %.1f×; target ≥ 5×; direct/Express %.1f×, the bound for any proxy here)\n",
			median(g.mbps)/median(e.mbps), median(so.mbps)/median(e.mbps), median(d.mbps)/median(e.mbps))
		fmt.Printf("  ratio shapeseal/direct throughput: %.2f× (solo %.2f×; issue target ≥ 0.85×)\n",
			median(g.mbps)/median(d.mbps), median(so.mbps)/median(d.mbps))
		sumR = fmt.Sprintf("%.2f", median(g.mbps)/median(d.mbps))
		sumM = fmt.Sprintf("%.1f", float64(e.peakRSS)/float64(g.peakRSS))
		growth := func(t *tput) float64 { return float64(t.peakRSS-min(t.peakRSS, t.baseRSS)) / 1e6 }
		fmt.Printf("  ratio Express/shapeseal peak RSS: %.1f× (solo %.1f×; target ≥ 10×); peak RSS growth while streaming: Express %.1f MB, shapeseal %.1f MB, solo %.1f MB\n",
			float64(e.peakRSS)/float64(g.peakRSS), float64(e.peakRSS)/float64(so.peakRSS), growth(e), growth(g), growth(so))
	}
	solo.stop()
	expProxy.stop() // frees its memory and file descriptors for (c)
	if !strings.Contains(*parts, "c") {
		return nil
	}

	// (c) held live polls. The clients are a child process (holdClients),
	// so that each process stays within its own open-file limit: the
	// proxy holds one socket per poll, plus one upstream socket per poll
	// when they are distinct; the child one per poll; this process (the
	// upstream) one per distinct poll.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	fdLimit := int(min(lim.Max, 1<<20))
	for _, shared := range []bool{false, true} {
		label, what := "distinct", "each its own shape position: not coalesced, one upstream request each"
		if shared {
			label, what = "identical", "one shape position: coalesced into one upstream request"
		}
		n, perPoll := *polls, 2
		if shared {
			perPoll = 1
		}
		if max := (fdLimit - 100) / perPoll; n > max {
			logf("(c) open-file limit %d: holding %d %s polls instead of %d (%d sockets each in the proxy)", fdLimit, max, label, n, perPoll)
			n = max
		}
		logf("(c) holding %d %s live polls through shapeseal", n, label)
		held, err := holdPolls(ctx, up, goProxy, tok, n, shared)
		if err != nil {
			return fmt.Errorf("(c) %s: %w", label, err)
		}
		fmt.Printf("\n(c) %d %s live polls held at once through shapeseal's proxy (%s; upstream holds them; clients in a child process; loopback):\n", held.n, label, what)
		fmt.Printf("  proxy live polls in flight (its metric): %.0f, upstream requests held: %d; goroutines %.0f → %.0f (%.2f per poll)\n",
			held.after["shapeseal_proxy_live_requests"], held.upstream, held.before["go_goroutines"], held.after["go_goroutines"],
			(held.after["go_goroutines"]-held.before["go_goroutines"])/float64(held.n))
		hs := func(m map[string]float64) float64 {
			return m["go_memstats_heap_alloc_bytes"] + m["go_memstats_stack_inuse_bytes"]
		}
		fmt.Printf("  Go heap + stacks (after a forced GC): %.1f MB → %.1f MB: %.1f KB per held poll (target < 16 KB)\n",
			hs(held.before)/1e6, hs(held.after)/1e6, (hs(held.after)-hs(held.before))/float64(held.n)/1024)
		fmt.Printf("  of which goroutine stacks %.1f KB and heap objects %.1f KB per held poll\n",
			(held.after["go_memstats_stack_inuse_bytes"]-held.before["go_memstats_stack_inuse_bytes"])/float64(held.n)/1024,
			(held.after["go_memstats_heap_alloc_bytes"]-held.before["go_memstats_heap_alloc_bytes"])/float64(held.n)/1024)
		fmt.Printf("  RSS: %.1f MB → %.1f MB: %.1f KB per held poll (target < 16 KB)\n", float64(held.rssBefore)/1e6, float64(held.rssAfter)/1e6,
			(float64(held.rssAfter)-float64(held.rssBefore))/float64(held.n)/1024)
		if len(held.heapSites) > 0 {
			fmt.Printf("  heap in use per held poll by allocation site (pprof, sampled):\n")
			for _, st := range held.heapSites {
				fmt.Printf("    %7.0f B  %s\n", st.bytes/float64(held.n), st.site)
			}
		}
		if len(held.goroutines) > 0 {
			fmt.Printf("  goroutines by where they wait (pprof):\n")
			for _, st := range held.goroutines {
				fmt.Printf("    %7.0f    %s\n", st.bytes, st.site)
			}
		}
		fmt.Printf("  held in %.1f s; all %d answered %.1f s after release\n", held.setup.Seconds(), held.answered, held.drain.Seconds())
		up.release = make(chan struct{})
		if !shared {
			// A fresh proxy process for the next run: the first one's
			// garbage and idle buffers would blur its baseline.
			goProxy.stop()
			if goProxy, err = startGo(); err != nil {
				return err
			}
			time.Sleep(time.Second) // let the connections close
		}
	}
	return nil
}

// upstream routes /v1/shape by table: big is replayed from memory,
// bench_hold live requests are held until release, the rest is Electric.
type upstream struct {
	electric  http.Handler
	bigBody   []byte
	bigHeader http.Header
	holding   atomic.Int64
	release   chan struct{}
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if r.URL.Path == "/v1/shape" && q.Get("secret") == upSecret {
		switch {
		case q.Get("table") == "big" && u.bigBody != nil && q.Get("offset") == "-1":
			for k, v := range u.bigHeader {
				w.Header()[k] = v
			}
			w.WriteHeader(200)
			w.Write(u.bigBody)
			return
		case q.Get("table") == "bench_hold" && q.Get("live") == "true":
			u.holding.Add(1)
			defer u.holding.Add(-1)
			select {
			case <-r.Context().Done():
				return
			case <-u.release:
			}
			h := w.Header()
			h.Set("content-type", "application/json")
			h.Set("electric-handle", q.Get("handle"))
			h.Set("electric-offset", q.Get("offset"))
			h.Set("electric-up-to-date", "")
			h.Set("electric-cursor", "1")
			h.Set("cache-control", "public, max-age=5, stale-while-revalidate=5")
			io.WriteString(w, `[{"headers":{"control":"up-to-date","global_last_seen_lsn":"0"}}]`)
			return
		}
	}
	u.electric.ServeHTTP(w, r)
}

type heldResult struct {
	n, answered         int
	upstream            int64 // upstream requests held
	before, after       map[string]float64
	rssBefore, rssAfter uint64
	setup, drain        time.Duration
	heapSites           []siteTotal // in use while held, minus before
	goroutines          []siteTotal // while held (bytes is the count)
}

// holdPolls has a child process (holdClients) open n live polls through
// the proxy, each on its own connection, waits until they are all held
// (by the upstream, or with shared by the proxy's live gauge with one
// upstream request), measures the proxy after a forced GC, then releases
// them and waits for the child to count the answers.
func holdPolls(ctx context.Context, up *upstream, p *proc, tok string, n int, shared bool) (res heldResult, err error) {
	res.n = n
	gc := func() { // a GC in the proxy, so that heap figures are live bytes
		resp, err := benchClient.Get(p.debugURL + "/debug/pprof/heap?gc=1")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	}
	gc()
	if res.before, err = scrape(p.url + "/metrics"); err != nil {
		return res, err
	}
	res.rssBefore, _ = benchenv.ProcStatus(p.Pid(), "VmRSS")
	heapBefore, _ := heapSites(p.debugURL)

	self, err := os.Executable()
	if err != nil {
		return res, err
	}
	cctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	child := exec.CommandContext(cctx, self, "-hold-clients", "-hold-url", p.url, "-hold-n", strconv.Itoa(n), "-hold-shared="+strconv.FormatBool(shared))
	child.Env = append(os.Environ(), "PROXYBENCH_TOKEN="+tok)
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		return res, err
	}
	if err := child.Start(); err != nil {
		cancel()
		return res, err
	}
	defer func() {
		cancel() // kills the child if it is still there
		child.Wait()
	}()
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	start := time.Now()
	held := func() bool {
		if !shared {
			return up.holding.Load() == int64(n)
		}
		m, err := scrape(p.url + "/metrics")
		return err == nil && up.holding.Load() == 1 && int(m["shapeseal_proxy_live_requests"]) == n
	}
	for !held() {
		select {
		case l, ok := <-lines:
			if !ok || strings.HasPrefix(l, "error") {
				return res, fmt.Errorf("the client process: %s", l)
			}
		case <-time.After(50 * time.Millisecond):
		}
		if time.Since(start) > 2*time.Minute {
			return res, fmt.Errorf("only %d upstream requests held after 2 min", up.holding.Load())
		}
	}
	res.setup = time.Since(start)
	time.Sleep(2 * time.Second) // let the proxy settle (idle buffers)
	res.upstream = up.holding.Load()
	gc()
	if res.after, err = scrape(p.url + "/metrics"); err != nil {
		return res, err
	}
	res.rssAfter, _ = benchenv.ProcStatus(p.Pid(), "VmRSS")
	if heapAfter, err := heapSites(p.debugURL); err == nil {
		res.heapSites = topSites(heapAfter, heapBefore, 8)
	}
	if g, err := goroutineSites(p.debugURL); err == nil {
		res.goroutines = topSites(g, nil, 5)
	}
	start = time.Now()
	close(up.release)
	for l := range lines {
		if rest, ok := strings.CutPrefix(l, "done "); ok {
			var failed int
			var first string
			fmt.Sscanf(rest, "%d %d", &res.answered, &failed)
			if _, f, ok := strings.Cut(rest, " first: "); ok {
				first = f
			}
			res.drain = time.Since(start)
			if failed > 0 || res.answered != n {
				return res, fmt.Errorf("%d of %d answered, %d failed, first: %s", res.answered, n, failed, first)
			}
			return res, nil
		}
		if strings.HasPrefix(l, "error") {
			return res, fmt.Errorf("the client process: %s", l)
		}
	}
	return res, errors.New("the client process ended without its count")
}

// holdClients is the child process of (c) (-hold-clients): it opens
// -hold-n live polls through the proxy at -hold-url, each on its own
// connection (at most 256 being set up at a time, by the proxy's live
// gauge: the listen backlog), reads every answer, and prints
// "done ANSWERED FAILED[ first: ERR]".
func holdClients() error {
	n, base, tok := *holdN, *holdURL, os.Getenv("PROXYBENCH_TOKEN")
	tr := &http.Transport{MaxIdleConnsPerHost: n, DialContext: (&net.Dialer{Timeout: 10 * time.Second}).DialContext}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var answered, failed atomic.Int64
	var firstErr atomic.Value
	var wg sync.WaitGroup
	var lastScrape time.Time
	var live int
	inProxy := func() int {
		if time.Since(lastScrape) > 20*time.Millisecond {
			lastScrape = time.Now()
			if m, err := scrape(base + "/metrics"); err == nil {
				live = int(m["shapeseal_proxy_live_requests"])
			}
		}
		return live
	}
	start := time.Now()
	for i := range n {
		for i-inProxy() >= 256 && failed.Load() == 0 && time.Since(start) < 2*time.Minute {
			time.Sleep(time.Millisecond)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			handle := fmt.Sprintf("hold-%d", i)
			if *holdShared {
				handle = "hold-shared"
			}
			req, _ := http.NewRequestWithContext(ctx, "GET", base+"/v1/shapes/hold?live=true&offset=0_0&handle="+handle, nil)
			req.Header.Set("Authorization", "Bearer "+tok)
			resp, err := c.Do(req)
			if err == nil {
				_, err = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err == nil && resp.StatusCode != 200 {
					err = fmt.Errorf("status %d", resp.StatusCode)
				}
			}
			if err != nil {
				if failed.Add(1) == 1 {
					firstErr.Store(err.Error())
					fmt.Println("error poll:", err)
				}
				return
			}
			answered.Add(1)
		}()
	}
	wg.Wait()
	line := fmt.Sprintf("done %d %d", answered.Load(), failed.Load())
	if e, ok := firstErr.Load().(string); ok {
		line += " first: " + e
	}
	fmt.Println(line)
	return nil
}

// siteTotal is a total (bytes, or goroutines) for one code site.
type siteTotal struct {
	site  string
	bytes float64
}

// heapSites reads the proxy's heap profile (pprof text format, after a
// GC) and totals the bytes in use by allocation site: the first frame
// outside the runtime, with its caller.
func heapSites(debugURL string) (map[string]float64, error) {
	return profileSites(debugURL+"/debug/pprof/heap?debug=1&gc=1", func(head string) (float64, bool) {
		// "inuse_objects: inuse_bytes [alloc_objects: alloc_bytes] @ ...":
		// sampled counts (one sample per 512 KiB allocated, on average),
		// scaled up as pprof does: by the inverse of the probability that
		// an allocation of that average size was sampled.
		var objs, bytes float64
		if _, err := fmt.Sscanf(head, "%g: %g", &objs, &bytes); err != nil || objs == 0 {
			return 0, false
		}
		const rate = 512 * 1024
		return bytes / (1 - math.Exp(-bytes/objs/rate)), true
	})
}

// goroutineSites counts the proxy's goroutines by where they wait.
func goroutineSites(debugURL string) (map[string]float64, error) {
	return profileSites(debugURL+"/debug/pprof/goroutine?debug=1", func(head string) (float64, bool) {
		// "N @ 0x... 0x..."
		var k float64
		if _, err := fmt.Sscanf(head, "%g @", &k); err != nil {
			return 0, false
		}
		return k, true
	})
}

// profileSites parses a pprof debug=1 text profile: records of a head line
// (value from parse) followed by "#\t0xADDR\tfunc+0xOFF\tfile:line" frames.
func profileSites(u string, parse func(head string) (float64, bool)) (map[string]float64, error) {
	resp, err := benchClient.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	sites := map[string]float64{}
	var val float64
	var frames []string
	flush := func() {
		if val > 0 && len(frames) > 0 {
			sites[siteOf(frames)] += val
		}
		val, frames = 0, nil
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if f, ok := strings.CutPrefix(l, "#\t"); ok {
			if parts := strings.Split(f, "\t"); len(parts) >= 2 {
				name, _, _ := strings.Cut(parts[1], "+0x")
				frames = append(frames, name)
			}
			continue
		}
		if l == "" || strings.HasPrefix(l, "#") {
			flush()
			continue
		}
		if v, ok := parse(l); ok {
			flush()
			val = v
		}
	}
	flush()
	return sites, sc.Err()
}

// siteOf names a stack by its first frame outside the runtime's and
// generic helpers, with that frame's caller.
func siteOf(frames []string) string {
	skip := func(f string) bool {
		for _, p := range []string{"runtime.", "internal/", "sync.", "bufio.New", "context.", "reflect.", "strings.", "bytes.", "slices.", "maps."} {
			if strings.HasPrefix(f, p) {
				return true
			}
		}
		return false
	}
	for i, f := range frames {
		if skip(f) {
			continue
		}
		if i+1 < len(frames) {
			return f + " ← " + frames[i+1]
		}
		return f
	}
	return frames[0]
}

// topSites returns the k largest totals of after minus before.
func topSites(after, before map[string]float64, k int) []siteTotal {
	var out []siteTotal
	for s, v := range after {
		if d := v - before[s]; d > 0 {
			out = append(out, siteTotal{s, d})
		}
	}
	slices.SortFunc(out, func(a, b siteTotal) int { return cmp.Compare(b.bytes, a.bytes) })
	if len(out) > k {
		out = out[:k]
	}
	return out
}

// profile starts a CPU profile of p (with -profile) for -profile-seconds
// and returns the function that waits for it to be written to
// DIR/part-cpu.pprof.
func profile(p *proc, part string) (stop func()) {
	if *profileDir == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.Get(p.debugURL + "/debug/pprof/profile?seconds=" + strconv.Itoa(*profileSecs))
		if err != nil {
			logf("profile %s: %v", part, err)
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(filepath.Join(*profileDir, part+"-cpu.pprof"))
		if err == nil {
			io.Copy(f, resp.Body)
			f.Close()
		}
	}()
	return func() { <-done }
}

// catchUp follows a shape from offset -1 to up-to-date and returns its
// position.
func catchUp(shapeURL, tok string) (handle, offset string, err error) {
	handle, offset = "", "-1"
	for range 20 {
		u := shapeURL + "&offset=" + url.QueryEscape(offset)
		if handle != "" {
			u += "&handle=" + url.QueryEscape(handle)
		}
		resp, err := http.Get(u)
		if err != nil {
			return "", "", err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return "", "", fmt.Errorf("%s: %d", u, resp.StatusCode)
		}
		handle, offset = resp.Header.Get("electric-handle"), resp.Header.Get("electric-offset")
		if _, ok := resp.Header["Electric-Up-To-Date"]; ok {
			return handle, offset, nil
		}
	}
	return "", "", errors.New("no up-to-date after 20 requests")
}

var benchClient = &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, DisableCompression: true}}

// timedGet reads url to the end and returns how long it took and the body
// size.
func timedGet(u, tok string, auth bool) (time.Duration, int, error) {
	req, _ := http.NewRequest("GET", u, nil)
	if auth {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	start := time.Now()
	resp, err := benchClient.Do(req)
	if err != nil {
		return 0, 0, err
	}
	n, err := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	d := time.Since(start)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	return d, int(n), err
}

// proc is a proxy process and where it serves.
type proc struct {
	*benchenv.Proc
	url      string
	debugURL string // Go's profiles (shapeseal proxy --debug-listen)
}

// startProc starts cmd and waits for a line "<ready>{"proxy_url":…}" on
// its stdout.
func startProc(ctx context.Context, cmd *exec.Cmd, env []string, stderr io.Writer, ready string) (*proc, error) {
	cmd.Env = env
	p, err := benchenv.StartProc(ctx, cmd, stderr, ready)
	if err != nil {
		return nil, err
	}
	if p.Ready["proxy_url"] == "" {
		p.Stop()
		return nil, fmt.Errorf("%s: no proxy_url in its ready line", cmd.Path)
	}
	return &proc{Proc: p, url: p.Ready["proxy_url"]}, nil
}

func (p *proc) stop() { p.Stop() }

// scrape reads the unlabelled samples of a Prometheus text endpoint.
func scrape(u string) (map[string]float64, error) {
	resp, err := benchClient.Get(u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	m := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		name, v, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") || strings.Contains(name, "{") {
			continue
		}
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			m[name] = f
		}
	}
	return m, sc.Err()
}

func getJSON(u string, v any) error {
	resp, err := benchClient.Get(u)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

func signHS256(claims map[string]any) string { return benchenv.SignHS256([]byte(jwtSecret), claims) }

func pct(xs []float64, p float64) float64 {
	s := slices.Sorted(slices.Values(xs))
	if len(s) == 0 {
		return math.NaN()
	}
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

func median(xs []float64) float64 { return pct(xs, 50) }

func spread(xs []float64) string {
	if len(xs) == 0 {
		return ""
	}
	return fmt.Sprintf("(%.0f–%.0f)", slices.Min(xs), slices.Max(xs))
}
