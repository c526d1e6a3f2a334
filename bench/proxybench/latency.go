package main

import (
	"fmt"
)

// latency runs (a): small live responses direct and through each proxy,
// interleaved request by request. It returns shapeseal's added p50 and
// p99, in µs, for the summary.
func (s *stack) latency() (p50, p99 string, err error) {
	logf("(a) %d small live responses per path", *latencyN)
	paths := []struct {
		name, url string
		auth      bool
	}{
		{"direct", s.upURL + "/v1/shape?" + smallQuery + "&" + s.livePos, false},
		{"shapeseal", s.goProxy.url + "/v1/shapes/small?" + s.livePos, true},
		{"solo", s.solo.url + "/v1/shapes/small?" + s.livePos, true}, // so that (b) compares warmed processes
		{"express", s.express.url + "/v1/shapes/small?" + s.livePos, true},
	}
	lat := make([][]float64, len(paths))
	var size int
	var prof func()
	for i := -200; i < *latencyN; i++ { // 200 warm-up rounds
		if i == 0 {
			prof = profile(s.goProxy, "a")
		}
		for j, p := range paths {
			d, n, err := timedGet(p.url, s.tok, p.auth)
			if err != nil {
				return "", "", fmt.Errorf("(a) %s: %w", p.name, err)
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
	return fmt.Sprintf("%.0f", added["shapeseal"][0]), fmt.Sprintf("%.0f", added["shapeseal"][1]), nil
}
