package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/keysync"
)

// A reader is one client of the stack: a device with a Keyring (following
// its wrapped keys and its tenants' logs through the proxies) and
// decrypting Shapes of the data tables, over long polls, SSE or one
// WebSocket carrying both tables.
type reader struct {
	u    *user
	mode string // "http", "sse" or "ws"
	lb   *lb
	tok  *tokens
	ring *keysync.Keyring

	shapes map[string]*client.Shape // by table
	stats  *readerStats

	// For a revokee: the keys of the churn tenant it held when its
	// revocation began; opening a cell sealed with any other is a leak.
	heldBefore atomic.Pointer[[]uint32]

	mu  sync.Mutex
	err error // why a stream or the keyring stopped, if one did
}

// readerStats are what a reader's watches saw, for the final line.
type readerStats struct {
	duplicated atomic.Int64 // an insert of a row already delivered
	lost       atomic.Int64 // an update or delete of a row never delivered
	foreign    atomic.Int64 // a row of a tenant the token does not name
	leaks      atomic.Int64 // a revokee opened a cell sealed after its revocation
	refused    atomic.Int64 // a revokee could not open a message sealed after its revocation: the check at work
	recovered  atomic.Int64 // errors a stream reported and resumed after
}

var readerBackoff = client.Backoff{Initial: 200 * time.Millisecond, Max: 3 * time.Second}

// tables returns the tables a reader of this mode follows.
func (r *reader) tables() []string {
	if r.mode == "ws" {
		return []string{"items", "notes"}
	}
	return []string{"items"}
}

// start opens the reader's keyring and streams, and runs them until ctx
// ends.
func (r *reader) start(ctx context.Context, st *stack, w *world) error {
	hc := r.lb.client()
	base := "http://" + lbHost + "/v1/shapes/"
	id, err := keysync.LoadIdentityFile(r.u.identity)
	if err != nil {
		return err
	}
	opts := func(shape string) client.Options {
		return client.Options{URL: base + shape, TokenSource: r.tok, HTTPClient: hc, Backoff: readerBackoff, OnError: r.onError}
	}
	r.ring, err = keysync.NewKeyring(keysync.KeyringOptions{
		Stream: opts("keys"), Log: opts("log"), Identity: id, Roots: w.roots,
		Floor: keysync.NewMemoryFloor(), KeyWait: 15 * time.Second,
	})
	if err != nil {
		return err
	}
	go func() {
		if err := r.ring.Run(ctx); err != nil && ctx.Err() == nil {
			r.fail(fmt.Errorf("keyring: %w", err))
		}
	}()
	// A decrypter per stream, which forgets its rows when the stream must
	// refetch (keysync.WithDecrypter). A revokee's streams have no
	// transform: the watch opens the cells, to check which keys open them.
	decs := map[string]*keysync.Decrypter{}
	transform := func(t string) func(context.Context, *client.Message) error {
		if r.u.role == "revokee" {
			return nil
		}
		return decs[t].TransformContext
	}
	for _, t := range r.tables() {
		if decs[t], err = keysync.NewDecrypter(r.ring, specs[t]); err != nil {
			return err
		}
	}
	streams := map[string]client.Stream{}
	if r.mode == "ws" {
		conn, err := client.DialWS(ctx, "ws://"+lbHost+"/v1/ws", &client.WSOptions{TokenSource: r.tok, HTTPClient: hc, Backoff: readerBackoff})
		if err != nil {
			return err
		}
		context.AfterFunc(ctx, func() { conn.Close() })
		for _, t := range r.tables() {
			s, err := conn.Stream(ctx, t, client.WSStreamOptions{Live: true, TransformContext: transform(t)})
			if err != nil {
				return err
			}
			streams[t] = s
		}
	} else {
		o := opts("items")
		o.Live, o.LiveSSE = true, r.mode == "sse"
		if r.u.role != "revokee" {
			o.TransformBatch = decs["items"].TransformBatch
		}
		s, err := client.New(o)
		if err != nil {
			return err
		}
		streams["items"] = s
	}
	r.shapes = map[string]*client.Shape{}
	for t, s := range streams {
		wt := &watch{Stream: keysync.WithDecrypter(s, decs[t]), r: r, table: t, present: map[string]bool{}}
		if r.u.role == "revokee" {
			wt.dec = decs[t]
		}
		sh := client.NewShape(wt)
		r.shapes[t] = sh
		go func() {
			if err := sh.Run(ctx); err != nil && ctx.Err() == nil {
				r.fail(fmt.Errorf("%s: %w", t, err))
			}
		}()
	}
	return nil
}

