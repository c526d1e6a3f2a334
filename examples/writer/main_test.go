package main

import (
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/hashicorp/vault/api"
	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/examples/internal/exampletest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/internal/vaulttest"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

func TestMain(m *testing.M) {
	code := pgtest.Run(m)
	vaulttest.StopShared()
	os.Exit(code)
}

// TestWriter writes JSON lines through the writer and checks that Postgres
// holds only cells, which a member device opens with the keyset granted to
// it; and that a failing row writes nothing.
func TestWriter(t *testing.T) {
	t.Parallel()
	env := exampletest.New(t)
	identityFile := env.Member(t, "carol", "laptop", "acme")
	ctx, conn := t.Context(), env.Conn(t)
	opts := options{DatabaseURL: env.DatabaseURL, WriterConfig: keysync.WriterConfig{Root: env.Root}, Table: "items", Encrypted: []string{"title", "body"}}

	// No --kek: the writer opens the KEK acme's log names.
	given := exampletest.NewID()
	input := `{"id": "` + given + `", "tenant_id": "acme", "title": "Q3 plan", "body": "Hire two engineers."}
{"tenant_id": "acme", "title": "No body", "body": null}
`
	var out strings.Builder
	if err := write(ctx, opts, strings.NewReader(input), &out); err != nil {
		t.Fatal(err)
	}
	ids := strings.Fields(out.String())
	if len(ids) != 2 || ids[0] != given {
		t.Fatalf("printed ids %q, want %s and a generated one", ids, given)
	}

	// With --kek, --floor and --upsert: the first row is updated in place,
	// and the floor file remembers acme's log.
	opts.KEK, opts.Upsert = env.KEKURI, true
	opts.Floor = filepath.Join(t.TempDir(), "writer.floor")
	input = `{"id": "` + given + `", "tenant_id": "acme", "title": "Q3 plan, revised", "body": "Hire three."}`
	if err := write(ctx, opts, strings.NewReader(input), &out); err != nil {
		t.Fatal(err)
	}
	floor, err := keysync.OpenFileFloor(opts.Floor)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := floor.Mark("acme"); err != nil || m.Seq == 0 || m.Generation != 1 {
		t.Errorf("floor mark of acme: %+v (%v)", m, err)
	}

	// Postgres holds ciphertext only. A NULL stays NULL.
	rows, err := conn.Query(ctx, `SELECT id::text, tenant_id, title, body FROM items ORDER BY title`)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := pgx.CollectRows(rows, pgx.RowToMap)
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 2 {
		t.Fatalf("%d rows in items, want 2", len(stored))
	}
	for _, r := range stored {
		for _, col := range []string{"title", "body"} {
			if s, ok := r[col].(string); ok && !strings.HasPrefix(s, keysync.CellPrefix) {
				t.Errorf("items.%s holds %q, not a cell", col, s)
			}
		}
	}

	// A keyset holder (carol's device) opens them: the keyset wrapped to
	// her device, signed by the root she pins.
	var wrapped []byte
	err = conn.QueryRow(ctx, `SELECT wrapped FROM shapeseal_tenant_keys WHERE tenant_id = 'acme' AND user_id = 'carol'`).Scan(&wrapped)
	if err != nil {
		t.Fatal(err)
	}
	identity, err := keysync.LoadIdentityFile(identityFile)
	if err != nil {
		t.Fatal(err)
	}
	ks, err := keysync.Unwrap(identity, wrapped, "acme", env.Roots)
	if err != nil {
		t.Fatal(err)
	}
	spec := keysync.TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	opened := map[string][2]any{}
	for _, r := range stored {
		if err := spec.OpenRow(ks, r); err != nil {
			t.Fatal(err)
		}
		opened[r["id"].(string)] = [2]any{r["title"], r["body"]}
	}
	if got := opened[given]; got != [2]any{"Q3 plan, revised", "Hire three."} {
		t.Errorf("upserted row opens to %q", got)
	}
	if got := opened[ids[1]]; got != [2]any{"No body", nil} {
		t.Errorf("generated-id row opens to %q", got)
	}

	// A row for a tenant without a log fails, and the whole input with it:
	// one transaction.
	opts.KEK, opts.Upsert, opts.Floor = "", false, ""
	input = `{"tenant_id": "acme", "title": "fine"}
{"tenant_id": "initech", "title": "no keyset for initech"}`
	err = write(ctx, opts, strings.NewReader(input), &out)
	if err == nil || !strings.Contains(err.Error(), "row 2") {
		t.Errorf("writing a row of a tenant without keys: %v", err)
	}
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM items`).Scan(&n); err != nil || n != 2 {
		t.Errorf("items has %d rows after a failed write (%v), want 2", n, err)
	}

	// A --kek other than the one acme's log names is refused, not used.
	other, err := keysync.GenerateLocalKEK(filepath.Join(t.TempDir(), "other.json"))
	if err != nil {
		t.Fatal(err)
	}
	opts.KEK = other.URI()
	err = write(ctx, opts, strings.NewReader(`{"tenant_id": "acme", "title": "under another KEK"}`), &out)
	if _, ok := errors.AsType[*keysync.KEKMismatchError](err); !ok {
		t.Errorf("writing with a KEK the log does not name: %v, want a *KEKMismatchError", err)
	}

	// A root the log was not signed by is refused, and so is no root.
	opts.KEK = ""
	stranger, _ := chain.GenerateKey()
	opts.Root = stranger.Public().String()
	if err := write(ctx, opts, strings.NewReader(`{"tenant_id": "acme", "title": "t"}`), &out); !errors.Is(err, chain.ErrUnauthorized) {
		t.Errorf("writing with another root pinned: %v", err)
	}
	opts.Root = ""
	if err := write(ctx, opts, strings.NewReader(`{"tenant_id": "acme", "title": "t"}`), &out); err == nil {
		t.Error("writing without a pinned root succeeded")
	}
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM items`).Scan(&n); err != nil || n != 2 {
		t.Errorf("items has %d rows after refused writes (%v), want 2", n, err)
	}
}

