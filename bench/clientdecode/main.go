// Command clientdecode compares the Go client's decoding speed with the
// official TypeScript client's (@electric-sql/client), on one machine, in
// one run, on the very same bytes.
//
// Usage (from the module root; bench/client-decode.sh does this):
//
//	go run ./internal/pgtest/cmd/withpg -- go run ./bench/clientdecode [-rows 100000] [-count 5] [-benchtime 1s] [-keep DIR]
//
// It
//
//  1. makes one shape log body: a table of -rows rows in a fresh database
//     (DATABASE_URL, or a private cluster when it is not set), served by
//     electrictest and fetched from offset -1 as a client does: the snapshot
//     response (one chunk: the chunk size is raised so that the whole
//     snapshot fits), ending in snapshot-end, then the next offset's
//     up-to-date, their messages joined byte for byte into one array. The
//     columns and values are those of the client package's own benchmark
//     (int8 key, text, int4, bool, text[] and a NULL jsonb). The body and
//     its electric-schema header are written to files, removed at the end
//     unless -keep names a directory.
//  2. builds the client package's test binary once and runs -count rounds
//     of, one after the other,
//     - the Go benchmark, as `go test -run '^$' -bench '^BenchmarkDecode$'
//     -benchmem ./client/` would, with SHAPESEAL_DECODE_BODY and
//     SHAPESEAL_DECODE_SCHEMA naming the files. BenchmarkDecode reads the
//     body through a ShapeStream whose http.Client answers from memory,
//     once with values as strings (Parse: false, the Go client's default),
//     once with typed values (Parse: true), and once into structs (a
//     TypedShape of the table's columns, up to its view after the
//     up-to-date);
//     - bench/ts-decode.mjs: a ShapeStream of the TypeScript client
//     (installed by internal/nodetest in electrictest/interop) whose
//     fetchClient answers from memory, with its default parser, which types
//     values as Go's Parse: true does.
//     Alternating the two spreads a change in the machine's load over both.
//  3. prints the medians over the rounds, in rows/s, and the ratios Go/TS
//     (with the lowest and highest ratio of a single round), the
//     allocations per row, and a last line
//     "client-decode: typed R× TS, raw Q× TS, structs S× TS". The
//     like-for-like ratio is Parse: true against the TypeScript client (both
//     deliver typed values); the target is 3×, and 5× into structs.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shapeseal/shapeseal/bench/internal/benchenv"
	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/nodetest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// target is the Go/TS ratio the issue asks for (Parse: true against the
// TypeScript client's default parser), and structsTarget the one for a
// TypedShape decoding into structs.
const (
	target        = 3.0
	structsTarget = 5.0
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "clientdecode:", err)
		os.Exit(1)
	}
}

func logf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }

// bench is one comparison: its flags, the programs it runs and the files
// they read.
type bench struct {
	rows      int
	count     int
	benchtime time.Duration

	root                 string // the module root
	node, interop        string // node, and where the TypeScript client is installed
	nodeVersion          string
	tsVersion            string // the TypeScript client's
	pgVersion            string
	bodyFile, schemaFile string // the shape log body and its electric-schema header
	size                 int    // the body's
	goTest               string // the client package's test binary
}

// results are the rounds' figures: Go's by sub-benchmark, and the
// TypeScript client's.
type results struct {
	goRuns map[string]runs
	ts     runs
	cpu    string // the Go benchmark's cpu line
}

