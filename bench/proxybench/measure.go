package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/shapeseal/shapeseal/bench/internal/benchenv"
)

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
