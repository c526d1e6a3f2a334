package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/proxy"
)

// The rows that ask Postgres.

const noDatabase = "no --database-url or $DATABASE_URL"

// electricPublications returns the publications Electric uses: the one
// --publication names, or every one named electric*, by name, with
// puballtables.
func (c *checker) electricPublications(ctx context.Context, conn *pgx.Conn) ([]string, map[string]bool, error) {
	q := `SELECT pubname, puballtables FROM pg_publication WHERE pubname LIKE 'electric%' ORDER BY pubname`
	var args []any
	if c.publication != "" {
		q, args = `SELECT pubname, puballtables FROM pg_publication WHERE pubname = $1`, []any{c.publication}
	}
	rows, err := conn.Query(ctx, q, args...)
	if err != nil {
		return nil, nil, err
	}
	var names []string
	all := map[string]bool{}
	for rows.Next() {
		var n string
		var a bool
		if err := rows.Scan(&n, &a); err != nil {
			return nil, nil, err
		}
		names = append(names, n)
		all[n] = a
	}
	return names, all, rows.Err()
}

func (c *checker) noPublication() string {
	if c.publication != "" {
		return fmt.Sprintf("there is no publication %s in this database", c.publication)
	}
	return "there is no publication named electric* in this database: start Electric on it, or name Electric's with --publication"
}

func (c *checker) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, c.databaseURL)
	if err != nil {
		return nil, fmt.Errorf("cannot connect to Postgres: %w", err) // names user and database, not the password
	}
	return conn, nil
}

// replicationRole returns the role of the one connection that holds a
// replication slot of this database — Electric's, while it runs — or ""
// when there is none or more than one.
func replicationRole(ctx context.Context, conn *pgx.Conn) string {
	var roles []string
	err := conn.QueryRow(ctx, `SELECT coalesce(array_agg(DISTINCT a.usename::text), '{}')
		FROM pg_replication_slots s JOIN pg_stat_activity a ON a.pid = s.active_pid
		WHERE s.database = current_database()`).Scan(&roles)
	if err != nil || len(roles) != 1 {
		return ""
	}
	return roles[0]
}

func (c *checker) checkRole(ctx context.Context) checkResult {
	if c.databaseURL == "" {
		return checkSkip(noDatabase)
	}
	conn, err := c.connect(ctx)
	if err != nil {
		return checkSkip("%v", err)
	}
	defer conn.Close(context.Background())
	role := c.role
	if role == "" {
		role = replicationRole(ctx, conn)
	}
	if role == "" {
		pc, _ := pgx.ParseConfig(c.databaseURL)
		role = pc.User
	}
	var super, repl bool
	err = conn.QueryRow(ctx, `SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = $1`, role).Scan(&super, &repl)
	if errors.Is(err, pgx.ErrNoRows) {
		return checkFail("there is no role %q: name Electric's with --electric-role", role)
	}
	if err != nil {
		return checkSkip("reading pg_roles: %v", err)
	}
	if super {
		return checkFail("Electric's role %s is a superuser: give Electric a role with REPLICATION and SELECT on the synced tables only", role)
	}
	pubs, _, err := c.electricPublications(ctx, conn)
	if err != nil {
		return checkSkip("reading pg_publication: %v", err)
	}
	if len(pubs) == 0 {
		return checkOK("%s is not a superuser (%s, so no table grants to check)", role, c.noPublication())
	}
	rows, err := conn.Query(ctx, `
		SELECT format('%I.%I', t.schemaname, t.tablename), array_remove(ARRAY[
			CASE WHEN has_any_column_privilege($1::name, c.oid, 'INSERT') THEN 'INSERT' END,
			CASE WHEN has_any_column_privilege($1::name, c.oid, 'UPDATE') THEN 'UPDATE' END,
			CASE WHEN has_table_privilege($1::name, c.oid, 'DELETE') THEN 'DELETE' END,
			CASE WHEN has_table_privilege($1::name, c.oid, 'TRUNCATE') THEN 'TRUNCATE' END], NULL)
		FROM (SELECT DISTINCT schemaname, tablename FROM pg_publication_tables WHERE pubname = ANY($2::text[])) t
		JOIN pg_namespace n ON n.nspname = t.schemaname
		JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.tablename
		ORDER BY 1`, role, pubs)
	if err != nil {
		return checkSkip("reading table privileges: %v", err)
	}
	var writable []string
	tables := 0
	for rows.Next() {
		var table string
		var privs []string
		if err := rows.Scan(&table, &privs); err != nil {
			return checkSkip("reading table privileges: %v", err)
		}
		tables++
		if len(privs) > 0 {
			writable = append(writable, fmt.Sprintf("%s on %s", strings.Join(privs, "/"), table))
		}
	}
	if err := rows.Err(); err != nil {
		return checkSkip("reading table privileges: %v", err)
	}
	if len(writable) > 0 {
		return checkFail("Electric's role %s may %s: Electric only reads, so REVOKE INSERT, UPDATE, DELETE, TRUNCATE from it (and, as it then owns no table, publish tables by hand: ELECTRIC_MANUAL_TABLE_PUBLISHING=true)",
			role, strings.Join(writable, ", "))
	}
	note := ""
	if !repl {
		note = "; note: it has no REPLICATION attribute, which Electric needs"
	}
	return checkOK("%s is not a superuser and may not write the %d tables of %s%s", role, tables, strings.Join(pubs, ", "), note)
}