func run() error {
	rows := flag.Int("rows", 100_000, "rows in the shape log")
	count := flag.Int("count", 5, "runs of each benchmark; medians are compared")
	benchtime := flag.Duration("benchtime", time.Second, "minimum duration of one run")
	keep := flag.String("keep", "", "write the body and schema into this directory and keep them")
	flag.Parse()
	if flag.NArg() > 0 || *rows < 1 || *count < 1 {
		flag.Usage()
		return errors.New("bad arguments")
	}
	ctx := context.Background()
	b := &bench{rows: *rows, count: *count, benchtime: *benchtime}

	var err error
	if b.root, err = benchenv.ModuleRoot(); err != nil {
		return err
	}
	if b.node, b.interop, err = nodetest.Install(logf); err != nil {
		return err
	}
	nodeVersion, _ := exec.Command(b.node, "--version").Output()
	b.nodeVersion = strings.TrimSpace(string(nodeVersion))
	if b.tsVersion, err = benchenv.PackageVersion(filepath.Join(b.interop, "node_modules", "@electric-sql", "client")); err != nil {
		return err
	}

	dir := *keep
	if dir == "" {
		if dir, err = os.MkdirTemp("", "shapeseal-clientdecode-"); err != nil {
			return err
		}
		defer os.RemoveAll(dir)
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b.bodyFile, b.schemaFile = filepath.Join(dir, "body.json"), filepath.Join(dir, "schema.json")
	if b.pgVersion, b.size, err = makeBody(ctx, b.rows, b.bodyFile, b.schemaFile); err != nil {
		return fmt.Errorf("making the shape log: %w", err)
	}
	logf("clientdecode: %d rows, %.1f MB body from electrictest over %s", b.rows, float64(b.size)/1e6, b.pgVersion)

	// The Go test binary is built once; then each round runs it and
	// ts-decode.mjs once, one after the other, so that a change in the
	// machine's load during the run weighs on both sides alike.
	b.goTest = filepath.Join(dir, "client.test")
	cmd := exec.Command("go", "test", "-c", "-o", b.goTest, "./client/")
	cmd.Dir = b.root
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go test -c ./client/: %v", err)
	}
	res := results{goRuns: map[string]runs{}, cpu: "unknown cpu"}
	for round := 1; round <= b.count; round++ {
		if res.cpu, err = b.runGo(round, res.goRuns); err != nil {
			return err
		}
		if err := b.runTS(round, &res.ts); err != nil {
			return err
		}
	}
	return b.report(res)
}

// runGo runs BenchmarkDecode once and adds its figures to goRuns. It
// returns the benchmark's cpu line.
func (b *bench) runGo(round int, goRuns map[string]runs) (cpu string, err error) {
	logf("clientdecode: round %d/%d: go test -run '^$' -bench '^BenchmarkDecode$' -benchmem ./client/", round, b.count)
	cmd := exec.Command(b.goTest, "-test.run", "^$", "-test.bench", "^BenchmarkDecode$", "-test.benchmem",
		"-test.benchtime", b.benchtime.String())
	cmd.Dir = filepath.Join(b.root, "client")
	cmd.Env = append(os.Environ(), "SHAPESEAL_DECODE_BODY="+b.bodyFile, "SHAPESEAL_DECODE_SCHEMA="+b.schemaFile)
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	os.Stderr.Write(out)
	if err != nil {
		return "", fmt.Errorf("BenchmarkDecode: %v", err)
	}
	return parseGoBench(out, goRuns)
}

// runTS runs bench/ts-decode.mjs once and adds its figures to ts.
func (b *bench) runTS(round int, ts *runs) error {
	logf("clientdecode: round %d/%d: node bench/ts-decode.mjs", round, b.count)
	cmd := exec.Command(b.node, filepath.Join(b.root, "bench", "ts-decode.mjs"),
		"--client", filepath.Join(b.interop, "node_modules", "@electric-sql", "client"),
		"--body", b.bodyFile, "--schema", b.schemaFile, "--rows", strconv.Itoa(b.rows),
		"--count", "1", "--time", strconv.FormatFloat(b.benchtime.Seconds(), 'f', -1, 64))
	cmd.Dir = b.root
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	os.Stderr.Write(out)
	if err != nil {
		return fmt.Errorf("node bench/ts-decode.mjs: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var r struct {
			RowsPerSec float64 `json:"rows_per_sec"`
			MBPerSec   float64 `json:"mb_per_sec"`
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return fmt.Errorf("ts-decode.mjs printed %q: %v", line, err)
		}
		ts.rows = append(ts.rows, r.RowsPerSec)
		ts.mb = append(ts.mb, r.MBPerSec)
	}
	return nil
}

