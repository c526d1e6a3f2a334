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
	"github.com/shapeseal/shapeseal/keysync/chain"
	_ "github.com/shapeseal/shapeseal/keysync/vaultkek" // hcvault:// KEKs
)

// Key administration: init, keygen, signkey, tenant, device add, grant,
// rotate, revoke, reencrypt, floor forget. The logic is in package keysync
// (type Admin); these files are flags and wiring.
//
// Every command that reads a tenant's log verifies it from the pinned root
// keys (--root, $SHAPESEAL_ROOT); every command that changes it signs with
// this administrator's key (--key, $SHAPESEAL_KEY).

func init() {
	register(command{"init", "create shapeseal's key tables in Postgres", stdio(runInit)})
	register(command{"keygen", "create a device identity and print its recipient", stdio(runKeygen)})
	register(command{"signkey", "create a root or admin signing key and print its public key", stdio(runSignkey)})
	register(command{"tenant", "tenant create|admins|show: a tenant's log, its admins, its state", stdio(runTenant)})
	register(command{"device", "device add: certify a user's device recipient", stdio(runDevice)})
	register(command{"grant", "make a user a member of a tenant and wrap its keyset to their devices", stdio(runGrant)})
	register(command{"rotate", "rotate a tenant's keyset and re-wrap it for its members", stdio(runRotate)})
	register(command{"revoke", "remove a user from a tenant and rotate (then --table: re-encrypt)", stdio(runRevoke)})
	register(command{"reencrypt", "rewrite cells under the primary key (then --retire old keys)", stdio(runReencrypt)})
	register(command{"floor", "floor forget: drop what a floor file remembers of a tenant", stdio(runFloor)})
}

type stdioRun func(ctx context.Context, args []string, stdout, stderr io.Writer) error

func stdio(f stdioRun) func(context.Context, []string) error {
	return func(ctx context.Context, args []string) error { return f(ctx, args, os.Stdout, os.Stderr) }
}

// listFlag collects a repeatable flag whose values may also be comma- or
// space-separated lists.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// adminFlags are the flags the key commands share. The optional ones are
// nil unless the command asked for them.
type adminFlags struct {
	fs          *flag.FlagSet
	databaseURL *string
	dbSource    string    // "--database-url" or "DATABASE_URL"
	kek         *string   // withKEK
	key         *string   // withKey
	roots       *listFlag // withRoots
	floor       *string   // withRoots: this administrator's floor file
	floorPath   string    // the floor file admin opened
}

func newAdminFlags(name, usage string, stderr io.Writer) *adminFlags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: shapeseal %s\n\nflags:\n", usage)
		fs.PrintDefaults()
	}
	return &adminFlags{
		fs:          fs,
		databaseURL: fs.String("database-url", "", "Postgres URL (default $DATABASE_URL)"),
	}
}

const kekHelp = "hcvault://HOST[:PORT]/MOUNT/keys/NAME (Vault transit, with $VAULT_ADDR, $VAULT_TOKEN, $VAULT_NAMESPACE) or local:///PATH"

// withKEK adds --kek. Optional, it only restricts the KEK the tenant's log
// names: a log naming another is refused.
func (a *adminFlags) withKEK() *adminFlags {
	a.kek = a.fs.String("kek", "", "KEK URI: "+kekHelp+
		" (default $SHAPESEAL_KEK; if neither is set, the KEK the tenant's signed log names; if set, a log naming another KEK is refused)")
	return a
}

// withKey adds --key, this administrator's signing key.
func (a *adminFlags) withKey() *adminFlags {
	a.key = a.fs.String("key", "", "signing key file of this administrator, a root or an admin key of the tenant, from shapeseal signkey (default $SHAPESEAL_KEY)")
	return a
}

// withRoots adds --root, the pinned root keys.
func (a *adminFlags) withRoots() *adminFlags {
	a.roots = &listFlag{}
	a.fs.Var(a.roots, "root", "pinned root public key ssvk1… the tenant logs are verified against (repeatable or comma-separated; default $SHAPESEAL_ROOT)")
	a.floor = a.fs.String("floor", "", "file where this command remembers how far each tenant's log has been seen, so that a log cut back (a revocation removed) is refused; created 0600 if missing (default $SHAPESEAL_ADMIN_FLOOR, or $SHAPESEAL_WRITER_FLOOR for write, else one file per database in shapeseal's configuration directory)")
	return a
}

