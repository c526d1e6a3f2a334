package main

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

const tenantUsage = `tenant create|admins|show …

  tenant create --tenant T --kek URI --key ROOTKEY [--admin ssvk1…]... [--root ssvk1…]
	creates the tenant: a keyset at generation 1 stored under the KEK, and
	the first entry of the tenant's log, signed with the root key, naming the
	keyset and delegating the tenant to the --admin keys.
  tenant admins --tenant T --key ROOTKEY [--add ssvk1…]... [--remove ssvk1…]... [--root ssvk1…]
	delegates the tenant to more admin keys, or withdraws it, in one entry.
  tenant show --tenant T [--root ssvk1…]
	verifies the tenant's log from the pinned roots and prints what it says.`

func runTenant(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sub, args, err := subcommand(args, tenantUsage, stderr, "create", "admins", "show")
	if err != nil {
		return helpOK(err)
	}
	switch sub {
	case "create":
		return tenantCreate(ctx, args, stdout, stderr)
	case "admins":
		return tenantAdmins(ctx, args, stdout, stderr)
	default:
		return tenantShow(ctx, args, stdout, stderr)
	}
}

// keysFlag collects a repeatable flag of public keys (each value may be a
// comma- or space-separated list).
func keysFlag(a *adminFlags, name, usage string) *[]keysync.VerifyKey {
	var keys []keysync.VerifyKey
	a.fs.Func(name, usage, func(v string) error {
		ks, err := keysync.ParseVerifyKeys(v)
		if err != nil {
			return err
		}
		keys = append(keys, ks...)
		return nil
	})
	return &keys
}

func tenantCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const usage = `tenant create --tenant T --kek URI --key ROOTKEY [--admin ssvk1…]... [--root ssvk1…]

Creates the tenant: a new keyset at generation 1, stored under the KEK, and
the first entry of the tenant's log, which names the keyset and the KEK and
delegates the tenant to the --admin keys. Only a pinned root key may create
a tenant.`
	a := newAdminFlags("tenant create", usage, stderr).withKey().withRoots()
	kekURI := a.fs.String("kek", "", "KEK URI the keyset is stored under, which the log names: "+kekHelp+" (default $SHAPESEAL_KEK)")
	tenant := a.fs.String("tenant", "", "tenant id")
	admins := keysFlag(a, "admin", "admin public key ssvk1… the tenant is delegated to (repeatable)")
	if err := a.parse(args); err != nil {
		return helpOK(err)
	}
	if err := required(a.fs, "tenant"); err != nil {
		return err
	}
	if *kekURI == "" {
		*kekURI = os.Getenv("SHAPESEAL_KEK")
	}
	kek, err := openKEK(*kekURI)
	if err != nil {
		return err
	}
	adm, done, err := a.open(ctx, true, stderr)
	if err != nil {
		return err
	}
	defer done()
	adm.KEKs = keysync.UseKEK(kek)
	ks, err := adm.CreateTenant(ctx, kek, *tenant, *admins...)
	if err != nil {
		return a.hint(err)
	}
	fmt.Fprintf(stdout, "tenant %s: generation %d under %s, primary key %08x\n", *tenant, ks.Generation(), kek.URI(), ks.PrimaryKeyID())
	fmt.Fprintf(stdout, "root %s\n", adm.Key.Public())
	for _, k := range *admins {
		fmt.Fprintf(stdout, "admin %s\n", k)
	}
	return nil
}

