// Command shapeseal runs the shapeseal stack: an Electric-compatible shape
// server for development and tests, the key-sync proxy, key
// administration, encrypt-before-write and a decrypting tail.
//
// Usage:
//
//	shapeseal dev [--dir DIR] [--reset] [--listen ADDR] [-v]
//	shapeseal devserver [--database-url URL] [--listen ADDR] [--secret S] [--long-poll D]
//	shapeseal proxy --config FILE [--listen ADDR] [-v]
//	shapeseal tail URL [--encrypted TABLE:COLS --identity FILE --root ssvk1… [--keys-url URL] [--log-url URL] [--floor FILE|--no-floor]] …
//	shapeseal init
//	shapeseal keygen -o FILE
//	shapeseal signkey -o FILE
//	shapeseal tenant create --tenant T --kek URI --key ROOTKEY [--admin ssvk1…]...
//	shapeseal tenant admins --tenant T --key ROOTKEY [--add ssvk1…]... [--remove ssvk1…]...
//	shapeseal tenant show --tenant T
//	shapeseal device add --user U --device D --recipient age1… --key KEY
//	shapeseal grant --tenant T --user U --key KEY
//	shapeseal rotate --tenant T --key KEY
//	shapeseal revoke --tenant T --user U --key KEY [--table TABLE --columns C1,C2 [--retire] [--electric-url URL] …]
//	shapeseal reencrypt --tenant T --table TABLE --columns C1,C2 --key KEY [--batch N] [--retire [--also TABLE:C1,C2]...] [--accept-suspect] [--electric-url URL]
//	shapeseal write --table TABLE --encrypted C1,C2 [--update|--upsert] [--floor FILE] [--json '{…}']
//	shapeseal floor forget --floor FILE --tenant T
//
// Key commands read DATABASE_URL. Every command that reads a tenant's
// signed log verifies it from the pinned root keys: --root ssvk1…
// (repeatable or comma-separated) or SHAPESEAL_ROOT. Commands that sign
// log entries or certificates take the administrator's signing key file,
// made with signkey: --key FILE or SHAPESEAL_KEY. KEKs are hcvault://…
// (Vault transit, with VAULT_ADDR, VAULT_TOKEN, VAULT_NAMESPACE) or
// local:///PATH: tenant create needs one (--kek or SHAPESEAL_KEK); the
// other commands use the KEK the tenant's log names, or only the one given.
//
// "shapeseal COMMAND --help" prints a command's description, usage and
// flags to stdout. Errors go to stderr; the exit status is 0 on success, 1
// on an error and 2 on a misuse (an unknown flag, a missing required flag,
// an unexpected argument).
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string) error
}

var commands []command

func register(c command) { commands = append(commands, c) }

func usage(w io.Writer) {
	fmt.Fprintln(w, `shapeseal runs and administers end-to-end encrypted sync over ElectricSQL.

usage: shapeseal <command> [flags]

commands:`)
	for _, c := range commands {
		fmt.Fprintf(w, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, `
Run "shapeseal <command> --help" for a command's usage and flags.`)
}

// Exit statuses: 0 for success and for --help, 1 for an error, 2 for a
// misuse (a bad or missing flag, an unexpected argument).
const (
	exitError = 1
	exitUsage = 2
)

// usageError is a misuse of a command: it exits 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usagef returns a usageError.
func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// isHelpArg reports whether arg asks for help.
func isHelpArg(arg string) bool {
	switch arg {
	case "-h", "-help", "--help", "help":
		return true
	}
	return false
}

// parseFlags parses args with fs. -h or --help prints fs's usage to stdout
// and returns flag.ErrHelp (exit 0); a bad flag returns a usageError (exit
// 2) without printing the usage, which main points to.
func parseFlags(fs *flag.FlagSet, args []string) error {
	out := fs.Output()
	var buf bytes.Buffer
	fs.SetOutput(&buf)
	err := fs.Parse(args)
	fs.SetOutput(out)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		os.Stdout.Write(buf.Bytes())
		return flag.ErrHelp
	default:
		return usageError{err}
	}
}

func main() { os.Exit(shapesealMain(os.Args[1:])) }

// shapesealMain runs the command args name and returns the exit status.
func shapesealMain(args []string) int {
	if len(args) == 0 {
		usage(os.Stderr)
		return exitUsage
	}
	if isHelpArg(args[0]) {
		if len(args) > 1 && !isHelpArg(args[1]) {
			// shapeseal help CMD is shapeseal CMD --help.
			args = []string{args[1], "--help"}
		} else {
			usage(os.Stdout)
			return 0
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, c := range commands {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, args[1:])
		if ue, ok := errors.AsType[usageError](err); ok {
			fmt.Fprintf(os.Stderr, "shapeseal %s: %v\nRun \"shapeseal %s --help\" for usage.\n", c.name, ue.err, c.name)
			return exitUsage
		}
		switch {
		case err == nil, errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, context.Canceled) && ctx.Err() != nil:
			return 130 // interrupted
		}
		fmt.Fprintf(os.Stderr, "shapeseal %s: %v\n", c.name, err)
		return exitError
	}
	fmt.Fprintf(os.Stderr, "shapeseal: unknown command %q\n\n", args[0])
	usage(os.Stderr)
	return exitUsage
}
