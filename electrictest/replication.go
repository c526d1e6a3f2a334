package electrictest

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// sessionParams are the settings Electric uses for every connection, so that
// values are written in the text forms its clients expect.
var sessionParams = map[string]string{
	"bytea_output":       "hex",
	"DateStyle":          "ISO, DMY",
	"TimeZone":           "UTC",
	"IntervalStyle":      "iso_8601",
	"extra_float_digits": "1",
}

// A change is one replicated row operation with its relation resolved.
type change struct {
	op  byte // 'I', 'U', 'D'
	rel *relMessage
	old []datum // nil for inserts
	new []datum // nil for deletes
	pos uint64  // op_position: the change's place in its transaction
}

// A txn is one committed transaction as received from the replication stream.
type txn struct {
	xid       uint32
	lsn       uint64 // commit LSN
	changes   []change
	truncated []*relMessage
}

// replication follows a temporary logical replication slot with pgoutput.
type replication struct {
	conn        *pgconn.PgConn
	slot        string
	publication string
	relations   map[uint32]*relMessage
	processed   uint64 // LSN acknowledged to the server
	onRelation  func(*relMessage)
	onCommit    func(*txn)
}

const statusInterval = time.Second

// startReplication opens a replication connection, creates a temporary slot
// and starts streaming from it. The slot disappears with the connection.
func startReplication(ctx context.Context, databaseURL, slot, publication string) (*replication, error) {
	cfg, err := pgconn.ParseConfig(databaseURL)
	if err != nil {
		return nil, fmt.Errorf("electrictest: parse database URL: %w", err)
	}
	cfg.RuntimeParams["replication"] = "database"
	for k, v := range sessionParams {
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("electrictest: replication connection: %w", err)
	}
	r := &replication{conn: conn, slot: slot, publication: publication, relations: map[uint32]*relMessage{}}
	_, err = pglogrepl.CreateReplicationSlot(ctx, conn, slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
		Temporary: true, SnapshotAction: "NOEXPORT_SNAPSHOT", Mode: pglogrepl.LogicalReplication,
	})
	if err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("electrictest: create replication slot: %w", err)
	}
	err = pglogrepl.StartReplication(ctx, conn, slot, 0, pglogrepl.StartReplicationOptions{
		Mode:       pglogrepl.LogicalReplication,
		PluginArgs: []string{"proto_version '1'", "publication_names '" + strings.ReplaceAll(quoteIdent(publication), "'", "''") + "'"},
	})
	if err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("electrictest: start replication: %w", err)
	}
	return r, nil
}

// run consumes the stream until ctx ends or the connection fails.
func (r *replication) run(ctx context.Context) error {
	var cur *txn
	nextStatus := time.Now().Add(statusInterval)
	for {
		if !time.Now().Before(nextStatus) {
			if err := r.sendStatus(); err != nil {
				return err
			}
			nextStatus = time.Now().Add(statusInterval)
		}
		rctx, cancel := context.WithDeadline(ctx, nextStatus)
		msg, err := r.conn.ReceiveMessage(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("electrictest: replication stream: %w", err)
		}
		var data []byte
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			data = m.Data
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("electrictest: replication stream: %w", pgconn.ErrorResponseToPgError(m))
		default:
			continue
		}
		if len(data) == 0 {
			continue
		}
		switch data[0] {
		case pglogrepl.PrimaryKeepaliveMessageByteID:
			k, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
			if err != nil {
				return fmt.Errorf("electrictest: replication stream: %w", err)
			}
			// Between transactions, everything the server has sent is
			// processed: acknowledging its WAL end lets it recycle WAL
			// and lets a shutdown finish (a walsender waits for its
			// client to confirm all it sent, a fast shutdown included).
			if cur == nil && uint64(k.ServerWALEnd) > r.processed {
				r.processed = uint64(k.ServerWALEnd)
			}
			if k.ReplyRequested {
				nextStatus = time.Now()
			}
		case pglogrepl.XLogDataByteID:
			x, err := pglogrepl.ParseXLogData(data[1:])
			if err != nil {
				return fmt.Errorf("electrictest: replication stream: %w", err)
			}
			if cur, err = r.handle(cur, x.WALData); err != nil {
				return err
			}
		}
	}
}

