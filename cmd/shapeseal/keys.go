package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/keysync"
	_ "github.com/shapeseal/shapeseal/keysync/vaultkek" // hcvault:// KEKs
)

// Key administration: init, keygen, device add, tenant create, grant,
// rotate, revoke, reencrypt. The logic is in package keysync; this file is
// flags and wiring.

func init() {
	register(command{"init", "create shapeseal's key tables in Postgres", stdio(runInit)})
	register(command{"keygen", "create a device identity and print its recipient", stdio(runKeygen)})
	register(command{"device", "device add: register a device's recipient", stdio(runDevice)})
	register(command{"tenant", "tenant create: create a tenant keyset under a KEK", stdio(runTenant)})
	register(command{"grant", "wrap a tenant's keyset to every device of a user", stdio(runGrant)})
	register(command{"rotate", "rotate a tenant's keyset and re-wrap it for its members", stdio(runRotate)})
	register(command{"revoke", "remove a user from a tenant, rotate and re-wrap", stdio(runRevoke)})
	register(command{"reencrypt", "rewrite cells under the primary key (then --retire old keys)", stdio(runReencrypt)})
}

type stdioRun func(ctx context.Context, args []string, stdout, stderr io.Writer) error

func stdio(f stdioRun) func(context.Context, []string) error {
	return func(ctx context.Context, args []string) error { return f(ctx, args, os.Stdout, os.Stderr) }
}

// adminFlags are the flags every key command shares.
type adminFlags struct {
	fs          *flag.FlagSet
	databaseURL *string
	kek         *string
}

func newAdminFlags(name, usage string, stderr io.Writer) *adminFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: shapeseal %s\n\nflags:\n", usage)
		fs.PrintDefaults()
	}
	return &adminFlags{
		fs:          fs,
		databaseURL: fs.String("database-url", "", "Postgres URL (default $DATABASE_URL)"),
	}
}

func (a *adminFlags) withKEK() *adminFlags {
	a.kek = a.fs.String("kek", "",
		"KEK URI: hcvault://HOST/MOUNT/keys/NAME (Vault transit, with $VAULT_ADDR, $VAULT_TOKEN, $VAULT_NAMESPACE) or local:///PATH (default $SHAPESEAL_KEK, else the KEK the tenant's keyset is stored under)")
	return a
}

// parse parses args, which must hold no positional arguments.
func (a *adminFlags) parse(args []string) error {
	if err := a.fs.Parse(args); err != nil {
		return err
	}
	// Defaults from the environment are read here, not shown by -h: a
	// database URL may hold a password.
	if *a.databaseURL == "" {
		*a.databaseURL = os.Getenv("DATABASE_URL")
	}
	if a.kek != nil && *a.kek == "" {
		*a.kek = os.Getenv("SHAPESEAL_KEK")
	}
	if a.fs.NArg() > 0 {
		a.fs.Usage()
		return fmt.Errorf("unexpected argument %q", a.fs.Arg(0))
	}
	return nil
}

