package keysync

import (
	"context"
	"unsafe"

	"github.com/shapeseal/shapeseal/client"
)

// A batchScratch holds what opening the cells of a batch of messages needs,
// reused from batch to batch, so that the only allocations of a message are
// its plaintext and the array of string headers that the values holding
// its parts point at (see publish).
//
// Opening a batch takes three steps. collect, one message after the other,
// finds each message's place and cells (replacing at once the values that
// cannot be cells by a *CellError) and adds up the lengths of their
// plaintexts, which a cell's length gives. openAll then opens the cells:
// for each message it allocates the plaintext once, at its exact size, and
// opens every cell straight into it, decoding each in buf. publish, last,
// puts the plaintexts in the rows. So no plaintext is ever written
// anywhere but in the memory that publish hands out as strings, and buf,
// which holds only decoded ciphertext and associated data, need not be
// cleared.
type batchScratch struct {
	rowKeys []string      // the row-key values of the messages
	groups  []cellGroup   // the messages with cells, in order
	cells   []pendingCell // their cells, in order
	buf     []byte        // decoded cells and their associated data
}

// A cellGroup is the cells of one message: cells[start:end], bound to c.
type cellGroup struct {
	c            CellContext // RowKey is set once the batch is collected
	keyed        bool        // c.RowKey is rowKeys[keyLo:keyHi]
	keyLo, keyHi int
	start, end   int
	size         int    // the length of all their plaintexts
	pt           []byte // the plaintexts, once opened; nil once published
}

// A pendingCell is a cell of a row; once opened, its plaintext is
// pt[off:end] of its group.
type pendingCell struct {
	row      client.Row
	col      string
	cell     string
	ok       bool
	off, end int
}

// getScratch takes the decrypter's scratch, or makes one if another
// batch holds it.
func (d *Decrypter) getScratch() *batchScratch {
	if sc := d.scratch.Swap(nil); sc != nil {
		return sc
	}
	return new(batchScratch)
}

// putScratch clears sc, so that it holds neither plaintext nor references
// to the messages, and keeps it for the next batch unless it grew large.
func (d *Decrypter) putScratch(sc *batchScratch) {
	for i := range sc.groups {
		if pt := sc.groups[i].pt; pt != nil {
			// openAll ran but publish did not (the context ended): wipe
			// what opened.
			clear(pt[:cap(pt)])
		}
	}
	clear(sc.rowKeys)
	clear(sc.groups)
	clear(sc.cells)
	sc.rowKeys, sc.groups, sc.cells = sc.rowKeys[:0], sc.groups[:0], sc.cells[:0]
	const maxKept = 64 << 10
	if cap(sc.buf) <= maxKept {
		d.scratch.Store(sc)
	}
}

// collect notes the cells of a message for openAll, bound to the place of
// its row (see [Decrypter.place]). d.mu is held.
func (d *Decrypter) collect(sc *batchScratch, m *client.Message) {
	if !m.IsChange() {
		return
	}
	t := d.table(m)
	if t == nil {
		return
	}
	p, err := d.place(m, t)
	g := cellGroup{c: CellContext{Table: t.table, Tenant: p.tenant}, start: len(sc.cells)}
	if err == nil && !t.spec.UnboundRows {
		g.keyed, g.keyLo = true, len(sc.rowKeys)
		if len(t.spec.RowKey) == 1 {
			sc.rowKeys = append(sc.rowKeys, p.rowKey)
		} else {
			for i := range t.spec.RowKey {
				sc.rowKeys = append(sc.rowKeys, rowKeyValue(p.rowKey, i))
			}
		}
		g.keyHi = len(sc.rowKeys)
	}
	sc.collectRow(t, &g, err, m.Value)
	sc.collectRow(t, &g, err, m.OldValue)
	if g.end = len(sc.cells); g.end > g.start {
		sc.groups = append(sc.groups, g)
	}
}

