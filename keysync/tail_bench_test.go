package keysync

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"filippo.io/age"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

const (
	tailRows   = 100_000
	tailTenant = "bench-tenant"
)

var tailSpec = TableSpec{Table: "items", Columns: []string{"title", "body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}

// tailLorem pads the body of every row to about 250 bytes of plaintext.
var tailLorem = strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit. ", 5)[:240]

func tailTitle(i int) string { return "item " + strconv.Itoa(i) + ": quarterly numbers" }
func tailBody(i int) string  { return fmt.Sprintf("row %07d ", i) + tailLorem }

// tailEnv is a 100k-row items table whose title and body are cells of one
// tenant, served by electrictest, and a keyring that follows the tenant-key
// and log shapes with the identity of a device the tenant's log lists.
type tailEnv struct {
	shapeURL string
	ring     *Keyring
	ks       *Keyset // the tenant's keyset, for the open floor
}

func newTailEnv(b *testing.B) *tailEnv {
	b.Helper()
	ctx := context.Background()
	url := pgtest.NewDB(b)
	db, err := pgxpool.New(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(db.Close)
	if err := ApplySchema(ctx, db); err != nil {
		b.Fatal(err)
	}

	// The tenant, created by the root, and a device of the reader,
	// certified and granted: the log lists it, and its row holds the
	// keyset wrapped to it.
	kek := newLocalKEK(b)
	admin := &Admin{DB: db, Roots: testSigners, Key: testSigner, KEKs: UseKEK(kek)}
	ks, err := admin.CreateTenant(ctx, kek, tailTenant)
	if err != nil {
		b.Fatal(err)
	}
	id, err := GenerateIdentity()
	if err != nil {
		b.Fatal(err)
	}
	rcpt, _ := RecipientOf(id)
	if err := admin.CertifyDevice(ctx, "alice", "phone", rcpt); err != nil {
		b.Fatal(err)
	}
	if _, err := admin.Grant(ctx, tailTenant, "alice"); err != nil {
		b.Fatal(err)
	}

	// The table, sealed in Go and copied in.
	if _, err := db.Exec(ctx, `CREATE TABLE items (id bigint PRIMARY KEY, tenant_id text NOT NULL, title text, body text)`); err != nil {
		b.Fatal(err)
	}
	n, err := db.CopyFrom(ctx, pgx.Identifier{"items"}, []string{"id", "tenant_id", "title", "body"},
		pgx.CopyFromFunc(func() func() ([]any, error) {
			i := 0
			return func() ([]any, error) {
				if i == tailRows {
					return nil, nil
				}
				i++
				row := map[string]any{"id": strconv.Itoa(i), "tenant_id": tailTenant, "title": tailTitle(i), "body": tailBody(i)}
				if err := tailSpec.SealRow(ks, row); err != nil {
					return nil, err
				}
				return []any{int64(i), tailTenant, row["title"], row["body"]}, nil
			}
		}()))
	if err != nil || n != tailRows {
		b.Fatalf("copy: %d rows, %v", n, err)
	}

	srv := electrictest.StartTest(b, electrictest.Options{DatabaseURL: url, LongPollTimeout: 300 * time.Millisecond})
	ring, err := NewKeyring(KeyringOptions{
		Stream:   KeyShapeOptions(srv.URL+"/v1/shape", "alice", "phone"),
		Log:      LogShapeOptions(srv.URL+"/v1/shape", tailTenant),
		Identity: id,
		Roots:    testSigners,
		Floor:    NewMemoryFloor(),
		OnRowError: func(e *KeyRowError) {
			b.Errorf("key row: %v", e)
		},
	})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ring.Run(context.Background()) }()
	b.Cleanup(func() {
		ring.Close()
		if err := <-done; err != nil {
			b.Errorf("Run: %v", err)
		}
	})
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := ring.Ready(rctx); err != nil {
		b.Fatal(err)
	}
	if ring.Keyset(tailTenant) == nil {
		b.Fatal("the ring holds no keyset for the tenant")
	}
	return &tailEnv{shapeURL: srv.URL + "/v1/shape", ring: ring, ks: ks}
}

// tail follows the items shape from offset -1 to the first up-to-date,
// through a new decrypter when decrypt is set, and reads the title and body
// of every change. It returns the number of changes and of title or body
// values that are not strings (cells that did not open). If each is not
// nil, it is called with every change's value.
func (e *tailEnv) tail(b *testing.B, decrypt bool, each func(client.Row)) (rows, bad int) {
	var dec *Decrypter
	if decrypt {
		dec = e.decrypter(b)
	}
	return e.tailWith(b, dec, each)
}

func (e *tailEnv) decrypter(b *testing.B) *Decrypter {
	dec, err := NewDecrypter(e.ring, tailSpec)
	if err != nil {
		b.Fatal(err)
	}
	return dec
}

// tailWith is tail through dec, or without a decrypter if dec is nil.
func (e *tailEnv) tailWith(b *testing.B, dec *Decrypter, each func(client.Row)) (rows, bad int) {
	opts := client.Options{URL: e.shapeURL, Params: client.Params{Table: "items"}}
	if dec != nil {
		opts.TransformBatch = dec.TransformBatch
	}
	s, err := client.New(opts)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for m, err := range s.Messages(context.Background()) {
		if err != nil {
			b.Fatal(err)
		}
		if !m.IsChange() {
			continue
		}
		rows++
		if _, ok := m.Value["title"].(string); !ok {
			bad++
		}
		if _, ok := m.Value["body"].(string); !ok {
			bad++
		}
		if each != nil {
			each(m.Value)
		}
	}
	return rows, bad
}

// openFloor returns the CPU time that opening the table's cells takes without
// any stream: the cells of every row, sealed afresh (untimed) and opened
// with OpenAppend into one reused buffer, which allocates nothing. What is
// timed is what a decrypting tail cannot avoid per cell: base64 decoding,
// building the associated data and AES-256-GCM.
func (e *tailEnv) openFloor(b *testing.B) time.Duration {
	type cell struct {
		c    CellContext
		text string
	}
	cells := make([]cell, 0, 2*tailRows)
	for i := 1; i <= tailRows; i++ {
		id := strconv.Itoa(i)
		for _, col := range tailSpec.Columns {
			c := CellContext{Table: "public.items", Column: col, Tenant: tailTenant, RowKey: []string{id}}
			pt := tailTitle(i)
			if col == "body" {
				pt = tailBody(i)
			}
			text, err := Seal(e.ks, c, []byte(pt))
			if err != nil {
				b.Fatal(err)
			}
			cells = append(cells, cell{c, text})
		}
	}
	defer lockThread()() // for cpuClock
	var buf []byte
	c0 := cpuClock()
	for _, c := range cells {
		var err error
		if buf, err = OpenAppend(buf[:0], e.ks, c.c, c.text); err != nil {
			b.Fatal(err)
		}
	}
	return cpuClock() - c0
}

// retained returns the bytes per row of the heap that a decrypter holds
// after a decrypting tail: what it remembers of the rows.
func (e *tailEnv) retained(b *testing.B) float64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	h0 := ms.HeapAlloc
	dec := e.decrypter(b)
	rows, bad := e.tailWith(b, dec, nil)
	e.check(b, rows, bad)
	runtime.GC()
	runtime.ReadMemStats(&ms)
	runtime.KeepAlive(dec)
	return (float64(ms.HeapAlloc) - float64(h0)) / tailRows
}

// check fails unless a tail read every row once and every cell was text.
func (e *tailEnv) check(b *testing.B, rows, bad int) {
	if rows != tailRows || bad != 0 {
		b.Fatalf("tail read %d rows (want %d), %d cells not text", rows, tailRows, bad)
	}
}

// verify checks, untimed, that the plain tail sees only cells and the
// decrypting tail sees exactly the plaintext of every row.
func (e *tailEnv) verify(b *testing.B) {
	b.Helper()
	seen := make(map[string]bool, tailRows)
	rows, bad := e.tail(b, false, func(v client.Row) {
		for _, col := range tailSpec.Columns {
			// Every plaintext has a space; base64url never does. (Checking
			// for words of the plaintext failed once in a few dozen runs:
			// 100k cells of random base64url spell "Lorem" now and then.)
			if s, _ := v[col].(string); !strings.HasPrefix(s, "ss1:") || strings.Contains(s, " ") {
				b.Fatalf("plain tail: row %v: %s is not a cell", v["id"], col)
			}
		}
	})
	e.check(b, rows, bad)
	rows, bad = e.tail(b, true, func(v client.Row) {
		id, _ := v["id"].(string)
		i, err := strconv.Atoi(id)
		if err != nil || i < 1 || i > tailRows || seen[id] {
			b.Fatalf("decrypting tail: unexpected or repeated row id %q", id)
		}
		seen[id] = true
		if v["tenant_id"] != tailTenant || v["title"] != tailTitle(i) || v["body"] != tailBody(i) {
			b.Fatalf("decrypting tail: row %d: got title %v, body %v", i, v["title"], v["body"])
		}
	})
	e.check(b, rows, bad)
}

// BenchmarkTail measures a decrypting tail of a 100k-row shape (two cells a
// row, about 30 B and 250 B of plaintext) against a plain tail of the same
// shape, over real Postgres and electrictest: a ShapeStream from offset -1
// to the first up-to-date, reading every change, with the Decrypter's
// TransformBatch (a keyring following the tenant-key shape) or without one.
// The shape's snapshot is taken before timing, so every tail reads the
// server's log; the server runs in this process, so its time and
// allocations are counted too.
//
//   - plain, decrypt: rows/s and allocations of each tail alone.
//   - ratio: both in the same loop, alternating which goes first; x-plain
//     is the decrypting tail's wall time over the plain tail's, x-plain-cpu
//     the same ratio for the CPU time of the whole process (on Linux: the
//     server, the HTTP transport and the goroutines that open a batch's
//     cells included), and allocs/row counts every allocation in the
//     process during each tail. crypto-share is the CPU time of opening the
//     same cells without a stream (openFloor: the cell crypto, which no
//     decrypting tail can avoid) over the gap in CPU time between the two
//     tails: the rest of the gap is what a decrypting tail costs beyond
//     its crypto. plain-cores and decrypt-cores are each tail's CPU time
//     over its wall time: the cores it kept busy. retained-B/row is the
//     heap a decrypter holds after a decrypting tail, per row (measured
//     apart): what it remembers of the rows it has seen.
func BenchmarkTail(b *testing.B) {
	e := newTailEnv(b)
	e.verify(b) // also takes the shape's snapshot
	for _, decrypt := range []bool{false, true} {
		name := "plain"
		if decrypt {
			name = "decrypt"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				rows, bad := e.tail(b, decrypt, nil)
				e.check(b, rows, bad)
			}
			b.ReportMetric(float64(tailRows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
	b.Run("ratio", func(b *testing.B) {
		var wall, cpu [2]time.Duration
		var open time.Duration
		var retained float64
		var allocs [2]uint64
		var ms runtime.MemStats
		i := 0
		for b.Loop() {
			for k := range 2 {
				decrypt := (i+k)%2 == 1 // alternate which tail goes first
				j := 0
				if decrypt {
					j = 1
				}
				runtime.ReadMemStats(&ms)
				m0 := ms.Mallocs
				c0, t0 := processClock(), time.Now()
				rows, bad := e.tail(b, decrypt, nil)
				wall[j] += time.Since(t0)
				cpu[j] += processClock() - c0
				runtime.ReadMemStats(&ms)
				allocs[j] += ms.Mallocs - m0
				e.check(b, rows, bad)
			}
			b.StopTimer()
			open += e.openFloor(b)
			retained += e.retained(b)
			runtime.GC() // the sealed cells are garbage: not the next tail's to collect
			b.StartTimer()
			i++
		}
		n := float64(tailRows) * float64(b.N)
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(n/wall[0].Seconds(), "plain-rows/s")
		b.ReportMetric(n/wall[1].Seconds(), "decrypt-rows/s")
		b.ReportMetric(float64(allocs[0])/n, "plain-allocs/row")
		b.ReportMetric(float64(allocs[1])/n, "decrypt-allocs/row")
		b.ReportMetric(float64(wall[1])/float64(wall[0]), "x-plain")
		b.ReportMetric(float64(cpu[1])/float64(cpu[0]), "x-plain-cpu")
		b.ReportMetric(float64(cpu[0])/float64(wall[0]), "plain-cores")
		b.ReportMetric(float64(cpu[1])/float64(wall[1]), "decrypt-cores")
		b.ReportMetric(float64(open)/float64(cpu[1]-cpu[0]), "crypto-share")
		b.ReportMetric(retained/float64(b.N), "retained-B/row")
	})
}

// startTenant is a tenant whose log has n entries, for BenchmarkKeyringStart.
type startTenant struct {
	tenant, user string
	id           *age.HybridIdentity // the device "d" of user
	ks           *Keyset
}

// newStartTenant stores a tenant whose log has n entries, all signed by the
// root: the first creates the tenant with user's device as its member and
// names the keyset; each of the n-1 others adds a member with one device,
// as a grant does. The device's row holds the keyset wrapped to it.
func newStartTenant(b *testing.B, db *pgxpool.Pool, tenant, user string, n int) *startTenant {
	b.Helper()
	ctx := context.Background()
	s := &startTenant{tenant: tenant, user: user}
	var err error
	if s.ks, err = NewKeyset(tenant); err != nil {
		b.Fatal(err)
	}
	if s.id, err = GenerateIdentity(); err != nil {
		b.Fatal(err)
	}
	rcpt := s.id.Recipient().String()
	st := chain.NewState(tenant, testSigners)
	var rows [][]any
	ops := []chain.Op{
		{Type: chain.OpMemberAdd, User: user},
		{Type: chain.OpDeviceAdd, User: user, Device: "d", Recipient: rcpt},
		{Type: chain.OpKeyset, Keyset: s.ks.Ref("local:bench")},
	}
	for i := range n {
		if i > 0 {
			other, err := age.GenerateX25519Identity()
			if err != nil {
				b.Fatal(err)
			}
			u := fmt.Sprintf("member%04d", i)
			ops = []chain.Op{
				{Type: chain.OpMemberAdd, User: u},
				{Type: chain.OpDeviceAdd, User: u, Device: "d", Recipient: other.Recipient().String()},
			}
		}
		e, err := chain.Sign(ctx, chain.Entry{Tenant: tenant, Seq: st.Seq() + 1, Prev: st.Head(), Ops: ops}, testSigner)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := st.Append(e.Bytes()); err != nil {
			b.Fatal(err)
		}
		rows = append(rows, []any{tenant, int64(e.Seq), e.Bytes()})
	}
	if _, err := db.CopyFrom(ctx, pgx.Identifier{LogTable}, []string{"tenant_id", "seq", "entry"}, pgx.CopyFromRows(rows)); err != nil {
		b.Fatal(err)
	}
	wrapped, err := Wrap(ctx, s.ks, testSigner, rcpt)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO shapeseal_devices (user_id, device_id, recipient) VALUES ($1, 'd', $2)`, user, rcpt); err != nil {
		b.Fatal(err)
	}
	if _, err := db.Exec(ctx, `INSERT INTO shapeseal_tenant_keys (tenant_id, user_id, device_id, generation, wrapped) VALUES ($1, $2, 'd', 1, $3)`,
		tenant, user, wrapped); err != nil {
		b.Fatal(err)
	}
	return s
}

// start runs a new keyring for s's device, following its key shape and its
// tenant's log from shapeURL, and returns how long it took from NewKeyring
// to Ready, and a function that stops it.
func (s *startTenant) start(b *testing.B, shapeURL string) (time.Duration, func()) {
	t0 := time.Now()
	r, err := NewKeyring(KeyringOptions{
		Stream:     KeyShapeOptions(shapeURL, s.user, "d"),
		Log:        LogShapeOptions(shapeURL, s.tenant),
		Identity:   s.id,
		Roots:      testSigners,
		Floor:      NewMemoryFloor(),
		OnRowError: func(e *KeyRowError) { b.Errorf("key row: %v", e) },
	})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := r.Ready(ctx); err != nil {
		b.Fatal(err)
	}
	d := time.Since(t0)
	if ks := r.Keyset(s.tenant); ks == nil || ks.Commitment() != s.ks.Commitment() {
		b.Fatalf("tenant %s: the ring holds %v", s.tenant, ks)
	}
	return d, func() {
		r.Close()
		if err := <-done; err != nil {
			b.Errorf("Run: %v", err)
		}
	}
}

// BenchmarkKeyringStart measures a device's start, from NewKeyring to Ready
// (both shapes up to date, the log verified from the pinned root and the
// keyset adopted), over real Postgres and electrictest, for a tenant whose
// log has 1 entry and one whose log has 1,000 (999 members granted after
// the device's): what a long log costs a device that starts afresh (a new
// device, or one that keeps no state). The shapes' snapshots are taken
// before timing. ratio alternates both and reports x-chain1, the 1,000-entry
// start's wall time over the 1-entry start's.
func BenchmarkKeyringStart(b *testing.B) {
	ctx := context.Background()
	url := pgtest.NewDB(b)
	db, err := pgxpool.New(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(db.Close)
	if err := ApplySchema(ctx, db); err != nil {
		b.Fatal(err)
	}
	tenants := []*startTenant{
		newStartTenant(b, db, "start-1", "user-1", 1),
		newStartTenant(b, db, "start-1000", "user-1000", 1000),
	}
	srv := electrictest.StartTest(b, electrictest.Options{DatabaseURL: url, LongPollTimeout: 300 * time.Millisecond})
	shapeURL := srv.URL + "/v1/shape"
	for _, s := range tenants {
		_, stop := s.start(b, shapeURL) // takes the shapes' snapshots
		stop()
	}
	for i, s := range tenants {
		b.Run(fmt.Sprintf("chain=%d", []int{1, 1000}[i]), func(b *testing.B) {
			for b.Loop() {
				_, stop := s.start(b, shapeURL)
				b.StopTimer()
				stop()
				b.StartTimer()
			}
		})
	}
	b.Run("ratio", func(b *testing.B) {
		var took [2]time.Duration
		i := 0
		for b.Loop() {
			for k := range 2 {
				j := (i + k) % 2 // alternate which goes first
				d, stop := tenants[j].start(b, shapeURL)
				took[j] += d
				stop()
			}
			i++
		}
		n := float64(b.N)
		b.ReportMetric(0, "ns/op")
		b.ReportMetric(float64(took[0].Microseconds())/n/1000, "chain1-ms")
		b.ReportMetric(float64(took[1].Microseconds())/n/1000, "chain1000-ms")
		b.ReportMetric(float64(took[1])/float64(took[0]), "x-chain1")
	})
}