// hint adds to err, if it is about a log below the administrator's floor,
// how to accept a tenant that was deleted and created again.
func (a *adminFlags) hint(err error) error { return forkHint(err, a.floorPath) }

// parse parses args, which must hold no positional arguments.
func (a *adminFlags) parse(args []string) error {
	if err := parseFlags(a.fs, args); err != nil {
		return err
	}
	// Defaults from the environment are read here, not shown by -h: a
	// database URL may hold a password.
	a.dbSource = "--database-url"
	if *a.databaseURL == "" {
		*a.databaseURL = os.Getenv("DATABASE_URL")
		a.dbSource = "DATABASE_URL"
	}
	if a.kek != nil && *a.kek == "" {
		*a.kek = os.Getenv("SHAPESEAL_KEK")
	}
	if a.key != nil && *a.key == "" {
		*a.key = os.Getenv("SHAPESEAL_KEY")
	}
	if a.roots != nil && len(*a.roots) == 0 {
		if env := os.Getenv("SHAPESEAL_ROOT"); env != "" {
			*a.roots = listFlag{env}
		}
	}
	if a.fs.NArg() > 0 {
		return usagef("unexpected argument %q", a.fs.Arg(0))
	}
	return nil
}

func (a *adminFlags) connect(ctx context.Context) (*pgx.Conn, error) {
	if *a.databaseURL == "" {
		return nil, errors.New("no database: pass --database-url URL or set DATABASE_URL (postgres://USER:PASSWORD@HOST:PORT/DB)")
	}
	return connectDB(ctx, *a.databaseURL, a.dbSource)
}

// rootKeys returns the pinned roots.
func (a *adminFlags) rootKeys() ([]keysync.VerifyKey, error) {
	return parseRoots(*a.roots)
}

// parseRoots parses the values of --root (or $SHAPESEAL_ROOT); none is an
// error that says what to pass.
func parseRoots(values []string) ([]keysync.VerifyKey, error) {
	roots, err := keysync.ParseVerifyKeys(strings.Join(values, ","))
	if err != nil {
		return nil, fmt.Errorf("--root: %w", err)
	}
	if len(roots) == 0 {
		return nil, errors.New(`no pinned root key: pass --root ssvk1… (or set $SHAPESEAL_ROOT), the public key that "shapeseal signkey" printed for the root key (shapeseal dev prints it as "root")`)
	}
	return roots, nil
}

// signingKey loads --key.
func (a *adminFlags) signingKey() (*chain.PrivateKey, error) {
	if *a.key == "" {
		return nil, errors.New(`no signing key: pass --key FILE (or set $SHAPESEAL_KEY), a root key or an admin key of the tenant made with "shapeseal signkey"`)
	}
	k, err := keysync.LoadKeyFile(*a.key)
	if err != nil {
		return nil, fmt.Errorf("--key: %w", err)
	}
	return k, nil
}

// kekSource returns the KEKs the command may use: only --kek when it is
// set, else the one each tenant's log names (nil: keysync.OpenKEK).
func (a *adminFlags) kekSource() (keysync.KEKSource, error) {
	if *a.kek == "" {
		return nil, nil
	}
	kek, err := openKEK(*a.kek)
	if err != nil {
		return nil, err
	}
	return keysync.UseKEK(kek), nil
}

// admin returns an Admin with the pinned roots, the signing key (if the
// command has --key and needKey) and the KEKs, which reports every ignored
// row to stderr.
func (a *adminFlags) admin(db *pgx.Conn, needKey bool, stderr io.Writer) (*keysync.Admin, error) {
	roots, err := a.rootKeys()
	if err != nil {
		return nil, err
	}
	adm := &keysync.Admin{DB: db, Roots: roots, Report: func(err error) {
		fmt.Fprintf(stderr, "shapeseal: ignored: %v\n", err)
	}}
	if a.floorPath, err = defaultFloor(*a.floor, "SHAPESEAL_ADMIN_FLOOR", "admin", *a.databaseURL); err != nil {
		return nil, err
	}
	if adm.Floor, err = keysync.OpenFileFloor(a.floorPath); err != nil {
		return nil, fmt.Errorf("--floor: %w", err)
	}
	if needKey {
		if adm.Key, err = a.signingKey(); err != nil {
			return nil, err
		}
	}
	if a.kek != nil {
		if adm.KEKs, err = a.kekSource(); err != nil {
			return nil, err
		}
	}
	return adm, nil
}

