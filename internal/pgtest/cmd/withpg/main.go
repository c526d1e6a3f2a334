// Command withpg runs a command with a PostgreSQL server for it.
//
// Usage:
//
//	go run ./internal/pgtest/cmd/withpg -- CMD [ARGS...]
//
// withpg starts one private cluster with [pgtest.Start] (installing
// PostgreSQL with apt-get if no server binaries are found and it runs as
// root), runs CMD with DATABASE_URL pointing at it and with withpg's
// standard input, output and error, and stops the cluster when CMD exits,
// whatever the outcome. If DATABASE_URL is already set, withpg checks that
// its server has wal_level=logical and uses it instead.
//
// This is how `make test` gives all test packages a single server:
// [pgtest.NewDB] uses DATABASE_URL and creates one database per test.
//
// SIGINT and SIGTERM are forwarded to CMD; withpg itself waits for CMD, then
// cleans up. withpg exits with CMD's exit code (128+N if CMD died of signal
// N), 1 if the cluster could not be started or stopped, 127 if CMD could not
// be run, and 2 on a usage error.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

func main() { os.Exit(run()) }

func usage() {
	fmt.Fprintf(os.Stderr, "usage: withpg -- CMD [ARGS...]\n\n"+
		"Runs CMD with DATABASE_URL set to a private PostgreSQL cluster (wal_level=logical),\n"+
		"or to the existing DATABASE_URL, and stops the cluster when CMD exits.\n")
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "withpg: "+format+"\n", args...)
}

func run() int {
	flag.Usage = usage
	flag.Parse()
	args := flag.Args()
	if len(args) == 0 {
		usage()
		return 2
	}

	// From now on, SIGINT and SIGTERM no longer kill withpg: before CMD
	// runs they cancel the startup, afterwards they go to CMD. Either way
	// the cluster is stopped before withpg exits.
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var (
		mu          sync.Mutex
		child       *os.Process
		interrupted os.Signal
	)
	go func() {
		for sig := range signals {
			mu.Lock()
			if child != nil {
				_ = child.Signal(sig)
			} else if interrupted == nil {
				interrupted = sig
				cancel()
			}
			mu.Unlock()
		}
	}()

	cluster, err := pgtest.Open(ctx, pgtest.Options{Install: true, Logf: func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, format+"\n", args...) // already prefixed "pgtest: "
	}})
	if err != nil {
		logf("%v", err)
		mu.Lock()
		defer mu.Unlock()
		if interrupted != nil {
			return 128 + signalNumber(interrupted)
		}
		return 1
	}
	logf("DATABASE_URL=%s", cluster.URL())

	code := runChild(cluster.URL(), args, &mu, &child, &interrupted)

	if err := cluster.Stop(); err != nil {
		logf("stopping PostgreSQL: %v", err)
		if code == 0 {
			code = 1
		}
	}
	return code
}

// runChild runs args with DATABASE_URL set and returns the exit code for
// withpg. While it runs, *child is the process signals are forwarded to.
func runChild(url string, args []string, mu *sync.Mutex, child **os.Process, interrupted *os.Signal) int {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.Env = append(os.Environ(), "DATABASE_URL="+url)

	mu.Lock()
	if sig := *interrupted; sig != nil { // arrived just as the cluster came up
		mu.Unlock()
		logf("interrupted by %v before starting %s", sig, args[0])
		return 128 + signalNumber(sig)
	}
	err := cmd.Start()
	if err == nil {
		*child = cmd.Process
	}
	mu.Unlock()
	if err != nil {
		logf("%v", err)
		return 127
	}

	err = cmd.Wait()
	var exitErr *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exitErr):
		if ws, ok := exitErr.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal())
		}
		return exitErr.ExitCode()
	default:
		logf("%v", err)
		return 1
	}
}

func signalNumber(sig os.Signal) int {
	if s, ok := sig.(syscall.Signal); ok {
		return int(s)
	}
	return 1
}
