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
// key-encryption key (KEK). Which generation is current, and which KEK
// holds it, it takes from the tenant's signed log (shapeseal_log), which it
// verifies from the root key it pins (--root, $SHAPESEAL_ROOT): never from
// an unsigned row, so whoever can write the database cannot make it seal
// with a keyset of their own or an older one. It needs the KEK the log
// names: "local:///path/kek.json" (a development key file) or
// "hcvault://HOST[:PORT]/MOUNT/keys/NAME" (a Vault transit key, with
// $VAULT_ADDR, whose host must be HOST[:PORT], and $VAULT_TOKEN). With
// --kek (or $SHAPESEAL_KEK) it uses only that KEK and refuses a log that
// names another. keysync.Writer rechecks the log before every row, so rows
// written after a revocation are sealed with the new key; its floor
// (--floor FILE, else kept in memory for this run only) remembers how far
// each log has been seen, so that a log cut back is refused across runs.
//
// Every cell is bound to its table, column, tenant and row id, so the id
// must be known before sealing: a row without one gets a random UUID here,
// not a database default.
//
// Run it against the development stack, with the database URL and the root
// key from its ready line; the KEK is the one the log names:
//
//	go run ./cmd/shapeseal dev > /tmp/dev.ready &
//	R=$(sed 's/^shapeseal dev ready //' /tmp/dev.ready)
//	echo '{"tenant_id":"acme","title":"hello","body":"from the writer"}' |
//		go run ./examples/writer --database-url "$(jq -r .database_url <<<"$R")" \
//			--root "$(jq -r .root <<<"$R")"
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

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/keysync"
	_ "github.com/shapeseal/shapeseal/keysync/vaultkek" // opens hcvault:// KEKs
)

type options struct {
	DatabaseURL string
	// Keys: the pinned root keys (ssvk1…, comma- or space-separated), the
	// floor file ("" keeps the floor in memory), the KEK URI ("" uses the
	// one each tenant's log names).
	keysync.WriterConfig
	Table     string   // [schema.]table
	Encrypted []string // the columns to seal
	Upsert    bool
}

func main() {
	var o options
	var encrypted string
	flag.StringVar(&o.DatabaseURL, "database-url", os.Getenv("DATABASE_URL"), "Postgres URL (default $DATABASE_URL)")
	flag.StringVar(&o.Root, "root", os.Getenv("SHAPESEAL_ROOT"), "pinned root key ssvk1… (default $SHAPESEAL_ROOT)")
	flag.StringVar(&o.Floor, "floor", os.Getenv("SHAPESEAL_FLOOR"), "floor file (default $SHAPESEAL_FLOOR, else in memory)")
	flag.StringVar(&o.KEK, "kek", os.Getenv("SHAPESEAL_KEK"), "the only KEK URI to use, local:///… or hcvault://… (default $SHAPESEAL_KEK, else the one the log names)")
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
	// The root keys come from configuration, never from the database.
	wo, err := o.WriterConfig.Options() // parses the roots, opens the floor and the KEK
	if err != nil {
		return err
	}
	w, err := keysync.NewWriter(spec, mode, wo)
	if err != nil {
		return err // no root, or an invalid spec, for example an encrypted "id"
	}

	db, err := pgx.Connect(ctx, o.DatabaseURL)
	if err != nil {
		return err
	}
	defer db.Close(context.WithoutCancel(ctx))
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

// newUUID returns a random (version 4) UUID as Postgres prints it.
func newUUID() string {
	b := make([]byte, 16)
	rand.Read(b)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b)
	return h[:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}
