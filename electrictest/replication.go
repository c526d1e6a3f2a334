package electrictest

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

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
	if _, err := conn.Exec(ctx, fmt.Sprintf("CREATE_REPLICATION_SLOT %s TEMPORARY LOGICAL pgoutput NOEXPORT_SNAPSHOT", slot)).ReadAll(); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("electrictest: create replication slot: %w", err)
	}
	start := fmt.Sprintf("START_REPLICATION SLOT %s LOGICAL 0/0 (proto_version '1', publication_names '%s')", slot, publication)
	conn.Frontend().Send(&pgproto3.Query{String: start})
	if err := conn.Frontend().Flush(); err != nil {
		conn.Close(context.Background())
		return nil, fmt.Errorf("electrictest: start replication: %w", err)
	}
	for {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			conn.Close(context.Background())
			return nil, fmt.Errorf("electrictest: start replication: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyBothResponse:
			return r, nil
		case *pgproto3.ErrorResponse:
			conn.Close(context.Background())
			return nil, fmt.Errorf("electrictest: start replication: %w", pgconn.ErrorResponseToPgError(m))
		}
	}
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
		case 'k': // primary keepalive: walEnd, time, reply requested
			if len(data) >= 18 && data[17] == 1 {
				nextStatus = time.Now()
			}
		case 'w': // XLogData: walStart, walEnd, time, message
			if len(data) < 25 {
				return fmt.Errorf("electrictest: short XLogData message")
			}
			m, err := decodePgoutput(data[25:])
			if err != nil {
				return err
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
					return fmt.Errorf("electrictest: change for unknown relation %d", m.relID)
				}
				c := change{op: m.op, rel: rel, old: m.old, new: m.new}
				if n := len(cur.changes); n > 0 {
					prev := cur.changes[n-1]
					c.pos = prev.pos + 1
					if prev.op == 'U' {
						c.pos++ // an update may split into a delete and an insert
					}
				}
				cur.changes = append(cur.changes, c)
			case truncateMessage:
				for _, id := range m.relIDs {
					if rel := r.relations[id]; rel != nil && cur != nil {
						cur.truncated = append(cur.truncated, rel)
					}
				}
			}
		}
	}
}

// pgEpoch is the Postgres epoch, 2000-01-01, used by replication timestamps.
var pgEpoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func (r *replication) sendStatus() error {
	b := make([]byte, 34)
	b[0] = 'r'
	binary.BigEndian.PutUint64(b[1:], r.processed)
	binary.BigEndian.PutUint64(b[9:], r.processed)
	binary.BigEndian.PutUint64(b[17:], r.processed)
	binary.BigEndian.PutUint64(b[25:], uint64(time.Since(pgEpoch).Microseconds()))
	r.conn.Frontend().Send(&pgproto3.CopyData{Data: b})
	if err := r.conn.Frontend().Flush(); err != nil {
		return fmt.Errorf("electrictest: replication status: %w", err)
	}
	return nil
}

func (r *replication) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	r.conn.Close(ctx)
}
