package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
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
// self reads this process. Its heap is the live heap that the GC it
// forces marked: the readers go on allocating meanwhile, and HeapAlloc
// would count that too.
func (s *sampler) self(at time.Duration) sample {
	runtime.GC()
	live := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(live)
	fds, _ := benchenv.OpenFiles(os.Getpid())
	return sample{at: at, heap: live[0].Value.Uint64(), goroutines: runtime.NumGoroutine(), fds: fds}
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
// the medians, by process name ("soak" for this one). With a directory
// to keep, it also saves each process's heap profile there, as
// NAME-LABEL.heap (compare two with go tool pprof -base).
func (s *sampler) snapshot(keep, label string) map[string]procSample {
	if keep != "" {
		s.saveProfiles(keep, label)
	}
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
		ps := procSample{pid: pids[name], sample: sample{
			heap:       median(rs, func(s sample) uint64 { return s.heap }),
			goroutines: median(rs, func(s sample) int { return s.goroutines }),
			fds:        median(rs, func(s sample) int { return s.fds }),
		}}
		switch {
		case strings.HasPrefix(name, "proxy-"):
			n, _ := strconv.Atoi(strings.TrimPrefix(name, "proxy-"))
			ps.fdUse = fdsOf(ps.pid, addrPort(s.st.proxyAddr[n]), addrPort(s.st.gate.addr))
		case name == "soak":
			// Served: the gate's connections from the proxies;
			// upstream: the readers' to proxy-0.
			ps.fdUse = fdsOf(ps.pid, addrPort(s.st.gate.addr), addrPort(s.st.proxyAddr[0]))
		case name == "shape-server":
			ps.fdUse = fdsOf(ps.pid, addrPort(s.st.shapeAddr), addrPort(s.st.dbAddr()))
		}
		out[name] = ps
	}
	return out
}

// saveProfiles writes the heap profile of every process into dir.
func (s *sampler) saveProfiles(dir, label string) {
	runtime.GC()
	if f, err := os.Create(filepath.Join(dir, "soak-"+label+".heap")); err == nil {
		pprof.Lookup("heap").WriteTo(f, 0)
		f.Close()
	}
	writeFDs(filepath.Join(dir, "soak-"+label+".fds"), os.Getpid())
	for name, p := range s.st.procs() {
		writeFDs(filepath.Join(dir, name+"-"+label+".fds"), p.p.Pid())
		resp, err := s.hc.Get("http://" + p.debug + "/debug/pprof/heap?gc=1")
		if err != nil {
			continue
		}
		if f, err := os.Create(filepath.Join(dir, name+"-"+label+".heap")); err == nil {
			io.Copy(f, resp.Body)
			f.Close()
		}
		resp.Body.Close()
	}
}

type procSample struct {
	pid int
	sample
	fdUse fdUse // the descriptors, in the last of the three readings
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
	s := fmt.Sprintf("%s: heap %.1f → %.1f MB (%+.1f%%; peak %.1f), goroutines %d → %d (peak %d), open files %d → %d",
		g.name, float64(g.from.heap)/1e6, float64(g.to.heap)/1e6, g.heapPct(), float64(g.peakHeap)/1e6,
		g.from.goroutines, g.to.goroutines, g.peakGoroutine, g.from.fds, g.to.fds)
	s += fmt.Sprintf(" [%s → %s]", g.from.fdUse, g.to.fdUse)
	return s
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

// fdUse is what a process's descriptors are.
type fdUse struct {
	served   int // TCP connections whose local port is the one it serves
	upstream int // TCP connections to the upstream port
	otherTCP int // other TCP sockets (not listening), such as the sampler's
	other    int // everything else: listeners, pipes, epoll, files, other sockets
}

func (u fdUse) String() string {
	return fmt.Sprintf("%d served, %d upstream, %d other TCP, %d other", u.served, u.upstream, u.otherTCP, u.other)
}

// fdsOf sorts the descriptors of process pid, from /proc/net/tcp and the
// process's socket descriptors: connections served on port serve, to port
// upstream, and the rest.
func fdsOf(pid, serve, upstream int) fdUse {
	var u fdUse
	inodes := map[string]bool{}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if ino, ok := strings.CutPrefix(link, "socket:["); err == nil && ok {
			inodes[strings.TrimSuffix(ino, "]")] = true
		} else {
			u.other++
		}
	}
	for _, table := range []string{"tcp", "tcp6"} {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(b)) {
			f := strings.Fields(line)
			if len(f) < 10 || !inodes[f[9]] {
				continue
			}
			delete(inodes, f[9])
			switch {
			case f[3] == "0A": // listening
				u.other++
			case port(f[1]) == serve:
				u.served++
			case port(f[2]) == upstream:
				u.upstream++
			default:
				u.otherTCP++
			}
		}
	}
	u.other += len(inodes) // sockets of other kinds
	return u
}

// port reads the port of an address of /proc/net/tcp ("0100007F:1F90").
func port(addr string) int {
	_, hex, _ := strings.Cut(addr, ":")
	p, _ := strconv.ParseUint(hex, 16, 16)
	return int(p)
}

// addrPort is the port of a host:port address.
func addrPort(addr string) int {
	_, p, _ := strings.Cut(addr, ":")
	n, _ := strconv.Atoi(p)
	return n
}

// writeFDs lists the descriptors of process pid into path, with each TCP
// socket's state and addresses (as /proc/net/tcp writes them).
func writeFDs(path string, pid int) {
	tcp := map[string]string{}
	for _, table := range []string{"tcp", "tcp6"} {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		for line := range strings.Lines(string(b)) {
			if f := strings.Fields(line); len(f) >= 10 {
				tcp[f[9]] = fmt.Sprintf("tcp state %s local %d remote %d", f[3], port(f[1]), port(f[2]))
			}
		}
	}
	var b strings.Builder
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		link, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		ino, _ := strings.CutPrefix(link, "socket:[")
		fmt.Fprintf(&b, "%s %s %s\n", fd.Name(), link, tcp[strings.TrimSuffix(ino, "]")])
	}
	os.WriteFile(path, []byte(b.String()), 0o600)
}
