package keysync

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/shapeseal/shapeseal/keysync/chain"
)

//go:embed schema.sql
var schemaSQL string

// Schema returns the SQL that creates shapeseal's tables (design.md §4):
// shapeseal_devices, shapeseal_device_certs, shapeseal_tenant_keys,
// shapeseal_keysets and shapeseal_log. It is idempotent; [ApplySchema] runs
// it.
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

// A KEKSource opens the KEK that a tenant's log names, by URI. [OpenKEK]
// is one; [UseKEK] allows only the KEK an operator configured.
type KEKSource func(uri string) (KEK, error)

// UseKEK returns a KEKSource that opens only kek: a log that names another
// KEK is refused with a *[KEKMismatchError], so that a tenant moved to a KEK
// the operator did not configure is noticed, not followed.
func UseKEK(kek KEK) KEKSource {
	return func(uri string) (KEK, error) {
		if uri != kek.URI() {
			return nil, &KEKMismatchError{Log: uri, Configured: kek.URI()}
		}
		return kek, nil
	}
}

// KEKMismatchError: a tenant's log names a KEK other than the one
// configured.
type KEKMismatchError struct {
	Tenant     string
	Log        string // the KEK URI the signed log names
	Configured string
}

func (e *KEKMismatchError) Error() string {
	t := ""
	if e.Tenant != "" {
		t = fmt.Sprintf(" of tenant %q", e.Tenant)
	}
	return fmt.Sprintf("keysync: the log%s names KEK %s, not the configured %s", t, e.Log, e.Configured)
}

// LoadKeyset loads the keyset that st, a tenant's verified log, names as
// current: it decrypts the row of shapeseal_keysets of that generation with
// the KEK the log names (opened with keks, [OpenKEK] if nil), and checks it
// against the log's commitment. A missing row, or one that decrypts to
// another keyset, is a *[StateError]; a KEK that cannot decrypt it, a
// *[KEKError].
func LoadKeyset(ctx context.Context, db DB, st *chain.State, keks KEKSource) (*Keyset, error) {
	return loadKeysetRef(ctx, db, st.Tenant(), st.Keyset().KeysetRef, keks)
}

func loadKeysetRef(ctx context.Context, db DB, tenant string, ref chain.KeysetRef, keks KEKSource) (*Keyset, error) {
	if keks == nil {
		keks = OpenKEK
	}
	kek, err := keks(ref.KEK)
	if kerr, ok := errors.AsType[*KEKMismatchError](err); ok {
		kerr.Tenant = tenant
	}
	if err != nil {
		return nil, err
	}
	var enc []byte
	err = db.QueryRow(ctx, `SELECT encrypted_keyset FROM shapeseal_keysets WHERE tenant_id = $1 AND generation = $2`,
		tenant, int64(ref.Generation)).Scan(&enc)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, &StateError{Tenant: tenant, Table: "shapeseal_keysets", Detail: fmt.Sprintf("the log names generation %d, which is not stored", ref.Generation)}
	}
	if err != nil {
		return nil, fmt.Errorf("keysync: load keyset of tenant %q: %w", tenant, err)
	}
	ks, err := DecryptKeyset(kek, tenant, ref.Generation, enc)
	if err != nil {
		return nil, err
	}
	if !ks.matches(ref) {
		return nil, &StateError{Tenant: tenant, Table: "shapeseal_keysets", Detail: fmt.Sprintf("generation %d is not the keyset the log commits to", ref.Generation)}
	}
	return ks, nil
}
