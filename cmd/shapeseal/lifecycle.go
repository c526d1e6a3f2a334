package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// errParentGone ends the context of watchParent.
var errParentGone = errors.New("the parent process exited")

var parentDeathOnce sync.Once

// watchParent returns a context that also ends when the process that
// started this one goes away — a "go run" killed without passing the
// signal on — so that dev and devserver stop their whole stack. On Linux
// the kernel also sends SIGTERM then (PR_SET_PDEATHSIG), which main's
// signal handling turns into the same shutdown. (A multithreaded parent,
// such as go run, may cause several SIGTERMs, one per exiting thread: main
// keeps catching them all so that the shutdown is not cut short.)
func watchParent(ctx context.Context) context.Context {
	ppid := os.Getppid()
	if ppid <= 1 {
		return ctx // already orphaned, or started by init: nothing to watch
	}
	parentDeathOnce.Do(setParentDeathSignal)
	ctx, cancel := context.WithCancelCause(ctx)
	go func() {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if os.Getppid() != ppid {
					fmt.Fprintf(os.Stderr, "shapeseal: parent process %d exited; stopping\n", ppid)
					cancel(errParentGone)
					return
				}
			}
		}
	}()
	return ctx
}

// processAlive reports whether a process pid exists.
func processAlive(pid int) bool {
	p, err := os.FindProcess(pid)
	if err != nil {
		return false
	}
	if runtime.GOOS == "windows" {
		return true // FindProcess found it
	}
	err = p.Signal(syscall.Signal(0))
	return err == nil || errors.Is(err, syscall.EPERM)
}

// connectDB connects to the Postgres at dbURL, which source names (the
// flag or variable it came from); a failure names the host and port, the
// cause, and what to check.
func connectDB(ctx context.Context, dbURL, source string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(dbURL)
	if err != nil {
		return nil, fmt.Errorf("%s is not a Postgres URL: %w", source, err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err == nil {
		return conn, nil
	}
	if ctx.Err() != nil {
		return nil, ctx.Err()
	}
	addr := cfg.Host
	if cfg.Port != 0 && (len(addr) == 0 || addr[0] != '/') {
		addr = net.JoinHostPort(cfg.Host, strconv.Itoa(int(cfg.Port)))
	}
	if pe, ok := errors.AsType[*pgconn.PgError](err); ok {
		return nil, fmt.Errorf("cannot connect to %s %s as %q: %s (check the user, password and database in %s)", source, addr, cfg.User, pe.Message, source)
	}
	cause := err.Error()
	if oe, ok := errors.AsType[*net.OpError](err); ok {
		cause = oe.Err.Error()
		if se, ok := errors.AsType[*os.SyscallError](oe.Err); ok {
			cause = se.Err.Error()
		}
	} else if de, ok := errors.AsType[*net.DNSError](err); ok {
		cause = de.Error()
	}
	return nil, fmt.Errorf("cannot connect to %s %s: %s (is Postgres running? set --database-url)", source, addr, cause)
}

// checkReplication checks, before anything is written, that the database
// can serve shapes: wal_level=logical and a role that may replicate.
func checkReplication(ctx context.Context, conn *pgx.Conn) error {
	var level string
	if err := conn.QueryRow(ctx, "SHOW wal_level").Scan(&level); err != nil {
		return fmt.Errorf("SHOW wal_level: %w", err)
	}
	if level != "logical" {
		return fmt.Errorf("Postgres runs with wal_level=%s, and Electric needs logical replication: run\n\tALTER SYSTEM SET wal_level = logical;\nas a superuser, then restart Postgres", level)
	}
	var user string
	var ok bool
	err := conn.QueryRow(ctx, "SELECT current_user, rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user").Scan(&user, &ok)
	if err != nil {
		return fmt.Errorf("role attributes: %w", err)
	}
	if !ok {
		return fmt.Errorf("role %s may not replicate, and Electric needs to: run\n\tALTER ROLE %s WITH REPLICATION;\nas a superuser", user, pgx.Identifier{user}.Sanitize())
	}
	return nil
}
