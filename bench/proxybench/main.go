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
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
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
	sum := summary{ratio: "-", p50: "-", p99: "-", rss: "-"}
	defer func() {
		if err == nil {
			err = sum.print()
		}
	}()
	s := &stack{}
	defer func() {
		if cerr := s.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	if err := s.start(ctx); err != nil {
		return err
	}
	if strings.Contains(*parts, "a") {
		if sum.p50, sum.p99, err = s.latency(); err != nil {
			return err
		}
	}
	if strings.Contains(*parts, "b") {
		if sum.ratio, sum.rss, err = s.snapshot(); err != nil {
			return err
		}
	}
	s.solo.stop()
	s.express.stop() // frees its memory and file descriptors for (c)
	if !strings.Contains(*parts, "c") {
		return nil
	}
	return s.hold(ctx)
}

// summary is the one-line summary: (b)'s throughput ratio and (a)'s added
// latencies for `shapeseal proxy`, and (b)'s Express/shapeseal peak RSS;
// "-" for a part not run.
type summary struct{ ratio, p50, p99, rss string }

// print prints the summary, or writes it to -summary-file.
func (sum summary) print() error {
	line := fmt.Sprintf("proxy: throughput %s× direct, added p50 %s µs, added p99 %s µs, Express/shapeseal RSS %s×\n", sum.ratio, sum.p50, sum.p99, sum.rss)
	if *summaryFile != "" {
		return os.WriteFile(*summaryFile, []byte(line), 0o644)
	}
	fmt.Print("\n" + line)
	return nil
}
