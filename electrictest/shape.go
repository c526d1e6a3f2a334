package electrictest

import (
	"fmt"
	"sort"
	"strconv"
	"sync"
)

// shapeDef is a shape definition: what makes two requests share one log.
type shapeDef struct {
	rel         Relation
	where       string
	params      []string
	columns     []string // nil: every column (or every queryable column)
	queryable   []string // queryable_columns; nil: every column
	replica     string   // "default" or "full"
	changesOnly bool
}

func (d shapeDef) key() string {
	return strconv.Quote(d.rel.Schema) + "." + strconv.Quote(d.rel.Name) + "|" + strconv.Quote(d.where) + "|" +
		fmt.Sprintf("%q|%q|%q|%s|%t", d.params, d.columns, d.queryable, d.replica, d.changesOnly)
}

// A logEntry is one message of a shape's log, at its offset.
type logEntry struct {
	off Offset
	msg []byte
}

// A pendingTxn is a transaction that arrived while the shape's snapshot
// was being taken, kept for takeSnapshot.
type pendingTxn struct {
	tx      *txn
	changes []change
}

// A shape is one shape log: the snapshot chunks and the changes after them.
type shape struct {
	def      shapeDef
	handle   string
	tbl      *table
	cols     []int // selected columns
	keyCols  []int // columns forming the row key
	evalSQL  string
	sub      *subShape // for a where clause with a subquery
	schema   string    // electric-schema header
	ready    chan struct{}
	readyErr error    // set before ready is closed
	mustSee  []uint32 // xids already routed when the shape was registered

	applyMu sync.Mutex // serializes changes into the log
	relMap  map[*relMessage][]int

	cacheMu sync.Mutex
	cache   renderedLog // the last rendered log response, shared by pollers

	mu      sync.Mutex
	snap    *pgSnapshot
	pending []pendingTxn
	chunks  []chunk // the snapshot, as complete JSON response bodies
	log     []logEntry
	latest  Offset
	notify  chan struct{} // closed when the log grows or the shape goes
	gone    bool
}

func newShape(def shapeDef, handle string, t *table, cols, keyCols []int, evalSQL string) *shape {
	return &shape{
		def: def, handle: handle, tbl: t, cols: cols, keyCols: keyCols, evalSQL: evalSQL,
		schema: t.schemaHeader(cols), ready: make(chan struct{}), relMap: map[*relMessage][]int{},
		latest: SnapshotEnd, notify: make(chan struct{}),
	}
}

// invalidate marks the shape gone and wakes its waiters.
func (sh *shape) invalidate() {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if !sh.gone {
		sh.gone = true
		close(sh.notify)
	}
}

// read returns log entries after off, at most about maxBytes of them (at
// least one), and whether they reach the end of the log.
func (sh *shape) read(off Offset, maxBytes int) (entries []logEntry, end bool, latest Offset, notify chan struct{}, gone bool) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i := sort.Search(len(sh.log), func(i int) bool { return sh.log[i].off.Compare(off) > 0 })
	j, size := i, 0
	for j < len(sh.log) && (j == i || size+len(sh.log[j].msg) <= maxBytes) {
		size += len(sh.log[j].msg) + 1
		j++
	}
	return sh.log[i:j:j], j == len(sh.log), sh.latest, sh.notify, sh.gone
}

type renderedLog struct {
	from     Offset
	n        int
	upToDate bool
	lsn      uint64
	body     []byte
}

// render returns the JSON body for entries read after from. Live pollers at
// the same offset all get the same body, so the last one is kept.
func (sh *shape) render(from Offset, entries []logEntry, upToDate bool, lsn uint64) []byte {
	key := renderedLog{from: from, n: len(entries), upToDate: upToDate, lsn: lsn}
	sh.cacheMu.Lock()
	defer sh.cacheMu.Unlock()
	if c := sh.cache; c.body != nil && c.from == key.from && c.n == key.n && c.upToDate == key.upToDate && c.lsn == key.lsn {
		return c.body
	}
	size := 2 + len(entries)
	for _, e := range entries {
		size += len(e.msg)
	}
	if upToDate {
		size += 80
	}
	b := make([]byte, 0, size)
	b = append(b, '[')
	for i, e := range entries {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, e.msg...)
	}
	if upToDate {
		b = appendUpToDate(append(b, ','), lsn)
	}
	b = append(b, ']')
	key.body = b
	sh.cache = key
	return b
}

func (sh *shape) appendLog(entries []logEntry) {
	if len(entries) == 0 {
		return
	}
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.gone {
		return
	}
	sh.log = append(sh.log, entries...)
	sh.latest = entries[len(entries)-1].off
	close(sh.notify)
	sh.notify = make(chan struct{})
}
