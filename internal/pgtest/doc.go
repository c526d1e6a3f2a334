// Package pgtest runs real PostgreSQL servers for shapeseal's tests and tools.
//
// shapeseal depends on logical replication, so its tests need a real server
// with wal_level=logical; mocks would not exercise what matters. This package
// provides one in two ways:
//
//   - [Start] initializes a private, throwaway cluster in a temporary directory
//     and runs the postgres binary directly (no system service, no global
//     state): it listens on 127.0.0.1 only, on a free port, with trust
//     authentication for the superuser "postgres", logical replication enabled
//     and durability switched off for speed (fsync and full_page_writes are
//     off). synchronous_commit stays on: with it off, a commit reaches logical
//     replication only when the WAL writer next flushes (up to 200 ms later),
//     which would distort every live-sync test and latency benchmark.
//     [Cluster.Stop] shuts it down and deletes everything it wrote.
//   - [Open] uses the server named by the DATABASE_URL environment variable
//     when it is set (checking that it is reachable and that wal_level is
//     logical), and falls back to [Start] otherwise.
//
// Binaries are looked up as initdb on $PATH, then in the newest
// /usr/lib/postgresql/*/bin (the Debian and Ubuntu layout). With
// [Options.Install], a missing server is installed with apt-get. PostgreSQL
// refuses to run as root, so when the caller is root the server runs as the
// "postgres" OS user, which the Debian package creates.
//
// # In tests
//
// Every test package that needs a database declares
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }
//
// and each test asks for its own fresh, empty database:
//
//	func TestSomething(t *testing.T) {
//		t.Parallel()
//		url := pgtest.NewDB(t)
//		pgtest.Exec(t, url, `CREATE TABLE items (id int PRIMARY KEY)`)
//		...
//	}
//
// [NewDB] creates the database on the cluster of the current test binary and
// drops it when the test ends, terminating any connection or replication
// slot that would keep it alive. The cluster is the one in DATABASE_URL if
// set; otherwise a private one is started on first use and stopped by [Run].
//
// When no server can be had, NewDB skips the test, unless the CI environment
// variable is true, in which case it fails: CI must never pass by skipping.
//
// # In CI
//
// CI runs .ci/run as root with CI=true; it installs PostgreSQL (and Node.js)
// when missing and runs `make test`, which runs the whole module under the
// withpg command:
//
//	go run ./internal/pgtest/cmd/withpg -- go test ./...
//
// withpg starts one private cluster (installing PostgreSQL if needed), sets
// DATABASE_URL for the command, and stops the cluster when the command exits,
// so all test packages share a single server instead of starting one each.
// Every test still gets its own database, so packages and parallel tests do
// not see each other's tables, publications or slots. Replication slots are
// cluster-wide objects, though: give them names that cannot collide (for
// example derived from the database name).
package pgtest
