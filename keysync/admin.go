package keysync

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/shapeseal/shapeseal/internal/b64url"
)

// AdminDB is what an [Admin] needs of Postgres: *pgx.Conn, *pgxpool.Pool
// and pgx.Tx all have these methods.
type AdminDB interface {
	DB
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Begin(ctx context.Context) (pgx.Tx, error)
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

// ErrNoDevices means a user has no certified device to wrap a keyset to.
var ErrNoDevices = errors.New("keysync: user has no certified devices")

// CellKeyID returns the id of the key that sealed cell, read from the cell's
// prefix without opening it.
func CellKeyID(cell string) (uint32, error) {
	body, ok := strings.CutPrefix(cell, CellPrefix)
	if !ok {
		return 0, ErrNotEncrypted
	}
	// 8 base64 characters decode to 6 bytes: the 5-byte key prefix and one more.
	if len(body) < 8 || b64url.DecodedLen(len(body)) < minCellLen {
		return 0, detail(ErrMalformedCell, "too short")
	}
	var head [6]byte
	if n, err := b64url.Decode(head[:], body[:8]); err != nil || n != 6 {
		return 0, detail(ErrMalformedCell, "bad base64url")
	}
	if head[0] != tinkPrefixTink {
		return 0, detail(ErrMalformedCell, "unknown ciphertext prefix %#02x", head[0])
	}
	return binary.BigEndian.Uint32(head[1:keyPrefixLen]), nil
}

// tenantLockClass is the first key of a tenant's advisory lock, the second
// being hashtext(tenant): taken exclusively by key administration
// (lockTenant), shared by writers (Writer.Write).
const tenantLockClass = "831600384"

// lockTenant serializes key administration of one tenant for the rest of
// tx: grants, rotations, revocations and retirements of the same tenant run
// one after the other, so that none of them wraps a stale generation, and
// each waits for the rows being written for the tenant.
func lockTenant(ctx context.Context, tx pgx.Tx, tenant string) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(`+tenantLockClass+`, hashtext($1))`, tenant); err != nil {
		return fmt.Errorf("keysync: lock tenant %q: %w", tenant, err)
	}
	return nil
}

// inTx runs f in a transaction of db, with tenant locked.
func inTx(ctx context.Context, db AdminDB, tenant string, f func(tx pgx.Tx) error) error {
	if err := checkTenant(tenant); err != nil {
		return err
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("keysync: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := lockTenant(ctx, tx, tenant); err != nil {
		return err
	}
	if err := f(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("keysync: commit: %w", err)
	}
	return nil
}

// sqlTable quotes a TableSpec's table, "schema.table", as an identifier.
func sqlTable(s *TableSpec) string {
	schema, table, _ := strings.Cut(s.QualifiedTable(), ".")
	return pgx.Identifier{schema, table}.Sanitize()
}

func ident(col string) string { return pgx.Identifier{col}.Sanitize() }

// columnTypes returns the SQL types of cols of s's table, as format_type
// spells them (from the catalog, so safe to splice into SQL).
func columnTypes(ctx context.Context, db DB, s *TableSpec, cols []string) ([]string, error) {
	types := make([]string, len(cols))
	for i, c := range cols {
		err := db.QueryRow(ctx, `SELECT format_type(atttypid, atttypmod) FROM pg_attribute
			WHERE attrelid = $1::regclass AND attname = $2 AND attnum > 0 AND NOT attisdropped`,
			sqlTable(s), c).Scan(&types[i])
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, fmt.Errorf("keysync: table %s has no column %q", s.QualifiedTable(), c)
		}
		if err != nil {
			return nil, fmt.Errorf("keysync: columns of %s: %w", s.QualifiedTable(), err)
		}
	}
	return types, nil
}