func (a *adminFlags) connect(ctx context.Context) (*pgx.Conn, error) {
	if *a.databaseURL == "" {
		return nil, errors.New("no database: set --database-url or DATABASE_URL")
	}
	conn, err := pgx.Connect(ctx, *a.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	return conn, nil
}

// kekFor opens the KEK of tenant: --kek, else the one its newest keyset is
// stored under.
func (a *adminFlags) kekFor(ctx context.Context, db keysync.DB, tenant string) (keysync.KEK, error) {
	uri := *a.kek
	if uri == "" {
		var err error
		if uri, err = keysync.StoredKEKURI(ctx, db, tenant); err != nil {
			return nil, err
		}
	}
	return openKEK(uri)
}

// openKEK opens a KEK by URI: hcvault:// through Vault (package vaultkek
// registers it), local:// from a file.
func openKEK(uri string) (keysync.KEK, error) {
	if uri == "" {
		return nil, errors.New("no KEK: set --kek or SHAPESEAL_KEK")
	}
	return keysync.OpenKEK(uri)
}

func required(fs *flag.FlagSet, names ...string) error {
	for _, n := range names {
		if f := fs.Lookup(n); f == nil || f.Value.String() == "" {
			fs.Usage()
			return fmt.Errorf("--%s is required", n)
		}
	}
	return nil
}

// helpOK turns flag.ErrHelp into success.
func helpOK(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

func runInit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a := newAdminFlags("init", "init [--database-url URL] [--kek URI]", stderr).withKEK()
	if err := a.parse(args); err != nil {
		return helpOK(err)
	}
	db, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer db.Close(context.WithoutCancel(ctx))
	if err := keysync.ApplySchema(ctx, db); err != nil {
		return err
	}
	if *a.kek == "" {
		return nil
	}
	kek, err := openKEK(*a.kek)
	if err != nil {
		return err
	}
	return printSigner(ctx, db, kek, stdout)
}

// printSigner prints the public key of kek's signer (creating the signer
// the first time), which devices must be configured to trust.
func printSigner(ctx context.Context, db keysync.DB, kek keysync.KEK, stdout io.Writer) error {
	s, err := keysync.EnsureSigner(ctx, db, kek)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "signer %s (give it to devices: tail --signer, $SHAPESEAL_SIGNERS)\n", s.VerifyKey())
	return nil
}

func runKeygen(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", os.Getenv("SHAPESEAL_IDENTITY"), "identity file to create, mode 0600 (default $SHAPESEAL_IDENTITY)")
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: shapeseal keygen [-o FILE]\n\nCreates a post-quantum hybrid age identity and prints its recipient.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return helpOK(err)
	}
	if *out == "" || fs.NArg() > 0 {
		fs.Usage()
		return errors.New("-o FILE (or SHAPESEAL_IDENTITY) is required")
	}
	id, err := keysync.GenerateIdentity()
	if err != nil {
		return err
	}
	if err := keysync.WriteIdentityFile(*out, id); err != nil {
		return err
	}
	r, err := keysync.RecipientOf(id)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, r)
	return nil
}

// subcommand splits "add --flags…" into "add" and the flags.
func subcommand(args []string, want string, usage string, stderr io.Writer) ([]string, error) {
	if len(args) == 0 || args[0] != want {
		fmt.Fprintf(stderr, "usage: shapeseal %s\n", usage)
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return nil, flag.ErrHelp
		}
		return nil, fmt.Errorf("want subcommand %q", want)
	}
	return args[1:], nil
}

func runDevice(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const usage = "device add --user U --device D --recipient age1…"
	args, err := subcommand(args, "add", usage, stderr)
	if err != nil {
		return helpOK(err)
	}
	a := newAdminFlags("device add", usage, stderr)
	user := a.fs.String("user", "", "user id")
	device := a.fs.String("device", "", "device id")
	rcpt := a.fs.String("recipient", "", "the device's age recipient (age1pq1… or age1…), as keygen printed it")
	if err := a.parse(args); err != nil {
		return helpOK(err)
	}
	if err := required(a.fs, "user", "device", "recipient"); err != nil {
		return err
	}
	db, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer db.Close(context.WithoutCancel(ctx))
	return keysync.AddDevice(ctx, db, *user, *device, *rcpt)
}

func runTenant(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const usage = "tenant create --tenant T --kek URI"
	args, err := subcommand(args, "create", usage, stderr)
	if err != nil {
		return helpOK(err)
	}
	a := newAdminFlags("tenant create", usage, stderr).withKEK()
	tenant := a.fs.String("tenant", "", "tenant id")
	if err := a.parse(args); err != nil {
		return helpOK(err)
	}
	if err := required(a.fs, "tenant"); err != nil {
		return err
	}
	kek, err := openKEK(*a.kek)
	if err != nil {
		return err
	}
	db, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer db.Close(context.WithoutCancel(ctx))
	ks, err := keysync.CreateTenant(ctx, db, kek, *tenant)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "tenant %s: generation %d under %s\n", *tenant, ks.Generation(), kek.URI())
	return printSigner(ctx, db, kek, stdout)
}

