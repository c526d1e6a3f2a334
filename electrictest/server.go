package electrictest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// Options configure a Server.
type Options struct {
	// DatabaseURL is the Postgres to serve shapes from. It needs
	// wal_level=logical and a role that may create publications and
	// replication slots (a superuser, in tests). With Publication, a role
	// with REPLICATION and SELECT on the published tables is enough.
	DatabaseURL string

	// Publication, when set, names an existing publication to follow, as
	// with Electric's ELECTRIC_MANUAL_TABLE_PUBLISHING: the server never
	// creates, alters or drops it, and never changes a table's replica
	// identity. A shape of a table that is not in it, or whose replica
	// identity is not FULL, is answered 503 with retry-after 10 and
	// Electric's message, until the table is published by hand. Default:
	// the server creates a publication of its own and adds tables to it
	// (with REPLICA IDENTITY FULL) as their shapes are first requested,
	// which needs ownership of the tables.
	Publication string

	// Secret, when set, must be given as the secret (or api_secret) query
	// parameter of every shape request, as with ELECTRIC_SECRET.
	Secret string

	// LongPollTimeout is how long a live request waits for changes before
	// answering up-to-date. Default 20s, as in Electric.
	LongPollTimeout time.Duration

	// SSETimeout ends a live_sse stream; default 60s. SSEKeepAlive is the
	// interval of keep-alive comments; default 21s.
	SSETimeout, SSEKeepAlive time.Duration

	// ChunkBytes bounds a response body (roughly); default 10 MiB.
	ChunkBytes int

	// AllowDelete enables DELETE /v1/shape (Electric enables it only for
	// integration testing).
	AllowDelete bool

	// Logger receives errors and debug events; default: discarded.
	Logger *slog.Logger
}

// A Server is an Electric-compatible shape server: an http.Handler for
// /v1/shape, /v1/health and /, backed by Postgres logical replication.
type Server struct {
	opts   Options
	logger *slog.Logger
	pool   *pgxpool.Pool
	repl   *replication
	pub    string // the publication followed
	stack  string // this server's id: its slot's name
	manual bool   // pub is Options.Publication: never created, altered or dropped

	cancel    context.CancelFunc
	done      chan struct{}
	replErr   atomic.Pointer[error]
	lastLSN   atomic.Uint64
	handleNo  atomic.Uint64
	reqNo     atomic.Uint64
	reqPrefix string

	mu        sync.Mutex
	shapes    map[string]*shape // by definition
	handles   map[string]*shape
	published map[uint32]bool // table OIDs in the publication
	// recentXids are the xids of the last transactions onCommit routed (a
	// ring; the next goes at recentN % len): a new shape's snapshot must
	// see them, see beginSnapshot.
	recentXids [256]uint32
	recentN    int

	faults faults
}

// New connects to Postgres, creates the server's publication (unless
// Options.Publication names one) and temporary replication slot, and starts
// following changes. Close releases them.
func New(ctx context.Context, opts Options) (*Server, error) {
	if opts.DatabaseURL == "" {
		return nil, errors.New("electrictest: Options.DatabaseURL is required")
	}
	opts = opts.withDefaults()
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	pool, err := newPool(ctx, opts.DatabaseURL)
	if err != nil {
		return nil, err
	}
	var id [6]byte
	rand.Read(id[:])
	name := "electrictest_" + hex.EncodeToString(id[:])
	s := &Server{
		opts: opts, logger: logger, pool: pool, pub: name, stack: name, reqPrefix: hex.EncodeToString(id[:]) + "-",
		shapes: map[string]*shape{}, handles: map[string]*shape{}, published: map[uint32]bool{},
		done: make(chan struct{}),
	}
	if err := s.openPublication(ctx); err != nil {
		pool.Close()
		return nil, err
	}
	repl, err := startReplication(ctx, opts.DatabaseURL, name, s.pub)
	if err != nil {
		if !s.manual {
			s.execRW(context.Background(), "DROP PUBLICATION IF EXISTS "+name)
		}
		pool.Close()
		return nil, err
	}
	s.repl = repl
	// Until the first commit arrives, up-to-date messages report the WAL
	// position the stream started from.
	var startLSN string
	if err := pool.QueryRow(ctx, "SELECT (pg_current_wal_lsn() - '0/0')::text").Scan(&startLSN); err == nil {
		lsn, _ := strconv.ParseUint(startLSN, 10, 64)
		s.lastLSN.Store(lsn)
	}
	repl.onCommit = s.onCommit
	repl.onRelation = s.onRelation
	rctx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	catalogDone := make(chan struct{})
	go func() {
		defer close(catalogDone)
		s.watchCatalog(rctx, time.Second)
	}()
	go func() {
		defer close(s.done)
		defer func() { <-catalogDone }()
		s.follow(rctx, repl)
	}()
	return s, nil
}

