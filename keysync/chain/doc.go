// Package chain is shapeseal's signed, hash-chained log of a tenant's
// authority: who may administer the tenant, who its members are, which of
// their devices receive its keys, and which keyset is current and under
// which KEK it is stored. It is the part of keysync that decides who gets a
// tenant's keys, so nothing in it is read from an unsigned row.
//
// Every [Entry] names its tenant, its sequence number and the SHA-256 hash
// of the entry before it, holds a list of [Op]s, and is signed with Ed25519
// by a key that may sign it:
//
//   - the first entry, and every entry that adds or removes an admin, by a
//     root: a key that every verifier pins out of band (devices, writers
//     and admin tools are configured with it, never read it from the
//     database);
//   - every other entry by a root or by one of the tenant's admins, as the
//     log says at that point.
//
// So a root delegates a tenant to admin keys, scoped to that tenant: an
// admin of tenant B signs nothing that tenant A's verifiers accept.
//
// [Verify] replays a log from its first entry and returns the [State];
// [State.Append] checks and applies one more entry. Verifiers remember how
// far they have seen each log (a floor: sequence number and head hash) and
// refuse a log that is shorter ([ErrRollback]) or differs ([ErrFork]).
//
// A [Cert] certifies a user's device — its age recipient — signed by an
// admin. A grant puts a device into a tenant's log only with a certificate
// signed by a root or an admin of that tenant.
//
// [Commit] is the commitment to a keyset's key material that the log's
// keyset operation records, so that a device or writer can check that the
// keyset it unwrapped or decrypted is the one the log names.
//
// docs/chain-format.md specifies the encodings byte by byte, with test
// vectors in keysync/testdata/vectors/chain_v1.json.
package chain
