package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/bench/internal/benchenv"
	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// smallQuery is the small shape's query string at Electric.
const smallQuery = "table=small&secret=" + upSecret

// stack is what the parts measure: the upstream (electrictest behind the
// loopback mux) and the three proxy processes in front of it.
type stack struct {
	up      *upstream
	upURL   string // the mux's base URL: going direct
	livePos string // a live position on the small shape, one change behind its head

	goProxy *proc                 // `shapeseal proxy`
	startGo func() (*proc, error) // starts a `shapeseal proxy`, again for (c)
	solo    *proc                 // the standalone shapeseal-proxy binary
	express *proc                 // the Express peer
	tok     string                // the JWT every proxied request carries

	closers []func() error // undo start, run last first by close
}

func (s *stack) onClose(f func() error) { s.closers = append(s.closers, f) }

// close undoes what start did, last step first, and returns the first
// error (that of dropping the database).
func (s *stack) close() error {
	var err error
	for i := len(s.closers) - 1; i >= 0; i-- {
		if cerr := s.closers[i](); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}

// start sets the stack up and prints the header of the results.
func (s *stack) start(ctx context.Context) error {
	root, err := benchenv.ModuleRoot()
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "proxybench-")
	if err != nil {
		return err
	}
	s.onClose(func() error { os.RemoveAll(tmp); return nil })
	dbURL, conn, pgVersion, err := s.startDB(ctx)
	if err != nil {
		return err
	}
	if err := s.startUpstream(ctx, dbURL, conn); err != nil {
		return err
	}
	expressDir := filepath.Join(root, "bench", "peers", "express")
	if err := s.startProxies(ctx, root, expressDir, tmp); err != nil {
		return err
	}
	s.tok = signHS256(map[string]any{"sub": "bench", "exp": time.Now().Add(time.Hour).Unix()})

	nodeVersion, _ := exec.Command("node", "--version").Output()
	expressVersion, _ := benchenv.PackageVersion(filepath.Join(expressDir, "node_modules", "express"))
	fmt.Printf("\nproxy bench: shapeseal proxy vs direct vs Express %s (node %s), all on loopback, one run\n", expressVersion, strings.TrimSpace(string(nodeVersion)))
	fmt.Printf("machine: %s/%s, %d CPUs; %s; PostgreSQL %s\n", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version(), pgVersion)
	return nil
}

// bigRows is the number of rows of the big table: ≈1 KB of JSON each.
func bigRows() int { return *snapshotMB * 1000 }

// startDB opens PostgreSQL (pgtest) and a fresh database with the bench's
// tables, and returns its URL, a connection to it, and the server's
// version.
func (s *stack) startDB(ctx context.Context) (dbURL string, conn *pgx.Conn, pgVersion string, err error) {
	cl, err := pgtest.Open(ctx, pgtest.Options{Logf: logf})
	if err != nil {
		return "", nil, "", err
	}
	s.onClose(func() error { cl.Stop(); return nil })
	admin, err := pgx.Connect(ctx, cl.URL())
	if err != nil {
		return "", nil, "", err
	}
	s.onClose(func() error { admin.Close(context.Background()); return nil })
	admin.QueryRow(ctx, "SELECT current_setting('server_version')").Scan(&pgVersion)
	dbURL, drop, err := cl.CreateDB(ctx, "shapeseal_proxybench")
	if err != nil {
		return "", nil, "", err
	}
	s.onClose(drop)
	conn, err = pgx.Connect(ctx, dbURL)
	if err != nil {
		return "", nil, "", err
	}
	s.onClose(func() error { conn.Close(context.Background()); return nil })
	if _, err := conn.Exec(ctx, `
		CREATE TABLE small (id int8 PRIMARY KEY, title text);
		INSERT INTO small SELECT i, 'small ' || i FROM generate_series(1, 10) i;
		CREATE TABLE big (id int8 PRIMARY KEY, body text);
		CREATE TABLE bench_hold (id int8 PRIMARY KEY)`); err != nil {
		return "", nil, "", err
	}
	if _, err := conn.Exec(ctx, `INSERT INTO big SELECT i, repeat(md5(i::text), 28) FROM generate_series(1, $1::int8) i`, bigRows()); err != nil {
		return "", nil, "", err
	}
	return dbURL, conn, pgVersion, nil
}

// startUpstream starts electrictest over the database and the mux in
// front of it, captures the big snapshot, and makes one change to the
// small table behind s.livePos: a live request there is answered at once
// with one change and up-to-date.
func (s *stack) startUpstream(ctx context.Context, dbURL string, conn *pgx.Conn) error {
	es, err := electrictest.New(ctx, electrictest.Options{DatabaseURL: dbURL, Secret: upSecret, ChunkBytes: 1 << 30})
	if err != nil {
		return err
	}
	s.onClose(func() error { es.Close(); return nil })
	s.up = &upstream{electric: es, release: make(chan struct{})}
	ups := httptest.NewServer(s.up)
	s.onClose(func() error {
		ups.CloseClientConnections()
		ups.Close()
		return nil
	})
	s.upURL = ups.URL
	if err := s.up.captureBig(ups.URL); err != nil {
		return err
	}
	handle, offset, err := catchUp(ups.URL+"/v1/shape?"+smallQuery, "")
	if err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `INSERT INTO small VALUES (11, 'the change')`); err != nil {
		return err
	}
	s.livePos = "live=true&handle=" + url.QueryEscape(handle) + "&offset=" + url.QueryEscape(offset)
	return nil
}