// withDefaults returns the options with the defaults of those left unset.
func (opts Options) withDefaults() Options {
	if opts.LongPollTimeout <= 0 {
		opts.LongPollTimeout = 20 * time.Second
	}
	if opts.SSETimeout <= 0 {
		opts.SSETimeout = 60 * time.Second
	}
	if opts.SSEKeepAlive <= 0 {
		opts.SSEKeepAlive = 21 * time.Second
	}
	if opts.ChunkBytes <= 0 {
		opts.ChunkBytes = 10 << 20
	}
	return opts
}

// newPool connects the pool that every query but the replication stream
// uses, with Electric's session settings.
func newPool(ctx context.Context, databaseURL string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("electrictest: parse database URL: %w", err)
	}
	for k, v := range sessionParams {
		cfg.ConnConfig.RuntimeParams[k] = v
	}
	// Everything but the server's own DDL runs read-only and bounded.
	cfg.ConnConfig.RuntimeParams["default_transaction_read_only"] = "on"
	// checkWhere reads string literals as Postgres does with this setting.
	cfg.ConnConfig.RuntimeParams["standard_conforming_strings"] = "on"
	cfg.ConnConfig.RuntimeParams["statement_timeout"] = "30s"
	cfg.ConnConfig.RuntimeParams["application_name"] = "electrictest"
	cfg.MaxConns = 8
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("electrictest: connect: %w", err)
	}
	return pool, nil
}

// Close stops replication, drops the publication it created (the temporary
// slot goes with its connection; an Options.Publication stays) and closes
// the connections. Open requests end.
func (s *Server) Close() error {
	s.cancel()
	<-s.done
	s.mu.Lock()
	repl := s.repl
	s.mu.Unlock()
	repl.close()
	s.mu.Lock()
	for _, sh := range s.shapes {
		sh.invalidate()
	}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var err error
	if !s.manual {
		err = s.execRW(ctx, "DROP PUBLICATION IF EXISTS "+s.pub)
	}
	s.pool.Close()
	return err
}

// execRW runs statements in one read-write transaction.
func (s *Server) execRW(ctx context.Context, stmts ...string) error {
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	pc := conn.Conn().PgConn()
	if _, err := pc.Exec(ctx, "BEGIN READ WRITE").ReadAll(); err != nil {
		return err
	}
	for _, q := range stmts {
		if _, err := pc.Exec(ctx, q).ReadAll(); err != nil {
			pc.Exec(context.Background(), "ROLLBACK").ReadAll()
			return err
		}
	}
	_, err = pc.Exec(ctx, "COMMIT").ReadAll()
	return err
}

// onCommit routes a committed transaction to the shapes of its tables.
func (s *Server) onCommit(tx *txn) {
	s.mu.Lock()
	s.recentXids[s.recentN%len(s.recentXids)] = tx.xid
	s.recentN++
	s.mu.Unlock()
	for _, rel := range tx.truncated {
		s.rotate(rel.rel)
	}
	byRel := map[Relation][]change{}
	var order []Relation
	for _, c := range tx.changes {
		if _, ok := byRel[c.rel.rel]; !ok {
			order = append(order, c.rel.rel)
		}
		byRel[c.rel.rel] = append(byRel[c.rel.rel], c)
	}
	done := map[*shape]bool{}
	for _, rel := range order {
		for _, sh := range s.shapesUsing(rel) {
			if done[sh] {
				continue
			}
			done[sh] = true
			changes := byRel[rel]
			if sh.sub != nil {
				// The shape's table and its subquery's, in transaction order.
				changes = nil
				for _, c := range tx.changes {
					if c.rel.rel == sh.def.rel || c.rel.rel == sh.sub.sq.innerRel {
						changes = append(changes, c)
					}
				}
			}
			if err := s.apply(context.Background(), sh, tx, changes); err != nil {
				s.logger.Error("electrictest: applying a transaction failed; shape invalidated", "table", rel.String(), "err", err)
				s.dropShape(sh)
			}
		}
	}
	s.lastLSN.Store(tx.lsn)
}

// watchCatalog invalidates shapes whose table was dropped or renamed: no
// change of such a table reaches the replication stream any more, so only
// the catalog can tell.
func (s *Server) watchCatalog(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.mu.Lock()
		type use struct {
			sh  *shape
			rel Relation
		}
		byOID := map[uint32][]use{}
		for _, sh := range s.shapes {
			byOID[sh.tbl.oid] = append(byOID[sh.tbl.oid], use{sh, sh.def.rel})
			if sh.sub != nil {
				byOID[sh.sub.inner.oid] = append(byOID[sh.sub.inner.oid], use{sh, sh.sub.sq.innerRel})
			}
		}
		s.mu.Unlock()
		if len(byOID) == 0 {
			continue
		}
		oids := make([]uint32, 0, len(byOID))
		for oid := range byOID {
			oids = append(oids, oid)
		}
		rows, err := s.pool.Query(ctx, `SELECT c.oid, n.nspname, c.relname FROM pg_class c
			JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY($1)`, oids)
		if err != nil {
			continue
		}
		current := map[uint32]Relation{}
		for rows.Next() {
			var oid uint32
			var rel Relation
			if rows.Scan(&oid, &rel.Schema, &rel.Name) == nil {
				current[oid] = rel
			}
		}
		if rows.Err() != nil {
			continue
		}
		for oid, uses := range byOID {
			for _, u := range uses {
				if rel, ok := current[oid]; !ok || rel != u.rel {
					s.logger.Info("electrictest: table dropped or renamed; shape invalidated", "table", u.rel.String(), "handle", u.sh.handle)
					s.dropShape(u.sh)
				}
			}
		}
	}
}

