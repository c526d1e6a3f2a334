package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/keysync"
)

// reencryptFlags are the flags of reencrypt, which revoke takes too.
type reencryptFlags struct {
	table, columns, tenantCol, rowKey *string
	unbound, retire, acceptSuspect    *bool
	batch                             *int
	after                             *string
	also                              []keysync.TableSpec
	electricURL, electricSecret       *string
}

func addReencryptFlags(a *adminFlags) *reencryptFlags {
	fs := a.fs
	r := &reencryptFlags{
		table:          fs.String("table", "", "table, [schema.]name"),
		columns:        fs.String("columns", "", "comma-separated encrypted columns"),
		tenantCol:      fs.String("tenant-column", "tenant_id", "column holding the tenant id"),
		rowKey:         fs.String("row-key", "id", "comma-separated primary-key columns (cells are bound to them unless --unbound-rows)"),
		unbound:        fs.Bool("unbound-rows", false, "cells are not bound to their rows (--row-key only orders the batches)"),
		batch:          fs.Int("batch", 500, "rows per batch"),
		after:          fs.String("after", "", "resume after this row key (comma-separated values)"),
		retire:         fs.Bool("retire", false, "afterwards, retire the old keys if no cell of the tenant uses them any more (a log entry signed with --key)"),
		acceptSuspect:  fs.Bool("accept-suspect", false, "re-seal suspect cells too (written with a revoked key after the revocation), once you have checked them"),
		electricURL:    fs.String("electric-url", "", "Electric's URL (its /v1/shape): afterwards, drop the table's shape there so that readers syncing from scratch get the re-encrypted snapshot"),
		electricSecret: fs.String("electric-secret", "", "Electric's API secret for --electric-url (default $ELECTRIC_SECRET)"),
	}
	fs.Func("also", "with --retire, another table holding the tenant's cells: TABLE:C1,C2[:TENANT_COLUMN] (repeatable)", func(v string) error {
		table, rest, ok := strings.Cut(v, ":")
		cols, tc, _ := strings.Cut(rest, ":")
		if !ok || table == "" || cols == "" {
			return fmt.Errorf("want TABLE:C1,C2[:TENANT_COLUMN], got %q", v)
		}
		// Only counted, never rewritten: the row key does not matter.
		r.also = append(r.also, keysync.TableSpec{Table: table, Columns: splitList(cols), TenantColumn: tc, UnboundRows: true})
		return nil
	})
	return r
}

// given reports whether any re-encryption flag was set.
func (r *reencryptFlags) given(a *adminFlags) bool {
	set := false
	a.fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "table", "columns", "tenant-column", "row-key", "unbound-rows", "batch", "after", "retire", "accept-suspect", "also", "electric-url", "electric-secret":
			set = true
		}
	})
	return set
}

// plan checks the flags and returns the table spec and the options, before
// anything is changed.
func (r *reencryptFlags) plan(a *adminFlags, stderr io.Writer) (keysync.TableSpec, keysync.ReencryptOptions, error) {
	if err := required(a.fs, "table", "columns"); err != nil {
		return keysync.TableSpec{}, keysync.ReencryptOptions{}, err
	}
	spec := keysync.TableSpec{Table: *r.table, Columns: splitList(*r.columns), TenantColumn: *r.tenantCol, RowKey: splitList(*r.rowKey), UnboundRows: *r.unbound}
	if err := spec.Validate(); err != nil {
		return spec, keysync.ReencryptOptions{}, err
	}
	if len(r.also) > 0 && !*r.retire {
		return spec, keysync.ReencryptOptions{}, usagef("--also names tables for --retire")
	}
	for i := range r.also {
		if r.also[i].TenantColumn == "" {
			r.also[i].TenantColumn = *r.tenantCol
		}
		if err := r.also[i].Validate(); err != nil {
			return spec, keysync.ReencryptOptions{}, fmt.Errorf("--also: %w", err)
		}
	}
	if *r.electricSecret == "" {
		*r.electricSecret = os.Getenv("ELECTRIC_SECRET")
	}
	if *r.electricURL != "" {
		if _, err := r.shapeURL(); err != nil {
			return spec, keysync.ReencryptOptions{}, err
		}
	}
	opts := keysync.ReencryptOptions{BatchSize: *r.batch, Retire: *r.retire, OtherTables: r.also, AcceptSuspect: *r.acceptSuspect,
		Progress: func(p keysync.ReencryptProgress) {
			fmt.Fprintf(stderr, "reencrypt: %d rows read, %d cells rewritten, last row key %s\n", p.Rows, p.Rewritten, strings.Join(p.Last, ","))
		}}
	if *r.after != "" {
		opts.After = strings.Split(*r.after, ",")
	}
	return spec, opts, nil
}

