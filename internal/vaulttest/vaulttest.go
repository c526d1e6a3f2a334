// Package vaulttest runs a real HashiCorp Vault for tests and for
// `shapeseal dev`: a dev-mode server (in memory, unsealed, with a root
// token) on a loopback port, with the transit secrets engine enabled.
//
// The vault binary is built from the nested module internal/tools/vault
// (`make vault` puts it in bin/vault), so that users of shapeseal never
// download Vault's dependencies. Vault is BUSL-1.1: it is used here for
// tests and development only, never shipped.
//
// When VAULT_ADDR and VAULT_TOKEN are both set, that Vault is used instead
// and nothing is started.
package vaulttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// ErrNoBinary means no vault binary was found: build it with `make vault`.
var ErrNoBinary = errors.New("vaulttest: no vault binary (run `make vault`, or set VAULT_BIN or VAULT_ADDR+VAULT_TOKEN)")

// A Server is a running Vault.
type Server struct {
	Addr  string // e.g. http://127.0.0.1:8200
	Token string // a root token

	cmd  *exec.Cmd
	dir  string
	done chan struct{}
	log  *bytes.Buffer
	out  *syncWriter // writes to log
}

// Binary returns the vault binary to run: $VAULT_BIN, bin/vault of the
// repository this package is in, or vault on PATH.
func Binary() (string, error) {
	if b := os.Getenv("VAULT_BIN"); b != "" {
		return b, nil
	}
	if _, file, _, ok := runtime.Caller(0); ok {
		b := filepath.Join(filepath.Dir(file), "..", "..", "bin", "vault")
		if _, err := os.Stat(b); err == nil {
			return filepath.Clean(b), nil
		}
	}
	if b, err := exec.LookPath("vault"); err == nil {
		return b, nil
	}
	return "", ErrNoBinary
}

// Start returns the Vault of VAULT_ADDR/VAULT_TOKEN when both are set, or
// starts a dev server on a free loopback port. Either way transit is
// enabled (mounting it again is not an error).
func Start(ctx context.Context) (*Server, error) {
	if addr, tok := os.Getenv("VAULT_ADDR"), os.Getenv("VAULT_TOKEN"); addr != "" && tok != "" {
		s := &Server{Addr: addr, Token: tok}
		return s, s.enableTransit(ctx)
	}
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := ln.Addr().String()
	ln.Close()
	var tok [16]byte
	rand.Read(tok[:])
	dir, err := os.MkdirTemp("", "vaulttest-")
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: "http://" + addr, Token: hex.EncodeToString(tok[:]), dir: dir, done: make(chan struct{}), log: &bytes.Buffer{}}
	s.cmd = exec.Command(bin, "server", "-dev", "-dev-root-token-id="+s.Token, "-dev-listen-address="+addr, "-dev-no-store-token")
	s.cmd.Env = append(os.Environ(), "HOME="+dir, "VAULT_ADDR=", "VAULT_TOKEN=", "VAULT_DISABLE_MLOCK=true")
	// One writer for both streams: its mutex guards the one buffer.
	s.out = &syncWriter{w: s.log}
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	setParentDeath(s.cmd)
	if err := s.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("vaulttest: start %s: %w", bin, err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	if err := s.waitReady(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	if err := s.enableTransit(ctx); err != nil {
		s.Stop()
		return nil, err
	}
	return s, nil
}

func (s *Server) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, "GET", s.Addr+"/v1/sys/health", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.done:
			return fmt.Errorf("vaulttest: vault exited: %s", s.logTail())
		case <-ctx.Done():
			return fmt.Errorf("vaulttest: vault did not become ready: %w: %s", ctx.Err(), s.logTail())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// enableTransit mounts the transit engine at transit/.
func (s *Server) enableTransit(ctx context.Context) error {
	req, _ := http.NewRequestWithContext(ctx, "POST", s.Addr+"/v1/sys/mounts/transit", strings.NewReader(`{"type":"transit"}`))
	req.Header.Set("X-Vault-Token", s.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("vaulttest: enable transit: %w", err)
	}
	defer resp.Body.Close()
	var body bytes.Buffer
	body.ReadFrom(resp.Body)
	if resp.StatusCode/100 != 2 && !strings.Contains(body.String(), "path is already in use") {
		return fmt.Errorf("vaulttest: enable transit: %s: %s", resp.Status, body.String())
	}
	return nil
}

// Stop stops a Vault this package started and removes its files.
func (s *Server) Stop() error {
	if s.cmd == nil {
		return nil
	}
	s.cmd.Process.Signal(os.Interrupt)
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	s.cmd = nil
	return os.RemoveAll(s.dir)
}

func (s *Server) logTail() string {
	if s.out == nil {
		return ""
	}
	s.out.mu.Lock()
	out := s.log.String()
	s.out.mu.Unlock()
	if len(out) > 2000 {
		out = out[len(out)-2000:]
	}
	return out
}

type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(p)
}

var (
	sharedOnce sync.Once
	shared     *Server
	sharedErr  error
)

// New returns this test binary's Vault, started on first use and stopped by
// [Run]. Without one, the test is skipped — or fails when CI is true.
func New(t testing.TB) *Server {
	t.Helper()
	sharedOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		shared, sharedErr = Start(ctx)
	})
	if sharedErr != nil {
		if os.Getenv("CI") == "true" || os.Getenv("CI") == "1" {
			t.Fatalf("vaulttest: %v", sharedErr)
		}
		t.Skipf("vaulttest: %v", sharedErr)
	}
	return shared
}

// StopShared stops the Vault [New] started, if any. Call it from TestMain
// after the tests ran:
//
//	func TestMain(m *testing.M) {
//		code := pgtest.Run(m)
//		vaulttest.StopShared()
//		os.Exit(code)
//	}
func StopShared() {
	if shared != nil {
		if err := shared.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "vaulttest:", err)
		}
	}
}