// report prints the medians, the ratios against the targets, and the
// summary line.
func (b *bench) report(res results) error {
	raw, typed, structs, ts := res.goRuns["parse=false"], res.goRuns["parse=true"], res.goRuns["structs"], res.ts
	if len(raw.rows) == 0 || len(typed.rows) == 0 || len(structs.rows) == 0 || len(ts.rows) == 0 {
		return errors.New("missing results")
	}
	fmt.Printf("\nclient decode: one %d-row shape log (%.1f MB, from electrictest over %s), read from memory\n", b.rows, float64(b.size)/1e6, b.pgVersion)
	fmt.Printf("machine: %s, %s/%s, %d CPUs, GOMAXPROCS %d; %s, node %s; medians of %d rounds (Go, then TS) of ≥%v each\n\n",
		res.cpu, runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(),
		b.nodeVersion, b.count, b.benchtime)
	fmt.Printf("  %-52s %12s %8s\n", "", "rows/s", "MB/s")
	line := func(name string, r runs) {
		fmt.Printf("  %-52s %12s %8.1f   (rounds: %s)\n", name, thousands(median(r.rows)), median(r.mb), spread(r.rows))
	}
	line("Go client, Parse: false (values as strings)", raw)
	line("Go client, Parse: true (typed values)", typed)
	line("Go client, TypedShape into structs", structs)
	line("TS @electric-sql/client "+b.tsVersion+" (default parser)", ts)
	like := median(typed.rows) / median(ts.rows)
	verdict := "met"
	if like < target {
		verdict = "NOT MET"
	}
	fmt.Printf("\n  Go/TS, typed values (Parse: true vs default parser):          %5.2f×  (rounds: %s)  target ≥ %.0f×: %s\n",
		like, ratioSpread(typed.rows, ts.rows), target, verdict)
	fmt.Printf("  Go/TS, each client's default (Parse: false vs default parser): %5.2f×  (rounds: %s)\n",
		median(raw.rows)/median(ts.rows), ratioSpread(raw.rows, ts.rows))
	sv := "met"
	if median(structs.rows)/median(ts.rows) < structsTarget {
		sv = "NOT MET"
	}
	fmt.Printf("  Go/TS, structs (TypedShape vs default parser):                 %5.2f×  (rounds: %s)  target ≥ %.0f×: %s\n",
		median(structs.rows)/median(ts.rows), ratioSpread(structs.rows, ts.rows), structsTarget, sv)
	fmt.Printf("  allocations per row: Parse: false %.2f, Parse: true %.2f, structs %.2f\n",
		median(raw.allocs), median(typed.allocs), median(structs.allocs))
	fmt.Printf("\nclient-decode: typed %.2f× TS, raw %.2f× TS, structs %.2f× TS\n",
		like, median(raw.rows)/median(ts.rows), median(structs.rows)/median(ts.rows))
	return nil
}

// makeBody creates a database with the benchmark table, serves it with
// electrictest, fetches the initial sync and writes its body and schema.
// It returns Postgres's version and the body size.
func makeBody(ctx context.Context, rows int, bodyFile, schemaFile string) (pgVersion string, size int, err error) {
	cl, err := pgtest.Open(ctx, pgtest.Options{Logf: logf})
	if err != nil {
		return "", 0, err
	}
	defer cl.Stop()
	admin, err := pgx.Connect(ctx, cl.URL())
	if err != nil {
		return "", 0, err
	}
	defer admin.Close(context.Background())
	if err := admin.QueryRow(ctx, "SELECT split_part(version(), ' ', 1) || ' ' || current_setting('server_version')").Scan(&pgVersion); err != nil {
		return "", 0, err
	}
	dbURL, drop, err := cl.CreateDB(ctx, "shapeseal_clientdecode")
	if err != nil {
		return "", 0, err
	}
	defer func() {
		if derr := drop(); derr != nil && err == nil {
			err = derr
		}
	}()
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return "", 0, err
	}
	// The values of client/bench_test.go's shapeLogRow.
	_, err = conn.Exec(ctx, `CREATE TABLE items (id int8 PRIMARY KEY, title text, n int4, flag bool, tags text[], doc jsonb)`)
	if err == nil {
		_, err = conn.Exec(ctx, `INSERT INTO items SELECT i, 'item number ' || i, i % 1000, i % 2 = 0, '{a,b}', NULL
			FROM generate_series(0, $1::int8 - 1) i`, rows)
	}
	conn.Close(context.Background())
	if err != nil {
		return "", 0, err
	}

	body, schema, err := initialSync(ctx, dbURL, rows)
	if err != nil {
		return "", 0, err
	}
	if err := os.WriteFile(bodyFile, body, 0o644); err != nil {
		return "", 0, err
	}
	if err := os.WriteFile(schemaFile, []byte(schema+"\n"), 0o644); err != nil {
		return "", 0, err
	}
	return pgVersion, len(body), nil
}

