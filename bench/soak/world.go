package main

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// The tables the soak writes, and how their cells are sealed.
const schemaSQL = `
CREATE TABLE items (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), tenant_id text NOT NULL, title text, body text, n int NOT NULL DEFAULT 0);
CREATE TABLE notes (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), tenant_id text NOT NULL, body text);`

var (
	itemsSpec = keysync.TableSpec{Table: "public.items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	notesSpec = keysync.TableSpec{Table: "public.notes", Columns: []string{"body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	specs     = map[string]keysync.TableSpec{"items": itemsSpec, "notes": notesSpec}
)

// churnTenant is the tenant whose members are granted, revoked and whose
// cells are re-encrypted while everything runs.
const churnTenant = "t0"

// A user is a reader's identity: one device, certified by the root, and
// the tenants its token names.
type user struct {
	name     string
	tenants  []string
	identity string // the age identity file
	recip    string
	role     string // "reader", "revokee", "grantee"
}

// world is the soak's data and key state: the database, the root that
// every device, writer and admin pins, the KEK, the users.
type world struct {
	db    *pgxpool.Pool
	root  *chain.PrivateKey
	roots []keysync.VerifyKey
	kek   keysync.KEK
	admin *keysync.Admin
	users []*user

	tenants []string

	oracleMu sync.Mutex
	keysets  map[string][]*keysync.Keyset // every keyset the oracle has seen, per tenant
}

// setupWorld creates the schema, the root key, the KEK, the tenants and
// the users: readers spread over the tenants (some in two), revokees in
// the churn tenant, and grantees who join it later.
func setupWorld(ctx context.Context, dir, dbURL string, rng *rand.Rand, nTenants, nReaders int) (*world, error) {
	db, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	w := &world{db: db, keysets: map[string][]*keysync.Keyset{}}
	if err := keysync.ApplySchema(ctx, db); err != nil {
		return nil, err
	}
	if _, err := db.Exec(ctx, schemaSQL); err != nil {
		return nil, err
	}
	if w.root, err = keysync.GenerateKeyFile(filepath.Join(dir, "root.key")); err != nil {
		return nil, err
	}
	w.roots = []keysync.VerifyKey{w.root.Public()}
	if w.kek, err = keysync.GenerateLocalKEK(filepath.Join(dir, "kek.json")); err != nil {
		return nil, err
	}
	w.admin = &keysync.Admin{DB: db, Roots: w.roots, Key: w.root, KEKs: keysync.UseKEK(w.kek), Floor: keysync.NewMemoryFloor()}
	for i := range nTenants {
		t := fmt.Sprintf("t%d", i)
		w.tenants = append(w.tenants, t)
		if _, err := w.admin.CreateTenant(ctx, w.kek, t); err != nil {
			return nil, fmt.Errorf("tenant %s: %w", t, err)
		}
	}
	for i := range nReaders {
		ts := []string{w.tenants[rng.IntN(nTenants)]}
		if rng.IntN(10) < 3 {
			if t := w.tenants[rng.IntN(nTenants)]; t != ts[0] {
				ts = append(ts, t)
			}
		}
		w.users = append(w.users, &user{name: fmt.Sprintf("u%03d", i), tenants: ts, role: "reader"})
	}
	for i := range 2 {
		w.users = append(w.users,
			&user{name: fmt.Sprintf("revokee%d", i), tenants: []string{churnTenant}, role: "revokee"},
			&user{name: fmt.Sprintf("grantee%d", i), tenants: []string{churnTenant}, role: "grantee"})
	}
	for _, u := range w.users {
		if err := w.addDevice(ctx, dir, u); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// addDevice makes the user's identity, certifies its device and, but for
// grantees, grants it its tenants.
func (w *world) addDevice(ctx context.Context, dir string, u *user) error {
	id, err := keysync.GenerateIdentity()
	if err != nil {
		return err
	}
	u.identity = filepath.Join(dir, u.name+".age")
	if err := keysync.WriteIdentityFile(u.identity, id); err != nil {
		return err
	}
	if u.recip, err = keysync.RecipientOf(id); err != nil {
		return err
	}
	if err := w.admin.CertifyDevice(ctx, u.name, "d", u.recip); err != nil {
		return fmt.Errorf("certify %s: %w", u.name, err)
	}
	if u.role == "grantee" {
		return nil
	}
	for _, t := range u.tenants {
		if _, err := w.admin.Grant(ctx, t, u.name); err != nil {
			return fmt.Errorf("grant %s to %s: %w", t, u.name, err)
		}
	}
	return nil
}

// A wantRow is a row as a reader must end up seeing it: its tenant and
// its columns, cells opened by the oracle.
type wantRow struct {
	tenant string
	values map[string]string // decrypted; "\x00null" for NULL
	keyIDs []uint32          // the keys that sealed its cells
}

const null = "\x00null"

// expected reads every row of table and opens its cells with the tenant's
// keysets, loaded from the verified log: an oracle independent of the
// readers' keyrings. Keys are the rows' keys as Electric names them.
func (w *world) expected(ctx context.Context, table string) (map[string]wantRow, error) {
	spec := specs[table]
	cols := append([]string{"id::text", "tenant_id"}, spec.Columns...)
	if table == "items" {
		cols = append(cols, "n::text")
	}
	rows, err := w.db.Query(ctx, "SELECT "+strings.Join(cols, ", ")+" FROM "+table)
	if err != nil {
		return nil, err
	}
	type raw struct{ vals []*string }
	var all []raw
	for rows.Next() {
		vals := make([]*string, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			return nil, err
		}
		all = append(all, raw{vals})
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	out := make(map[string]wantRow, len(all))
	for _, r := range all {
		id, tenant := *r.vals[0], *r.vals[1]
		want := wantRow{tenant: tenant, values: map[string]string{"id": id, "tenant_id": tenant}}
		for i, col := range spec.Columns {
			cell := r.vals[2+i]
			if cell == nil {
				want.values[col] = null
				continue
			}
			pt, kid, err := w.open(ctx, keysync.CellContext{Table: spec.Table, Column: col, Tenant: tenant, RowKey: []string{id}}, *cell)
			if err != nil {
				return nil, fmt.Errorf("oracle: %s %s.%s: %w", table, id, col, err)
			}
			want.values[col] = pt
			want.keyIDs = append(want.keyIDs, kid)
		}
		if table == "items" {
			want.values["n"] = *r.vals[len(cols)-1]
		}
		out[fmt.Sprintf(`"public"."%s"/"%s"`, table, id)] = want
	}
	return out, nil
}

// open opens a cell with the tenant's keysets, loading the current one when
// none the oracle has seen holds the cell's key.
func (w *world) open(ctx context.Context, c keysync.CellContext, cell string) (string, uint32, error) {
	kid, err := cellKeyID(cell)
	if err != nil {
		return "", 0, err
	}
	w.oracleMu.Lock()
	defer w.oracleMu.Unlock()
	for attempt := 0; attempt < 2; attempt++ {
		for _, ks := range slices.Backward(w.keysets[c.Tenant]) {
			if ks.HasKey(kid) {
				pt, err := keysync.Open(ks, c, cell)
				return string(pt), kid, err
			}
		}
		st, err := keysync.LoadState(ctx, w.db, w.roots, c.Tenant, nil)
		if err != nil {
			return "", 0, err
		}
		ks, err := keysync.LoadKeyset(ctx, w.db, st, keysync.UseKEK(w.kek))
		if err != nil {
			return "", 0, err
		}
		w.keysets[c.Tenant] = append(w.keysets[c.Tenant], ks)
	}
	return "", 0, fmt.Errorf("no keyset of tenant %s holds key %d", c.Tenant, kid)
}

// currentKeys returns the ids of the keys of tenant's current keyset.
func (w *world) currentKeys(ctx context.Context, tenant string) ([]uint32, error) {
	st, err := keysync.LoadState(ctx, w.db, w.roots, tenant, nil)
	if err != nil {
		return nil, err
	}
	ks, err := keysync.LoadKeyset(ctx, w.db, st, keysync.UseKEK(w.kek))
	if err != nil {
		return nil, err
	}
	return ks.KeyIDs(), nil
}

// cellKeyID reads the id of the key that sealed a cell: "ss1:" and the
// base64url of a Tink ciphertext whose 5-byte prefix is 0x01 and the key id
// (docs/cell-format.md).
func cellKeyID(cell string) (uint32, error) {
	b64, ok := strings.CutPrefix(cell, "ss1:")
	if !ok || len(b64) < 8 {
		return 0, fmt.Errorf("not a cell")
	}
	prefix, err := base64.RawURLEncoding.DecodeString(b64[:8]) // 6 bytes
	if err != nil || prefix[0] != 1 {
		return 0, fmt.Errorf("not a cell")
	}
	return binary.BigEndian.Uint32(prefix[1:5]), nil
}
