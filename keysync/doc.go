// Package keysync encrypts the sensitive columns of a shape end to end, and
// shares the keys among a tenant's members through a synced shape.
//
// Postgres, Electric, CDNs and the proxy only ever see ciphertext. A tenant's
// data is sealed with the tenant's [Keyset]; the keyset travels to each member
// device wrapped with age (see [Wrap]), and to writers envelope-encrypted
// under a key-encryption key (see [KEK] and [EncryptKeyset]).
//
// # Cells
//
// An encrypted column holds text of the form
//
//	ss1:<base64url, no padding, of a Tink AEAD ciphertext>
//
// The Tink ciphertext begins with a 5-byte prefix, 0x01 followed by the
// big-endian id of the key that sealed it, so a keyset that has been rotated
// still knows which key to use, and a reader can tell "I do not hold that key"
// ([ErrNoKey]) from "this cell was tampered with or moved" ([ErrAuth]).
//
// Every cell is bound to its place by the AEAD's associated data: the table,
// the column, the tenant and, unless the [TableSpec] says otherwise, the row's
// key. A ciphertext copied into another row, column or tenant fails to open.
// docs/cell-format.md specifies the format byte by byte for other languages,
// and testdata/vectors holds test vectors.
//
//	cell, err := keysync.Seal(ks, keysync.CellContext{
//		Table:  "public.items",
//		Column: "title",
//		Tenant: "acme",
//		RowKey: []string{"6f1c…"},
//	}, []byte("quarterly numbers"))
//
// NULL is not encrypted: a NULL stays NULL, so whether a value is present is
// visible to the database. The length of a value is visible too (a cell is
// 33 bytes longer than its plaintext before base64).
//
// # Keys
//
// A [Keyset] belongs to one tenant and has a generation that grows by one with
// every change. [Keyset.Rotate] adds a key and makes it primary; older keys keep
// opening the cells they sealed until they are retired ([Keyset.Retire]) after
// those cells have been re-encrypted. Keysets are immutable values, safe for
// concurrent use.
//
// Devices hold age identities, post-quantum hybrid by default
// ([GenerateIdentity]); X25519 identities are accepted. [Wrap] seals a keyset
// to a device's recipient in a payload that names the tenant, the generation
// and the device, signed by the administrator who wrapped it.
//
// # Authority: the tenant log
//
// Who receives a tenant's keys is decided by the tenant's signed,
// hash-chained log (package chain, docs/chain-format.md), never by an
// unsigned row: the database, Electric and the proxy may be hostile. A root
// key, which every device, writer and admin tool pins out of band, signs a
// tenant's first entry and delegates the tenant to admin keys; admins sign
// the entries that add members and their certified devices, name the
// current keyset (by generation and a commitment to its keys) and the KEK
// it is stored under, and remove members with a revocation point.
//
// A [Keyring] adopts a keyset only if the tenant's log, verified from the
// pinned roots, lists the device and names that keyset; [Admin] operations
// and [Writer]s take members, devices, the current generation and the KEK
// from the verified log, and refuse tables that disagree with it
// ([ErrStateMismatch]). Each keeps a [Floor] so that a log cut back or
// replaced, or an older payload put back, is refused after a restart too.
// docs/trust-model.md says what each party can and cannot do.
//
// # Keyring
//
// A reader holds its tenant keysets in a [Keyring], which follows the
// shapeseal_tenant_keys shape through package client (from Electric with
// [KeyShapeOptions], or from the proxy, which filters the shape to the
// authenticated device) and unwraps every row with the device's identity.
// Grants, rotations (a newer generation replaces the older; a generation never
// goes backwards, [ErrStaleGeneration]), revocations (a deleted row drops the
// tenant) and must-refetch (the ring is rebuilt, the old one serving
// meanwhile) take effect live. A row the keyring cannot use is reported to
// KeyringOptions.OnRowError as a *[KeyRowError] and changes nothing. A
// [Floor] (KeyringOptions.Floor) carries "never go backwards"
// across runs.
//
// [Keyring.Open] opens a cell; when the cell names a key the ring does not
// hold yet, it waits for the key shape up to KeyringOptions.KeyWait, then
// fails with an *[OpenError] wrapping [ErrNoKey].
//
// A [Decrypter] turns a keyring and [TableSpec]s into a client
// TransformBatch (or TransformContext): cells become plaintext strings, or
// *[CellError] values (JSON {"error": code, "message": text}) for cells
// that do not open. A batch's cells are opened on up to GOMAXPROCS cores.
//
//	floor, _ := keysync.OpenFileFloor(keysync.DefaultFloorPath(identityFile))
//	ring, _ := keysync.NewKeyring(keysync.KeyringOptions{
//		Stream:   keysync.KeyShapeOptions(electricURL+"/v1/shape", "alice", "phone"),
//		Log:      keysync.LogShapeOptions(electricURL+"/v1/shape", "acme"),
//		Identity: identity,
//		Roots:    roots, // keysync.ParseVerifyKeys(os.Getenv("SHAPESEAL_ROOT"))
//		Floor:    floor,
//	})
//	go ring.Run(ctx)
//	dec, _ := keysync.NewDecrypter(ring, spec)
//	stream, _ := client.New(client.Options{URL: ..., TransformBatch: dec.TransformBatch})
//	shape := client.NewShape(keysync.WithDecrypter(stream, dec)) // forgets rows at a must-refetch
//
// [Follow] does all of that in one call, through the proxy, and decodes
// the rows into structs ([Plaintext] fields for encrypted columns):
//
//	items, err := keysync.Follow[item](ctx, keysync.FollowOptions{
//		ProxyURL:     "https://sync.example",
//		Shape:        "items",
//		Tokens:       tokens,
//		IdentityFile: identityFile, // the floor file goes next to it
//		Roots:        roots,
//		Tables:       []keysync.TableSpec{spec},
//	})
//	defer items.Close()
//	v, err := items.Wait(ctx, nil)
//
// # Administration and writers
//
// An [Admin] holds one signing key (a root, or an admin key the tenant was
// delegated to) and a Postgres connection: [Admin.CreateTenant] (a root
// only) stores a new keyset and starts the tenant's log, [Admin.SetAdmins]
// delegates it, [Admin.CertifyDevice] signs a certificate for a user's
// device recipient, [Admin.Grant] adds a member with their certified
// devices and wraps the current keyset to them, [Admin.Rotate] adds a
// primary key and re-wraps for every device of the log, [Admin.Revoke]
// removes a member, records a revocation point and rotates, and
// [Admin.RetireKeys] drops old keys. Each signs one log entry, in one
// transaction under a per-tenant advisory lock.
//
// [Admin.Reencrypt] moves a table's cells to the primary key in short
// batches, touching only cells under other keys and never overwriting a
// concurrent write; it is idempotent and resumable, refuses to re-seal
// cells a revoked member may have forged after the revocation, and can
// retire the keys no cell uses any more. A [Writer] seals the encrypted
// columns of rows before it inserts, updates or upserts them, with the
// keyset the tenant's log names.
//
// # Errors
//
// Errors from [Open] are of type [*OpenError] and wrap one of [ErrNotEncrypted],
// [ErrMalformedCell], [ErrNoKey], [ErrAuth], [ErrTenantMismatch] or
// [ErrInvalidContext]; use [errors.Is] to branch and [errors.As] to get the
// key id and place. No error ever contains key material or plaintext.
//
// # Performance
//
// Opening a cell costs base64url decoding (vectorized on amd64 with AVX2,
// see internal/b64url), building the associated data and AES-256-GCM in
// place. [Open] returns a new plaintext; [OpenAppend] appends it to a buffer
// the caller reuses, and so allocates nothing. BenchmarkRatio compares both
// with raw AES-GCM from the standard library, like with like: Open against
// AES-GCM returning a new slice, OpenAppend against AES-GCM in place.
package keysync