// TestWriterVault writes with a KEK held by a real Vault's transit engine:
// the tenant's log names its hcvault:// KEK, which the writer opens with
// VAULT_ADDR and VAULT_TOKEN from the environment.
func TestWriterVault(t *testing.T) {
	v := vaulttest.New(t)
	t.Setenv("VAULT_ADDR", v.Addr) // so not parallel
	t.Setenv("VAULT_TOKEN", v.Token)
	cfg := api.DefaultConfig()
	cfg.Address = v.Addr
	vc, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	vc.SetToken(v.Token)
	if _, err := vc.Logical().Write("transit/keys/examples-writer", nil); err != nil {
		t.Fatal(err)
	}
	// The URI names the Vault it lives in: vaultkek refuses one whose host
	// is not VAULT_ADDR's.
	addr, err := url.Parse(v.Addr)
	if err != nil {
		t.Fatal(err)
	}
	uri := "hcvault://" + addr.Host + "/transit/keys/examples-writer"
	kek, err := keysync.OpenKEK(uri)
	if err != nil {
		t.Fatal(err)
	}
	env := exampletest.New(t)
	ctx, conn := t.Context(), env.Conn(t)
	if _, err := env.Admin.CreateTenant(ctx, kek, "initech"); err != nil {
		t.Fatal(err)
	}

	var out strings.Builder
	opts := options{DatabaseURL: env.DatabaseURL, WriterConfig: keysync.WriterConfig{Root: env.Root}, Table: "items", Encrypted: []string{"title", "body"}}
	if err := write(ctx, opts, strings.NewReader(`{"tenant_id": "initech", "title": "TPS reports", "body": "new cover sheets"}`), &out); err != nil {
		t.Fatal(err)
	}
	rows, _ := conn.Query(ctx, `SELECT id::text, tenant_id, title, body FROM items`)
	row, err := pgx.CollectExactlyOneRow(rows, pgx.RowToMap)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(row["title"].(string), keysync.CellPrefix) || row["id"] != strings.TrimSpace(out.String()) {
		t.Fatalf("stored %v, printed %q", row, out.String())
	}
	st, err := env.Admin.State(ctx, "initech")
	if err != nil {
		t.Fatal(err)
	}
	ks, err := keysync.LoadKeyset(ctx, conn, st, keysync.UseKEK(kek))
	if err != nil {
		t.Fatal(err)
	}
	spec := keysync.TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	if err := spec.OpenRow(ks, row); err != nil || row["title"] != "TPS reports" || row["body"] != "new cover sheets" {
		t.Errorf("opened %v (%v)", row, err)
	}
}
