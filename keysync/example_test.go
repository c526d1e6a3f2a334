package keysync_test

import (
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"

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

// A keyset reaches a device wrapped to the device's age recipient and signed
// by the key administrators' signer, whose public key the device is
// configured to trust. The device checks the signature, that the payload is
// for itself, and that it is for the tenant of the row it came from.
func ExampleWrap() {
	device, err := keysync.GenerateIdentity() // post-quantum hybrid
	if err != nil {
		log.Fatal(err)
	}
	recipient, _ := keysync.RecipientOf(device) // stored in shapeseal_devices
	fmt.Println(strings.HasPrefix(recipient, "age1pq1"))

	// The admin functions use the signer stored under their KEK
	// (keysync.EnsureSigner); devices get its public half out of band.
	signer, _ := keysync.GenerateSigner()
	trusted, _ := keysync.ParseVerifyKeys(signer.VerifyKey().String())

	ks, _ := keysync.NewKeyset("acme")
	wrapped, err := keysync.Wrap(ks, signer, recipient) // stored in shapeseal_tenant_keys
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
	forger, _ := keysync.GenerateSigner()
	forged, _ := keysync.Wrap(ks, forger, recipient)
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
