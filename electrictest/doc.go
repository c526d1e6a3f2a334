// Package electrictest is an Electric-compatible shape server for tests: it
// serves the HTTP shape protocol of ElectricSQL 1.7 (GET /v1/shape,
// /v1/health) from a real Postgres, following changes through logical
// replication (pgoutput, decoded with github.com/jackc/pglogrepl) on a
// temporary slot and a publication of its own. Clients, proxies and
// anything else that speaks Electric's protocol can be tested against it
// without running Electric itself; the conformance tests in this package
// pin its wire behaviour, and electrictest/interop checks it with the
// official TypeScript client.
//
// # Using it in tests
//
// StartTest starts a Server on a loopback port for the duration of a test
// and stops it (dropping its publication and slot) in the test's cleanup:
//
//	db := pgtest.NewDB(t) // a fresh database with wal_level=logical
//	pgtest.Exec(t, db, `CREATE TABLE items (id int PRIMARY KEY, title text)`)
//	srv := electrictest.StartTest(t, electrictest.Options{
//		DatabaseURL:     db,
//		LongPollTimeout: time.Second, // shorter than Electric's 20s
//	})
//	resp, err := http.Get(srv.URL + "/v1/shape?table=items&offset=-1")
//
// Writes made to the database with any ordinary connection reach the
// shape's clients as they would through Electric. The database needs
// wal_level=logical and a role allowed to create publications and
// replication slots; the server sets REPLICA IDENTITY FULL on each table
// it serves (so that updates and deletes carry the old row).
//
// With Options.Publication, as with Electric's
// ELECTRIC_MANUAL_TABLE_PUBLISHING, the server follows a publication made
// by hand and changes nothing in the database: a role with REPLICATION and
// SELECT on the published tables is enough (no superuser, no table
// ownership). A shape of a table missing from the publication, or whose
// replica identity is not FULL, is answered 503 with retry-after 10 and
// Electric's message until the table is published. New and
// Server.ServeHTTP serve programs that are not tests (a Server is an
// http.Handler).
//
// # What it supports
//
//   - Shapes defined by table, where (with params[n]), columns,
//     queryable_columns, replica (default or full) and log (full or
//     changes_only), with Electric's validation and its 400 error bodies.
//   - Initial sync in chunks (Options.ChunkBytes) ending in snapshot-end,
//     catch-up, live long polling with electric-cursor, Server-Sent Events
//     (live_sse), offset=now, ETag / If-None-Match (304), CORS and OPTIONS
//     preflight, the secret parameter (Options.Secret), DELETE
//     (Options.AllowDelete), /v1/health.
//   - Change messages as Electric writes them: row keys, op_position,
//     lsn, txids, last, key_change_to/from for primary-key changes,
//     updates that move rows in or out of a where clause as delete/insert,
//     TOASTed values, the electric-schema header with type modifiers.
//   - 409 must-refetch when a shape is invalidated: TRUNCATE, a schema
//     change, a dropped or renamed table, a handle that is unknown or
//     belongs to another definition, Server.Rotate and Server.RotateHandle.
//
// The where clause is evaluated by Postgres itself, for the snapshot and
// for every replicated row, so any boolean SQL filter works; it must be a
// filter only (no statements or volatile functions, no subqueries but one).
// Subset snapshots (subset__*, POST) are not supported.
//
// # Subquery shapes
//
// A where clause may hold one membership test
// `column IN (SELECT column FROM table [WHERE filter])`, alone or ANDed with
// simple conditions, e.g. with params[1]=42:
//
//	tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id = $1)
//
// Its messages follow Electric 1.7: rows carry tags and active_conditions
// headers; when the subquery's table changes, rows that enter arrive after
// a move-in event as inserts marked is_move_in (then snapshot-end), and rows
// that leave are announced by a move-out event whose patterns match their
// tags. See the README for the differences from Electric.
//
// # Faults
//
// Server.FailNext answers the next shape requests with an error status
// and an optional Retry-After, Server.CutNext cuts the connection in the
// middle of the next response bodies, and Server.SetDelay delays every
// shape response. They are real HTTP behaviour, for testing how clients
// and proxies retry and resume.
//
// # Differences from Electric
//
// Shape logs live in memory, and some behaviours that depend on Electric's
// storage and internals are approximated. The section "electrictest vs
// Electric" of the repository's README lists every known difference and
// the reason for it.
package electrictest
