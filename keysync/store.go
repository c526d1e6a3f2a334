package keysync

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

//go:embed schema.sql
var schemaSQL string

// Schema returns the SQL that creates shapeseal's tables (design.md §4):
// shapeseal_devices, shapeseal_tenant_keys and shapeseal_keysets. It is
// idempotent; [ApplySchema] runs it.
func Schema() string { return schemaSQL }

// DB is what keysync needs of a Postgres connection: *pgx.Conn,
// *pgxpool.Pool and pgx.Tx all have these methods.
type DB interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// ApplySchema creates shapeseal's tables if they do not exist. It is safe to
// run on every start, and from several processes at once.
func ApplySchema(ctx context.Context, db DB) error {
	// Without arguments, pgx sends the whole file as one simple query, which
	// Postgres runs as a single transaction.
	if _, err := db.Exec(ctx, schemaSQL); err != nil {
		return fmt.Errorf("keysync: apply schema: %w", err)
	}
	return nil
}

// StoreKeyset encrypts ks under kek and inserts it into shapeseal_keysets as
// its tenant's generation ks.Generation(). If that generation is already
// stored, another writer changed the keyset first: StoreKeyset returns an
// error wrapping [ErrGenerationExists], and the caller reloads and retries.
func StoreKeyset(ctx context.Context, db DB, kek KEK, ks *Keyset) error {
	if ks.generation > math.MaxInt64 {
		return fmt.Errorf("keysync: generation %d does not fit in bigint", ks.generation)
	}
	enc, err := EncryptKeyset(ks, kek)
	if err != nil {
		return err
	}
	tag, err := db.Exec(ctx, `INSERT INTO shapeseal_keysets (tenant_id, generation, kek_uri, encrypted_keyset)
		VALUES ($1, $2, $3, $4) ON CONFLICT (tenant_id, generation) DO NOTHING`,
		ks.tenant, int64(ks.generation), kek.URI(), enc)
	if err != nil {
		return fmt.Errorf("keysync: store keyset of tenant %q: %w", ks.tenant, err)
	}
	if tag.RowsAffected() == 0 {
		return detail(ErrGenerationExists, "tenant %q generation %d", ks.tenant, ks.generation)
	}
	return nil
}

// LoadKeyset loads and decrypts the newest generation of tenant's keyset
// from shapeseal_keysets. It returns an error wrapping [ErrKeysetNotFound]
// if none is stored, and a *[KEKError] naming the row's kek_uri if kek cannot
// decrypt it.
func LoadKeyset(ctx context.Context, db DB, kek KEK, tenant string) (*Keyset, error) {
	var (
		gen int64
		uri string
		enc []byte
	)
	err := db.QueryRow(ctx, `SELECT generation, kek_uri, encrypted_keyset FROM shapeseal_keysets
		WHERE tenant_id = $1 ORDER BY generation DESC LIMIT 1`, tenant).Scan(&gen, &uri, &enc)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, detail(ErrKeysetNotFound, "tenant %q", tenant)
	}
	if err != nil {
		return nil, fmt.Errorf("keysync: load keyset of tenant %q: %w", tenant, err)
	}
	ks, err := DecryptKeyset(kek, tenant, uint64(gen), enc)
	if kerr, ok := errors.AsType[*KEKError](err); ok && uri != kek.URI() {
		kerr.Err = fmt.Errorf("stored under KEK %s: %w", uri, kerr.Err)
	}
	return ks, err
}