// initialSync serves the database at dbURL with electrictest and returns
// the body and electric-schema header of a client's initial sync of the
// items table, which must have rows changes: the snapshot response (up to
// snapshot-end) and the response to the next offset (up-to-date), the two
// arrays' messages, byte for byte, in one array.
func initialSync(ctx context.Context, dbURL string, rows int) (body []byte, schema string, err error) {
	srv, err := electrictest.New(ctx, electrictest.Options{DatabaseURL: dbURL, ChunkBytes: 1 << 30})
	if err != nil {
		return nil, "", err
	}
	hs := httptest.NewServer(srv)
	defer func() {
		hs.CloseClientConnections()
		srv.Close()
		hs.Close()
	}()
	var last string
	changes := 0
	for u := hs.URL + "/v1/shape?table=items&offset=-1"; last != "up-to-date"; {
		if len(body) > 0 && bytes.Count(body, []byte(`"control"`)) > 10 {
			return nil, "", errors.New("no up-to-date after 10 responses")
		}
		b, h, n, ctl, err := getMessages(u)
		if err != nil {
			return nil, "", err
		}
		changes += n
		last = ctl
		if schema == "" {
			schema = h.Get("electric-schema")
		}
		b = bytes.TrimSpace(b)
		if body == nil {
			body = b
		} else {
			body = append(append(body[:len(body)-1], ','), b[1:]...)
		}
		u = hs.URL + "/v1/shape?table=items&offset=" + url.QueryEscape(h.Get("electric-offset")) +
			"&handle=" + url.QueryEscape(h.Get("electric-handle"))
	}
	if changes != rows {
		return nil, "", fmt.Errorf("the initial sync has %d changes, want %d", changes, rows)
	}
	if schema == "" {
		return nil, "", errors.New("the response has no electric-schema header")
	}
	return body, schema, nil
}

// getMessages gets one shape log response from u and returns its body and
// headers, how many changes it holds, and the control of its last message.
func getMessages(u string) (body []byte, h http.Header, changes int, lastControl string, err error) {
	resp, err := http.Get(u)
	if err != nil {
		return nil, nil, 0, "", err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, nil, 0, "", err
	}
	if resp.StatusCode != 200 {
		return nil, nil, 0, "", fmt.Errorf("GET %s: %s: %s", u, resp.Status, b)
	}
	var msgs []struct {
		Headers struct {
			Operation string `json:"operation"`
			Control   string `json:"control"`
		} `json:"headers"`
	}
	if err := json.Unmarshal(b, &msgs); err != nil {
		return nil, nil, 0, "", fmt.Errorf("GET %s: not a JSON array of messages: %v", u, err)
	}
	if len(msgs) == 0 {
		return nil, nil, 0, "", fmt.Errorf("GET %s: an empty array", u)
	}
	for _, m := range msgs {
		if m.Headers.Operation != "" {
			changes++
		}
	}
	return b, resp.Header, changes, msgs[len(msgs)-1].Headers.Control, nil
}

type runs struct{ rows, mb, allocs []float64 }

var benchLine = regexp.MustCompile(`^BenchmarkDecode/(parse=\w+|structs)(?:-\d+)?\s`)

// parseGoBench adds the rows/s and MB/s of every BenchmarkDecode line in
// out to res, by sub-benchmark, and returns the cpu line.
func parseGoBench(out []byte, res map[string]runs) (cpu string, err error) {
	cpu = "unknown cpu"
	found := false
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if c, ok := strings.CutPrefix(line, "cpu: "); ok {
			cpu = strings.TrimSpace(c)
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		found = true
		r := res[m[1]]
		f := strings.Fields(line)
		for i := 1; i < len(f); i++ {
			v, err := strconv.ParseFloat(f[i-1], 64)
			if err != nil {
				continue
			}
			switch f[i] {
			case "rows/s":
				r.rows = append(r.rows, v)
			case "MB/s":
				r.mb = append(r.mb, v)
			case "allocs/row":
				r.allocs = append(r.allocs, v)
			}
		}
		res[m[1]] = r
	}
	if !found {
		return "", errors.New("no BenchmarkDecode results in the benchmark's output")
	}
	return cpu, nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// spread prints the lowest and highest of xs.
func spread(xs []float64) string {
	return thousands(slices.Min(xs)) + "–" + thousands(slices.Max(xs))
}

// ratioSpread prints the lowest and highest ratio of a round's figures.
func ratioSpread(a, b []float64) string {
	var rs []float64
	for i := range min(len(a), len(b)) {
		rs = append(rs, a[i]/b[i])
	}
	return fmt.Sprintf("%.2f–%.2f", slices.Min(rs), slices.Max(rs))
}

// thousands formats x rounded, with thousands separators.
func thousands(x float64) string {
	s := strconv.FormatInt(int64(math.Round(x)), 10)
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	return b.String()
}