// onRelation invalidates shapes whose table changed shape.
func (s *Server) onRelation(m *relMessage) {
	for _, sh := range s.shapesUsing(m.rel) {
		t := sh.tbl
		if m.rel != sh.def.rel {
			t = sh.sub.inner
		}
		if !sameColumns(t, m) {
			s.logger.Info("electrictest: table schema changed; shape invalidated", "table", m.rel.String(), "handle", sh.handle)
			s.dropShape(sh)
		}
	}
}

func sameColumns(t *table, m *relMessage) bool {
	if t.oid != m.id || len(t.columns) != len(m.columns) {
		return false
	}
	for i, c := range m.columns {
		if t.columns[i].name != c.name || t.columns[i].typeOID != c.typeOID {
			return false
		}
	}
	return true
}

func (s *Server) shapesOf(rel Relation) []*shape {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*shape
	for _, sh := range s.shapes {
		if sh.def.rel == rel {
			out = append(out, sh)
		}
	}
	return out
}

// shapesUsing returns the shapes of a table and those whose subquery reads it.
func (s *Server) shapesUsing(rel Relation) []*shape {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*shape
	for _, sh := range s.shapes {
		if sh.def.rel == rel || sh.sub != nil && sh.sub.sq.innerRel == rel {
			out = append(out, sh)
		}
	}
	return out
}

// dropShape forgets a shape; its clients get 409 and a new handle.
func (s *Server) dropShape(sh *shape) {
	s.mu.Lock()
	if s.shapes[sh.def.key()] == sh {
		delete(s.shapes, sh.def.key())
	}
	delete(s.handles, sh.handle)
	s.mu.Unlock()
	sh.invalidate()
}

func (s *Server) rotate(rel Relation) int {
	shapes := s.shapesUsing(rel)
	for _, sh := range shapes {
		s.dropShape(sh)
	}
	return len(shapes)
}

// Rotate invalidates every shape of a table (given as in the table
// parameter, e.g. "items" or "public.items") and every shape whose
// subquery reads it, as a TRUNCATE or a schema change would: their clients get 409 must-refetch and a new handle.
// It returns how many shapes were invalidated.
func (s *Server) Rotate(table string) (int, error) {
	rel, err := ParseRelation(table)
	if err != nil {
		return 0, err
	}
	return s.rotate(rel), nil
}

// RotateHandle invalidates the shape with the given handle.
func (s *Server) RotateHandle(handle string) bool {
	s.mu.Lock()
	sh := s.handles[handle]
	s.mu.Unlock()
	if sh != nil {
		s.dropShape(sh)
	}
	return sh != nil
}

func (s *Server) newHandle(def shapeDef) string {
	h := crc32.ChecksumIEEE([]byte(def.key())) % 100000000
	// Handles are never reused: the counter breaks ties within a microsecond.
	us := time.Now().UnixMicro() + int64(s.handleNo.Add(1))
	return fmt.Sprintf("%d-%d", h, us)
}

// shapeFor returns the shape of a definition, creating it (and starting its
// snapshot) when there is none.
func (s *Server) shapeFor(ctx context.Context, def shapeDef) (*shape, error) {
	if p := s.replErr.Load(); p != nil {
		return nil, errUnavailable
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if sh := s.shapes[def.key()]; sh != nil {
		return sh, nil
	}
	t, err := loadTable(ctx, s.pool, def.rel)
	if errors.Is(err, errNoTable) {
		return nil, &requestError{"table", fmt.Sprintf("Table %q.%q does not exist. If the table name contains capitals or special characters you must quote it.", def.rel.Schema, def.rel.Name)}
	}
	if err != nil {
		return nil, err
	}
	cols, keyCols, err := selectColumns(t, def)
	if err != nil {
		return nil, err
	}
	var eval string
	var sub *subShape
	if def.where != "" {
		if sub, err = s.validateWhere(ctx, t, def); err != nil {
			return nil, err
		}
		if sub != nil {
			eval = evalSQL(t, sub.outerWhere, len(sub.outerUsed)+1)
		} else {
			eval = evalSQL(t, def.where, len(def.params))
		}
	}
	if err := s.publish(ctx, t); err != nil {
		return nil, err
	}
	if sub != nil {
		if err := s.publish(ctx, sub.inner); err != nil {
			return nil, err
		}
	}
	sh := newShape(def, s.newHandle(def), t, cols, keyCols, eval)
	sh.sub = sub
	sh.mustSee = append([]uint32(nil), s.recentXids[:min(s.recentN, len(s.recentXids))]...)
	s.shapes[def.key()] = sh
	s.handles[sh.handle] = sh
	go s.takeSnapshot(context.Background(), sh)
	return sh, nil
}

var errUnavailable = errors.New("electrictest: replication is not running")