// open connects to the database and returns an Admin on it (see admin) and
// the function that closes the connection.
func (a *adminFlags) open(ctx context.Context, needKey bool, stderr io.Writer) (*keysync.Admin, func(), error) {
	db, err := a.connect(ctx)
	if err != nil {
		return nil, nil, err
	}
	done := func() { db.Close(context.WithoutCancel(ctx)) }
	adm, err := a.admin(db, needKey, stderr)
	if err != nil {
		done()
		return nil, nil, err
	}
	return adm, done, nil
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
			return usagef("--%s is required", n)
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

// forkHint adds to an error about a log below a floor kept in floorPath —
// forked or shorter, as the log of a tenant deleted and created again is —
// how to accept the new log once it has been checked.
func forkHint(err error, floorPath string) error {
	ce, ok := errors.AsType[*chain.Error](err)
	if !ok || floorPath == "" || !errors.Is(err, chain.ErrFork) && !errors.Is(err, chain.ErrRollback) {
		return err
	}
	return fmt.Errorf("%w\n(if tenant %q was deleted and created again, check out of band that the new tenant is genuine, then: shapeseal floor forget --floor %s --tenant %s)",
		err, ce.Tenant, floorPath, ce.Tenant)
}

func runInit(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a := newAdminFlags("init", "init [--database-url URL]\n\nCreates shapeseal's tables if they do not exist (idempotent).", stderr)
	if err := a.parse(args); err != nil {
		return helpOK(err)
	}
	db, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer db.Close(context.WithoutCancel(ctx))
	return keysync.ApplySchema(ctx, db)
}

func runKeygen(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keygen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", os.Getenv("SHAPESEAL_IDENTITY"), "identity file to create, mode 0600 (default $SHAPESEAL_IDENTITY)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), "usage: shapeseal keygen [-o FILE]\n\nCreates a post-quantum hybrid age identity and prints its recipient.\n\nflags:\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return helpOK(err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	if *out == "" {
		return usagef("-o FILE (or SHAPESEAL_IDENTITY) is required")
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

func runSignkey(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("signkey", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "signing key file to create, mode 0600")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: shapeseal signkey -o FILE

Creates an Ed25519 signing key in FILE (mode 0600; an existing file is never
overwritten) and prints its public key, "ssvk1…".

A root key creates tenants and names their admins: give its public key to
every device, writer and admin tool (--root, $SHAPESEAL_ROOT) and keep the
file offline. An admin key, once a root delegated a tenant to it (tenant
create --admin, tenant admins --add), certifies devices, grants, rotates and
revokes (--key, $SHAPESEAL_KEY).

flags:
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return helpOK(err)
	}
	if fs.NArg() > 0 {
		return usagef("unexpected argument %q", fs.Arg(0))
	}
	if *out == "" {
		return usagef("-o FILE is required")
	}
	k, err := keysync.GenerateKeyFile(*out)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, k.Public())
	return nil
}