// shapeURL returns --electric-url's /v1/shape endpoint.
func (r *reencryptFlags) shapeURL() (string, error) {
	u, err := url.Parse(*r.electricURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("--electric-url %q: want Electric's http(s) URL", *r.electricURL)
	}
	if u.Path == "" || u.Path == "/" {
		u.Path = "/v1/shape"
	}
	return u.String(), nil
}

// run re-encrypts spec's table for tenant, prints the result and, with
// --electric-url, drops the table's shape once the rewrite is complete.
func (r *reencryptFlags) run(ctx context.Context, adm *keysync.Admin, spec keysync.TableSpec, tenant string, opts keysync.ReencryptOptions, stdout, stderr io.Writer) error {
	res, err := adm.Reencrypt(ctx, spec, tenant, opts)
	if res != nil {
		fmt.Fprintf(stdout, "tenant %s, %s: %d rows, %d cells rewritten under key %08x (generation %d), %d conflicts, %d failed, %d suspect\n",
			tenant, spec.QualifiedTable(), res.Rows, res.Rewritten, res.PrimaryKey, res.Generation, res.Conflicts, res.Failed, res.Suspect)
		for _, e := range res.Errors {
			if _, ok := errors.AsType[*keysync.SuspectCellError](e); ok {
				fmt.Fprintf(stderr, "reencrypt: suspect: %v\n", e)
			} else {
				fmt.Fprintf(stderr, "reencrypt: %v\n", e)
			}
		}
		if res.Suspect > 0 {
			fmt.Fprintf(stderr, "reencrypt: %d suspect cells: sealed with a revoked key in rows written after the revocation, perhaps forged by the revoked member; they were left alone (and keep the old key in use): check them, then delete them or run again with --accept-suspect\n", res.Suspect)
		}
		if len(res.Retired) > 0 {
			fmt.Fprintf(stdout, "retired %d keys: generation %d\n", len(res.Retired), res.RetiredGeneration)
		}
		for id, n := range res.Remaining {
			fmt.Fprintf(stdout, "key %08x still seals %d cells: not retired\n", id, n)
		}
	}
	// The rewrite is complete (only the retirement may have been refused):
	// readers syncing from scratch should get the new cells.
	_, notRetired := errors.AsType[*keysync.KeysInUseError](err)
	if *r.electricURL != "" && res != nil && (err == nil || notRetired) {
		if derr := r.dropShape(ctx, spec, stdout); derr != nil {
			return errors.Join(err, derr)
		}
	}
	if err != nil {
		if res != nil && res.Suspect > 0 {
			return fmt.Errorf("%d suspect cells remain: %w", res.Suspect, err)
		}
		return err
	}
	switch {
	case res.Suspect > 0 && opts.Retire:
		return fmt.Errorf("%d suspect cells remain: old keys not retired", res.Suspect)
	case res.Failed > 0 || res.Conflicts > 0:
		return fmt.Errorf("%d cells do not open (left as they are), %d changed concurrently (run again)", res.Failed, res.Conflicts)
	}
	return nil
}

// dropShape asks Electric to drop the shape of spec's whole table.
func (r *reencryptFlags) dropShape(ctx context.Context, spec keysync.TableSpec, stdout io.Writer) error {
	u, err := r.shapeURL()
	if err != nil {
		return err
	}
	err = client.DeleteShape(ctx, client.DeleteOptions{URL: u, Table: spec.QualifiedTable(), Secret: *r.electricSecret})
	if he, ok := errors.AsType[*client.HTTPError](err); ok && he.StatusCode == http.StatusNotFound {
		fmt.Fprintf(stdout, "no shape of %s to drop: nobody has synced it since it was created or dropped\n", spec.QualifiedTable())
		return nil
	}
	if err != nil {
		return fmt.Errorf("drop the shape of %s: %w", spec.QualifiedTable(), err)
	}
	fmt.Fprintf(stdout, "dropped the shape of %s: readers refetch it\n", spec.QualifiedTable())
	return nil
}

