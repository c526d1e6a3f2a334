package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/keysync"
)

// rowsPerTenant is the size around which writers keep each tenant's part
// of each table, so that memory reflects leaks, not data growth.
const rowsPerTenant = 30

// writers write encrypted rows through keysync.Writer at a steady rate:
// inserts, updates (of the cells and of the plain column) and deletes.
type writers struct {
	w      *world
	insert map[string]*keysync.Writer // by table
	update map[string]*keysync.Writer
	writes atomic.Int64 // committed writes
	failed atomic.Int64 // writes that failed (the database was restarting, …), retried as new writes
}

func newWriters(w *world) (*writers, error) {
	ws := &writers{w: w, insert: map[string]*keysync.Writer{}, update: map[string]*keysync.Writer{}}
	for t, spec := range specs {
		opts := keysync.WriterOptions{Roots: w.roots, KEKs: keysync.UseKEK(w.kek), Floor: keysync.NewMemoryFloor()}
		var err error
		if ws.insert[t], err = keysync.NewWriter(spec, keysync.Insert, opts); err != nil {
			return nil, err
		}
		if ws.update[t], err = keysync.NewWriter(spec, keysync.Update, opts); err != nil {
			return nil, err
		}
	}
	return ws, nil
}

// run writes rate rows per second, from n goroutines, until ctx ends.
func (ws *writers) run(ctx context.Context, seed uint64, rate float64, n int) {
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(i)+1000))
			tick := time.NewTicker(time.Duration(float64(n) * float64(time.Second) / rate))
			defer tick.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				if err := ws.one(ctx, rng); err != nil && ctx.Err() == nil {
					if ws.failed.Add(1)%50 == 1 {
						logf("writer: %v", err)
					}
				}
			}
		}()
	}
	wg.Wait()
}

// one makes one write to a random tenant and table.
func (ws *writers) one(ctx context.Context, rng *rand.Rand) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	db := ws.w.db
	tenant := ws.w.tenants[rng.IntN(len(ws.w.tenants))]
	table := "items"
	if rng.IntN(3) == 0 {
		table = "notes"
	}
	var count int
	if err := db.QueryRow(ctx, "SELECT count(*) FROM "+table+" WHERE tenant_id = $1", tenant).Scan(&count); err != nil {
		return err
	}
	var id string
	if count > 0 {
		err := db.QueryRow(ctx, "SELECT id::text FROM "+table+" WHERE tenant_id = $1 ORDER BY random() LIMIT 1", tenant).Scan(&id)
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			return err
		}
	}
	// Below the target size: mostly inserts; above: more deletes.
	pInsert, pUpdate := 0.5, 0.9
	if count >= rowsPerTenant {
		pInsert, pUpdate = 0.2, 0.7
	}
	var err error
	switch p := rng.Float64(); {
	case id == "" || p < pInsert:
		err = ws.insert[table].Write(ctx, db, ws.row(rng, table, tenant, newUUID(rng)))
	case p < pUpdate:
		err = ws.update[table].Write(ctx, db, ws.row(rng, table, tenant, id))
	default:
		_, err = db.Exec(ctx, "DELETE FROM "+table+" WHERE id = $1", id)
	}
	if err == nil {
		ws.writes.Add(1)
	}
	return err
}

// row is a row of table with fresh plaintext.
func (ws *writers) row(rng *rand.Rand, table, tenant, id string) map[string]any {
	r := map[string]any{"id": id, "tenant_id": tenant, "body": fmt.Sprintf("body %x of %s", rng.Uint64(), tenant)}
	if table == "items" {
		r["title"] = "title " + strconv.FormatUint(rng.Uint64()%1e6, 10)
		r["n"] = rng.IntN(1000)
		if rng.IntN(10) == 0 {
			r["title"] = nil // NULL stays NULL
		}
	}
	return r
}

func newUUID(rng *rand.Rand) string {
	a, b := rng.Uint64(), rng.Uint64()
	return fmt.Sprintf("%08x-%04x-4%03x-8%03x-%012x", a>>32, a>>16&0xffff, a&0xfff, b>>48&0xfff, b&0xffffffffffff)
}