// startProxies builds shapeseal and shapeseal-proxy into tmp and starts
// them, and the Express peer in expressDir, all in front of the upstream.
func (s *stack) startProxies(ctx context.Context, root, expressDir, tmp string) error {
	logf("building shapeseal and shapeseal-proxy")
	bin := filepath.Join(tmp, "shapeseal")
	soloBin := filepath.Join(tmp, "shapeseal-proxy") // the proxy alone
	for out, pkg := range map[string]string{bin: "./cmd/shapeseal", soloBin: "./cmd/shapeseal-proxy"} {
		build := exec.Command("go", "build", "-o", out, pkg)
		build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("go build %s: %w", pkg, err)
		}
	}
	cfgFile := filepath.Join(tmp, "proxy.yaml")
	os.WriteFile(cfgFile, []byte(`auth:
  algorithms: [HS256]
shapes:
  - {name: small, table: small}
  - {name: big, table: big}
  - {name: hold, table: bench_hold}
limits: {requests_per_second: -1, max_live_per_user: -1}
`), 0o600)
	auditLog, err := os.Create(filepath.Join(tmp, "shapeseal-proxy.log"))
	if err != nil {
		return err
	}
	s.onClose(func() error { auditLog.Close(); return nil })
	env := append(os.Environ(), "ELECTRIC_URL="+s.upURL, "ELECTRIC_SECRET="+upSecret, "JWT_SECRET="+jwtSecret)
	s.startGo = func() (*proc, error) {
		// --debug-listen: Go's profiles on a port of their own, to force a
		// GC before measuring and to break the memory down in (c).
		debugAddr, err := benchenv.FreeAddr()
		if err != nil {
			return nil, err
		}
		pr, err := startProc(ctx, exec.Command(bin, "proxy", "--config", cfgFile, "--listen", "127.0.0.1:0", "--debug-listen", debugAddr), env, auditLog, "shapeseal proxy ready ")
		if pr != nil {
			pr.debugURL = "http://" + debugAddr
		}
		return pr, err
	}
	if s.goProxy, err = s.startGo(); err != nil {
		return err
	}
	s.onClose(func() error { s.goProxy.stop(); return nil })
	// The standalone binary, for the memory comparison of (b).
	if s.solo, err = startProc(ctx, exec.Command(soloBin, "--config", cfgFile, "--listen", "127.0.0.1:0"), env, io.Discard, "shapeseal proxy ready "); err != nil {
		return err
	}
	s.onClose(func() error { s.solo.stop(); return nil })
	node := exec.Command("node", "server.mjs")
	node.Dir = expressDir
	if s.express, err = startProc(ctx, node, append(env, `SHAPES={"small":"small","big":"big","hold":"bench_hold"}`, "BENCH_MEM=1"), os.Stderr, "express proxy ready "); err != nil {
		return err
	}
	s.onClose(func() error { s.express.stop(); return nil })
	return nil
}

// upstream routes /v1/shape by table: big is replayed from memory,
// bench_hold live requests are held until release, the rest is Electric.
type upstream struct {
	electric  http.Handler
	bigBody   []byte
	bigHeader http.Header
	holding   atomic.Int64
	release   chan struct{}
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	if r.URL.Path == "/v1/shape" && q.Get("secret") == upSecret {
		switch {
		case q.Get("table") == "big" && u.bigBody != nil && q.Get("offset") == "-1":
			for k, v := range u.bigHeader {
				w.Header()[k] = v
			}
			w.WriteHeader(200)
			w.Write(u.bigBody)
			return
		case q.Get("table") == "bench_hold" && q.Get("live") == "true":
			u.holding.Add(1)
			defer u.holding.Add(-1)
			select {
			case <-r.Context().Done():
				return
			case <-u.release:
			}
			h := w.Header()
			h.Set("content-type", "application/json")
			h.Set("electric-handle", q.Get("handle"))
			h.Set("electric-offset", q.Get("offset"))
			h.Set("electric-up-to-date", "")
			h.Set("electric-cursor", "1")
			h.Set("cache-control", "public, max-age=5, stale-while-revalidate=5")
			io.WriteString(w, `[{"headers":{"control":"up-to-date","global_last_seen_lsn":"0"}}]`)
			return
		}
	}
	u.electric.ServeHTTP(w, r)
}

// captureBig reads the big table's snapshot once through the mux at
// base (from Electric), to replay it.
func (u *upstream) captureBig(base string) error {
	logf("capturing the %d-row snapshot of big from electrictest", bigRows())
	resp, err := http.Get(base + "/v1/shape?table=big&offset=-1&secret=" + upSecret)
	if err != nil {
		return err
	}
	u.bigBody, err = io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 {
		return fmt.Errorf("big snapshot: %d %v", resp.StatusCode, err)
	}
	u.bigHeader = resp.Header.Clone()
	u.bigHeader.Del("Date")
	u.bigHeader.Del("Content-Length")
	return nil
}

// proc is a proxy process and where it serves.
type proc struct {
	*benchenv.Proc
	url      string
	debugURL string // Go's profiles (shapeseal proxy --debug-listen)
}

// startProc starts cmd and waits for a line "<ready>{"proxy_url":…}" on
// its stdout.
func startProc(ctx context.Context, cmd *exec.Cmd, env []string, stderr io.Writer, ready string) (*proc, error) {
	cmd.Env = env
	p, err := benchenv.StartProc(ctx, cmd, stderr, ready)
	if err != nil {
		return nil, err
	}
	if p.Ready["proxy_url"] == "" {
		p.Stop()
		return nil, fmt.Errorf("%s: no proxy_url in its ready line", cmd.Path)
	}
	return &proc{Proc: p, url: p.Ready["proxy_url"]}, nil
}

// stop stops p, if it started: a failed restart leaves a nil proc for the
// stack's cleanup.
func (p *proc) stop() {
	if p != nil {
		p.Stop()
	}
}
