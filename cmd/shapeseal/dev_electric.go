package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/keysync"
)

// devPublication is the publication dev's shape server follows.
const devPublication = "electric_shapeseal_dev"

// devElectricTables are the tables dev's shape server serves.
var devElectricTables = []string{"items", keysync.TenantKeysTable, keysync.LogTable}

// devElectric is the role dev's shape server connects as.
type devElectric struct {
	role, url string
	adminURL  string // who made it, to drop it; "": leave it (a private cluster goes anyway)
}

// setupDevElectric makes, as conn's role, the role that dev's shape server
// connects as, with LOGIN, REPLICATION and SELECT only on the synced
// tables, and the publication devPublication of those tables, which it
// sets to REPLICA IDENTITY FULL (as Electric's operator would with
// ELECTRIC_MANUAL_TABLE_PUBLISHING). The role is the database's own (roles
// are the cluster's, grants the database's) and gets a new random password
// each run. It changes nothing when it fails.
func setupDevElectric(ctx context.Context, conn *pgx.Conn, dbURL string, private bool) (*devElectric, error) {
	var dbName string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&dbName); err != nil {
		return nil, err
	}
	role := "shapeseal_electric"
	if !private {
		h := sha256.Sum256([]byte(dbName))
		role += "_" + hex.EncodeToString(h[:5])
	}
	password := randomHex(16)
	ident := pgx.Identifier{role}.Sanitize()
	tables := make([]string, len(devElectricTables))
	for i, t := range devElectricTables {
		tables[i] = pgx.Identifier{t}.Sanitize()
	}
	list := strings.Join(tables, ", ")
	tx, err := conn.Begin(ctx)
	if err != nil {
		return nil, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role).Scan(&exists); err != nil {
		return nil, err
	}
	verb := "CREATE"
	if exists {
		verb = "ALTER" // left by a run that was killed
	}
	stmts := []string{
		verb + " ROLE " + ident + " LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS PASSWORD '" + password + "'",
		"REVOKE ALL ON " + list + " FROM " + ident,
		"GRANT SELECT ON " + list + " TO " + ident,
		"DROP PUBLICATION IF EXISTS " + devPublication,
		"CREATE PUBLICATION " + devPublication + " FOR TABLE " + list,
	}
	for _, t := range tables {
		stmts = append(stmts, "ALTER TABLE "+t+" REPLICA IDENTITY FULL")
	}
	for _, q := range stmts {
		if _, err := tx.Exec(ctx, q); err != nil {
			return nil, fmt.Errorf("%s: %w", strings.ReplaceAll(q, password, "***"), err)
		}
	}
	u, err := dbURLAs(dbURL, role, password)
	if err != nil {
		return nil, err
	}
	if err := tx.Commit(ctx); err != nil {
		return nil, err
	}
	d := &devElectric{role: role, url: u}
	if !private {
		d.adminURL = dbURL
	}
	return d, nil
}

// drop drops the publication and the role (best effort: a run that is
// killed leaves them, and the next one takes them over).
func (d *devElectric) drop() {
	if d.adminURL == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, d.adminURL)
	if err != nil {
		return
	}
	defer conn.Close(context.Background())
	ident := pgx.Identifier{d.role}.Sanitize()
	for _, q := range []string{"DROP PUBLICATION IF EXISTS " + devPublication, "DROP OWNED BY " + ident, "DROP ROLE IF EXISTS " + ident} {
		if _, err := conn.Exec(ctx, q); err != nil {
			fmt.Fprintf(os.Stderr, "shapeseal dev: %s: %v\n", q, err)
			return
		}
	}
}

// dbURLAs returns dbURL (a URL or keyword/value string) with another user
// and password.
func dbURLAs(dbURL, user, password string) (string, error) {
	if strings.HasPrefix(dbURL, "postgres://") || strings.HasPrefix(dbURL, "postgresql://") {
		u, err := url.Parse(dbURL)
		if err != nil {
			return "", errors.New("cannot parse DATABASE_URL")
		}
		u.User = url.UserPassword(user, password)
		q := u.Query()
		q.Del("user")
		q.Del("password")
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// Keyword/value: the last setting of a keyword wins.
	return dbURL + " user=" + user + " password=" + password, nil
}
