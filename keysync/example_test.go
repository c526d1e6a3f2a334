package keysync_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
)

// A writer seals a value for its place; a reader with the tenant's keyset
// opens it in the same place.
func Example() {
	ks, err := keysync.NewKeyset("acme")
	if err != nil {
		log.Fatal(err)
	}
	place := keysync.CellContext{
		Table:  "public.items",
		Column: "title",
		Tenant: "acme",
		RowKey: []string{"0b6c3f0e-6c4d-4b8e-9d3c-2f6f4c1d7a10"},
	}
	cell, err := keysync.Seal(ks, place, []byte("Quarterly numbers"))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(strings.HasPrefix(cell, "ss1:"))

	pt, err := keysync.Open(ks, place, cell)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s\n", pt)
	// Output:
	// true
	// Quarterly numbers
}

// The life of a tenant, from the root key to a device opening a cell.
//
// A root key, kept offline, creates the tenant and delegates it to an admin
// key; the admin certifies devices and grants them the tenant's keys. Each
// change is an entry of the tenant's signed log. Devices and writers pin
// the root's public key and follow the log: a writer seals with the keyset
// the log names, and a device adopts a wrapped keyset only if the log lists
// the device and names that keyset — whatever the database says.
func ExampleAdmin() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Postgres with shapeseal's schema (keysync.ApplySchema) and a table
	// items (id, tenant_id, title); Electric's /v1/shape URL.
	db, shapeURL, stop := exampleDeployment()
	defer stop()
	dir, _ := os.MkdirTemp("", "shapeseal-example")
	defer os.RemoveAll(dir)

	// Once: a root key, kept offline, and an admin key. Devices, writers
	// and admin tools pin the root's public key ("ssvk1…"), configured out
	// of band, e.g. keysync.ParseVerifyKeys(os.Getenv("SHAPESEAL_ROOT")).
	root, err := keysync.GenerateKeyFile(filepath.Join(dir, "root.key"))
	if err != nil {
		log.Fatal(err)
	}
	adminKey, _ := keysync.GenerateKeyFile(filepath.Join(dir, "admin.key"))
	roots := []keysync.VerifyKey{root.Public()}
	// The KEK that keeps keysets at rest for writers: Vault transit in
	// production (package vaultkek).
	kek, _ := keysync.GenerateLocalKEK(filepath.Join(dir, "kek.json"))

	// The root creates the tenant and delegates it to the admin key.
	rootAdmin := &keysync.Admin{DB: db, Roots: roots, Key: root, KEKs: keysync.UseKEK(kek)}
	if _, err := rootAdmin.CreateTenant(ctx, kek, "acme", adminKey.Public()); err != nil {
		log.Fatal(err)
	}
	admin := &keysync.Admin{DB: db, Roots: roots, Key: adminKey, KEKs: keysync.UseKEK(kek)}

	// Alice's laptop makes its identity and sends its recipient; the admin
	// checks it out of band, certifies it and grants alice the tenant.
	laptop, _ := keysync.GenerateIdentity()
	recipient, _ := keysync.RecipientOf(laptop)
	if err := admin.CertifyDevice(ctx, "alice", "laptop", recipient); err != nil {
		log.Fatal(err)
	}
	n, err := admin.Grant(ctx, "acme", "alice")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("granted to", n, "device")

	// A writer seals rows with the keyset the log names.
	spec := keysync.TableSpec{Table: "items", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	w, err := keysync.NewWriter(spec, keysync.Insert, keysync.WriterOptions{
		Roots: roots,
		KEKs:  keysync.UseKEK(kek),
		Floor: keysync.NewMemoryFloor(), // keysync.OpenFileFloor for a writer that runs again
	})
	if err != nil {
		log.Fatal(err)
	}
	if err := w.Write(ctx, db, map[string]any{"id": "1", "tenant_id": "acme", "title": "Quarterly numbers"}); err != nil {
		log.Fatal(err)
	}

	// The laptop's keyring follows its wrapped keys and the tenant's log.
	ring, err := keysync.NewKeyring(keysync.KeyringOptions{
		Stream:   keysync.KeyShapeOptions(shapeURL, "alice", "laptop"),
		Log:      keysync.LogShapeOptions(shapeURL, "acme"),
		Identity: laptop,
		Roots:    roots,
		Floor:    keysync.NewMemoryFloor(), // keysync.OpenFileFloor(keysync.DefaultFloorPath(identityFile))
	})
	if err != nil {
		log.Fatal(err)
	}
	go ring.Run(ctx)
	defer ring.Close()
	ks, err := ring.Wait(ctx, "acme", func(ks *keysync.Keyset) bool { return ks != nil })
	if err != nil {
		log.Fatal(err)
	}
	var cell string
	db.QueryRow(ctx, `SELECT title FROM items WHERE id = 1`).Scan(&cell)
	place := keysync.CellContext{Table: "public.items", Column: "title", Tenant: "acme", RowKey: []string{"1"}}
	pt, err := ring.Open(ctx, place, cell)
	fmt.Printf("generation %d: %s %v\n", ks.Generation(), pt, err)

	// A rotation reaches the laptop live.
	if _, err := admin.Rotate(ctx, "acme"); err != nil {
		log.Fatal(err)
	}
	ks, _ = ring.Wait(ctx, "acme", func(ks *keysync.Keyset) bool { return ks != nil && ks.Generation() == 2 })
	fmt.Println("rotated to generation", ks.Generation())

	// Revoking alice rotates again and takes the tenant off her laptop.
	if _, err := admin.Revoke(ctx, "acme", "alice"); err != nil {
		log.Fatal(err)
	}
	ks, _ = ring.Wait(ctx, "acme", func(ks *keysync.Keyset) bool { return ks == nil })
	fmt.Println("alice holds acme:", ks != nil)

	// What the log says, verified from the root.
	st, _ := admin.State(ctx, "acme")
	fmt.Println("entries:", st.Seq(), "generation:", st.Keyset().Generation, "members:", st.Members())
	// Output:
	// granted to 1 device
	// generation 1: Quarterly numbers <nil>
	// rotated to generation 2
	// alice holds acme: false
	// entries: 4 generation: 3 members: []
}

