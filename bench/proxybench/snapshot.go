package main

import (
	"fmt"
	"time"

	"github.com/shapeseal/shapeseal/bench/internal/benchenv"
)

// snapshotTarget is one path of (b) and what was measured on it.
type snapshotTarget struct {
	name       string
	url        string
	proc       *proc  // nil when direct
	heapMetric string // what sampleHeap reads
	sampleHeap func() (float64, error)

	mbps             []float64
	baseRSS, peakRSS uint64
	peakHeap         float64
}

// snapshot runs (b): -rounds alternating rounds of the big snapshot,
// direct and through each proxy, sampling each proxy's memory while it
// streams. It returns the shapeseal/direct throughput ratio and the
// Express/shapeseal peak RSS ratio, for the summary.
func (s *stack) snapshot() (ratio, rss string, err error) {
	size := len(s.up.bigBody)
	logf("(b) %d rounds of a %.1f MB snapshot", *rounds, float64(size)/1e6)
	goHeap := func(p *proc) func() (float64, error) {
		return func() (float64, error) {
			m, err := scrape(p.url + "/metrics")
			return m["go_memstats_heap_alloc_bytes"], err
		}
	}
	targets := []*snapshotTarget{
		{name: "direct", url: s.upURL + "/v1/shape?table=big&offset=-1&secret=" + upSecret},
		{name: "shapeseal", url: s.goProxy.url + "/v1/shapes/big?offset=-1", proc: s.goProxy, heapMetric: "Go heap", sampleHeap: goHeap(s.goProxy)},
		{name: "solo", url: s.solo.url + "/v1/shapes/big?offset=-1", proc: s.solo, heapMetric: "Go heap", sampleHeap: goHeap(s.solo)},
		{name: "express", url: s.express.url + "/v1/shapes/big?offset=-1", proc: s.express, heapMetric: "V8 heap", sampleHeap: func() (float64, error) {
			var m struct {
				HeapUsed float64 `json:"heapUsed"`
			}
			err := getJSON(s.express.url+"/__bench/mem", &m)
			return m.HeapUsed, err
		}},
	}
	for _, tg := range targets {
		if tg.proc != nil {
			tg.baseRSS, _ = benchenv.ProcStatus(tg.proc.Pid(), "VmRSS")
		}
	}
	var prof func()
	for r := 0; r < *rounds+1; r++ { // round 0 warms up
		if r == 1 {
			prof = profile(s.goProxy, "b")
		}
		for _, tg := range targets {
			if err := tg.read(s.tok, size, r > 0); err != nil {
				return "", "", err
			}
		}
	}
	prof()
	printSnapshot(targets, size)
	d, g, e := targets[0], targets[1], targets[3]
	return fmt.Sprintf("%.2f", median(g.mbps)/median(d.mbps)), fmt.Sprintf("%.1f", float64(e.peakRSS)/float64(g.peakRSS)), nil
}

// read reads the snapshot once from tg, checks its size, and, when
// measured (not warming up), records its throughput and the proxy's peak
// memory meanwhile.
func (tg *snapshotTarget) read(tok string, size int, measured bool) error {
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() { // sample the proxy's memory while it streams
		defer close(sampled)
		for {
			if tg.proc != nil {
				if rss, err := benchenv.ProcStatus(tg.proc.Pid(), "VmRSS"); err == nil && rss > tg.peakRSS && measured {
					tg.peakRSS = rss
				}
				if h, err := tg.sampleHeap(); err == nil && h > tg.peakHeap && measured {
					tg.peakHeap = h
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
	if n != size {
		return fmt.Errorf("(b) %s: %d bytes, want %d", tg.name, n, size)
	}
	if measured {
		tg.mbps = append(tg.mbps, float64(n)/1e6/d.Seconds())
	}
	return nil
}

// printSnapshot prints (b)'s results; targets are direct, shapeseal, solo
// and Express, in that order.
func printSnapshot(targets []*snapshotTarget, size int) {
	fmt.Printf("\n(b) one %.1f MB snapshot response (real electrictest bytes, replayed from memory), %d rounds, alternating:\n", float64(size)/1e6, *rounds)
	fmt.Printf("  %-10s %9s %18s %14s %14s\n", "", "MB/s", "(rounds)", "RSS before MB", "peak RSS MB")
	for _, tg := range targets {
		fmt.Printf("  %-10s %9.0f %18s", tg.name, median(tg.mbps), spread(tg.mbps))
		if tg.proc != nil {
			fmt.Printf(" %14.1f %14.1f   peak %s %.1f MB", float64(tg.baseRSS)/1e6, float64(tg.peakRSS)/1e6, tg.heapMetric, tg.peakHeap/1e6)
		}
		fmt.Println()
	}
	d, g, so, e := targets[0], targets[1], targets[2], targets[3]
	fmt.Println("  (solo: the standalone shapeseal-proxy binary, which links the proxy alone; shapeseal: `shapeseal proxy`)")
	fmt.Printf("  ratio shapeseal/Express throughput: %.1f× (solo %.1f×; target ≥ 5×; direct/Express %.1f×, the bound for any proxy here)\n",
		median(g.mbps)/median(e.mbps), median(so.mbps)/median(e.mbps), median(d.mbps)/median(e.mbps))
	fmt.Printf("  ratio shapeseal/direct throughput: %.2f× (solo %.2f×; issue target ≥ 0.85×)\n",
		median(g.mbps)/median(d.mbps), median(so.mbps)/median(d.mbps))
	growth := func(t *snapshotTarget) float64 { return float64(t.peakRSS-min(t.peakRSS, t.baseRSS)) / 1e6 }
	fmt.Printf("  ratio Express/shapeseal peak RSS: %.1f× (solo %.1f×; target ≥ 10×); peak RSS growth while streaming: Express %.1f MB, shapeseal %.1f MB, solo %.1f MB\n",
		float64(e.peakRSS)/float64(g.peakRSS), float64(e.peakRSS)/float64(so.peakRSS), growth(e), growth(g), growth(so))
}