// tenantCommand parses the flags of grant, rotate and revoke and runs f.
func tenantCommand(ctx context.Context, name, usage string, withUser bool, args []string, stderr io.Writer,
	f func(db *pgx.Conn, kek keysync.KEK, tenant, user string) error) error {
	a := newAdminFlags(name, usage, stderr).withKEK()
	tenant := a.fs.String("tenant", "", "tenant id")
	var user *string
	if withUser {
		user = a.fs.String("user", "", "user id")
	}
	if err := a.parse(args); err != nil {
		return helpOK(err)
	}
	names := []string{"tenant"}
	if withUser {
		names = append(names, "user")
	} else {
		user = new(string)
	}
	if err := required(a.fs, names...); err != nil {
		return err
	}
	db, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer db.Close(context.WithoutCancel(ctx))
	kek, err := a.kekFor(ctx, db, *tenant)
	if err != nil {
		return err
	}
	return f(db, kek, *tenant, *user)
}

func runGrant(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const usage = `grant --tenant T --user U [--kek URI]

Wraps the tenant's current keyset to every device the user has registered
(device add), replacing older wrapped keys. Run it again after the user adds
a device.`
	return tenantCommand(ctx, "grant", usage, true, args, stderr,
		func(db *pgx.Conn, kek keysync.KEK, tenant, user string) error {
			n, err := keysync.Grant(ctx, db, kek, tenant, user)
			if err == nil {
				fmt.Fprintf(stdout, "granted tenant %s to %s (%d devices)\n", tenant, user, n)
			}
			return err
		})
}

func runRotate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return tenantCommand(ctx, "rotate", "rotate --tenant T [--kek URI]", false, args, stderr,
		func(db *pgx.Conn, kek keysync.KEK, tenant, _ string) error {
			ks, err := keysync.Rotate(ctx, db, kek, tenant)
			if err == nil {
				fmt.Fprintf(stdout, "tenant %s: generation %d, primary key %08x\n", tenant, ks.Generation(), ks.PrimaryKeyID())
			}
			return err
		})
}

func runRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return tenantCommand(ctx, "revoke", "revoke --tenant T --user U [--kek URI]", true, args, stderr,
		func(db *pgx.Conn, kek keysync.KEK, tenant, user string) error {
			ks, err := keysync.Revoke(ctx, db, kek, tenant, user)
			if err == nil {
				fmt.Fprintf(stdout, "revoked %s from tenant %s: generation %d (run reencrypt to move old cells to the new key)\n", user, tenant, ks.Generation())
			}
			return err
		})
}

const reencryptUsage = `reencrypt --tenant T --table TABLE --columns C1,C2 [--tenant-column tenant_id] [--row-key id] [--batch 500] [--after K] [--retire [--also TABLE:C1,C2[:TENANT_COLUMN]]...]

Rewrites the cells of the tenant's rows that are sealed with a key other than
the keyset's primary key, in batches by row key, each batch in a short
transaction. Only those cells are touched, and only if they still hold the
value read (a concurrent writer wins). Idempotent: run it again to resume or
to check; --after resumes after the row key a progress line printed.

--retire then removes the old keys from the keyset, but only if no cell of
the tenant still sealed with one remains: the tenant's keyset seals the cells
of every table, so they are counted in this table, in every text column of
every table with a column named like the tenant column, and in each table
named with --also (whose tenant column, if not given, is --tenant-column).
Name every table whose tenant column is named otherwise. If cells remain,
nothing is retired and the command fails, listing them: re-encrypt those
tables, then retire again.`

