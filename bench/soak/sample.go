package main

import (
	"bufio"
	"context"
	"fmt"
	"maps"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shapeseal/shapeseal/bench/internal/benchenv"
)

// A sample is one reading of a process: its live Go heap (after a GC), its
// goroutines and its open file descriptors.
type sample struct {
	at         time.Duration // since the sampler started
	heap       uint64
	goroutines int
	fds        int
}

// sampler reads every process of the stack, and the soak's own (the
// readers and writers), once a second. Samples are kept per process
// instance (name and pid): a restarted process starts a new series.
type sampler struct {
	st    *stack
	start time.Time
	hc    *http.Client

	mu     sync.Mutex
	series map[string][]sample // by "name pid"
}

func newSampler(st *stack) *sampler {
	return &sampler{st: st, start: time.Now(), hc: &http.Client{Timeout: 5 * time.Second}, series: map[string][]sample{}}
}

func (s *sampler) run(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		at := time.Since(s.start)
		var wg sync.WaitGroup
		for name, p := range s.st.procs() {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if smp, err := s.read(p, at); err == nil {
					s.add(fmt.Sprintf("%s %d", name, p.p.Pid()), smp)
				}
			}()
		}
		wg.Wait()
		s.add(fmt.Sprintf("soak %d", os.Getpid()), s.self(at))
	}
}

func (s *sampler) add(key string, smp sample) {
	s.mu.Lock()
	s.series[key] = append(s.series[key], smp)
	s.mu.Unlock()
}

// self reads this process.
func (s *sampler) self(at time.Duration) sample {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fds, _ := benchenv.OpenFiles(os.Getpid())
	return sample{at: at, heap: ms.HeapAlloc, goroutines: runtime.NumGoroutine(), fds: fds}
}

// read reads a child from its profiles (--debug-listen): the heap profile
// after a GC ends with the runtime's MemStats, the goroutine profile
// starts with their number.
func (s *sampler) read(p procRef, at time.Duration) (sample, error) {
	smp := sample{at: at}
	heap, err := s.scan("http://"+p.debug+"/debug/pprof/heap?debug=1&gc=1", "# HeapAlloc = ")
	if err != nil {
		return smp, err
	}
	g, err := s.scan("http://"+p.debug+"/debug/pprof/goroutine?debug=1", "goroutine profile: total ")
	if err != nil {
		return smp, err
	}
	smp.heap = uint64(heap)
	smp.goroutines = int(g)
	smp.fds, err = benchenv.OpenFiles(p.p.Pid())
	return smp, err
}

// scan returns the number after prefix on a line of the body at url.
func (s *sampler) scan(url, prefix string) (int64, error) {
	resp, err := s.hc.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), prefix); ok {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("%s: no %q", url, prefix)
}

// snapshot reads every process three times, a second apart, and keeps
// the medians, by process name ("soak" for this one).
func (s *sampler) snapshot() map[string]procSample {
	reads := map[string][]sample{}
	pids := map[string]int{}
	for i := 0; i < 3; i++ {
		if i > 0 {
			time.Sleep(time.Second)
		}
		at := time.Since(s.start)
		for name, p := range s.st.procs() {
			if smp, err := s.read(p, at); err == nil {
				reads[name] = append(reads[name], smp)
				pids[name] = p.p.Pid()
			}
		}
		reads["soak"] = append(reads["soak"], s.self(at))
		pids["soak"] = os.Getpid()
	}
	out := map[string]procSample{}
	for name, rs := range reads {
		out[name] = procSample{pid: pids[name], sample: sample{
			heap:       median(rs, func(s sample) uint64 { return s.heap }),
			goroutines: median(rs, func(s sample) int { return s.goroutines }),
			fds:        median(rs, func(s sample) int { return s.fds }),
		}}
	}
	return out
}

type procSample struct {
	pid int
	sample
}

// growth is how a process changed between two snapshots.
type growth struct {
	name          string
	from, to      procSample
	peakHeap      uint64 // the largest heap sampled in between
	peakGoroutine int
}

func (g growth) heapPct() float64 {
	return 100 * (float64(g.to.heap) - float64(g.from.heap)) / float64(g.from.heap)
}

func (g growth) String() string {
	return fmt.Sprintf("%s: heap %.1f → %.1f MB (%+.1f%%; peak %.1f), goroutines %d → %d (peak %d), open files %d → %d",
		g.name, float64(g.from.heap)/1e6, float64(g.to.heap)/1e6, g.heapPct(), float64(g.peakHeap)/1e6,
		g.from.goroutines, g.to.goroutines, g.peakGoroutine, g.from.fds, g.to.fds)
}

// growths compares two snapshots, for the processes that are the same
// (same pid) in both, with the peaks of the per-second samples between.
func (s *sampler) growths(before, after map[string]procSample) []growth {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []growth
	for name, a := range after {
		b, ok := before[name]
		if !ok || b.pid != a.pid {
			continue
		}
		g := growth{name: name, from: b, to: a}
		for _, smp := range s.series[fmt.Sprintf("%s %d", name, a.pid)] {
			g.peakHeap = max(g.peakHeap, smp.heap)
			g.peakGoroutine = max(g.peakGoroutine, smp.goroutines)
		}
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b growth) int { return strings.Compare(a.name, b.name) })
	return out
}

// writeCSV writes every sample to path.
func (s *sampler) writeCSV(path string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	b.WriteString("process,pid,seconds,heap_bytes,goroutines,open_files\n")
	keys := slices.Sorted(maps.Keys(s.series))
	for _, k := range keys {
		name, pid, _ := strings.Cut(k, " ")
		for _, smp := range s.series[k] {
			fmt.Fprintf(&b, "%s,%s,%.0f,%d,%d,%d\n", name, pid, smp.at.Seconds(), smp.heap, smp.goroutines, smp.fds)
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o600)
}

func median[T uint64 | int](xs []sample, f func(sample) T) T {
	vs := make([]T, len(xs))
	for i, x := range xs {
		vs[i] = f(x)
	}
	slices.Sort(vs)
	return vs[len(vs)/2]
}
