package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/shapeseal/shapeseal/keysync"
)

func init() {
	register(command{"write", "encrypt columns, then INSERT/UPDATE/UPSERT rows into Postgres", runWrite})
}

func runWrite(ctx context.Context, args []string) error {
	return write(ctx, args, os.Stdin, os.Stdout, os.Stderr)
}

const writeUsage = `write --table TABLE --encrypted C1,C2 --root ssvk1… [--tenant-column tenant_id] [--row-key id] [--update|--upsert] [--floor FILE] [--kek URI] [--json '{…}']

Writes rows given as JSON objects (--json, or one object per line on stdin)
into TABLE. The --encrypted columns are sealed on this machine with the
tenant's current keyset: the one the tenant's signed log names, verified
from the pinned roots (--root, $SHAPESEAL_ROOT), loaded from
shapeseal_keysets with the KEK the log names (or only --kek,
$SHAPESEAL_KEK, if set: a log naming another KEK is refused). Every value
is sent as a bound parameter, so plaintext never reaches the database. Each
cell is bound to its table, column, tenant and row key, so the row key must
be given, even for an INSERT. All rows are written in one transaction.

The floor file (--floor; default $SHAPESEAL_WRITER_FLOOR, else
shapeseal/writer.floor in the user's configuration directory) remembers how
far each tenant's log has been seen, so that a log cut back after a
revocation is refused even after a restart (see "shapeseal floor").`

// write is runWrite with its streams as parameters (for tests).
func write(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	a := newAdminFlags("write", writeUsage, stderr).withKEK().withRoots()
	table := a.fs.String("table", "", "table, [schema.]name")
	encrypted := a.fs.String("encrypted", "", "comma-separated columns to encrypt")
	tenantCol := a.fs.String("tenant-column", "tenant_id", "column holding the tenant id")
	rowKey := a.fs.String("row-key", "id", "comma-separated primary-key columns the cells are bound to")
	unbound := a.fs.Bool("unbound-rows", false, "do not bind cells to their rows")
	update := a.fs.Bool("update", false, "UPDATE existing rows (by row key and tenant) instead of inserting")
	upsert := a.fs.Bool("upsert", false, "INSERT … ON CONFLICT (row key) DO UPDATE")
	jsonRow := a.fs.String("json", "", "one row as a JSON object (default: JSON lines on stdin)")
	floorPath := a.floor
	if err := a.parse(args); err != nil {
		return helpOK(err)
	}
	if err := required(a.fs, "table", "encrypted"); err != nil {
		return err
	}
	mode := keysync.Insert
	switch {
	case *update && *upsert:
		return usagef("--update and --upsert are exclusive")
	case *update:
		mode = keysync.Update
	case *upsert:
		mode = keysync.Upsert
	}
	spec := keysync.TableSpec{Table: *table, Columns: splitList(*encrypted), TenantColumn: *tenantCol, UnboundRows: *unbound}
	if !*unbound || mode != keysync.Insert {
		spec.RowKey = splitList(*rowKey)
	}
	roots, err := a.rootKeys()
	if err != nil {
		return err
	}
	keks, err := a.kekSource()
	if err != nil {
		return err
	}
	if *floorPath == "" {
		if *floorPath, err = defaultFloor("", "SHAPESEAL_WRITER_FLOOR", "writer", *a.databaseURL); err != nil {
			return err
		}
	}
	floor, err := keysync.OpenFileFloor(*floorPath)
	if err != nil {
		return fmt.Errorf("--floor: %w", err)
	}
	w, err := keysync.NewWriter(spec, mode, keysync.WriterOptions{Roots: roots, KEKs: cachedKEKs(keks), Floor: floor})
	if err != nil {
		return err
	}
	db, err := a.connect(ctx)
	if err != nil {
		return err
	}
	defer db.Close(context.WithoutCancel(ctx))

	tx, err := db.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	n, err := writeRows(ctx, tx, w, *jsonRow, stdin, *floorPath)
	if err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s to %s\n", plural(n, "row", "rows"), spec.QualifiedTable())
	return nil
}

// writeRows writes with w in tx the row of --json (jsonRow), or else the
// rows of stdin, one JSON object per line, and returns how many it wrote.
// floorPath is the floor's, for forkHint.
func writeRows(ctx context.Context, tx keysync.QueryDB, w *keysync.Writer, jsonRow string, stdin io.Reader, floorPath string) (int, error) {
	rows := 0
	// where names a row: its number, and its line on stdin.
	where := func(line int) string {
		if jsonRow != "" {
			return "--json"
		}
		return fmt.Sprintf("row %d (stdin line %d)", rows, line)
	}
	writeOne := func(line int, data []byte) error {
		rows++
		row, err := parseRow(data)
		if err != nil {
			return fmt.Errorf("%s: %w", where(line), err)
		}
		if err := w.Write(ctx, tx, row); err != nil {
			return fmt.Errorf("%s: %w", where(line), forkHint(err, floorPath))
		}
		return nil
	}
	if jsonRow != "" {
		return 1, writeOne(1, []byte(jsonRow))
	}
	sc := bufio.NewScanner(stdin)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for line := 1; sc.Scan(); line++ {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		if err := writeOne(line, sc.Bytes()); err != nil {
			return 0, err
		}
	}
	if err := sc.Err(); err != nil {
		return 0, fmt.Errorf("stdin: %w", err)
	}
	return rows, nil
}

// plural returns "1 row" or "n rows".
func plural(n int, one, many string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, one)
	}
	return fmt.Sprintf("%d %s", n, many)
}

// cachedKEKs opens each KEK once: keks, or keysync.OpenKEK if nil.
func cachedKEKs(keks keysync.KEKSource) keysync.KEKSource {
	if keks == nil {
		keks = keysync.OpenKEK
	}
	var mu sync.Mutex
	opened := map[string]keysync.KEK{}
	return func(uri string) (keysync.KEK, error) {
		mu.Lock()
		defer mu.Unlock()
		if k := opened[uri]; k != nil {
			return k, nil
		}
		k, err := keks(uri)
		if err == nil {
			opened[uri] = k
		}
		return k, err
	}
}

// parseRow decodes one row, a JSON object, with an error that says plainly
// what is wrong with it.
func parseRow(data []byte) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		if se, ok := errors.AsType[*json.SyntaxError](err); ok {
			return nil, fmt.Errorf("not valid JSON at character %d: %s (want one object per line, such as {\"id\": \"…\", \"tenant_id\": \"acme\", \"title\": \"…\"})", se.Offset, strings.TrimPrefix(se.Error(), "json: "))
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, errors.New("not valid JSON: the object is cut short (want one whole object per line)")
		}
		return nil, fmt.Errorf("not valid JSON: %w", err)
	}
	row, ok := v.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("want a JSON object of column names and values, got %s", jsonKind(v))
	}
	if dec.More() {
		return nil, errors.New("more than one JSON value (want one object per line)")
	}
	return row, nil
}

func jsonKind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case []any:
		return "an array"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case json.Number:
		return "a number"
	}
	return fmt.Sprintf("%T", v)
}