func (c *checker) checkPublication(ctx context.Context) checkResult {
	if c.databaseURL == "" {
		return checkSkip(noDatabase)
	}
	conn, err := c.connect(ctx)
	if err != nil {
		return checkSkip("%v", err)
	}
	defer conn.Close(context.Background())
	pubs, allTables, err := c.electricPublications(ctx, conn)
	if err != nil {
		return checkSkip("reading pg_publication: %v", err)
	}
	if len(pubs) == 0 {
		return checkFail("%s", c.noPublication())
	}
	// Keys are used when their table exists or the proxy serves them.
	var keysUsed bool
	if err := conn.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, keysync.TenantKeysTable).Scan(&keysUsed); err != nil {
		return checkSkip("looking for %s: %v", keysync.TenantKeysTable, err)
	}
	if c.cfg != nil {
		for _, r := range c.cfg.Shapes {
			keysUsed = keysUsed || r.Kind == proxy.KindTenantKeys
		}
	}
	var problems, oks []string
	for _, p := range pubs {
		if allTables[p] {
			problems = append(problems, fmt.Sprintf("%s is FOR ALL TABLES: every table's changes go to Electric, including tables no shape should serve; recreate it FOR TABLE with the synced tables only (and set ELECTRIC_MANUAL_TABLE_PUBLISHING=true)", p))
			continue
		}
		var tables []string
		if err := conn.QueryRow(ctx, `SELECT coalesce(array_agg(tablename::text ORDER BY tablename), '{}') FROM pg_publication_tables WHERE pubname = $1`, p).Scan(&tables); err != nil {
			return checkSkip("reading pg_publication_tables: %v", err)
		}
		if keysUsed {
			var missing []string
			for _, t := range []string{keysync.TenantKeysTable, keysync.LogTable} {
				if !slices.Contains(tables, t) {
					missing = append(missing, t)
				}
			}
			if len(missing) > 0 {
				// Electric adds a table to its publication when a shape of
				// it is first requested, unless its tables are published by
				// hand: then the keys would never sync.
				oks = append(oks, fmt.Sprintf("%s does not publish %s yet: Electric adds them on the first request of their shapes (with ELECTRIC_MANUAL_TABLE_PUBLISHING=true, run ALTER PUBLICATION %s ADD TABLE %s)",
					p, strings.Join(missing, ", "), p, strings.Join(missing, ", ")))
				continue
			}
		}
		if len(tables) == 0 {
			oks = append(oks, p+": no tables yet")
		} else {
			oks = append(oks, fmt.Sprintf("%s: %d tables (%s)", p, len(tables), abbrevList(tables, 6)))
		}
	}
	if len(problems) > 0 {
		return checkFail("%s", strings.Join(problems, "; "))
	}
	return checkOK("%s, not FOR ALL TABLES", strings.Join(oks, "; "))
}

func abbrevList(s []string, n int) string {
	if len(s) <= n {
		return strings.Join(s, ", ")
	}
	return strings.Join(s[:n], ", ") + fmt.Sprintf(", … %d more", len(s)-n)
}
