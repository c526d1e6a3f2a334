package main

import (
	"bufio"
	"context"
	"fmt"
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

// growth is how a process changed between the start and the end of a
// window: medians of the first and last ten samples inside it.
type growth struct {
	name             string
	heapFrom, heapTo uint64
	goFrom, goTo     int
	fdFrom, fdTo     int
	covered          float64 // the share of the window the process lived
}

func (g growth) heapPct() float64 {
	return 100 * (float64(g.heapTo) - float64(g.heapFrom)) / float64(g.heapFrom)
}

func (g growth) String() string {
	return fmt.Sprintf("%s: heap %.1f → %.1f MB (%+.1f%%), goroutines %d → %d, open files %d → %d",
		g.name, float64(g.heapFrom)/1e6, float64(g.heapTo)/1e6, g.heapPct(), g.goFrom, g.goTo, g.fdFrom, g.fdTo)
}

// growths returns the growth of every process instance over [from, to]
// that has at least 20 samples in it.
func (s *sampler) growths(from, to time.Duration) []growth {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []growth
	for key, ser := range s.series {
		var in []sample
		for _, smp := range ser {
			if smp.at >= from && smp.at <= to {
				in = append(in, smp)
			}
		}
		if len(in) < 20 {
			continue
		}
		first, last := in[:10], in[len(in)-10:]
		out = append(out, growth{
			name:     key,
			heapFrom: median(first, func(s sample) uint64 { return s.heap }),
			heapTo:   median(last, func(s sample) uint64 { return s.heap }),
			goFrom:   median(first, func(s sample) int { return s.goroutines }),
			goTo:     median(last, func(s sample) int { return s.goroutines }),
			fdFrom:   median(first, func(s sample) int { return s.fds }),
			fdTo:     median(last, func(s sample) int { return s.fds }),
			covered:  float64(in[len(in)-1].at-in[0].at) / float64(to-from),
		})
	}
	slices.SortFunc(out, func(a, b growth) int { return strings.Compare(a.name, b.name) })
	return out
}

func median[T uint64 | int](xs []sample, f func(sample) T) T {
	vs := make([]T, len(xs))
	for i, x := range xs {
		vs[i] = f(x)
	}
	slices.Sort(vs)
	return vs[len(vs)/2]
}
