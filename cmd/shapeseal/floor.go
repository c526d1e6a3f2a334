package main

import (
	"context"
	"crypto/sha256"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/jackc/pgx/v5/pgconn"

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

// defaultFloor returns a floor file: given if set, else $env, else one file
// per database (named after a hash of its host, port and name, never its
// password) in shapeseal's directory of the user's configuration directory,
// which it creates (0700): a floor remembers tenants by id, and two
// databases may each have a tenant of the same id.
func defaultFloor(given, env, kind, databaseURL string) (string, error) {
	if given != "" {
		return given, nil
	}
	if p := os.Getenv(env); p != "" {
		return p, nil
	}
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("no floor file: pass --floor FILE or set $%s (%w)", env, err)
	}
	dir = filepath.Join(dir, "shapeseal", "floors")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("floor directory: %w", err)
	}
	id := databaseURL
	if cfg, err := pgconn.ParseConfig(databaseURL); err == nil {
		id = fmt.Sprintf("%s:%d/%s", cfg.Host, cfg.Port, cfg.Database)
	}
	sum := sha256.Sum256([]byte(id))
	return filepath.Join(dir, fmt.Sprintf("%s-%x.json", kind, sum[:8])), nil
}
