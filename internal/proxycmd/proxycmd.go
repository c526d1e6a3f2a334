// Package proxycmd is the command that serves the key-sync proxy: both
// `shapeseal proxy` and the standalone `shapeseal-proxy` binary, which
// links only the proxy (a smaller process for deployments that run the
// proxy alone).
package proxycmd

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"github.com/shapeseal/shapeseal/proxy"
)

// Run is `shapeseal proxy` and `shapeseal-proxy`: with the flags --config
// FILE [--listen ADDR] [-v] [--debug-listen ADDR], it reads the YAML config (proxy.LoadConfig, secrets from the environment:
// ELECTRIC_URL, ELECTRIC_SECRET, JWT_SECRET, JWT_PUBLIC_KEY, JWKS_URL),
// prints one line `shapeseal proxy ready {"proxy_url":…}` on stdout, logs
// one JSON audit line per request on stderr and serves until ctx ends
// (SIGINT or SIGTERM), then shuts down gracefully.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	config := fs.String("config", "", "YAML config file (its format: proxy.LoadConfig); required")
	listen := fs.String("listen", "127.0.0.1:3001", "address to listen on")
	verbose := fs.Bool("v", false, "log debug events")
	debugListen := fs.String("debug-listen", "", "also serve Go's profiles (/debug/pprof/) on this address, apart from the proxy (for benchmarks; never expose it)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *config == "" || fs.NArg() > 0 {
		fs.Usage()
		return errors.New("--config FILE is required and no arguments are taken")
	}
	cfg, err := proxy.LoadConfig(*config, getenv)
	if err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: level}))
	p, err := proxy.New(cfg)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	// No WriteTimeout: a live long poll is held for as long as the upstream
	// holds it (20 s by default, SSE longer); the proxy bounds upstream
	// requests itself (limits.upstream_timeout).
	hs := &http.Server{
		Handler:           p,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	ready, _ := json.Marshal(map[string]string{"proxy_url": "http://" + ln.Addr().String(), "upstream": cfg.Upstream})
	fmt.Fprintf(stdout, "shapeseal proxy ready %s\n", ready)
	if *debugListen != "" {
		stop, err := ServeDebug(*debugListen, stderr, "shapeseal proxy")
		if err != nil {
			ln.Close()
			return err
		}
		defer stop()
	}
	errc := make(chan error, 1)
	// Serve parks coalesced live polls (see proxy.Proxy.Serve): a waiting
	// poll then costs a few KB instead of a handler goroutine and buffers.
	go func() { errc <- p.Serve(hs, ln) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	// Live polls in flight on a handler are given a few seconds to finish,
	// then cut; parked ones are closed at once (with the listener).
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
		if !errors.Is(err, context.DeadlineExceeded) {
			return err
		}
	}
	return nil
}

// ServeDebug serves Go's runtime profiles (/debug/pprof/) on addr, apart
// from the command's own routes, until stop is called, and says where on
// stderr (prefixed with who). It backs the --debug-listen flag of the
// long-running commands, for benchmarks and soaks; never expose it.
func ServeDebug(addr string, stderr io.Writer, who string) (stop func(), err error) {
	dln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	go (&http.Server{Handler: debugMux(), ReadHeaderTimeout: 10 * time.Second}).Serve(dln)
	fmt.Fprintf(stderr, "%s: profiles on http://%s/debug/pprof/\n", who, dln.Addr())
	return func() { dln.Close() }, nil
}

// debugMux serves Go's runtime profiles (net/http/pprof), only on the
// --debug-listen address: never next to the proxy's own routes.
func debugMux() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("/debug/pprof/", pprof.Index)
	m.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	m.HandleFunc("/debug/pprof/profile", pprof.Profile)
	m.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	m.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return m
}