// handle decodes one pgoutput message into cur, the transaction being
// received (nil between transactions), and returns what cur is then: a new
// transaction at its begin, nil after its commit, which hands it to
// onCommit.
func (r *replication) handle(cur *txn, walData []byte) (*txn, error) {
	m, err := decodePgoutput(walData)
	if err != nil {
		return cur, err
	}
	switch m := m.(type) {
	case beginMessage:
		cur = &txn{xid: m.xid, lsn: m.finalLSN}
	case commitMessage:
		if cur != nil {
			r.onCommit(cur)
			cur = nil
		}
		r.processed = m.commitLSN
	case *relMessage:
		r.relations[m.id] = m
		if r.onRelation != nil {
			r.onRelation(m)
		}
	case rowMessage:
		rel := r.relations[m.relID]
		if rel == nil || cur == nil {
			return cur, fmt.Errorf("electrictest: change for unknown relation %d", m.relID)
		}
		// Every change advances op_position by 2, as in Electric's
		// MessageConverter: an update may split into a delete and
		// an insert, which then take n and n+1.
		c := change{op: m.op, rel: rel, old: m.old, new: m.new, pos: 2 * uint64(len(cur.changes))}
		cur.changes = append(cur.changes, c)
	case truncateMessage:
		for _, id := range m.relIDs {
			if rel := r.relations[id]; rel != nil && cur != nil {
				cur.truncated = append(cur.truncated, rel)
			}
		}
	}
	return cur, nil
}

func (r *replication) sendStatus() error {
	lsn := pglogrepl.LSN(r.processed)
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), r.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: lsn, WALFlushPosition: lsn, WALApplyPosition: lsn,
	})
	if err != nil {
		return fmt.Errorf("electrictest: replication status: %w", err)
	}
	return nil
}

func (r *replication) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r.conn.Close(ctx)
}

// follow consumes the replication stream until ctx ends. When the stream
// fails (Postgres restarted, the connection was cut), the temporary slot is
// gone with its connection, and with it the changes committed meanwhile:
// every shape is dropped (its clients get 409 and refetch), shape requests
// are answered 503 while the server reconnects with backoff, as Electric
// does, and a new slot is followed from then on.
func (s *Server) follow(ctx context.Context, repl *replication) {
	for {
		err := repl.run(ctx)
		if ctx.Err() != nil {
			return
		}
		s.logger.Error("electrictest: replication stopped; reconnecting", "err", err)
		s.replErr.Store(&err)
		s.dropAll()
		repl.close()
		if repl = s.reconnect(ctx); repl == nil {
			return
		}
		// The pool's connections of before the failure may be dead too.
		s.pool.Reset()
		s.replErr.Store(nil)
		s.logger.Info("electrictest: replication resumed")
	}
}

// reconnect starts replication again, retrying with backoff (100 ms,
// doubling, capped at 5 s) until it succeeds or ctx ends (then nil).
func (s *Server) reconnect(ctx context.Context) *replication {
	delay := 100 * time.Millisecond
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		repl, err := startReplication(ctx, s.opts.DatabaseURL, s.stack, s.pub)
		if err == nil {
			repl.onCommit = s.onCommit
			repl.onRelation = s.onRelation
			s.mu.Lock()
			s.repl = repl
			s.mu.Unlock()
			return repl
		}
		s.logger.Warn("electrictest: replication: reconnecting", "err", err)
		delay = min(2*delay, 5*time.Second)
	}
}

// dropAll forgets every shape: their clients get 409 and a new handle.
func (s *Server) dropAll() {
	s.mu.Lock()
	all := make([]*shape, 0, len(s.shapes))
	for _, sh := range s.shapes {
		all = append(all, sh)
	}
	s.mu.Unlock()
	for _, sh := range all {
		s.dropShape(sh)
	}
}
