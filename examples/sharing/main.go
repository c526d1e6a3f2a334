// Sharing walks through sharing one tenant's keys with a user of another
// tenant, and taking them back, with a keysync.Admin; two users' devices
// follow their keys and the items shape live, as apps would.
//
// Every step of the Admin is an entry of the tenant's log (shapeseal_log),
// signed with the Admin's key and verified by every device from the root
// key it pins: the log, not the tables beside it, says who may hold a
// tenant's keys.
//
//  1. create the tenants acme and globex: each a keyset, stored encrypted
//     under the KEK, and a log whose first entry, signed by the root,
//     names it (kept if it exists);
//  2. certify each user's device: the Admin signs its public age
//     recipient;
//  3. make bob a member of acme and carol of globex, then share globex
//     with bob: Admin.Grant adds him and his device to globex's log and
//     wraps globex's keyset to his device;
//  4. write one encrypted row in each tenant; bob reads both, carol globex's;
//  5. revoke bob from globex: Admin.Revoke removes him in globex's log,
//     rotates globex's keyset, re-wraps it for carol alone and deletes his
//     wrapped keys;
//  6. write another globex row: carol reads it, bob's cells are no_key.
//
// Revocation protects what is written afterwards. What bob read before
// stays in his copy, and older cells open with the old key until they are
// re-encrypted (Admin.Reencrypt). Which rows a device receives is the
// proxy's decision (bob's token still lists globex here, so he receives
// the new row); which it can read is the keys' and the log's.
//
// The Admin signs with --key FILE ($SHAPESEAL_KEY), a signing key made by
// keysync.GenerateKeyFile; creating tenants takes a root key. Run it
// against the development stack, whose ready line names the proxy and its
// key and log shapes, the database, the root key and bob's and carol's
// tokens and identities, with dev's root signing key, which dev keeps in
// its --dir; the KEK is the one acme's log names:
//
//	go run ./cmd/shapeseal dev --dir /tmp/dev > /tmp/dev.ready &
//	# once /tmp/dev.ready holds the ready line:
//	go run ./examples/sharing --dev-ready /tmp/dev.ready --key /tmp/dev/root.key
//
// Running it again re-grants globex to bob, and revokes it again.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
	_ "github.com/shapeseal/shapeseal/keysync/vaultkek" // opens hcvault:// KEKs
)

var itemsSpec = keysync.TableSpec{Table: "public.items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}

// A user is one person with one device: a token the proxy accepts for it
// (naming the user, the device and the tenants whose rows it may fetch) and
// the device's identity file.
type user struct{ Name, Device, Token, Identity string }

type options struct {
	ProxyURL, DatabaseURL string
	KeysURL, LogURL       string // the key and log shapes; "" is PROXY/v1/shapes/keys and …/log
	KEK                   string // KEK URI; "" uses the one acme's log names
	Root                  string // the pinned root keys, ssvk1…
	Key                   string // the Admin's signing key file
	Bob, Carol            user
}

func main() {
	ready := flag.String("dev-ready", "", "file holding the ready line of `shapeseal dev`")
	key := flag.String("key", os.Getenv("SHAPESEAL_KEY"), "the Admin's signing key file, a root's to create tenants (default $SHAPESEAL_KEY)")
	root := flag.String("root", os.Getenv("SHAPESEAL_ROOT"), "pinned root key ssvk1… (default $SHAPESEAL_ROOT, else the ready line's)")
	kek := flag.String("kek", os.Getenv("SHAPESEAL_KEK"), "KEK URI for new tenants (default $SHAPESEAL_KEK, else the one acme's log names)")
	flag.Parse()
	o, err := fromDevReady(*ready)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sharing: --dev-ready:", err)
		os.Exit(2)
	}
	o.Key, o.KEK, o.Root = *key, *kek, cmp.Or(*root, o.Root)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := share(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "sharing:", err)
		os.Exit(1)
	}
}

