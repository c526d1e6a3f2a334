package keysync

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestApplySchema(t *testing.T) {
	url := pgtest.NewDB(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	// Concurrent first runs must not race, and later runs change nothing.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() { errs <- ApplySchema(ctx, pool) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := ApplySchema(ctx, pool); err != nil {
		t.Fatal(err)
	}

	for table, pk := range map[string]string{
		"shapeseal_devices":     "user_id,device_id",
		"shapeseal_tenant_keys": "tenant_id,user_id,device_id",
		"shapeseal_keysets":     "tenant_id,generation",
	} {
		var got string
		err := pool.QueryRow(ctx, `SELECT string_agg(a.attname, ',' ORDER BY k.i)
			FROM pg_index x
			CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, i)
			JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
			WHERE x.indrelid = $1::regclass AND x.indisprimary`, table).Scan(&got)
		if err != nil {
			t.Fatal(err)
		}
		if got != pk {
			t.Errorf("%s primary key (%s), want (%s)", table, got, pk)
		}
	}

	// The tables accept what keysync writes, and enforce what they say.
	pgtest.Exec(t, url, `INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ('alice', 'laptop', 'age1pq1xyz')`)
	pgtest.Exec(t, url, `INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped) VALUES ('acme', 'alice', 'laptop', 1, '\x00')`)
	for name, sql := range map[string]string{
		"recipient not age": `INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ('bob', 'phone', 'ssh-ed25519 AAAA')`,
		"unknown device":    `INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped) VALUES ('acme', 'bob', 'phone', 1, '\x00')`,
		"generation 0":      `INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped) VALUES ('globex', 'alice', 'laptop', 0, '\x00')`,
	} {
		if _, err := pool.Exec(ctx, sql); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Deleting a device deletes its wrapped keys.
	pgtest.Exec(t, url, `DELETE FROM shapeseal_devices WHERE user_id = 'alice'`)
	var n int
	pool.QueryRow(ctx, `SELECT count(*) FROM shapeseal_tenant_keys`).Scan(&n)
	if n != 0 {
		t.Errorf("%d wrapped keys left after deleting their device", n)
	}
	if s := Schema(); s == "" {
		t.Fatal("empty Schema()")
	}
}

func TestStoreLoadKeyset(t *testing.T) {
	url := pgtest.NewDB(t)
	ctx := context.Background()
	conn := connect(t, url)
	if err := ApplySchema(ctx, conn); err != nil {
		t.Fatal(err)
	}
	k := newLocalKEK(t)

	if _, err := LoadKeyset(ctx, conn, k, "acme"); !errors.Is(err, ErrKeysetNotFound) {
		t.Fatalf("load before store: %v", err)
	}
	ks1 := newTestKeyset(t, "acme")
	if err := StoreKeyset(ctx, conn, k, ks1); err != nil {
		t.Fatal(err)
	}
	ks2, _ := ks1.Rotate()
	if err := StoreKeyset(ctx, conn, k, ks2); err != nil {
		t.Fatal(err)
	}
	got, err := LoadKeyset(ctx, conn, k, "acme")
	if err != nil {
		t.Fatal(err)
	}
	if got.Generation() != 2 || got.PrimaryKeyID() != ks2.PrimaryKeyID() {
		t.Fatalf("loaded %v, want %v", got, ks2)
	}

	// A concurrent rotation from generation 1 loses.
	lost, _ := ks1.Rotate()
	if err := StoreKeyset(ctx, conn, k, lost); !errors.Is(err, ErrGenerationExists) {
		t.Fatalf("storing a second generation 2: %v", err)
	}

	// The row records the KEK's URI, and no key material is in the clear.
	var uri string
	var enc []byte
	conn.QueryRow(ctx, `SELECT kek_uri, encrypted_keyset FROM shapeseal_keysets WHERE tenant_id = 'acme' AND generation = 2`).Scan(&uri, &enc)
	if uri != k.URI() {
		t.Errorf("kek_uri = %q, want %q", uri, k.URI())
	}

	// Another KEK cannot load it, and the error names the stored KEK.
	_, err = LoadKeyset(ctx, conn, newLocalKEK(t), "acme")
	if ke, ok := errors.AsType[*KEKError](err); !ok {
		t.Fatalf("load with another KEK: %v", err)
	} else if ke.Generation != 2 {
		t.Fatalf("KEKError %+v", ke)
	}

	// A row moved to another tenant does not decrypt.
	pgtest.Exec(t, url, `INSERT INTO shapeseal_keysets (tenant_id, generation, kek_uri, encrypted_keyset)
		SELECT 'globex', generation, kek_uri, encrypted_keyset FROM shapeseal_keysets WHERE tenant_id = 'acme' AND generation = 2`)
	if _, err := LoadKeyset(ctx, conn, k, "globex"); err == nil {
		t.Fatal("loaded acme's keyset as globex's")
	}
}
