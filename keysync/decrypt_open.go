package keysync

import (
	"context"
	"unsafe"

	"github.com/shapeseal/shapeseal/client"
)

// A rowScratch holds what opening the cells of one message needs, reused
// from message to message, so that the only allocations of a message are
// its plaintext and the interface values that hold its parts.
//
// Opening a message takes two passes over its cells. collect finds them
// (replacing at once the values that cannot be cells by a *CellError) and
// adds up the lengths of their plaintexts, which a cell's length gives;
// openCells then allocates the message's plaintext once, at its exact
// size, and opens every cell straight into it, decoding each in buf. So
// no plaintext is ever written anywhere but in the memory that publish
// hands out as strings, and buf, which holds only decoded ciphertext and
// associated data, need not be cleared.
type rowScratch struct {
	buf    []byte        // decoded cells and their associated data
	rowKey []string      // the message's row-key values
	cells  []pendingCell // the message's cells, in the order opened
	size   int           // the length of all their plaintexts
	pt     []byte        // the plaintexts, once openCells has allocated them
}

// A pendingCell is a cell of a row; once opened, its plaintext is
// pt[off:end].
type pendingCell struct {
	row      client.Row
	col      string
	cell     string
	ok       bool
	off, end int
}

// getScratch takes the decrypter's scratch, or makes one if another
// message holds it.
func (d *Decrypter) getScratch() *rowScratch {
	if sc := d.scratch.Swap(nil); sc != nil {
		return sc
	}
	return new(rowScratch)
}

// putScratch clears sc, so that it holds neither plaintext nor references
// to the message, and keeps it for the next message unless it grew large.
func (d *Decrypter) putScratch(sc *rowScratch) {
	if sc.pt != nil {
		// openCells ran but publish did not (the context ended): wipe
		// what opened.
		clear(sc.pt[:cap(sc.pt)])
	}
	clear(sc.rowKey)
	clear(sc.cells)
	sc.rowKey, sc.cells, sc.size, sc.pt = sc.rowKey[:0], sc.cells[:0], 0, nil
	const maxKept = 64 << 10
	if cap(sc.buf) <= maxKept {
		d.scratch.Store(sc)
	}
}

// collect notes the cells of row, bound to c (with placeErr, if not nil,
// the reason the row has no place), for openCells. Values that cannot be
// opened, because the row has no place or because they are not text, are
// replaced at once by a *CellError. NULL stays NULL.
func (sc *rowScratch) collect(t *decTable, c *CellContext, placeErr error, row client.Row) {
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
			row[col] = &CellError{Column: col, Err: &OpenError{Table: t.table, Column: col, Tenant: c.Tenant,
				Err: detail(ErrNotEncrypted, "value is %T, not text", val)}}
			continue
		}
		sc.cells = append(sc.cells, pendingCell{row: row, col: col, cell: cell})
		sc.size += plaintextLen(cell)
	}
}

// openCells opens the collected cells, bound to c, through the tenant's
// view of the keyring, into one allocation of plaintext. Cells that do not
// open are replaced at once by a *CellError; the others replace their
// cells at publish. It reports whether a cell failed to open.
//
// The place c is checked once for all the cells (NewDecrypter checked the
// table and column names, with the table spec): if it is invalid, every
// cell is opened with the full check, which then reports it, as [Open]
// would.
func (d *Decrypter) openCells(ctx context.Context, sc *rowScratch, c *CellContext) (failed bool) {
	if len(sc.cells) == 0 {
		return false
	}
	v := d.ring.view(c.Tenant)
	checked := c.validatePlace() == nil
	sc.pt = make([]byte, 0, sc.size)
	for i := range sc.cells {
		p := &sc.cells[i]
		c.Column = p.col
		out, buf, err := v.openTo(ctx, sc.pt, sc.buf, c, p.cell, checked)
		sc.buf = buf
		if err != nil {
			p.row[p.col] = &CellError{Column: p.col, Err: err}
			failed = true
			continue
		}
		p.ok, p.off, p.end = true, len(sc.pt), len(out)
		sc.pt = out
	}
	return failed
}

// publish replaces the opened cells by their plaintexts: substrings of one
// string that holds them all, the message's one allocation for plaintext.
// The string is made from sc.pt without a copy: nothing writes to sc.pt
// once its cells are open, and putScratch drops it.
func (sc *rowScratch) publish() {
	all := unsafe.String(unsafe.SliceData(sc.pt), len(sc.pt))
	sc.pt = nil
	for _, p := range sc.cells {
		if p.ok {
			p.row[p.col] = all[p.off:p.end]
		}
	}
}