// subcommand splits "add --flags…" into "add" and the flags; want lists
// the subcommands.
func subcommand(args []string, usage string, stderr io.Writer, want ...string) (string, []string, error) {
	if len(args) > 0 && isHelpArg(args[0]) {
		fmt.Fprintf(os.Stdout, "usage: shapeseal %s\n", usage)
		return "", nil, flag.ErrHelp
	}
	if len(args) == 0 || !contains(want, args[0]) {
		if len(args) > 0 {
			return "", nil, usagef("want subcommand %s, got %q", quoteList(want), args[0])
		}
		return "", nil, usagef("want subcommand %s", quoteList(want))
	}
	return args[0], args[1:], nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func quoteList(list []string) string {
	q := make([]string, len(list))
	for i, s := range list {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, " or ")
}

const deviceUsage = `device add --user U --device D --recipient age1… --key KEY

Certifies a user's device: signs, with KEY, a certificate for the device's
age recipient (as "shapeseal keygen" printed it on the device: check it out
of band) and stores it. The certificate counts for every tenant KEY
administers (a root: every tenant); "shapeseal grant" then gives the device
a tenant's keys. Certifying a device again with another recipient re-keys it
from the next grant on.`

func runDevice(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	_, args, err := subcommand(args, deviceUsage, stderr, "add")
	if err != nil {
		return helpOK(err)
	}
	a := newAdminFlags("device add", deviceUsage, stderr).withKey().withRoots()
	user := a.fs.String("user", "", "user id")
	device := a.fs.String("device", "", "device id")
	rcpt := a.fs.String("recipient", "", "the device's age recipient (age1pq1… or age1…), as keygen printed it")
	if err := a.parse(args); err != nil {
		return helpOK(err)
	}
	if err := required(a.fs, "user", "device", "recipient"); err != nil {
		return err
	}
	if _, err := keysync.ParseRecipient(*rcpt); err != nil {
		return err
	}
	key, err := a.signingKey()
	if err != nil {
		return err
	}
	db, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer db.Close(context.WithoutCancel(ctx))
	// A certificate names no tenant, so no log is verified: --root is
	// accepted (from $SHAPESEAL_ROOT too) but not needed.
	adm := &keysync.Admin{DB: db, Key: key}
	if err := adm.CertifyDevice(ctx, *user, *device, *rcpt); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "certified device %s of %s with key %s; \"shapeseal grant --tenant T --user %s\" gives it the keys of a tenant that key administers\n",
		*device, *user, key.Public(), *user)
	return nil
}

// tenantCommand parses the flags of grant and rotate and runs f with an
// Admin that signs with --key.
func tenantCommand(ctx context.Context, name, usage string, withUser bool, args []string, stderr io.Writer,
	f func(adm *keysync.Admin, tenant, user string) error) error {
	a := newAdminFlags(name, usage, stderr).withKEK().withKey().withRoots()
	tenant := a.fs.String("tenant", "", "tenant id")
	user := new(string)
	if withUser {
		user = a.fs.String("user", "", "user id")
	}
	if err := a.parse(args); err != nil {
		return helpOK(err)
	}
	names := []string{"tenant"}
	if withUser {
		names = append(names, "user")
	}
	if err := required(a.fs, names...); err != nil {
		return err
	}
	adm, done, err := a.open(ctx, true, stderr)
	if err != nil {
		return err
	}
	defer done()
	return a.hint(f(adm, *tenant, *user))
}

const grantUsage = `grant --tenant T --user U --key KEY [--root ssvk1…] [--kek URI]

Makes the user a member of the tenant with their certified devices (device
add), in a log entry signed with KEY, and wraps the tenant's current keyset
to each of them. Run it again after certifying another device of the user,
or re-keying one.`

func runGrant(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return tenantCommand(ctx, "grant", grantUsage, true, args, stderr,
		func(adm *keysync.Admin, tenant, user string) error {
			n, err := adm.Grant(ctx, tenant, user)
			if err == nil {
				fmt.Fprintf(stdout, "granted tenant %s to %s (%d devices)\n", tenant, user, n)
			}
			return err
		})
}

const rotateUsage = `rotate --tenant T --key KEY [--root ssvk1…] [--kek URI]

Adds a new primary key to the tenant's keyset, records the new generation in
the tenant's log and re-wraps it for every member device the log lists.
Cells sealed before keep opening with the older keys until they are
re-encrypted (reencrypt).`

func runRotate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return tenantCommand(ctx, "rotate", rotateUsage, false, args, stderr,
		func(adm *keysync.Admin, tenant, _ string) error {
			ks, err := adm.Rotate(ctx, tenant)
			if err == nil {
				fmt.Fprintf(stdout, "tenant %s: generation %d, primary key %08x\n", tenant, ks.Generation(), ks.PrimaryKeyID())
			}
			return err
		})
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
