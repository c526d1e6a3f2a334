// Command shapeseal runs the shapeseal stack: an Electric-compatible shape
// server for development and tests, and (as it grows) the key-sync proxy,
// key administration, encrypt-before-write and a decrypting tail.
//
// Usage:
//
//	shapeseal devserver [--database-url URL] [--listen ADDR] [--secret S] [--long-poll D]
//	shapeseal proxy --config FILE [--listen ADDR] [-v]
//	shapeseal tail URL [--encrypted TABLE:COLS --identity FILE] …
//	shapeseal init
//	shapeseal keygen [-o FILE]
//	shapeseal device add --user U --device D --recipient age1…
//	shapeseal tenant create --tenant T --kek URI
//	shapeseal grant|revoke --tenant T --user U [--kek URI]
//	shapeseal rotate --tenant T [--kek URI]
//	shapeseal reencrypt --tenant T --table TABLE --columns C1,C2 [--batch N] [--retire [--also TABLE:C1,C2]...]
//	shapeseal write --table TABLE --encrypted C1,C2 [--update|--upsert] [--json '{…}']
//
// Key commands read DATABASE_URL; KEKs are hcvault://… (Vault transit, with
// VAULT_ADDR, VAULT_TOKEN, VAULT_NAMESPACE) or local:///PATH, from --kek or
// SHAPESEAL_KEK.
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
