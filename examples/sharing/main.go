// Sharing walks through sharing one tenant's keys with a user of another
// tenant, and taking them back, with the keysync admin API; two users'
// devices follow their keys and the items shape live, as apps would.
//
//  1. create the tenants acme and globex (each a keyset, stored encrypted
//     under the KEK; kept if it exists);
//  2. register each user's device: its public age recipient;
//  3. make bob a member of acme and carol of globex, then share globex
//     with bob: keysync.Grant wraps globex's keyset to bob's device;
//  4. write one encrypted row in each tenant; bob reads both, carol globex's;
//  5. revoke bob from globex: keysync.Revoke deletes his wrapped keys,
//     rotates globex's keyset and re-wraps it for carol alone;
//  6. write another globex row: carol reads it, bob's cells are no_key.
//
// Revocation protects what is written afterwards. What bob read before
// stays in his copy, and older cells open with the old key until they are
// re-encrypted (keysync.Reencrypt). Which rows a device receives is the
// proxy's decision (bob's token still lists globex here, so he receives
// the new row); which it can read is the keys'.
//
// Run it against the development stack, whose ready line names the proxy,
// the database, the signer and bob's and carol's tokens and identities;
// the KEK is found through the keyset table:
//
//	go run ./cmd/shapeseal dev > /tmp/dev.ready &
//	# once /tmp/dev.ready holds the ready line:
//	go run ./examples/sharing --dev-ready /tmp/dev.ready
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

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/keysync"
	_ "github.com/shapeseal/shapeseal/keysync/vaultkek" // opens hcvault:// KEKs
)

var itemsSpec = keysync.TableSpec{Table: "public.items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}

// A user is one person with one device: a token the proxy accepts for it
// (naming the user, the device and the tenants whose rows it may fetch) and
// the device's identity file.
type user struct{ Name, Device, Token, Identity string }

type options struct {
	ProxyURL, DatabaseURL string
	KEK                   string // KEK URI; "" uses the one acme's keyset is stored under
	Signers               string // the devices' trusted signer keys
	Bob, Carol            user
}

func main() {
	ready := flag.String("dev-ready", "", "file holding the ready line of `shapeseal dev`")
	kek := flag.String("kek", os.Getenv("SHAPESEAL_KEK"), "local KEK URI (default $SHAPESEAL_KEK, else the one acme's keyset is stored under)")
	flag.Parse()
	o, err := fromDevReady(*ready)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sharing: --dev-ready:", err)
		os.Exit(2)
	}
	o.KEK = *kek
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := share(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "sharing:", err)
		os.Exit(1)
	}
}

func share(ctx context.Context, o options, out io.Writer) error {
	db, err := pgx.Connect(ctx, o.DatabaseURL)
	if err != nil {
		return err
	}
	defer db.Close(context.WithoutCancel(ctx))
	kek, err := openKEK(ctx, db, o.KEK)
	if err != nil {
		return err
	}

	for _, tenant := range []string{"acme", "globex"} {
		status := "created"
		if _, err := keysync.CreateTenant(ctx, db, kek, tenant); errors.Is(err, keysync.ErrGenerationExists) {
			status = "already exists"
		} else if err != nil {
			return err
		}
		fmt.Fprintf(out, "1. tenant %s: %s\n", tenant, status)
	}
	for _, u := range []user{o.Bob, o.Carol} {
		// A device sends its public recipient; loading its identity here
		// only stands in for that.
		id, err := keysync.LoadIdentityFile(u.Identity)
		if err != nil {
			return err
		}
		recipient, err := keysync.RecipientOf(id)
		if err != nil {
			return err
		}
		if err := keysync.AddDevice(ctx, db, u.Name, u.Device, recipient); err != nil {
			return err
		}
		fmt.Fprintf(out, "2. registered device %s of %s\n", u.Device, u.Name)
	}
	for _, g := range [][2]string{{"acme", o.Bob.Name}, {"globex", o.Carol.Name}, {"globex", o.Bob.Name}} {
		devices, err := keysync.Grant(ctx, db, kek, g[0], g[1])
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "3. granted %s %s's keyset, wrapped to %d device\n", g[1], g[0], devices)
	}

	bob, err := follow(ctx, o, o.Bob)
	if err != nil {
		return err
	}
	defer bob.stop()
	carol, err := follow(ctx, o, o.Carol)
	if err != nil {
		return err
	}
	defer carol.stop()
	w, err := keysync.NewWriter(itemsSpec, keysync.Insert, func(context.Context, string) (keysync.KEK, error) { return kek, nil })
	if err != nil {
		return err
	}
	write := func(tenant, title, body string) (id string, err error) {
		// Cells are bound to the row's id, so it is chosen before sealing.
		if err := db.QueryRow(ctx, "SELECT gen_random_uuid()::text").Scan(&id); err != nil {
			return "", err
		}
		return id, w.Write(ctx, db, map[string]any{"id": id, "tenant_id": tenant, "title": title, "body": body})
	}
	acmeRow, err := write("acme", "acme roadmap", "ship the sync demo")
	if err != nil {
		return err
	}
	globexRow, err := write("globex", "globex budget", "shared with bob")
	if err != nil {
		return err
	}
	if err := cmp.Or(
		bob.show(ctx, out, "4.", acmeRow, "acme's row"),
		bob.show(ctx, out, "4.", globexRow, "globex's row"),
		carol.show(ctx, out, "4.", globexRow, "globex's row"),
	); err != nil {
		return err
	}

	ks, err := keysync.Revoke(ctx, db, kek, "globex", o.Bob.Name)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "5. revoked %s from globex: keyset rotated to generation %d\n", o.Bob.Name, ks.Generation())
	// Bob's keyring follows his key rows live: it drops globex's keyset
	// as soon as his row is deleted.
	if _, err := bob.ring.Wait(ctx, "globex", func(ks *keysync.Keyset) bool { return ks == nil }); err != nil {
		return err
	}
	fmt.Fprintf(out, "5. %s's device no longer holds globex's keyset\n", o.Bob.Name)
	laterRow, err := write("globex", "globex after revocation", "not for bob")
	if err != nil {
		return err
	}
	// Bob's device waits for a key it will never get (KeyringOptions.KeyWait,
	// 5 s by default), then reports each cell as no_key. His copy of the
	// row he read before keeps its plaintext.
	return cmp.Or(
		carol.show(ctx, out, "6.", laterRow, "globex's new row"),
		bob.show(ctx, out, "6.", laterRow, "globex's new row"),
		bob.show(ctx, out, "6.", globexRow, "globex's first row, from his copy"),
	)
}