const reencryptUsage = `reencrypt --tenant T --table TABLE --columns C1,C2 --key KEY [--root ssvk1…] [--tenant-column tenant_id] [--row-key id] [--batch 500] [--after K] [--retire [--also TABLE:C1,C2[:TENANT_COLUMN]]...] [--accept-suspect] [--electric-url URL]

Rewrites the cells of the tenant's rows that are sealed with a key other than
the primary key of the keyset the tenant's log names, in batches by row key,
each batch in a short transaction. Only those cells are touched, and only if
they still hold the value read (a concurrent writer wins). Idempotent: run it
again to resume or to check; --after resumes after the row key a progress
line printed. KEY must be a root or an admin key of the tenant.

Cells sealed with a key that a revocation revoked, in rows written after the
revocation, are suspect (the revoked member may have forged them): they are
left alone and printed, unless --accept-suspect once you have checked them.

--retire then removes the old keys from the keyset (a log entry signed with
--key), but only if no cell of the tenant still sealed with one remains: the
tenant's keyset seals the cells of every table, so they are counted in this
table, in every text column of every table with a column named like the
tenant column, and in each table named with --also (whose tenant column, if
not given, is --tenant-column). Name every table whose tenant column is named
otherwise. If cells remain (suspect ones included), nothing is retired and
the command fails, listing them.

--electric-url then drops the shape of the whole table from Electric (with
$ELECTRIC_SECRET or --electric-secret; Electric must allow it), so that a
reader syncing from scratch gets the re-encrypted snapshot instead of the
old cells replayed from the shape's log. Shapes of the table with a where
clause or a column list are other shapes, which Electric keeps.`

func runReencrypt(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a := newAdminFlags("reencrypt", reencryptUsage, stderr).withKEK().withKey().withRoots()
	tenant := a.fs.String("tenant", "", "tenant id")
	r := addReencryptFlags(a)
	if err := a.parse(args); err != nil {
		return helpOK(err)
	}
	if err := required(a.fs, "tenant"); err != nil {
		return err
	}
	spec, opts, err := r.plan(a, stderr)
	if err != nil {
		return err
	}
	// Re-encrypting takes an administrator of the tenant; retiring signs a
	// log entry.
	adm, done, err := a.open(ctx, true, stderr)
	if err != nil {
		return err
	}
	defer done()
	return a.hint(r.run(ctx, adm, spec, *tenant, opts, stdout, stderr))
}

const revokeUsage = `revoke --tenant T --user U --key KEY [--root ssvk1…] [--kek URI] [--table TABLE --columns C1,C2 [reencrypt flags]]

Removes the user from the tenant: one log entry, signed with KEY, removes
the member and their devices, records the revocation point and names a
rotated keyset, which is re-wrapped for the remaining devices; the user's
wrapped keys are deleted. Rows written afterwards are sealed with the new
key; cells written before stay readable with the old keys (which the user
may have kept) until they are re-encrypted and the old keys retired.

With --table and --columns, does that right after the revocation, as
"shapeseal reencrypt" does (see its flags: --tenant-column, --row-key,
--also, --retire, --accept-suspect, --electric-url …), so that honest rows
changed in between are few.`

func runRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	a := newAdminFlags("revoke", revokeUsage, stderr).withKEK().withKey().withRoots()
	tenant := a.fs.String("tenant", "", "tenant id")
	user := a.fs.String("user", "", "user id")
	r := addReencryptFlags(a)
	if err := a.parse(args); err != nil {
		return helpOK(err)
	}
	if err := required(a.fs, "tenant", "user"); err != nil {
		return err
	}
	// Check the re-encryption flags before revoking anything.
	reencrypt := r.given(a)
	var spec keysync.TableSpec
	var opts keysync.ReencryptOptions
	if reencrypt {
		var err error
		if spec, opts, err = r.plan(a, stderr); err != nil {
			return err
		}
	}
	adm, done, err := a.open(ctx, true, stderr)
	if err != nil {
		return err
	}
	defer done()
	ks, err := adm.Revoke(ctx, *tenant, *user)
	if err != nil {
		return a.hint(err)
	}
	fmt.Fprintf(stdout, "revoked %s from tenant %s: generation %d, primary key %08x\n", *user, *tenant, ks.Generation(), ks.PrimaryKeyID())
	if !reencrypt {
		fmt.Fprintf(stdout, "cells written before stay readable with the old keys until re-encrypted: shapeseal reencrypt --tenant %s --table TABLE --columns C1,C2 --retire\n", *tenant)
		return nil
	}
	if err := r.run(ctx, adm, spec, *tenant, opts, stdout, stderr); err != nil {
		return fmt.Errorf("%s is revoked, but: %w (run shapeseal reencrypt to finish)", *user, err)
	}
	return nil
}