func tenantAdmins(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const usage = `tenant admins --tenant T --key ROOTKEY [--add ssvk1…]... [--remove ssvk1…]... [--root ssvk1…]

Delegates the tenant to the --add keys and withdraws it from the --remove
keys, in one log entry signed with a root key, then prints the tenant's
admins. Without --add or --remove, only prints them.`
	a := newAdminFlags("tenant admins", usage, stderr).withKey().withRoots()
	tenant := a.fs.String("tenant", "", "tenant id")
	add := keysFlag(a, "add", "admin public key ssvk1… to delegate the tenant to (repeatable)")
	remove := keysFlag(a, "remove", "admin public key ssvk1… to withdraw the tenant from (repeatable)")
	if err := a.parse(args); err != nil {
		return helpOK(err)
	}
	if err := required(a.fs, "tenant"); err != nil {
		return err
	}
	changes := len(*add)+len(*remove) > 0
	adm, done, err := a.open(ctx, changes, stderr)
	if err != nil {
		return err
	}
	defer done()
	if changes {
		if err := adm.SetAdmins(ctx, *tenant, *add, *remove); err != nil {
			return a.hint(err)
		}
	}
	st, err := adm.State(ctx, *tenant)
	if err != nil {
		return a.hint(err)
	}
	if len(st.Admins()) == 0 {
		fmt.Fprintf(stdout, "tenant %s: no admins (only the roots sign)\n", *tenant)
	}
	for _, k := range st.Admins() {
		fmt.Fprintf(stdout, "admin %s\n", k)
	}
	return nil
}

func tenantShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const usage = `tenant show --tenant T [--root ssvk1…]

Verifies the tenant's log from the pinned roots and prints what it says: its
length and head, the admins, the members and their devices, the current
keyset (generation, key ids, primary key) and its KEK, and the revocation
points. It holds no secret.`
	a := newAdminFlags("tenant show", usage, stderr).withRoots()
	tenant := a.fs.String("tenant", "", "tenant id")
	if err := a.parse(args); err != nil {
		return helpOK(err)
	}
	if err := required(a.fs, "tenant"); err != nil {
		return err
	}
	adm, done, err := a.open(ctx, false, stderr)
	if err != nil {
		return err
	}
	defer done()
	st, err := adm.State(ctx, *tenant)
	if err != nil {
		return a.hint(err)
	}
	printState(stdout, st)
	return nil
}

// printState prints a verified log's state, one fact per line.
func printState(w io.Writer, st *chain.State) {
	head := st.Head()
	fmt.Fprintf(w, "tenant %s\n", st.Tenant())
	fmt.Fprintf(w, "seq %d\n", st.Seq())
	fmt.Fprintf(w, "head %s\n", hex.EncodeToString(head[:]))
	fmt.Fprintf(w, "signed %s\n", st.Time().UTC().Format("2006-01-02T15:04:05Z"))
	for _, k := range st.Admins() {
		fmt.Fprintf(w, "admin %s\n", k)
	}
	ks := st.Keyset()
	ids := make([]string, len(ks.KeyIDs))
	for i, id := range ks.KeyIDs {
		ids[i] = fmt.Sprintf("%08x", id)
	}
	fmt.Fprintf(w, "generation %d\n", ks.Generation)
	fmt.Fprintf(w, "primary %08x\n", ks.Primary)
	fmt.Fprintf(w, "keys %s\n", strings.Join(ids, " "))
	fmt.Fprintf(w, "kek %s\n", ks.KEK)
	fmt.Fprintf(w, "keyset signed at entry %d by %s\n", ks.Seq, ks.Signer)
	devices := map[string][]chain.Device{}
	for _, d := range st.Devices() {
		devices[d.User] = append(devices[d.User], d)
	}
	for _, u := range st.Members() {
		fmt.Fprintf(w, "member %s\n", u)
		for _, d := range devices[u] {
			fmt.Fprintf(w, "  device %s %s\n", d.Device, shortRecipient(d.Recipient))
		}
	}
	for _, r := range st.Revocations() {
		ids := make([]string, len(r.KeyIDs))
		for i, id := range r.KeyIDs {
			ids[i] = fmt.Sprintf("%08x", id)
		}
		fmt.Fprintf(w, "revocation at entry %d (xid %d) of keys %s\n", r.Seq, r.XID, strings.Join(ids, " "))
	}
}

// shortRecipient abbreviates a recipient (a post-quantum one is about two
// thousand characters long) to something to compare with keygen's output.
func shortRecipient(r string) string {
	if len(r) <= 40 {
		return r
	}
	return r[:24] + "…" + r[len(r)-12:]
}
