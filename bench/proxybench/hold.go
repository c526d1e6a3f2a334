package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/shapeseal/shapeseal/bench/internal/benchenv"
)

// hold runs (c): held live polls, distinct then identical. The clients
// are a child process (holdClients), so that each process stays within
// its own open-file limit: the proxy holds one socket per poll, plus one
// upstream socket per poll when they are distinct; the child one per
// poll; this process (the upstream) one per distinct poll.
func (s *stack) hold(ctx context.Context) (err error) {
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
		held, err := holdPolls(ctx, s.up, s.goProxy, s.tok, n, shared)
		if err != nil {
			return fmt.Errorf("(c) %s: %w", label, err)
		}
		held.print(label, what)
		s.up.release = make(chan struct{})
		if !shared {
			// A fresh proxy process for the next run: the first one's
			// garbage and idle buffers would blur its baseline.
			s.goProxy.stop()
			if s.goProxy, err = s.startGo(); err != nil {
				return err
			}
			time.Sleep(time.Second) // let the connections close
		}
	}
	return nil
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

// print prints one run of (c): label and what say which polls were held.
func (held heldResult) print(label, what string) {
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
}

// holdPolls has a child process (holdClients) open n live polls through
// the proxy, each on its own connection, waits until they are all held
// (by the upstream, or with shared by the proxy's live gauge with one
// upstream request), measures the proxy after a forced GC, then releases
// them and waits for the child to count the answers.
func holdPolls(ctx context.Context, up *upstream, p *proc, tok string, n int, shared bool) (res heldResult, err error) {
	res.n = n
	forceGC(p)
	if res.before, err = scrape(p.url + "/metrics"); err != nil {
		return res, err
	}
	res.rssBefore, _ = benchenv.ProcStatus(p.Pid(), "VmRSS")
	heapBefore, _ := heapSites(p.debugURL)

	cctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	lines, wait, err := startHoldClients(cctx, p.url, tok, n, shared)
	if err != nil {
		return res, err
	}
	defer func() {
		cancel() // kills the child if it is still there
		wait()
	}()
	start := time.Now()
	if err := waitHeld(up, p, n, shared, lines); err != nil {
		return res, err
	}
	res.setup = time.Since(start)
	time.Sleep(2 * time.Second) // let the proxy settle (idle buffers)
	res.upstream = up.holding.Load()
	forceGC(p)
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
	err = readCount(lines, n, &res)
	res.drain = time.Since(start)
	return res, err
}

// forceGC has the proxy collect its garbage, so that heap figures are
// live bytes.
func forceGC(p *proc) {
	resp, err := benchClient.Get(p.debugURL + "/debug/pprof/heap?gc=1")
	if err == nil {
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
}

// startHoldClients starts this program as the child process of (c)
// (holdClients) holding n polls through the proxy at proxyURL, killed
// when ctx ends. It returns the lines of its stdout and the function that
// waits for it.
func startHoldClients(ctx context.Context, proxyURL, tok string, n int, shared bool) (lines <-chan string, wait func() error, err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	child := exec.CommandContext(ctx, self, "-hold-clients", "-hold-url", proxyURL, "-hold-n", strconv.Itoa(n), "-hold-shared="+strconv.FormatBool(shared))
	child.Env = append(os.Environ(), "PROXYBENCH_TOKEN="+tok)
	child.Stderr = os.Stderr
	out, err := child.StdoutPipe()
	if err != nil {
		return nil, nil, err
	}
	if err := child.Start(); err != nil {
		return nil, nil, err
	}
	ch := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			ch <- sc.Text()
		}
		close(ch)
	}()
	return ch, child.Wait, nil
}

// waitHeld waits up to 2 minutes for the n polls to be held (see
// holdPolls), watching the child's lines for an error.
func waitHeld(up *upstream, p *proc, n int, shared bool, lines <-chan string) error {
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
				return fmt.Errorf("the client process: %s", l)
			}
		case <-time.After(50 * time.Millisecond):
		}
		if time.Since(start) > 2*time.Minute {
			return fmt.Errorf("only %d upstream requests held after 2 min", up.holding.Load())
		}
	}
	return nil
}

// readCount reads the child's lines to its "done" line, into
// res.answered, and fails unless all n polls were answered.
func readCount(lines <-chan string, n int, res *heldResult) error {
	for l := range lines {
		if rest, ok := strings.CutPrefix(l, "done "); ok {
			var failed int
			var first string
			fmt.Sscanf(rest, "%d %d", &res.answered, &failed)
			if _, f, ok := strings.Cut(rest, " first: "); ok {
				first = f
			}
			if failed > 0 || res.answered != n {
				return fmt.Errorf("%d of %d answered, %d failed, first: %s", res.answered, n, failed, first)
			}
			return nil
		}
		if strings.HasPrefix(l, "error") {
			return fmt.Errorf("the client process: %s", l)
		}
	}
	return errors.New("the client process ended without its count")
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
