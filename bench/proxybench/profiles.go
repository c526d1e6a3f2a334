package main

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

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