// After a revocation, move the tenant's cells to the new primary key and
// retire the keys the revoked member kept. Cells written with those keys
// after the revocation are suspect — the revoked member may have forged
// them — and are not re-sealed; they keep the old keys in use until they
// are deleted, or checked and accepted (ReencryptOptions.AcceptSuspect).
func ExampleAdmin_Reencrypt() {
	ctx := context.Background()
	db, _, stop := exampleDeployment() // as in the Admin example
	defer stop()
	dir, _ := os.MkdirTemp("", "shapeseal-example")
	defer os.RemoveAll(dir)
	root, _ := keysync.GenerateKeyFile(filepath.Join(dir, "root.key"))
	kek, _ := keysync.GenerateLocalKEK(filepath.Join(dir, "kek.json"))
	roots := []keysync.VerifyKey{root.Public()}
	admin := &keysync.Admin{DB: db, Roots: roots, Key: root, KEKs: keysync.UseKEK(kek)}
	if _, err := admin.CreateTenant(ctx, kek, "acme"); err != nil {
		log.Fatal(err)
	}
	for _, user := range []string{"alice", "bob"} {
		id, _ := keysync.GenerateIdentity()
		recipient, _ := keysync.RecipientOf(id)
		if err := admin.CertifyDevice(ctx, user, "laptop", recipient); err != nil {
			log.Fatal(err)
		}
		if _, err := admin.Grant(ctx, "acme", user); err != nil {
			log.Fatal(err)
		}
	}
	spec := keysync.TableSpec{Table: "items", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	w, _ := keysync.NewWriter(spec, keysync.Insert, keysync.WriterOptions{Roots: roots, KEKs: keysync.UseKEK(kek), Floor: keysync.NewMemoryFloor()})
	for i := range 3 {
		if err := w.Write(ctx, db, map[string]any{"id": i, "tenant_id": "acme", "title": fmt.Sprint("title ", i)}); err != nil {
			log.Fatal(err)
		}
	}

	if _, err := admin.Revoke(ctx, "acme", "alice"); err != nil {
		log.Fatal(err)
	}
	res, err := admin.Reencrypt(ctx, spec, "acme", keysync.ReencryptOptions{Retire: true})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("re-sealed:", res.Rewritten, "suspect:", res.Suspect, "retired:", len(res.Retired), "keys")
	fmt.Println("generation", res.RetiredGeneration, "seals with the primary key only")
	// Output:
	// re-sealed: 3 suspect: 0 retired: 1 keys
	// generation 3 seals with the primary key only
}

// A reader opening many cells reuses one buffer: OpenAppend allocates
// nothing once the buffer has grown to the largest cell.
func ExampleOpenAppend() {
	ks, _ := keysync.NewKeyset("acme")
	var cells []string
	for i, title := range []string{"first", "second", "third"} {
		place := keysync.CellContext{Table: "public.items", Column: "title", Tenant: "acme", RowKey: []string{fmt.Sprint(i)}}
		cell, _ := keysync.Seal(ks, place, []byte(title))
		cells = append(cells, cell)
	}
	var buf []byte
	for i, cell := range cells {
		place := keysync.CellContext{Table: "public.items", Column: "title", Tenant: "acme", RowKey: []string{fmt.Sprint(i)}}
		var err error
		if buf, err = keysync.OpenAppend(buf[:0], ks, place, cell); err != nil {
			log.Fatal(err)
		}
		fmt.Printf("%d: %s\n", i, buf)
	}
	// Output:
	// 0: first
	// 1: second
	// 2: third
}

// Open's errors say why a cell did not open: a key the reader does not hold
// yet is not the same as a cell that was tampered with or moved.
func ExampleOpen_errors() {
	ks, _ := keysync.NewKeyset("acme")
	row1 := keysync.CellContext{Table: "public.items", Column: "title", Tenant: "acme", RowKey: []string{"1"}}
	cell, _ := keysync.Seal(ks, row1, []byte("for row 1"))

	// The database copies the cell into row 2.
	row2 := row1
	row2.RowKey = []string{"2"}
	_, err := keysync.Open(ks, row2, cell)
	fmt.Println(errors.Is(err, keysync.ErrAuth))

	// A writer rotated; this reader has not received generation 2 yet.
	rotated, _ := ks.Rotate()
	newer, _ := keysync.Seal(rotated, row1, []byte("sealed after the rotation"))
	_, err = keysync.Open(ks, row1, newer)
	var oe *keysync.OpenError
	if errors.Is(err, keysync.ErrNoKey) && errors.As(err, &oe) {
		fmt.Println("wait for key", oe.KeyID == rotated.PrimaryKeyID())
	}

	// Plaintext in an encrypted column is an error, never passed through.
	_, err = keysync.Open(ks, row1, "for row 1")
	fmt.Println(errors.Is(err, keysync.ErrNotEncrypted))
	// Output:
	// true
	// wait for key true
	// true
}

// Rotation adds a key and makes it primary; cells sealed before still open.
func ExampleKeyset_Rotate() {
	ks, _ := keysync.NewKeyset("acme")
	place := keysync.CellContext{Table: "public.items", Column: "title", Tenant: "acme", RowKey: []string{"1"}}
	old, _ := keysync.Seal(ks, place, []byte("before"))

	ks, _ = ks.Rotate()
	pt, err := keysync.Open(ks, place, old)
	fmt.Println(ks.Generation(), len(ks.KeyIDs()), string(pt), err)
	// Output: 2 2 before <nil>
}

// A keyset reaches a device wrapped to the device's age recipient, in a
// payload signed by the administrator's key (a root, or an admin of the
// tenant). The device checks the signature, that the payload is for itself,
// and that it is for the tenant of the row it came from. A Keyring does
// this for every row of the key shape, trusting the pinned roots and the
// admins the tenant's log names, and then checks the keyset against the
// log; Unwrap is the primitive.
func ExampleWrap() {
	ctx := context.Background()
	device, err := keysync.GenerateIdentity() // post-quantum hybrid
	if err != nil {
		log.Fatal(err)
	}
	recipient, _ := keysync.RecipientOf(device) // certified with Admin.CertifyDevice
	fmt.Println(strings.HasPrefix(recipient, "age1pq1"))

	// The administrator's key; devices know its public half from the
	// tenant's log, or pin it as a root.
	dir, _ := os.MkdirTemp("", "shapeseal-example")
	defer os.RemoveAll(dir)
	admin, _ := keysync.GenerateKeyFile(filepath.Join(dir, "admin.key"))
	trusted, _ := keysync.ParseVerifyKeys(admin.Public().String())

	ks, _ := keysync.NewKeyset("acme")
	wrapped, err := keysync.Wrap(ctx, ks, admin, recipient) // stored in shapeseal_tenant_keys
	if err != nil {
		log.Fatal(err)
	}

	got, err := keysync.Unwrap(device, wrapped, "acme", trusted)
	fmt.Println(got.Tenant(), got.Generation(), err)

	// The same payload in a row of another tenant is refused.
	_, err = keysync.Unwrap(device, wrapped, "globex", trusted)
	fmt.Println(errors.Is(err, keysync.ErrTenantMismatch))

	// A keyset wrapped by anyone else — say, whoever can write the
	// shapeseal_tenant_keys table — is refused.
	forger, _ := keysync.GenerateKeyFile(filepath.Join(dir, "forger.key"))
	forged, _ := keysync.Wrap(ctx, ks, forger, recipient)
	_, err = keysync.Unwrap(device, forged, "acme", trusted)
	fmt.Println(errors.Is(err, keysync.ErrUntrustedKeyset))
	// Output:
	// true
	// acme 1 <nil>
	// true
	// true
}

// A table spec seals and opens whole rows. NULL stays NULL.
func ExampleTableSpec_OpenRow() {
	spec := keysync.TableSpec{
		Table:        "items",
		Columns:      []string{"title", "body"},
		TenantColumn: "tenant_id",
		RowKey:       []string{"id"},
	}
	ks, _ := keysync.NewKeyset("acme")
	row := map[string]any{"id": "42", "tenant_id": "acme", "title": "Hello", "body": nil}
	if err := spec.SealRow(ks, row); err != nil {
		log.Fatal(err)
	}
	fmt.Println(strings.HasPrefix(row["title"].(string), "ss1:"), row["body"])

	if err := spec.OpenRow(ks, row); err != nil {
		log.Fatal(err)
	}
	fmt.Println(row["title"], row["body"])
	// Output:
	// true <nil>
	// Hello <nil>
}

// The associated data of a cell, as docs/cell-format.md shows it.
func ExampleCellContext_AssociatedData() {
	c := keysync.CellContext{Table: "public.items", Column: "title", Tenant: "t1", RowKey: []string{"7"}}
	ad, _ := c.AssociatedData()
	fmt.Printf("%q\n", ad)
	// Output: "shapeseal/cell/v1\x00public.items\x00title\x00t1\x007"
}

// Writers keep keysets encrypted under a KEK; a local KEK file is for
// development.
func ExampleEncryptKeyset() {
	dir, _ := os.MkdirTemp("", "kek")
	defer os.RemoveAll(dir)
	kek, err := keysync.GenerateLocalKEK(filepath.Join(dir, "kek.json"))
	if err != nil {
		log.Fatal(err)
	}
	ks, _ := keysync.NewKeyset("acme")
	enc, _ := keysync.EncryptKeyset(ks, kek) // shapeseal_keysets.encrypted_keyset

	got, err := keysync.DecryptKeyset(kek, "acme", 1, enc)
	fmt.Println(got.PrimaryKeyID() == ks.PrimaryKeyID(), err)

	// The associated data binds tenant and generation.
	_, err = keysync.DecryptKeyset(kek, "acme", 2, enc)
	var ke *keysync.KEKError
	fmt.Println(errors.As(err, &ke))
	// Output:
	// true <nil>
	// true
}

// exampleDeployment stands, in the examples, for what an application
// already runs: a Postgres database with shapeseal's schema and a table
// items (id int8, tenant_id text, title text), and Electric, whose
// /v1/shape URL it returns. Here they are a fresh database of the tests'
// PostgreSQL (see internal/pgtest) and an in-process electrictest server;
// stop releases them.
func exampleDeployment() (db *pgxpool.Pool, shapeURL string, stop func()) {
	tb := &exampleTB{}
	stop = func() {
		for i := len(tb.cleanups) - 1; i >= 0; i-- {
			tb.cleanups[i]()
		}
	}
	url := pgtest.NewDB(tb)
	db, err := pgxpool.New(context.Background(), url)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(db.Close)
	if err := keysync.ApplySchema(context.Background(), db); err != nil {
		tb.Fatal(err)
	}
	if _, err := db.Exec(context.Background(), `CREATE TABLE items (id int8 PRIMARY KEY, tenant_id text NOT NULL, title text)`); err != nil {
		tb.Fatal(err)
	}
	srv := electrictest.StartTest(tb, electrictest.Options{DatabaseURL: url, LongPollTimeout: 300 * time.Millisecond})
	return db, srv.URL + "/v1/shape", stop
}

// exampleTB is the part of testing.TB that pgtest and electrictest use,
// for examples, which have none: a failure panics, with what failed.
type exampleTB struct{ cleanups []func() }

func (*exampleTB) Helper()                           {}
func (*exampleTB) Fatal(args ...any)                 { panic(fmt.Sprint(args...)) }
func (*exampleTB) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (*exampleTB) Errorf(format string, args ...any) { fmt.Fprintf(os.Stderr, format+"\n", args...) }
func (t *exampleTB) Cleanup(f func())                { t.cleanups = append(t.cleanups, f) }
func (*exampleTB) Skipf(format string, args ...any) {
	panic("the Admin examples need PostgreSQL (set DATABASE_URL, or install it): " + fmt.Sprintf(format, args...))
}
