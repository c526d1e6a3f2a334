// Writer is a command-line tool that writes rows into Postgres with their
// sensitive columns encrypted on this machine, so that plaintext never
// reaches the database (nor Electric, the proxy or any cache).
//
// It reads one JSON object per line on standard input, for example
//
//	{"tenant_id": "acme", "title": "Q3 plan", "body": "Hire two engineers."}
//
// seals the chosen columns (--encrypted, default title,body) with the
// tenant's current keyset, and inserts the rows (or upserts them, with
// --upsert) in one transaction. It prints the id of every row it wrote.
//
// Keys: a writer is not a member device. It loads the tenant's keyset from
// the shapeseal_keysets table, where the keyset is stored encrypted under a
// key-encryption key (KEK), and needs that KEK: --kek (or $SHAPESEAL_KEK),
// either "local:///path/kek.json" (a development key file) or
// "hcvault://HOST/MOUNT/keys/NAME" (a Vault transit key, with $VAULT_ADDR
// and $VAULT_TOKEN). Without --kek, each tenant's keyset is opened with the
// KEK it is stored under. keysync.Writer rechecks the keyset generation
// before every row, so rows written after a revocation are sealed with the
// new key.
//
// Every cell is bound to its table, column, tenant and row id, so the id
// must be known before sealing: a row without one gets a random UUID here,
// not a database default.
//
// Run it against the development stack, with the database URL from its
// ready line; the KEK is found through the keyset table:
//
//	go run ./cmd/shapeseal dev > /tmp/dev.ready &
//	R=$(sed 's/^shapeseal dev ready //' /tmp/dev.ready)
//	echo '{"tenant_id":"acme","title":"hello","body":"from the writer"}' |
//		go run ./examples/writer --database-url "$(jq -r .database_url <<<"$R")"
//
// psql shows only ss1:… in title and body; examples/service, or shapeseal
// tail, shows the plaintext to acme's members.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/keysync"
	_ "github.com/shapeseal/shapeseal/keysync/vaultkek" // opens hcvault:// KEKs
)

type options struct {
	DatabaseURL string
	KEK         string   // KEK URI; "" uses the one each keyset is stored under
	Table       string   // [schema.]table
	Encrypted   []string // the columns to seal
	Upsert      bool
}

func main() {
	var o options
	var encrypted string
	flag.StringVar(&o.DatabaseURL, "database-url", os.Getenv("DATABASE_URL"), "Postgres URL (default $DATABASE_URL)")
	flag.StringVar(&o.KEK, "kek", os.Getenv("SHAPESEAL_KEK"), "KEK URI, local:///… or hcvault://… (default $SHAPESEAL_KEK, else the keyset's own)")
	flag.StringVar(&o.Table, "table", "items", "table to write")
	flag.StringVar(&encrypted, "encrypted", "title,body", "comma-separated columns to encrypt")
	flag.BoolVar(&o.Upsert, "upsert", false, "update rows whose id exists instead of failing")
	flag.Parse()
	o.Encrypted = strings.Split(encrypted, ",")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := write(ctx, o, os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "writer:", err)
		os.Exit(1)
	}
}

// write reads JSON rows from in, writes them encrypted in one transaction,
// and prints their ids to out.
func write(ctx context.Context, o options, in io.Reader, out io.Writer) error {
	// The spec must be the one readers use (see examples/service): the
	// tenant column picks the keyset, and id binds each cell to its row.
	spec := keysync.TableSpec{Table: o.Table, Columns: o.Encrypted, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	mode := keysync.Insert
	if o.Upsert {
		mode = keysync.Upsert
	}
	db, err := pgx.Connect(ctx, o.DatabaseURL)
	if err != nil {
		return err
	}
	defer db.Close(context.WithoutCancel(ctx))

	w, err := keysync.NewWriter(spec, mode, kekSource(db, o.KEK))
	if err != nil {
		return err // an invalid spec, for example an encrypted "id"
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) // a no-op after Commit

	var ids []string
	dec := json.NewDecoder(in)
	dec.UseNumber() // keep numbers exact: they are sent to Postgres as text
	for n := 1; ; n++ {
		var row map[string]any
		if err := dec.Decode(&row); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return fmt.Errorf("row %d: %w", n, err)
		} else if row == nil {
			return fmt.Errorf("row %d: null, not an object", n)
		}
		if row["id"] == nil {
			row["id"] = newUUID()
		}
		for col, v := range row {
			switch v.(type) {
			case map[string]any, []any: // for json and jsonb columns
				raw, err := json.Marshal(v)
				if err != nil {
					return fmt.Errorf("row %d: %s: %w", n, col, err)
				}
				row[col] = json.RawMessage(raw)
			}
		}
		// Write seals the encrypted columns, then INSERTs with every value
		// as a bound parameter: the plaintext exists only in this process.
		if err := w.Write(ctx, tx, row); err != nil {
			return fmt.Errorf("row %d: %w", n, err)
		}
		ids = append(ids, fmt.Sprint(row["id"]))
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	for _, id := range ids {
		fmt.Fprintln(out, id)
	}
	return nil
}

// kekSource returns the KEK lookup of a keysync.Writer: uri if set, else
// the URI stored with the tenant's newest keyset. KEKs are opened once.
func kekSource(db keysync.DB, uri string) func(context.Context, string) (keysync.KEK, error) {
	var mu sync.Mutex
	opened := map[string]keysync.KEK{}
	return func(ctx context.Context, tenant string) (keysync.KEK, error) {
		u := uri
		if u == "" {
			var err error
			if u, err = keysync.StoredKEKURI(ctx, db, tenant); err != nil {
				return nil, err
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if k, ok := opened[u]; ok {
			return k, nil
		}
		k, err := keysync.OpenKEK(u) // local://, or hcvault:// through vaultkek
		if err != nil {
			return nil, err
		}
		opened[u] = k
		return k, nil
	}
}

// newUUID returns a random (version 4) UUID as Postgres prints it.
func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