func runReencrypt(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a := newAdminFlags("reencrypt", reencryptUsage, stderr).withKEK()
	tenant := a.fs.String("tenant", "", "tenant id")
	table := a.fs.String("table", "", "table, [schema.]name")
	columns := a.fs.String("columns", "", "comma-separated encrypted columns")
	tenantCol := a.fs.String("tenant-column", "tenant_id", "column holding the tenant id")
	rowKey := a.fs.String("row-key", "id", "comma-separated primary-key columns (cells are bound to them unless --unbound-rows)")
	unbound := a.fs.Bool("unbound-rows", false, "cells are not bound to their rows (--row-key only orders the batches)")
	batch := a.fs.Int("batch", 500, "rows per batch")
	after := a.fs.String("after", "", "resume after this row key (comma-separated values)")
	retire := a.fs.Bool("retire", false, "afterwards, retire the old keys if no cell of the tenant uses them any more")
	var also []keysync.TableSpec
	a.fs.Func("also", "with --retire, another table holding the tenant's cells: TABLE:C1,C2[:TENANT_COLUMN] (repeatable)", func(v string) error {
		table, rest, ok := strings.Cut(v, ":")
		cols, tc, _ := strings.Cut(rest, ":")
		if !ok || table == "" || cols == "" {
			return fmt.Errorf("want TABLE:C1,C2[:TENANT_COLUMN], got %q", v)
		}
		// Only counted, never rewritten: the row key does not matter.
		also = append(also, keysync.TableSpec{Table: table, Columns: splitList(cols), TenantColumn: tc, UnboundRows: true})
		return nil
	})
	if err := a.parse(args); err != nil {
		return helpOK(err)
	}
	if err := required(a.fs, "tenant", "table", "columns"); err != nil {
		return err
	}
	spec := keysync.TableSpec{Table: *table, Columns: splitList(*columns), TenantColumn: *tenantCol, RowKey: splitList(*rowKey), UnboundRows: *unbound}
	if len(also) > 0 && !*retire {
		return errors.New("--also names tables for --retire")
	}
	for i := range also {
		if also[i].TenantColumn == "" {
			also[i].TenantColumn = *tenantCol
		}
	}
	opts := keysync.ReencryptOptions{BatchSize: *batch, Retire: *retire, OtherTables: also, Progress: func(p keysync.ReencryptProgress) {
		fmt.Fprintf(stderr, "reencrypt: %d rows read, %d cells rewritten, last row key %s\n", p.Rows, p.Rewritten, strings.Join(p.Last, ","))
	}}
	if *after != "" {
		opts.After = strings.Split(*after, ",")
	}
	db, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer db.Close(context.WithoutCancel(ctx))
	kek, err := a.kekFor(ctx, db, *tenant)
	if err != nil {
		return err
	}
	res, err := keysync.Reencrypt(ctx, db, kek, spec, *tenant, opts)
	if res != nil {
		fmt.Fprintf(stdout, "tenant %s, %s: %d rows, %d cells rewritten under key %08x (generation %d), %d conflicts, %d failed\n",
			*tenant, spec.QualifiedTable(), res.Rows, res.Rewritten, res.PrimaryKey, res.Generation, res.Conflicts, res.Failed)
		for _, e := range res.Errors {
			fmt.Fprintf(stderr, "reencrypt: %v\n", e)
		}
		if len(res.Retired) > 0 {
			fmt.Fprintf(stdout, "retired %d keys: generation %d\n", len(res.Retired), res.RetiredGeneration)
		}
		for id, n := range res.Remaining {
			fmt.Fprintf(stdout, "key %08x still seals %d cells: not retired\n", id, n)
		}
	}
	if err != nil {
		return err
	}
	if res.Failed > 0 || res.Conflicts > 0 {
		return fmt.Errorf("%d cells do not open (left as they are), %d changed concurrently (run again)", res.Failed, res.Conflicts)
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for v := range strings.SplitSeq(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
