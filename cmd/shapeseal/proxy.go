package main

import (
	"context"
	"os"

	"github.com/shapeseal/shapeseal/internal/proxycmd"
)

func init() {
	register(command{"proxy", "serve the authorizing proxy in front of Electric (--config FILE)", func(ctx context.Context, args []string) error {
		return proxycmd.Run(ctx, args, os.Stdout, os.Stderr, os.Getenv)
	}})
}
