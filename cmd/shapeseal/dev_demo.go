package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// devUser is a demo user of `shapeseal dev`.
type devUser struct {
	name    string
	tenants []string
}

var devUsers = []devUser{
	{"alice", []string{"acme"}},
	{"bob", []string{"acme", "globex"}},
	{"carol", []string{"globex"}},
}

// devItems is the demo table; title and body are encrypted per tenant.
const devItems = `CREATE TABLE IF NOT EXISTS items (
	id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
	tenant_id text NOT NULL,
	title text,
	body text,
	created_at timestamptz NOT NULL DEFAULT now()
)`

var devSpec = keysync.TableSpec{Table: "public.items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}

// devTenants are the demo's tenants.
var devTenants = []string{"acme", "globex"}

// devMarker records, in the database, the root key and directory of the
// demo that shapeseal dev made there.
const devMarker = `CREATE TABLE IF NOT EXISTS shapeseal_dev (
	root      text PRIMARY KEY,
	dir       text NOT NULL,
	temporary boolean NOT NULL,
	created_at timestamptz NOT NULL DEFAULT now()
)`

// prepareDevDB decides what to do with a demo already in the database: the
// one of this root is reused; one of another root whose directory is gone
// (a temporary one, or deleted) is dropped; otherwise, with reset, dropped;
// else refused. It then records this run's root.
func prepareDevDB(ctx context.Context, conn *pgx.Conn, root, dir string, temporary, reset bool) error {
	var markerRoot, markerDir string
	var markerTemp, hasMarker, hasItems, hasTenants bool
	err := conn.QueryRow(ctx, `SELECT to_regclass('shapeseal_dev') IS NOT NULL, to_regclass('items') IS NOT NULL`).Scan(&hasMarker, &hasItems)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	if hasMarker {
		err := conn.QueryRow(ctx, `SELECT root, dir, temporary FROM shapeseal_dev ORDER BY created_at DESC LIMIT 1`).Scan(&markerRoot, &markerDir, &markerTemp)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("DATABASE_URL: %w", err)
		}
		if markerRoot == root {
			return nil // this demo: reuse it
		}
	}
	var hasLog bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass('shapeseal_log') IS NOT NULL`).Scan(&hasLog); err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	if hasLog {
		if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM shapeseal_log WHERE tenant_id = ANY($1))`, devTenants).Scan(&hasTenants); err != nil {
			return fmt.Errorf("DATABASE_URL: %w", err)
		}
	}
	switch {
	case !hasItems && !hasTenants:
		// Nothing of a demo: start clean.
	case reset:
		fmt.Fprintln(os.Stderr, "shapeseal dev: --reset: dropping table items, tenants acme and globex and the demo users' devices")
		if err := dropDevDemo(ctx, conn, hasLog); err != nil {
			return err
		}
	case markerRoot != "" && (markerTemp || !fileExists(filepath.Join(markerDir, "root.key"))):
		fmt.Fprintf(os.Stderr, "shapeseal dev: dropping the demo of an earlier run, whose directory %s is gone\n", markerDir)
		if err := dropDevDemo(ctx, conn, hasLog); err != nil {
			return err
		}
	case markerRoot != "":
		return fmt.Errorf("DATABASE_URL holds the demo of an earlier run whose keys are in %s (root %s): pass --dir %s to reuse it, or --reset to drop it and start clean", markerDir, markerRoot, markerDir)
	default:
		what := "table items"
		if hasTenants {
			what = "tenants acme or globex"
			if hasItems {
				what = "table items and tenants acme or globex"
			}
		}
		return fmt.Errorf("DATABASE_URL already has %s, which this shapeseal dev did not make: pass --reset to drop them (table items, tenants acme and globex, the demo users' devices) and start clean, or set DATABASE_URL to another database", what)
	}
	if _, err := conn.Exec(ctx, devMarker); err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	_, err = conn.Exec(ctx, `INSERT INTO shapeseal_dev (root, dir, temporary) VALUES ($1, $2, $3)`, root, dir, temporary)
	if err != nil {
		return fmt.Errorf("DATABASE_URL: %w", err)
	}
	return nil
}

