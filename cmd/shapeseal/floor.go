package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/shapeseal/shapeseal/keysync"
)

const floorUsage = `floor forget --floor FILE --tenant T

A floor file remembers how far each tenant's log has been seen — by a device
(tail keeps one next to its identity, IDENTITY.floor) or by a writer (write:
$SHAPESEAL_WRITER_FLOOR, else shapeseal/writer.floor in the user's
configuration directory) — and a log that is shorter, or different, is
refused from then on. A tenant deleted and created again under the same id
has a new log, which is refused as a fork: once you have checked out of band
that the new tenant is genuine, "floor forget" drops what FILE remembers of
the tenant, and the next run accepts its log.`

func runFloor(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	_, args, err := subcommand(args, floorUsage, stderr, "forget")
	if err != nil {
		return helpOK(err)
	}
	fs := flag.NewFlagSet("floor forget", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: shapeseal %s\n\nflags:\n", floorUsage)
		fs.PrintDefaults()
	}
	path := fs.String("floor", "", "the floor file")
	tenant := fs.String("tenant", "", "tenant id")
	if err := parseFlags(fs, args); err != nil {
		return helpOK(err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	if err := required(fs, "floor", "tenant"); err != nil {
		return err
	}
	if _, err := os.Stat(*path); err != nil {
		return fmt.Errorf("--floor: %w", err)
	}
	f, err := keysync.OpenFileFloor(*path)
	if err != nil {
		return err
	}
	m, err := f.Mark(*tenant)
	if err != nil {
		return err
	}
	if m == (keysync.FloorMark{}) {
		fmt.Fprintf(stdout, "%s remembers nothing of tenant %s\n", *path, *tenant)
		return nil
	}
	if err := f.Forget(*tenant); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s forgot tenant %s (seen up to entry %d, generation %d)\n", *path, *tenant, m.Seq, m.Generation)
	return nil
}

// writerFloorPath returns the default floor of `shapeseal write`:
// $SHAPESEAL_WRITER_FLOOR, else writer.floor in shapeseal's directory of
// the user's configuration directory, which it creates (0700).
func writerFloorPath() (string, error) {
	if p := os.Getenv("SHAPESEAL_WRITER_FLOOR"); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no floor file: pass --floor FILE or set $SHAPESEAL_WRITER_FLOOR (%w)", err)
	}
	dir = filepath.Join(dir, "shapeseal")
	if err := os.MkdirAll(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return "", fmt.Errorf("floor directory: %w", err)
	}
	return filepath.Join(dir, "writer.floor"), nil
}
