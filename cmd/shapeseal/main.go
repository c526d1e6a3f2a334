// Command shapeseal runs the shapeseal stack: an Electric-compatible shape
// server for development and tests, the key-sync proxy, key
// administration, encrypt-before-write and a decrypting tail.
//
// Usage:
//
//	shapeseal dev [--dir DIR] [--listen ADDR] [-v]
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
package main

import (
	"context"
	"fmt"
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

func usage() {
	fmt.Fprintln(os.Stderr, "usage: shapeseal <command> [flags]\n\ncommands:")
	for _, c := range commands {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", c.name, c.summary)
	}
}

func main() {
	if len(os.Args) < 2 || os.Args[1] == "-h" || os.Args[1] == "--help" || os.Args[1] == "help" {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, c := range commands {
		if c.name == os.Args[1] {
			if err := c.run(ctx, os.Args[2:]); err != nil {
				fmt.Fprintf(os.Stderr, "shapeseal %s: %v\n", c.name, err)
				os.Exit(1)
			}
			return
		}
	}
	fmt.Fprintf(os.Stderr, "shapeseal: unknown command %q\n", os.Args[1])
	usage()
	os.Exit(2)
}