// collectRow notes the cells of row in g (with placeErr, if not nil, the
// reason the row has no place). Values that cannot be opened, because the
// row has no place or because they are not text, are replaced at once by
// a *CellError. NULL stays NULL.
func (sc *batchScratch) collectRow(t *decTable, g *cellGroup, placeErr error, row client.Row) {
	for _, col := range t.spec.Columns {
		val, ok := row[col]
		if !ok || val == nil {
			continue
		}
		if placeErr != nil {
			row[col] = &CellError{Column: col, Err: &OpenError{Table: t.table, Column: col, Err: placeErr}}
			continue
		}
		cell, ok := val.(string)
		if !ok {
			row[col] = &CellError{Column: col, Err: &OpenError{Table: t.table, Column: col, Tenant: g.c.Tenant,
				Err: detail(ErrNotEncrypted, "value is %T, not text", val)}}
			continue
		}
		sc.cells = append(sc.cells, pendingCell{row: row, col: col, cell: cell})
		g.size += plaintextLen(cell)
	}
}

// openAll opens the collected cells, each message's through the tenant's
// view of the keyring into one allocation of plaintext, decoding them in
// sc.buf. Cells that do not open are replaced at once by a *CellError; the
// others replace their cells at publish. It reports whether a cell failed
// to open.
//
// The place of a message is checked once for all its cells (NewDecrypter
// checked the table and column names, with the table spec): if it is
// invalid, every cell is opened with the full check, which then reports
// it, as [Open] would.
//
// It opens them one after the other. Sharing a batch's messages among
// goroutines was measured slower, on two cores, than opening them here
// (BenchmarkTail: 1.64× a plain tail rather than 1.40×): a batch holds
// about 40 µs of crypto, about what handing half of it to another thread
// and waiting for it costs.
func (d *Decrypter) openAll(ctx context.Context, sc *batchScratch) (failed bool) {
	for gi := range sc.groups {
		g := &sc.groups[gi]
		if g.keyed {
			g.c.RowKey = sc.rowKeys[g.keyLo:g.keyHi]
		}
		v := d.ring.view(g.c.Tenant)
		checked := g.c.validatePlace() == nil
		c := g.c
		pt := make([]byte, 0, g.size)
		for i := g.start; i < g.end; i++ {
			p := &sc.cells[i]
			c.Column = p.col
			out, buf, err := v.openTo(ctx, pt, sc.buf, &c, p.cell, checked)
			sc.buf = buf
			if err != nil {
				p.row[p.col] = &CellError{Column: p.col, Err: err}
				failed = true
				continue
			}
			p.ok, p.off, p.end = true, len(pt), len(out)
			pt = out
		}
		g.pt = pt
	}
	return failed
}

// publish replaces the opened cells by their plaintexts: for each message,
// substrings of one string that holds them all, its one allocation for
// plaintext. The string is made from the group's pt without a copy:
// nothing writes to pt once its cells are open, and publish drops it. The
// values that hold the substrings point into one array of strings per
// message (see boxStrings).
func (sc *batchScratch) publish() {
	for gi := range sc.groups {
		g := &sc.groups[gi]
		all := unsafe.String(unsafe.SliceData(g.pt), len(g.pt))
		g.pt = nil
		cells := sc.cells[g.start:g.end]
		strs := make([]string, len(cells))
		for i, p := range cells {
			if p.ok {
				strs[i] = all[p.off:p.end]
				p.row[p.col] = boxString(&strs[i])
			}
		}
	}
}

// boxString returns the interface value holding the string *p, pointing at
// *p rather than at a copy. Converting a string to an interface copies its
// header into an allocation of its own: one per cell, where publish makes
// one per message for all of its cells' headers. *p must never change
// (publish makes a new array for each message and writes each element
// once, before boxing it). An interface value is a type word and a data
// word, and for a string the data word points at its header: the layout
// the runtime has used since Go 1.4, and which a test checks.
func boxString(p *string) (v any) {
	e := (*eface)(unsafe.Pointer(&v))
	e.typ, e.data = stringType, unsafe.Pointer(p)
	return v
}

type eface struct{ typ, data unsafe.Pointer }

var stringType = func() unsafe.Pointer {
	var v any = ""
	return (*eface)(unsafe.Pointer(&v)).typ
}()
