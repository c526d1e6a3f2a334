package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/examples/internal/exampletest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

// TestSharing runs the whole flow on a fresh stack, where the tenants do
// not exist yet, and checks every step's outcome, in its output and in
// Postgres; then runs it again, as against a long-running dev stack.
func TestSharing(t *testing.T) {
	t.Parallel()
	env := exampletest.New(t)
	env.StartProxy(t)
	o := options{
		ProxyURL: env.ProxyURL, DatabaseURL: env.DatabaseURL, KEK: env.KEKURI,
		// The Admin signs with the root key, which the devices pin.
		Root: env.Root, Key: env.RootKey,
		// As in dev: bob's token lets him fetch both tenants' rows, carol's
		// only globex's; what they can read is up to their keys.
		Bob:   user{"bob", "laptop", env.Token("bob", "laptop", "acme", "globex"), env.Identity(t, "bob")},
		Carol: user{"carol", "laptop", env.Token("carol", "laptop", "globex"), env.Identity(t, "carol")},
	}
	// A hang guard, not a timing assertion: share waits for events.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	var out strings.Builder
	if err := share(ctx, o, &out); err != nil {
		t.Fatalf("share: %v\n%s", err, out.String())
	}
	t.Logf("output:\n%s", out.String())
	want := []string{
		"1. tenant acme: created",
		"1. tenant globex: created",
		"2. certified device laptop of bob",
		"2. certified device laptop of carol",
		"3. granted bob acme's keyset, wrapped to 1 device",
		"3. granted carol globex's keyset, wrapped to 1 device",
		"3. granted bob globex's keyset, wrapped to 1 device",
		`4. bob reads acme's row: title="acme roadmap" body="ship the sync demo"`,
		`4. bob reads globex's row: title="globex budget" body="shared with bob"`,
		`4. carol reads globex's row: title="globex budget" body="shared with bob"`,
		"5. revoked bob from globex: keyset rotated to generation 2",
		"5. bob's device no longer holds globex's keyset",
		`6. carol reads globex's new row: title="globex after revocation" body="not for bob"`,
		`6. bob reads globex's new row: title=<no_key> body=<no_key>`,
		`6. bob reads globex's first row, from his copy: title="globex budget" body="shared with bob"`,
	}
	if got := strings.Split(strings.TrimSpace(out.String()), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("output:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// In globex's verified log: bob is no longer a member, carol is, at
	// generation 2.
	st, err := env.Admin.State(ctx, "globex")
	if err != nil {
		t.Fatal(err)
	}
	if st.IsMember("bob") || !st.IsMember("carol") || st.Keyset().Generation != 2 {
		t.Errorf("globex's log: members %v, generation %d", st.Members(), st.Keyset().Generation)
	}
	// In Postgres: bob holds no globex key any more, carol holds the new
	// generation, and every cell is ciphertext.
	conn := env.Conn(t)
	var bobKeys, carolGen, plain int
	err = conn.QueryRow(ctx, `SELECT
		(SELECT count(*) FROM shapeseal_tenant_keys WHERE tenant_id = 'globex' AND user_id = 'bob'),
		(SELECT max(generation) FROM shapeseal_tenant_keys WHERE tenant_id = 'globex' AND user_id = 'carol'),
		(SELECT count(*) FROM items WHERE title NOT LIKE 'ss1:%' OR body NOT LIKE 'ss1:%')`).Scan(&bobKeys, &carolGen, &plain)
	if err != nil || bobKeys != 0 || carolGen != 2 || plain != 0 {
		t.Errorf("bob's globex keys %d, carol's generation %d, plaintext rows %d (%v)", bobKeys, carolGen, plain, err)
	}

	// Again, as against dev, where the tenants exist: bob is re-granted
	// globex at generation 2, and revoked again (3).
	out.Reset()
	if err := share(ctx, o, &out); err != nil {
		t.Fatalf("second share: %v\n%s", err, out.String())
	}
	for _, w := range []string{
		"1. tenant globex: already exists",
		`4. bob reads globex's row: title="globex budget"`,
		"5. revoked bob from globex: keyset rotated to generation 3",
		"5. bob's device no longer holds globex's keyset",
		`6. bob reads globex's new row: title=<no_key> body=<no_key>`,
	} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("second run: no %q in:\n%s", w, out.String())
		}
	}

	// A key that is not the pinned root cannot create tenants, nor
	// administer tenants it was not delegated.
	o.Key = filepath.Join(t.TempDir(), "stranger.key")
	if _, err := keysync.GenerateKeyFile(o.Key); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := share(ctx, o, &out); !errors.Is(err, chain.ErrUnauthorized) {
		t.Errorf("share with a key that is not a root: %v, want chain.ErrUnauthorized\n%s", err, out.String())
	}
}
