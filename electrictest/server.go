package electrictest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
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
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(opts.DatabaseURL)
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
	var id [6]byte
	rand.Read(id[:])
	name := "electrictest_" + hex.EncodeToString(id[:])
	s := &Server{
		opts: opts, logger: logger, pool: pool, pub: name, stack: name, reqPrefix: hex.EncodeToString(id[:]) + "-",
		shapes: map[string]*shape{}, handles: map[string]*shape{}, published: map[uint32]bool{},
		done: make(chan struct{}),
	}
	if opts.Publication != "" {
		s.pub, s.manual = opts.Publication, true
		var exists bool
		if err := pool.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)", s.pub).Scan(&exists); err != nil {
			pool.Close()
			return nil, fmt.Errorf("electrictest: look up publication %s: %w", quoteIdent(s.pub), err)
		}
		if !exists {
			pool.Close()
			return nil, fmt.Errorf("electrictest: there is no publication %s (Options.Publication) in this database", quoteIdent(s.pub))
		}
	} else if err := s.execRW(ctx, "CREATE PUBLICATION "+name); err != nil {
		pool.Close()
		return nil, fmt.Errorf("electrictest: create publication: %w", err)
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

// requestError is a validation failure reported as 400 in Electric's format.
type requestError struct {
	field, msg string
}

func (e *requestError) Error() string { return e.field + ": " + e.msg }

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

// publish adds a table to the publication, with REPLICA IDENTITY FULL; with
// Options.Publication, it checks that the table is published so.
func (s *Server) publish(ctx context.Context, t *table) error {
	if s.published[t.oid] {
		return nil
	}
	if s.manual {
		return s.checkPublished(ctx, t)
	}
	stmts := []string{"ALTER PUBLICATION " + s.pub + " ADD TABLE " + t.rel.Quoted()}
	var ident string
	err := s.pool.QueryRow(ctx, "SELECT relreplident::text FROM pg_class WHERE oid = $1::regclass", t.rel.Quoted()).Scan(&ident)
	if err != nil {
		return err
	}
	if ident != "f" {
		stmts = append([]string{"ALTER TABLE " + t.rel.Quoted() + " REPLICA IDENTITY FULL"}, stmts...)
	}
	if err := s.execRW(ctx, stmts...); err != nil {
		return fmt.Errorf("electrictest: publish %s: %w", t.rel, err)
	}
	s.published[t.oid] = true
	return nil
}

// checkPublished checks, without changing anything, that a table is in the
// publication of Options.Publication with REPLICA IDENTITY FULL, as Electric
// does with ELECTRIC_MANUAL_TABLE_PUBLISHING; it fails with Electric's
// messages. A table found so is not checked again.
func (s *Server) checkPublished(ctx context.Context, t *table) error {
	var in bool
	var ident string
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3),
		(SELECT relreplident::text FROM pg_class WHERE oid = $4)`, s.pub, t.rel.Schema, t.rel.Name, t.oid).Scan(&in, &ident)
	if err != nil {
		return err
	}
	if !in {
		return &configError{fmt.Sprintf("Database table %s is missing from the publication %s and manual table publishing (Options.Publication) prevents electrictest from adding it",
			t.rel.Quoted(), quoteIdent(s.pub))}
	}
	if ident != "f" {
		return &configError{fmt.Sprintf("Database table %s does not have its replica identity set to FULL", t.rel.Quoted())}
	}
	s.published[t.oid] = true
	return nil
}

// configError is a table that the database is not configured to serve
// (Electric's DbConfigurationError): 503 with retry-after 10.
type configError struct{ msg string }

func (e *configError) Error() string { return "electrictest: " + e.msg }

var errUnavailable = errors.New("electrictest: replication is not running")

// selectColumns validates columns and queryable_columns as Electric's
// Shape.validate_queryable_columns and validate_selected_columns do, and
// returns the selected columns and the columns of the row key (table
// order). A table without a primary key is keyed by all its columns, in
// table order (Electric's Inspector.get_pk_cols), so they all count as
// primary key columns here.
func selectColumns(t *table, def shapeDef) (cols, keyCols []int, err error) {
	keyCols = t.pk
	if len(keyCols) == 0 {
		for i := range t.columns {
			keyCols = append(keyCols, i)
		}
	}
	keyNames := make([]string, 0, len(keyCols)+len(t.generated))
	for _, i := range keyCols {
		keyNames = append(keyNames, t.columns[i].name)
	}
	if len(t.pk) == 0 {
		keyNames = append(keyNames, t.generated...) // every column
	}
	missingFrom := func(list []string) []string {
		var missing []string
		for _, k := range keyNames {
			if !slices.Contains(list, k) {
				missing = append(missing, k)
			}
		}
		return missing
	}
	exists := func(name string) bool { return t.index(name) >= 0 || slices.Contains(t.generated, name) }
	notIn := func(list []string, ok func(string) bool) []string {
		var out []string
		for _, name := range list {
			if !ok(name) {
				out = append(out, name)
			}
		}
		return out
	}
	generatedIn := func(list []string) []string {
		var out []string
		for _, g := range t.generated {
			if slices.Contains(list, g) {
				out = append(out, g)
			}
		}
		return out
	}
	if def.queryable != nil {
		if missing := missingFrom(def.queryable); len(missing) > 0 {
			return nil, nil, &requestError{"queryable_columns", "The list of queryable columns must include all primary key columns, missing: " + strings.Join(missing, ", ")}
		}
		if unknown := notIn(def.queryable, exists); len(unknown) > 0 {
			return nil, nil, &requestError{"queryable_columns", "The following queryable columns are not found on the table: " + strings.Join(unknown, ", ")}
		}
	}
	selected := def.columns
	if selected != nil {
		if missing := missingFrom(selected); len(missing) > 0 {
			return nil, nil, &requestError{"columns", "The list of columns must include all primary key columns, missing: " + strings.Join(missing, ", ")}
		}
		selectable := exists
		if def.queryable != nil {
			selectable = func(name string) bool { return slices.Contains(def.queryable, name) }
		}
		if unknown := notIn(selected, selectable); len(unknown) > 0 {
			return nil, nil, &requestError{"columns", "The following columns are not found on the table: " + strings.Join(unknown, ", ")}
		}
		if gen := generatedIn(selected); len(gen) > 0 {
			return nil, nil, &requestError{"columns", "The following columns are generated and cannot be included in the shape: " + strings.Join(gen, ", ")}
		}
	} else {
		selected = def.queryable
		if selected == nil {
			selected = t.generated // with every other column
		}
		if gen := generatedIn(selected); len(gen) > 0 {
			return nil, nil, &requestError{"columns", "The following columns are generated and cannot be included in the shape: " + strings.Join(gen, ", ") +
				". You can exclude them from the shape by explicitly listing which columns to fetch in the 'columns' query param"}
		}
		if def.queryable == nil {
			for i := range t.columns {
				cols = append(cols, i)
			}
			return cols, keyCols, nil
		}
	}
	if def.columns == nil {
		// queryable_columns is the projection: in table order.
		for i, c := range t.columns {
			if slices.Contains(selected, c.name) {
				cols = append(cols, i)
			}
		}
		return cols, keyCols, nil
	}
	for _, name := range selected {
		if i := t.index(name); !slices.Contains(cols, i) {
			cols = append(cols, i)
		}
	}
	return cols, keyCols, nil
}

// validateWhere lets Postgres type-check the where clause against the table,
// after checkWhere has made sure it is a single boolean filter. A clause with
// a subquery (see parseSubqueryWhere) gives the shape's subquery part.
func (s *Server) validateWhere(ctx context.Context, t *table, def shapeDef) (*subShape, error) {
	sq, err := parseSubqueryWhere(def.where)
	if err != nil {
		return nil, &requestError{"where", err.Error()}
	}
	var wc whereCheck
	var sub *subShape
	where := def.where
	if sq == nil {
		if wc, err = checkWhere(def.where); err != nil {
			return nil, &requestError{"where", err.Error()}
		}
	} else {
		wc = sq.check
		switch sq.innerRel.Schema {
		case "pg_catalog", "information_schema", "pg_toast":
			return nil, &requestError{"where", "the subquery's table cannot be a system table"}
		}
		inner, err := loadTable(ctx, s.pool, sq.innerRel)
		if errors.Is(err, errNoTable) {
			return nil, &requestError{"where", fmt.Sprintf("Table %q.%q in the subquery does not exist", sq.innerRel.Schema, sq.innerRel.Name)}
		}
		if err != nil {
			return nil, err
		}
		if sub, err = newSubShape(sq, t, inner, s.stack); err != nil {
			return nil, err
		}
		where = sq.full()
	}
	conn, err := s.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Release()
	pc := conn.Conn().PgConn()
	const prefix = "SELECT (\n"
	desc, err := pc.Prepare(ctx, "", prefix+where+"\n) FROM "+def.rel.Quoted(), nil)
	if err != nil {
		return nil, whereFromPgError(err, len(prefix))
	}
	if len(desc.Fields) != 1 || desc.Fields[0].DataTypeOID != 16 {
		return nil, &requestError{"where", "WHERE clause must return a boolean"}
	}
	if n := len(desc.ParamOIDs); n > len(def.params) {
		missing := len(def.params) + 1
		return nil, &requestError{"where", fmt.Sprintf("At location %d: parameter $%d was not provided", wc.params[missing], missing)}
	} else if n < len(def.params) {
		return nil, &requestError{"params", fmt.Sprintf("where uses %d parameters but %d were given", n, len(def.params))}
	}
	if len(wc.functions) > 0 {
		// Quoted names keep their case, unquoted ones are lower-cased.
		var volatile []string
		err := conn.QueryRow(ctx, "SELECT COALESCE(array_agg(DISTINCT proname::text), '{}') FROM pg_proc WHERE (proname = ANY($1) OR lower(proname) = ANY($1)) AND provolatile = 'v'", wc.functions).Scan(&volatile)
		if err != nil {
			return nil, err
		}
		if len(volatile) > 0 {
			return nil, &requestError{"where", "volatile functions are not allowed in a where clause: " + strings.Join(volatile, ", ")}
		}
	}
	// Changes are evaluated by evalSQL: it must accept the clause too (no
	// schema-qualified or system columns, no functions of the table's row
	// type), or changes would silently not match.
	if sub != nil {
		if _, err := pc.Prepare(ctx, "", evalSQL(t, sub.outerWhere, len(sub.outerUsed)+1), nil); err != nil {
			return nil, whereFromPgError(err, len(prefix))
		}
		if _, err := pc.Prepare(ctx, "", sub.innerEval, nil); err != nil {
			return nil, whereFromPgError(err, len(prefix))
		}
	} else if _, err := pc.Prepare(ctx, "", evalSQL(t, def.where, len(def.params)), nil); err != nil {
		return nil, whereFromPgError(err, len(prefix))
	}
	// Plan the snapshot query with the params bound, without running it:
	// this rejects parameter values that do not fit their type, constant
	// expressions that fail, and what is not allowed in a WHERE clause
	// (aggregates, window and set-returning functions).
	explain := "EXPLAIN SELECT FROM " + def.rel.Quoted() + " WHERE (\n"
	if err := pc.ExecParams(ctx, explain+where+"\n)", textParams(def.params), nil, nil, nil).Read().Err; err != nil {
		return nil, whereFromPgError(err, len(explain))
	}
	return sub, nil
}

// whereFromPgError turns a Postgres error into a 400 message of our own
// wording: Postgres' text is never passed through.
func whereFromPgError(err error, prefixLen int) error {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return err
	}
	at := ""
	if pgErr.Position > int32(prefixLen) {
		at = fmt.Sprintf("At location %d: ", int(pgErr.Position)-prefixLen-1)
	}
	var msg string
	switch pgErr.Code {
	case "42601":
		msg = "syntax error"
	case "42703", "42P01":
		msg = "unknown column reference"
	case "42883":
		msg = "unknown function or operator, or arguments of the wrong type"
	case "42P02":
		msg = "a parameter has no value in params"
	case "42804", "42P18", "42P08", "22P02", "42846":
		msg = "a value or parameter does not fit the type it is compared with"
	case "42803":
		msg = "aggregate functions are not allowed in a where clause"
	case "42P20":
		msg = "window functions are not allowed in a where clause"
	case "0A000":
		msg = "set-returning functions are not allowed in a where clause"
	case "22012":
		msg = "division by zero"
	case "22003":
		msg = "a value is out of range for its type"
	case "22021", "22P05":
		msg = "invalid character in a value"
	default:
		msg = "invalid where clause"
	}
	return &requestError{"where", at + msg}
}
