package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/shapeseal/shapeseal/bench/internal/benchenv"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
)

// The stack's processes: the shape server (shapeseal devserver) and the two
// proxies (shapeseal proxy) are children of the soak, each on a fixed
// loopback port for its whole life, so that a restarted one is found where
// the old one was, as behind a load balancer or a service name.
type stack struct {
	dir     string
	bin     string // the shapeseal binary
	cluster *pgtest.Cluster
	dbURL   string
	secret  string // Electric's API secret, which only the proxies hold
	jwtKey  []byte

	shapeAddr, shapeDebug string
	gate                  *gate // between the proxies and the shape server
	proxyAddr, proxyDebug [2]string
	proxyCfg              string

	mu     sync.Mutex
	shape  *benchenv.Proc
	proxy  [2]*benchenv.Proc
	logOut *os.File // the children's stderr
}

// proxyConfig is the proxies' configuration: the data shapes filtered to
// the token's tenants, each device's own wrapped keys, and the logs of the
// token's tenants.
const proxyConfig = `auth:
  algorithms: [HS256]
  hmac_keys: [{secret_env: JWT_SECRET}]
  issuer: shapeseal-soak
  claims: {user: sub, tenants: tenant_ids, device: device_id}
shapes:
  - {name: items, table: items, where: "tenant_id = ANY($1::text[])", params: [$tenants]}
  - {name: notes, table: notes, where: "tenant_id = ANY($1::text[])", params: [$tenants]}
  - {name: keys, kind: tenant_keys}
  - {name: log, table: ` + keysync.LogTable + `, where: "` + keysync.LogShapeWhere + `", params: [$tenants], columns: [tenant_id, seq, entry], replica: full}
limits: {requests_per_second: -1, max_live_per_user: -1}
`

// startStack builds shapeseal, starts Postgres, the shape server behind the
// fault gate, and the two proxies.
func startStack(ctx context.Context, dir string) (*stack, error) {
	root, err := benchenv.ModuleRoot()
	if err != nil {
		return nil, err
	}
	s := &stack{dir: dir, bin: filepath.Join(dir, "shapeseal"), secret: randomHex(16), jwtKey: []byte(randomHex(32))}
	logf("building shapeseal")
	build := exec.CommandContext(ctx, "go", "build", "-o", s.bin, "./cmd/shapeseal")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("go build ./cmd/shapeseal: %w", err)
	}
	if s.logOut, err = os.Create(filepath.Join(dir, "stack.log")); err != nil {
		return nil, err
	}
	logf("starting a private Postgres")
	if s.cluster, err = pgtest.Start(ctx, pgtest.Options{Install: true, Logf: logf}); err != nil {
		return nil, err
	}
	s.dbURL = s.cluster.URL()
	for _, p := range []*string{&s.shapeAddr, &s.shapeDebug, &s.proxyAddr[0], &s.proxyAddr[1], &s.proxyDebug[0], &s.proxyDebug[1]} {
		if *p, err = benchenv.FreeAddr(); err != nil {
			return nil, err
		}
	}
	if s.gate, err = newGate(s.shapeAddr); err != nil {
		return nil, err
	}
	s.proxyCfg = filepath.Join(dir, "proxy.yaml")
	if err := os.WriteFile(s.proxyCfg, []byte(proxyConfig), 0o600); err != nil {
		return nil, err
	}
	return s, nil
}

// startServers starts the shape server and the proxies, once the database
// holds the tables.
func (s *stack) startServers(ctx context.Context) error {
	if err := s.restartShapeServer(ctx); err != nil {
		return err
	}
	for i := range s.proxy {
		if err := s.restartProxy(ctx, i); err != nil {
			return err
		}
	}
	return nil
}

// restartShapeServer stops the shape server (SIGTERM: it drops its
// publication and slot, and its shapes are gone) and starts a new one on
// the same port.
func (s *stack) restartShapeServer(ctx context.Context) error {
	s.mu.Lock()
	old := s.shape
	s.mu.Unlock()
	if old != nil {
		old.Stop()
	}
	cmd := exec.Command(s.bin, "devserver", "--database-url", s.dbURL, "--listen", s.shapeAddr,
		"--secret", s.secret, "--long-poll", "10s", "--debug-listen", s.shapeDebug)
	cmd.Env = os.Environ()
	p, err := benchenv.StartProc(ctx, cmd, s.logOut, "shapeseal devserver ready ")
	if err != nil {
		return fmt.Errorf("shape server: %w", err)
	}
	s.mu.Lock()
	s.shape = p
	s.mu.Unlock()
	return nil
}

// restartProxy starts proxy i on its port, after killing the one there
// (SIGKILL: no graceful end for its connections) if it runs.
func (s *stack) restartProxy(ctx context.Context, i int) error {
	s.killProxy(i)
	cmd := exec.Command(s.bin, "proxy", "--config", s.proxyCfg, "--listen", s.proxyAddr[i], "--debug-listen", s.proxyDebug[i])
	cmd.Env = append(os.Environ(), "ELECTRIC_URL=http://"+s.gate.addr, "ELECTRIC_SECRET="+s.secret, "JWT_SECRET="+string(s.jwtKey))
	p, err := benchenv.StartProc(ctx, cmd, s.logOut, "shapeseal proxy ready ")
	if err != nil {
		return fmt.Errorf("proxy %d: %w", i, err)
	}
	s.mu.Lock()
	s.proxy[i] = p
	s.mu.Unlock()
	return nil
}

// killProxy kills proxy i with SIGKILL, if it runs.
func (s *stack) killProxy(i int) {
	s.mu.Lock()
	p := s.proxy[i]
	s.proxy[i] = nil
	s.mu.Unlock()
	if p != nil {
		p.Kill()
	}
}

// procs returns the stack's processes that run now, by name, with the
// address of their profiles.
func (s *stack) procs() map[string]procRef {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]procRef{}
	if s.shape != nil {
		out["shape-server"] = procRef{s.shape, s.shapeDebug}
	}
	for i, p := range s.proxy {
		if p != nil {
			out["proxy-"+strconv.Itoa(i)] = procRef{p, s.proxyDebug[i]}
		}
	}
	return out
}

type procRef struct {
	p     *benchenv.Proc
	debug string
}

// close stops everything (the gate last but one, Postgres last).
func (s *stack) close() {
	for i := range s.proxy {
		s.killProxy(i)
	}
	s.mu.Lock()
	sh := s.shape
	s.mu.Unlock()
	if sh != nil {
		sh.Stop()
	}
	if s.gate != nil {
		s.gate.close()
	}
	if s.cluster != nil {
		s.cluster.Stop()
	}
	if s.logOut != nil {
		s.logOut.Close()
	}
}

// dbAddr is Postgres' host:port.
func (s *stack) dbAddr() string {
	u, err := url.Parse(s.dbURL)
	if err != nil {
		return ""
	}
	return u.Host
}