// share walks through the steps above, printing each to out.
func share(ctx context.Context, o options, out io.Writer) error {
	// The roots come from configuration, never from the database.
	roots, err := keysync.ParseVerifyKeys(o.Root)
	if err != nil || len(roots) == 0 {
		return fmt.Errorf("pinned root keys %q: %v", o.Root, cmp.Or(err, errors.New("none")))
	}
	if o.Key == "" {
		return errors.New("no signing key: set --key or $SHAPESEAL_KEY")
	}
	key, err := keysync.LoadKeyFile(o.Key)
	if err != nil {
		return err
	}
	db, err := pgxpool.New(ctx, o.DatabaseURL)
	if err != nil {
		return err
	}
	defer db.Close()
	admin, kek, err := newAdmin(ctx, db, roots, key, o.KEK)
	if err != nil {
		return err
	}
	if err := setUp(ctx, out, admin, kek, o.Bob, o.Carol); err != nil {
		return err
	}

	bob, err := follow(ctx, o, roots, o.Bob)
	if err != nil {
		return err
	}
	defer bob.Close()
	carol, err := follow(ctx, o, roots, o.Carol)
	if err != nil {
		return err
	}
	defer carol.Close()
	// The writer, too, takes the current keyset from the verified log.
	w, err := keysync.NewWriter(itemsSpec, keysync.Insert, keysync.WriterOptions{
		Roots: roots, KEKs: keysync.UseKEK(kek), Floor: keysync.NewMemoryFloor(),
	})
	if err != nil {
		return err
	}
	acmeRow, err := writeItem(ctx, db, w, "acme", "acme roadmap", "ship the sync demo")
	if err != nil {
		return err
	}
	globexRow, err := writeItem(ctx, db, w, "globex", "globex budget", "shared with bob")
	if err != nil {
		return err
	}
	bobName, carolName := o.Bob.Name, o.Carol.Name
	if err := cmp.Or(
		show(ctx, out, bob, bobName, "4.", acmeRow, "acme's row"),
		show(ctx, out, bob, bobName, "4.", globexRow, "globex's row"),
		show(ctx, out, carol, carolName, "4.", globexRow, "globex's row"),
	); err != nil {
		return err
	}

	if err := revoke(ctx, out, admin, bob, bobName); err != nil {
		return err
	}
	laterRow, err := writeItem(ctx, db, w, "globex", "globex after revocation", "not for bob")
	if err != nil {
		return err
	}
	// Bob's device waits for a key it will never get (KeyringOptions.KeyWait,
	// 5 s by default), then reports each cell as no_key. His copy of the
	// row he read before keeps its plaintext.
	return cmp.Or(
		show(ctx, out, carol, carolName, "6.", laterRow, "globex's new row"),
		show(ctx, out, bob, bobName, "6.", laterRow, "globex's new row"),
		show(ctx, out, bob, bobName, "6.", globexRow, "globex's first row, from his copy"),
	)
}

// newAdmin makes the Admin: it signs with key, verifies the logs from
// roots, and uses the KEK uri names (see openKEK) and no other.
func newAdmin(ctx context.Context, db *pgxpool.Pool, roots []keysync.VerifyKey, key *chain.PrivateKey, uri string) (*keysync.Admin, keysync.KEK, error) {
	admin := &keysync.Admin{
		DB: db, Roots: roots, Key: key,
		// A long-lived admin tool keeps its floor in a file
		// (keysync.OpenFileFloor), to notice a log cut back across runs.
		Floor: keysync.NewMemoryFloor(),
		// Rows the log does not back are ignored; say so.
		Report: func(err error) { fmt.Fprintln(os.Stderr, "sharing:", err) },
	}
	kek, err := openKEK(ctx, admin, uri)
	if err != nil {
		return nil, nil, err
	}
	admin.KEKs = keysync.UseKEK(kek) // refuse a log that names another KEK
	return admin, kek, nil
}

// setUp is steps 1 to 3: the tenants, bob's and carol's devices, and their
// grants, globex's to both.
func setUp(ctx context.Context, out io.Writer, admin *keysync.Admin, kek keysync.KEK, bob, carol user) error {
	for _, tenant := range []string{"acme", "globex"} {
		status := "created"
		if _, err := admin.CreateTenant(ctx, kek, tenant); errors.Is(err, keysync.ErrTenantExists) {
			status = "already exists"
		} else if err != nil {
			return err
		}
		fmt.Fprintf(out, "1. tenant %s: %s\n", tenant, status)
	}
	for _, u := range []user{bob, carol} {
		// A device sends its public recipient, which the admin checks out
		// of band before certifying it; loading its identity here only
		// stands in for that.
		id, err := keysync.LoadIdentityFile(u.Identity)
		if err != nil {
			return err
		}
		recipient, err := keysync.RecipientOf(id)
		if err != nil {
			return err
		}
		if err := admin.CertifyDevice(ctx, u.Name, u.Device, recipient); err != nil {
			return err
		}
		fmt.Fprintf(out, "2. certified device %s of %s\n", u.Device, u.Name)
	}
	for _, g := range [][2]string{{"acme", bob.Name}, {"globex", carol.Name}, {"globex", bob.Name}} {
		devices, err := admin.Grant(ctx, g[0], g[1])
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "3. granted %s %s's keyset, wrapped to %d device\n", g[1], g[0], devices)
	}
	return nil
}