// onError resumes a stream after an error it cannot handle by itself
// (counting it): the soak's faults are meant to be survived.
func (r *reader) onError(err error) *client.Recovery {
	r.stats.recovered.Add(1)
	logf("%s: resuming after: %v", r.u.name, err)
	return &client.Recovery{}
}

func (r *reader) fail(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
		logf("%s: %v", r.u.name, err)
	}
}

func (r *reader) failure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// A watch sits between a stream and its Shape and checks every message
// the Shape is given: no row delivered twice, no update or delete of a
// row never delivered, no row of another tenant, and, for a revokee, no
// cell opened with a key it should not have.
type watch struct {
	client.Stream
	r       *reader
	table   string
	dec     *keysync.Decrypter // a revokee's: the watch opens the cells
	present map[string]bool    // the rows delivered since the last must-refetch
}

func (w *watch) Next(ctx context.Context) (client.Message, error) {
	m, err := w.Stream.Next(ctx)
	if err != nil || !m.IsChange() {
		if err == nil && m.IsMustRefetch() {
			clear(w.present)
		}
		return m, err
	}
	var kids []uint32
	if w.dec != nil {
		kids = w.cellKeys(m)
		if err := w.dec.TransformContext(ctx, &m); err != nil {
			return m, err
		}
		w.checkLeak(m, kids)
	}
	w.observe(m)
	return m, nil
}

// Messages iterates over w.Next, as the Stream interface asks.
func (w *watch) Messages(ctx context.Context) iter.Seq2[client.Message, error] {
	return func(yield func(client.Message, error) bool) {
		for {
			m, err := w.Next(ctx)
			if errors.Is(err, io.EOF) {
				return
			}
			if !yield(m, err) || err != nil {
				return
			}
		}
	}
}

func (w *watch) observe(m client.Message) {
	st := w.r.stats
	if t, ok := m.Value["tenant_id"].(string); ok && !slices.Contains(w.r.u.tenants, t) {
		st.foreign.Add(1)
		logf("%s: %s: a row of tenant %s: %s", w.r.u.name, w.table, t, m.Key)
	}
	switch m.Headers.Operation {
	case client.Insert:
		if w.present[m.Key] {
			st.duplicated.Add(1)
			logf("%s: %s: %s inserted twice", w.r.u.name, w.table, m.Key)
		}
		w.present[m.Key] = true
	case client.Update, client.Delete:
		if !w.present[m.Key] {
			st.lost.Add(1)
			logf("%s: %s: %s of %s, never inserted", w.r.u.name, w.table, m.Headers.Operation, m.Key)
		}
		if m.Headers.Operation == client.Delete {
			delete(w.present, m.Key)
		}
	}
}

// cellKeys returns the ids of the keys that sealed m's cells.
func (w *watch) cellKeys(m client.Message) []uint32 {
	var out []uint32
	for _, c := range specs[w.table].Columns {
		if s, ok := m.Value[c].(string); ok {
			if id, err := cellKeyID(s); err == nil {
				out = append(out, id)
			}
		}
	}
	return out
}

// checkLeak counts, for a revokee whose revocation began, a cell it opened
// that a key it did not hold then sealed.
func (w *watch) checkLeak(m client.Message, kids []uint32) {
	held := w.r.heldBefore.Load()
	if held == nil {
		return
	}
	opened := false
	for _, c := range specs[w.table].Columns {
		if _, ok := m.Value[c].(string); ok {
			opened = true
		}
	}
	for _, id := range kids {
		if slices.Contains(*held, id) {
			continue
		}
		if !opened {
			w.r.stats.refused.Add(1)
			return
		}
		w.r.stats.leaks.Add(1)
		logf("%s: LEAK: opened %s sealed with key %d after its revocation", w.r.u.name, m.Key, id)
		return
	}
}
