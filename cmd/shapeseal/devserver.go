package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/internal/proxycmd"
)

func init() {
	register(command{"devserver", "serve Electric's shape API over Postgres (embedded Postgres unless --database-url)", runDevserver})
}

func runDevserver(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("devserver", flag.ContinueOnError)
	dbURL := fs.String("database-url", os.Getenv("DATABASE_URL"), "Postgres to serve (wal_level=logical); empty starts a private one")
	listen := fs.String("listen", "127.0.0.1:3000", "address to listen on")
	secret := fs.String("secret", os.Getenv("ELECTRIC_SECRET"), "API secret required as ?secret= (default $ELECTRIC_SECRET)")
	longPoll := fs.Duration("long-poll", 20*time.Second, "live request timeout")
	verbose := fs.Bool("v", false, "log debug events")
	debugListen := fs.String("debug-listen", "", "also serve Go's profiles (/debug/pprof/) on this address, apart from the shape API (for benchmarks and soaks; never expose it)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: shapeseal devserver [--database-url URL] [--listen ADDR] [--secret S] [--long-poll D] [-v] [--debug-listen ADDR]

Serves Electric's shape API (/v1/shape) over Postgres, for development and
tests: over --database-url (or $DATABASE_URL; wal_level=logical), else over
a private Postgres it starts and stops. It prints one line
"shapeseal devserver ready {json}" and serves until interrupted.

flags:
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return helpOK(err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	ctx = watchParent(ctx)
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if *dbURL == "" {
		logger.Info("starting a private Postgres")
		cl, err := pgtest.Start(ctx, pgtest.Options{Install: true})
		if err != nil {
			return err
		}
		defer cl.Stop()
		*dbURL = cl.URL()
	}
	if err := checkDevserverDB(ctx, *dbURL); err != nil {
		return err
	}
	srv, err := electrictest.New(ctx, electrictest.Options{
		DatabaseURL: *dbURL, Secret: *secret, LongPollTimeout: *longPoll, Logger: logger,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second}
	if *debugListen != "" {
		stop, err := proxycmd.ServeDebug(*debugListen, os.Stderr, "shapeseal devserver")
		if err != nil {
			ln.Close()
			return err
		}
		defer stop()
	}
	ready, _ := json.Marshal(map[string]string{
		"electric_url": "http://" + ln.Addr().String(),
		"database_url": *dbURL,
	})
	fmt.Printf("shapeseal devserver ready %s\n", ready)
	return serveUntilDone(ctx, hs, ln)
}

// checkDevserverDB checks that the database at dbURL (--database-url or
// DATABASE_URL) can serve shapes.
func checkDevserverDB(ctx context.Context, dbURL string) error {
	source := "--database-url"
	if os.Getenv("DATABASE_URL") == dbURL {
		source = "DATABASE_URL"
	}
	conn, err := connectDB(ctx, dbURL, source)
	if err != nil {
		return err
	}
	err = checkReplication(ctx, conn)
	conn.Close(context.WithoutCancel(ctx))
	return err
}

// serveUntilDone serves hs on ln until ctx ends, then shuts it down
// (waiting up to 5 s for the requests in flight).
func serveUntilDone(ctx context.Context, hs *http.Server, ln net.Listener) error {
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(ln) }()
	select {
	case <-ctx.Done():
	case err := <-errc:
		return err
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