// dropDevDemo drops what shapeseal dev made: table items, the demo tenants'
// logs and keys, the demo users' devices and the marker.
func dropDevDemo(ctx context.Context, conn *pgx.Conn, keyTables bool) error {
	users := make([]string, len(devUsers))
	for i, u := range devUsers {
		users[i] = u.name
	}
	type stmt struct {
		q    string
		args []any
	}
	stmts := []stmt{{`DROP TABLE IF EXISTS items`, nil}, {`DROP TABLE IF EXISTS shapeseal_dev`, nil}}
	if keyTables {
		stmts = append(stmts,
			stmt{`DELETE FROM shapeseal_tenant_keys WHERE tenant_id = ANY($1)`, []any{devTenants}},
			stmt{`DELETE FROM shapeseal_keysets WHERE tenant_id = ANY($1)`, []any{devTenants}},
			stmt{`DELETE FROM shapeseal_log WHERE tenant_id = ANY($1)`, []any{devTenants}},
			stmt{`DELETE FROM shapeseal_device_certs WHERE user_id = ANY($1)`, []any{users}},
			stmt{`DELETE FROM shapeseal_devices WHERE user_id = ANY($1)`, []any{users}})
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	for _, st := range stmts {
		if _, err := tx.Exec(ctx, st.q, st.args...); err != nil {
			return fmt.Errorf("drop the earlier demo: %w", err)
		}
	}
	return tx.Commit(ctx)
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// seedDev creates the demo schema, identities, tenants (signed with the
// root key), device certificates, grants and encrypted rows, and returns
// each user's identity file.
func seedDev(ctx context.Context, conn *pgx.Conn, kek keysync.KEK, root *chain.PrivateKey, dir string) (map[string]string, error) {
	if err := keysync.ApplySchema(ctx, conn); err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, devItems); err != nil {
		return nil, err
	}
	roots := []keysync.VerifyKey{root.Public()}
	adm := &keysync.Admin{DB: conn, Roots: roots, Key: root, KEKs: keysync.UseKEK(kek)}
	for _, tenant := range devTenants {
		if _, err := adm.CreateTenant(ctx, kek, tenant); err != nil && !errors.Is(err, keysync.ErrTenantExists) {
			return nil, fmt.Errorf("tenant %s: %w", tenant, err)
		}
	}
	identities := map[string]string{}
	for _, u := range devUsers {
		path := filepath.Join(dir, u.name+".age")
		recipient, err := devIdentity(path)
		if err != nil {
			return nil, err
		}
		if err := adm.CertifyDevice(ctx, u.name, "laptop", recipient); err != nil {
			return nil, err
		}
		for _, t := range u.tenants {
			if _, err := adm.Grant(ctx, t, u.name); err != nil {
				return nil, fmt.Errorf("grant %s to %s: %w", t, u.name, err)
			}
		}
		identities[u.name] = path
	}
	// Rows are written once: a demo reused from an earlier run has them.
	var rowCount int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM items WHERE tenant_id = ANY($1)`, devTenants).Scan(&rowCount); err != nil {
		return nil, err
	}
	if rowCount > 0 {
		return identities, nil
	}
	w, err := keysync.NewWriter(devSpec, keysync.Insert, keysync.WriterOptions{Roots: roots, KEKs: keysync.UseKEK(kek), Floor: keysync.NewMemoryFloor()})
	if err != nil {
		return nil, err
	}
	rows := []map[string]any{
		{"tenant_id": "acme", "title": "Quarterly plan", "body": "Ship the encrypted sync demo."},
		{"tenant_id": "acme", "title": "Salaries", "body": "Only acme members can read this."},
		{"tenant_id": "globex", "title": "Launch codes", "body": "Only globex members can read this."},
	}
	for _, r := range rows {
		r["id"] = newUUID()
		if err := w.Write(ctx, conn, r); err != nil {
			return nil, err
		}
	}
	return identities, nil
}