// A reader is a user's device following the items shape, decrypted.
type reader struct {
	user  user
	ring  *keysync.Keyring
	items *client.Shape
	done  chan struct{} // closed when the reader stops
	err   error         // why, once done is closed
	stop  func()        // stops the reader and waits for it
}

// follow starts a device's keyring and items shape through the proxy; both
// stop when ctx ends.
func follow(ctx context.Context, o options, u user) (*reader, error) {
	identity, err := keysync.LoadIdentityFile(u.Identity)
	if err != nil {
		return nil, err
	}
	signers, err := keysync.ParseVerifyKeys(o.Signers)
	if err != nil || len(signers) == 0 {
		return nil, fmt.Errorf("trusted signer keys %q: %v", o.Signers, err)
	}
	token := client.StaticToken(u.Token)
	ring, err := keysync.NewKeyring(keysync.KeyringOptions{
		Stream:   client.Options{URL: o.ProxyURL + "/v1/shapes/keys", TokenSource: token},
		Identity: identity,
		Signers:  signers,
	})
	if err != nil {
		return nil, err
	}
	dec, err := keysync.NewDecrypter(ring, itemsSpec)
	if err != nil {
		return nil, err
	}
	stream, err := client.New(client.Options{URL: o.ProxyURL + "/v1/shapes/items", TokenSource: token, Live: true, Transform: dec.Transform})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &reader{user: u, ring: ring, items: client.NewShape(stream), done: make(chan struct{})}
	r.stop = func() { cancel(); <-r.done }
	go func() {
		defer close(r.done)
		ringErr := make(chan error, 1)
		go func() { ringErr <- ring.Run(ctx); cancel() }()
		err := r.items.Run(ctx)
		cancel()
		r.err = cmp.Or(<-ringErr, err)
	}()
	return r, nil
}

// show waits until the row id is in the reader's copy and prints it.
func (r *reader) show(ctx context.Context, out io.Writer, step, id, what string) error {
	changed := make(chan struct{}, 1)
	unsubscribe := r.items.Subscribe(func(*client.Shape) {
		select {
		case changed <- struct{}{}: // called after every applied batch
		default:
		}
	})
	defer unsubscribe()
	for {
		for _, row := range r.items.Rows() {
			if row["id"] == id {
				fmt.Fprintf(out, "%s %s reads %s: title=%s body=%s\n", step, r.user.Name, what, cell(row["title"]), cell(row["body"]))
				return nil
			}
		}
		select {
		case <-changed:
		case <-r.done:
			return fmt.Errorf("%s's reader stopped: %w", r.user.Name, r.err)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// cell shows a decrypted value: its plaintext, or the code of the error
// that kept it closed (no_key, auth, …).
func cell(v any) string {
	if e, ok := v.(*keysync.CellError); ok {
		return "<" + e.Code() + ">"
	}
	return strconv.Quote(fmt.Sprint(v))
}

// openKEK opens the KEK named by uri, or else the one acme's keyset is
// stored under: a local file, or a Vault transit key (keysync/vaultkek,
// imported for that, reads VAULT_ADDR, VAULT_TOKEN and VAULT_NAMESPACE).
func openKEK(ctx context.Context, db keysync.DB, uri string) (keysync.KEK, error) {
	if uri == "" {
		var err error
		if uri, err = keysync.StoredKEKURI(ctx, db, "acme"); err != nil {
			return nil, fmt.Errorf("no KEK given, and none found: %w", err)
		}
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
		ProxyURL    string `json:"proxy_url"`
		DatabaseURL string `json:"database_url"`
		Signer      string `json:"signer"`
		Users       map[string]struct{ Token, Identity string }
	}
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		return options{}, err
	}
	u := func(name string) user { return user{name, "laptop", r.Users[name].Token, r.Users[name].Identity} }
	return options{ProxyURL: r.ProxyURL, DatabaseURL: r.DatabaseURL, Signers: r.Signer, Bob: u("bob"), Carol: u("carol")}, nil
}