// revoke is step 5: it takes globex back from the user name and waits
// until their device, r, no longer holds globex's keyset.
func revoke(ctx context.Context, out io.Writer, admin *keysync.Admin, r *keysync.Followed[item], name string) error {
	ks, err := admin.Revoke(ctx, "globex", name)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "5. revoked %s from globex: keyset rotated to generation %d\n", name, ks.Generation())
	// The user's keyring follows their key rows and globex's log live: it
	// drops globex's keyset as soon as the log no longer lists them.
	if _, err := r.Keyring().Wait(ctx, "globex", func(ks *keysync.Keyset) bool { return ks == nil }); err != nil {
		return err
	}
	fmt.Fprintf(out, "5. %s's device no longer holds globex's keyset\n", name)
	return nil
}

// writeItem writes a row of items with w: its title and body sealed
// under the tenant's current keyset.
func writeItem(ctx context.Context, db *pgxpool.Pool, w *keysync.Writer, tenant, title, body string) (id string, err error) {
	// Cells are bound to the row's id, so it is chosen before sealing.
	if err := db.QueryRow(ctx, "SELECT gen_random_uuid()::text").Scan(&id); err != nil {
		return "", err
	}
	return id, w.Write(ctx, db, map[string]any{"id": id, "tenant_id": tenant, "title": title, "body": body})
}

// item is a row of items, its cells decrypted: a Plaintext that did not
// open says why (no_key, auth, …).
type item struct {
	ID          string `shape:"id"`
	Title, Body keysync.Plaintext
}

// follow starts a device's keyring and items shape through the proxy:
// keysync.Follow wires the keyring (verified from the roots, with a floor
// file next to the identity), the decrypter and the typed shape.
func follow(ctx context.Context, o options, roots []keysync.VerifyKey, u user) (*keysync.Followed[item], error) {
	return keysync.Follow[item](ctx, keysync.FollowOptions{
		ProxyURL: o.ProxyURL, Shape: "items", KeysURL: o.KeysURL, LogURL: o.LogURL,
		Tokens: client.StaticToken(u.Token), IdentityFile: u.Identity, Roots: roots,
		Tables: []keysync.TableSpec{itemsSpec},
	})
}

// show waits until the row id is in the user's copy and prints it.
func show(ctx context.Context, out io.Writer, r *keysync.Followed[item], name, step, id, what string) error {
	var row item
	_, err := r.Wait(ctx, func(v *client.View[item]) bool { // called after every batch
		for row = range v.Values() {
			if row.ID == id {
				return true
			}
		}
		return false
	})
	if err != nil {
		return fmt.Errorf("%s's reader: %w", name, err)
	}
	fmt.Fprintf(out, "%s %s reads %s: title=%s body=%s\n", step, name, what, cell(row.Title), cell(row.Body))
	return nil
}

// cell shows a decrypted value: its plaintext, or the code of the error
// that kept it closed (<no_key>, <auth>, …).
func cell(p keysync.Plaintext) string {
	if p.Err != nil {
		return p.String()
	}
	return strconv.Quote(p.Text)
}

// openKEK opens the KEK named by uri, or else the one acme's log names: a
// local file, or a Vault transit key (keysync/vaultkek, imported for that,
// reads VAULT_ADDR, VAULT_TOKEN and VAULT_NAMESPACE).
func openKEK(ctx context.Context, admin *keysync.Admin, uri string) (keysync.KEK, error) {
	if uri == "" {
		st, err := admin.State(ctx, "acme")
		if err != nil {
			return nil, fmt.Errorf("no KEK given, and none found: %w", err)
		}
		uri = st.Keyset().KEK
	}
	return keysync.OpenKEK(uri)
}

// fromDevReady reads the options from the ready line of `shapeseal dev`:
// bob and carol are its demo users, each with a device called laptop.
func fromDevReady(path string) (options, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return options{}, err
	}
	line, _, _ := strings.Cut(string(b), "\n")
	js, ok := strings.CutPrefix(line, "shapeseal dev ready ")
	if !ok {
		return options{}, errors.New("no ready line")
	}
	var r struct {
		ProxyURL    string            `json:"proxy_url"`
		DatabaseURL string            `json:"database_url"`
		Root        string            `json:"root"`
		Shapes      map[string]string `json:"shapes"`
		Users       map[string]struct{ Token, Identity string }
	}
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		return options{}, err
	}
	u := func(name string) user { return user{name, "laptop", r.Users[name].Token, r.Users[name].Identity} }
	return options{
		ProxyURL: r.ProxyURL, DatabaseURL: r.DatabaseURL, Root: r.Root,
		KeysURL: r.Shapes["keys"], LogURL: r.Shapes["log"],
		Bob: u("bob"), Carol: u("carol"),
	}, nil
}
