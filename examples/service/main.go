// Service is a long-running Go service that reads an end-to-end encrypted
// shape. It follows the "items" shape through the shapeseal proxy as one
// user's device, decrypts the title and body of every row on arrival, keeps
// the decrypted rows in memory, and serves them as JSON:
//
//	GET /items   every row the user may read, decrypted
//
// After every consistent batch that changes the rows it prints a one-line
// summary (row counts only, never plaintext). It stops cleanly when
// interrupted.
//
// keysync.Follow wires the pieces, in the order data flows through them:
//
//   - a keysync.Keyring follows two shapes through the proxy: the logs of
//     the token's tenants, signed records of who may hold each tenant's
//     keys, which it verifies from the root key the service pins (--root,
//     $SHAPESEAL_ROOT); and the wrapped tenant keys of the token's user and
//     device, which it unwraps with the device's age identity. It adopts a
//     keyset only if the tenant's log lists this device and names that
//     keyset, and remembers in a floor file next to the identity how far it
//     has seen each log, so that an older log put back in the database is
//     refused after a restart too;
//   - a keysync.Decrypter, as the stream's transform, opens the cells of
//     each change message before anything else sees it;
//   - a client.TypedShape decodes the decrypted rows into item structs,
//     applying changes only at up-to-date messages, so readers never see
//     half a transaction.
//
// Run it against the development stack, whose ready line holds the proxy's
// URL, the root key and each demo user's token and identity file:
//
//	go run ./cmd/shapeseal dev > /tmp/dev.ready &
//	# once /tmp/dev.ready holds the ready line:
//	R=$(sed 's/^shapeseal dev ready //' /tmp/dev.ready)
//	export SHAPESEAL_ROOT=$(jq -r .root <<<"$R")
//	go run ./examples/service --proxy "$(jq -r .proxy_url <<<"$R")" \
//		--token "$(jq -r .users.alice.token <<<"$R")" \
//		--identity "$(jq -r .users.alice.identity <<<"$R")" --listen 127.0.0.1:8080
//	curl -s http://127.0.0.1:8080/items
//
// The key and log shapes are the proxy's PROXY/v1/shapes/keys and
// PROXY/v1/shapes/log (dev's "shapes" in the ready line); --keys-url and
// --log-url point elsewhere.
//
// Then write a row (see examples/writer) and watch it appear, decrypted.
// Alice sees acme's rows only: the proxy filters rows by the token's
// tenants, and the keyring holds only the keysets granted to her device.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/keysync"
)

// itemsSpec says how items is encrypted. Readers and writers must agree on
// it exactly: the table, column, tenant and row key are bound into every
// cell, and a cell opens only in the place it was sealed for.
var itemsSpec = keysync.TableSpec{
	Table:        "public.items",
	Columns:      []string{"title", "body"},
	TenantColumn: "tenant_id",
	RowKey:       []string{"id"},
}

// item is a row of items, decrypted. A cell that did not open is a
// Plaintext whose Err says why: as JSON {"error": "no_key", "message": …}.
// The decrypter never leaves ciphertext in a row, and never invents
// plaintext.
type item struct {
	ID        string            `shape:"id" json:"id"`
	TenantID  string            `shape:"tenant_id" json:"tenant_id"`
	Title     keysync.Plaintext `shape:"title" json:"title"`
	Body      keysync.Plaintext `shape:"body" json:"body"`
	CreatedAt time.Time         `shape:"created_at" json:"created_at"`
}

type options struct {
	ProxyURL string // the proxy's base URL; shapes are at /v1/shapes/{name}
	KeysURL  string // the key shape; "" is PROXY/v1/shapes/keys
	LogURL   string // the log shape; "" is the keys URL ending in "log"
	Token    string // bearer token of the user's device
	Identity string // the device's age identity file
	Root     string // pinned root keys, ssvk1…, comma- or space-separated
	Listen   string // address of the JSON endpoint
}

func main() {
	var o options
	flag.StringVar(&o.ProxyURL, "proxy", os.Getenv("PROXY_URL"), "proxy base URL (default $PROXY_URL)")
	flag.StringVar(&o.Token, "token", os.Getenv("SHAPESEAL_TOKEN"), "bearer token (default $SHAPESEAL_TOKEN)")
	flag.StringVar(&o.Identity, "identity", os.Getenv("SHAPESEAL_IDENTITY"), "age identity file (default $SHAPESEAL_IDENTITY)")
	flag.StringVar(&o.Root, "root", os.Getenv("SHAPESEAL_ROOT"), "pinned root key ssvk1… (default $SHAPESEAL_ROOT)")
	flag.StringVar(&o.KeysURL, "keys-url", "", "key shape URL (default PROXY/v1/shapes/keys)")
	flag.StringVar(&o.LogURL, "log-url", "", `log shape URL (default the keys URL with "keys" replaced by "log")`)
	flag.StringVar(&o.Listen, "listen", "127.0.0.1:8080", "address to serve GET /items on")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "service:", err)
		os.Exit(1)
	}
}

// run serves until ctx ends (then it returns nil) or a part fails.
func run(ctx context.Context, o options, out io.Writer) error {
	if o.ProxyURL == "" || o.Token == "" || o.Identity == "" {
		return errors.New("--proxy, --token and --identity are required")
	}
	// The root keys come from configuration, never from the database that
	// serves the keys: that is what makes a log or a keyset forged by
	// someone who can write the database worthless.
	roots, err := keysync.ParseVerifyKeys(o.Root)
	if err != nil {
		return err
	}
	items, err := keysync.Follow[item](ctx, keysync.FollowOptions{
		ProxyURL: o.ProxyURL, Shape: "items", KeysURL: o.KeysURL, LogURL: o.LogURL,
		// One token for every shape: the proxy reads the user, device and
		// tenants from it. A real service would use a RefreshableTokenSource.
		Tokens:       client.StaticToken(o.Token),
		IdentityFile: o.Identity, // its floor file lives next to it
		Roots:        roots,
		Tables:       []keysync.TableSpec{itemsSpec},
	})
	if err != nil {
		return err
	}
	defer items.Close()
	items.Subscribe(func(*client.Batch[item]) { fmt.Fprintln(out, summary(items.View())) })

	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /items", func(w http.ResponseWriter, r *http.Request) { serveItems(w, items.View()) })
	hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(out, "service listening on http://%s\n", ln.Addr())
	served := make(chan error, 1)
	go func() { served <- hs.Serve(ln) }()

	select {
	case <-items.Done(): // ctx ended, or following failed
	case err := <-served:
		items.Close()
		return err
	}
	shutdown, done := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer done()
	hs.Shutdown(shutdown)
	return items.Close()
}

// summary describes a view by counts, never by content.
func summary(v *client.View[item]) string {
	perTenant := map[string]int{}
	unreadable := 0
	for it := range v.Values() {
		perTenant[it.TenantID]++
		if it.Title.Err != nil || it.Body.Err != nil {
			unreadable++
		}
	}
	var parts []string
	for _, t := range slices.Sorted(maps.Keys(perTenant)) {
		parts = append(parts, fmt.Sprintf("%s=%d", t, perTenant[t]))
	}
	return fmt.Sprintf("items up to date: %d rows (%s), %d with unreadable cells",
		v.Len(), strings.Join(parts, " "), unreadable)
}

// serveItems writes a view as a JSON array ordered by creation.
func serveItems(w http.ResponseWriter, v *client.View[item]) {
	rows := slices.SortedFunc(v.Values(), func(a, b item) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(rows)
}
