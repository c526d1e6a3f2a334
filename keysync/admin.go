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

// AdminDB is what the key administration functions ([Grant], [Rotate],
// [Revoke], [Reencrypt], [Writer]) need of Postgres: *pgx.Conn,
// *pgxpool.Pool and pgx.Tx all have these methods.
type AdminDB interface {
	DB
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	Begin(ctx context.Context) (pgx.Tx, error)
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

var (
	// ErrNoDevices means a user has no registered device to wrap a keyset to.
	ErrNoDevices = errors.New("keysync: user has no devices")

	// ErrNotMember means a user holds no key of a tenant.
	ErrNotMember = errors.New("keysync: user is not a member of the tenant")
)

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

// lockTenant serializes key administration of one tenant for the rest of
// tx: grants, rotations, revocations and retirements of the same tenant run
// one after the other, so that none of them wraps a stale generation.
func lockTenant(ctx context.Context, tx pgx.Tx, tenant string) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(831600384, hashtext($1))`, tenant); err != nil {
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

// CreateTenant creates a new keyset for tenant and stores it, encrypted
// under kek, as generation 1. It fails with [ErrGenerationExists] if the
// tenant already has a keyset.
func CreateTenant(ctx context.Context, db DB, kek KEK, tenant string) (*Keyset, error) {
	ks, err := NewKeyset(tenant)
	if err != nil {
		return nil, err
	}
	if err := StoreKeyset(ctx, db, kek, ks); err != nil {
		return nil, err
	}
	return ks, nil
}

// AddDevice registers a device's age recipient in shapeseal_devices, or
// replaces the recipient of a device already registered. The recipient is
// checked with [ParseRecipient].
func AddDevice(ctx context.Context, db DB, user, device, recipient string) error {
	if user == "" || device == "" {
		return errors.New("keysync: add device: empty user or device id")
	}
	if _, err := ParseRecipient(recipient); err != nil {
		return err
	}
	_, err := db.Exec(ctx, `INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ($1, $2, $3)
		ON CONFLICT (user_id, device_id) DO UPDATE SET recipient = excluded.recipient`, user, device, recipient)
	if err != nil {
		return fmt.Errorf("keysync: add device %s/%s: %w", user, device, err)
	}
	return nil
}

// member is one row of shapeseal_tenant_keys with its device's recipient.
type member struct{ user, device, recipient string }

func queryMembers(ctx context.Context, tx pgx.Tx, sql string, args ...any) ([]member, error) {
	rows, err := tx.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("keysync: list devices: %w", err)
	}
	ms, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (member, error) {
		var m member
		return m, r.Scan(&m.user, &m.device, &m.recipient)
	})
	if err != nil {
		return nil, fmt.Errorf("keysync: list devices: %w", err)
	}
	return ms, nil
}

// wrapFor wraps ks to every member's device and upserts the rows of
// shapeseal_tenant_keys. A row never goes back to an older generation.
// The payloads are signed by kek's signer.
func wrapFor(ctx context.Context, tx pgx.Tx, kek KEK, ks *Keyset, ms []member) error {
	if len(ms) == 0 {
		return nil
	}
	signer, err := EnsureSigner(ctx, tx, kek)
	if err != nil {
		return err
	}
	for _, m := range ms {
		wrapped, err := Wrap(ks, signer, m.recipient)
		if err != nil {
			return fmt.Errorf("keysync: device %s/%s: %w", m.user, m.device, err)
		}
		_, err = tx.Exec(ctx, `INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped)
			VALUES ($1, $2, $3, $4, $5)
			ON CONFLICT (tenant_id, user_id, device_id) DO UPDATE
			SET generation = excluded.generation, wrapped = excluded.wrapped
			WHERE shapeseal_tenant_keys.generation <= excluded.generation`,
			ks.tenant, m.user, m.device, int64(ks.generation), wrapped)
		if err != nil {
			return fmt.Errorf("keysync: store wrapped key for %s/%s: %w", m.user, m.device, err)
		}
	}
	return nil
}

const membersSQL = `SELECT k.user_id, k.device_id, d.recipient
	FROM shapeseal_tenant_keys k JOIN shapeseal_devices d USING (user_id, device_id)
	WHERE k.tenant_id = $1 ORDER BY 1, 2`

// Grant wraps tenant's current keyset (loaded with kek) to every device of
// user and stores the wrapped keys in shapeseal_tenant_keys, replacing older
// ones. It returns the number of devices; a user without devices is an error
// wrapping [ErrNoDevices].
func Grant(ctx context.Context, db AdminDB, kek KEK, tenant, user string) (int, error) {
	var n int
	err := inTx(ctx, db, tenant, func(tx pgx.Tx) error {
		ks, err := LoadKeyset(ctx, tx, kek, tenant)
		if err != nil {
			return err
		}
		ms, err := queryMembers(ctx, tx, `SELECT user_id, device_id, recipient FROM shapeseal_devices WHERE user_id = $1 ORDER BY 2`, user)
		if err != nil {
			return err
		}
		if len(ms) == 0 {
			return detail(ErrNoDevices, "user %q", user)
		}
		n = len(ms)
		return wrapFor(ctx, tx, kek, ks, ms)
	})
	return n, err
}

// rotateIn rotates (or otherwise replaces, with next) the tenant's keyset,
// stores the new generation and re-wraps it for every remaining member.
func rotateIn(ctx context.Context, tx pgx.Tx, kek KEK, tenant string, next func(*Keyset) (*Keyset, error)) (*Keyset, error) {
	ks, err := LoadKeyset(ctx, tx, kek, tenant)
	if err != nil {
		return nil, err
	}
	if ks, err = next(ks); err != nil {
		return nil, err
	}
	if err := StoreKeyset(ctx, tx, kek, ks); err != nil {
		return nil, err
	}
	ms, err := queryMembers(ctx, tx, membersSQL, tenant)
	if err != nil {
		return nil, err
	}
	return ks, wrapFor(ctx, tx, kek, ks, ms)
}

// Rotate adds a new primary key to tenant's keyset, stores the new
// generation under kek and re-wraps it for every member device, in one
// transaction. Cells sealed before keep opening with the older keys until
// they are re-encrypted ([Reencrypt]).
func Rotate(ctx context.Context, db AdminDB, kek KEK, tenant string) (*Keyset, error) {
	var ks *Keyset
	err := inTx(ctx, db, tenant, func(tx pgx.Tx) (err error) {
		ks, err = rotateIn(ctx, tx, kek, tenant, (*Keyset).Rotate)
		return err
	})
	return ks, err
}

// Revoke removes user from tenant: it deletes the user's wrapped keys,
// rotates the keyset and re-wraps the new generation for the remaining
// members, in one transaction. Cells written after Revoke cannot be opened
// by the user's devices; cells written before can until they are
// re-encrypted ([Reencrypt]) and the old key retired — and whatever the user
// already read or kept is beyond reach. A user who holds no key of the
// tenant is an error wrapping [ErrNotMember].
func Revoke(ctx context.Context, db AdminDB, kek KEK, tenant, user string) (*Keyset, error) {
	var ks *Keyset
	err := inTx(ctx, db, tenant, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `DELETE FROM shapeseal_tenant_keys WHERE tenant_id = $1 AND user_id = $2`, tenant, user)
		if err != nil {
			return fmt.Errorf("keysync: revoke: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return detail(ErrNotMember, "user %q, tenant %q", user, tenant)
		}
		ks, err = rotateIn(ctx, tx, kek, tenant, (*Keyset).Rotate)
		return err
	})
	return ks, err
}

// RetireKeys removes the keys ids from tenant's keyset at the next
// generation, stores it and re-wraps it for every member, in one
// transaction. Cells sealed with a retired key no longer open, so RetireKeys
// first counts, under the tenant's lock, the tenant's cells sealed with ids,
// and refuses with a *[KeysInUseError] (nothing retired) if there are any.
//
// A tenant's keyset seals the cells of every table with encrypted columns.
// The count takes in the columns of tables, which must name at least one
// table, and every text column of every table that has a column named like
// one of their tenant columns; name every table whose tenant column is
// named otherwise. Re-encrypt them first ([Reencrypt]).
func RetireKeys(ctx context.Context, db AdminDB, kek KEK, tenant string, tables []TableSpec, ids ...uint32) (*Keyset, error) {
	if len(tables) == 0 {
		return nil, errors.New("keysync: retire: name the tables that hold the tenant's cells")
	}
	for i := range tables {
		if err := tables[i].Validate(); err != nil {
			return nil, err
		}
	}
	var ks *Keyset
	err := inTx(ctx, db, tenant, func(tx pgx.Tx) error {
		inUse, err := keysInUse(ctx, tx, tenant, tables, ids)
		if err != nil {
			return err
		}
		if inUse != nil {
			return inUse
		}
		ks, err = rotateIn(ctx, tx, kek, tenant, func(ks *Keyset) (*Keyset, error) { return ks.retire(ids) })
		return err
	})
	return ks, err
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
