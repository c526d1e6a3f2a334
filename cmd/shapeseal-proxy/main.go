// Command shapeseal-proxy serves the key-sync proxy alone: the same as
// `shapeseal proxy`, in a binary that links only the proxy, for
// deployments that run nothing else (a smaller image and process: about
// 10 MB resident at rest instead of the whole toolkit's 16 MB).
//
//	shapeseal-proxy --config FILE [--listen ADDR] [-v]
//
// See package proxy and proxy/testdata/example.yaml for the configuration,
// and `shapeseal proxy -h` for the flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/shapeseal/shapeseal/internal/proxycmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := proxycmd.Run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "shapeseal-proxy:", err)
		os.Exit(1)
	}
}
