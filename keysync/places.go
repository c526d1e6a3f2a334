package keysync

// rowPlaces is what a decrypter remembers of a table's rows, for the
// updates that omit their place (replica=default sends an update's primary
// key and changed columns only). For most rows that is only that it has
// seen them: a row whose tenant is the tenant of the table's first row (a
// shape is usually one tenant's rows) and whose row key is what its
// Electric key holds (the row key is usually the primary key) has a place
// that its later messages tell again. The others' places are kept, copied
// out of their messages, so that remembering a row never keeps a message's
// memory alive.
//
// Rows are known by a 64-bit hash of their message keys, keyed with a seed
// random to the decrypter: two rows of a table of n rows share one with a
// chance of about n²/2⁶⁵ (one in 10⁸ for a million rows). The later one's
// place then stands for both, and an update of the earlier that omits its
// place has its cells bound to the later one's: they fail to open
// (ErrAuth), as with any wrong place, and never open as another row's.
//
// Until a message needs a place looked up, rows are recorded in a log:
// appending to it costs far less than inserting into a map that grows
// with the shape, and most shapes' rows (inserts, replica=full updates,
// updates that keep the tenant column) never need a lookup. The first
// lookup, or a log grown to maxPlaceLog records, replays it into the map,
// which is used from then on. The log is chunked, so that growing it
// copies nothing; it and the map hold no pointers, so the collector never
// scans them.
type rowPlaces struct {
	rows map[uint64]int32 // by key hash: toldAgain, or an index in kept; nil until needed
	log  placeLog         // the rows recorded while rows is nil
	kept []place          // the places of rows that are not toldAgain
}

const (
	toldAgain  int32 = -1 // the row's later messages tell its place again
	deletedRow int32 = -2 // in the log: the row was deleted
)

// A placeLog records rows in order.
type placeLog struct {
	chunks [][]placeRec
	n      int
}

type placeRec struct {
	key uint64
	ref int32 // toldAgain, deletedRow or an index in kept
}

const (
	placeChunk  = 4096
	maxPlaceLog = 1 << 18
)

// keep adds p to the kept places and returns its index, first dropping
// those no row refers to any more once they outnumber the others.
func (r *rowPlaces) keep(p place) int32 {
	if r.rows != nil && len(r.kept) >= 1024 && len(r.kept) > 2*len(r.rows) {
		r.compact()
	}
	r.kept = append(r.kept, p)
	return int32(len(r.kept) - 1)
}

// compact drops the kept places that no row refers to.
func (r *rowPlaces) compact() {
	kept := make([]place, 0, len(r.rows)/4+1)
	for k, ref := range r.rows {
		if ref >= 0 {
			kept = append(kept, r.kept[ref])
			r.rows[k] = int32(len(kept) - 1)
		}
	}
	r.kept = kept
}

// record notes a row by its key's hash: ref is toldAgain, deletedRow or
// what keep returned. The decrypter's mu is held.
func (r *rowPlaces) record(key uint64, ref int32) {
	if r.rows != nil {
		if ref == deletedRow {
			delete(r.rows, key)
		} else {
			r.rows[key] = ref
		}
		return
	}
	l := &r.log
	c := l.n / placeChunk
	if c == len(l.chunks) {
		n := placeChunk
		if c == 0 {
			n = 64 // grows: most decrypters see few rows, or need the index soon
		}
		l.chunks = append(l.chunks, make([]placeRec, 0, n))
	}
	l.chunks[c] = append(l.chunks[c], placeRec{key, ref})
	l.n++
	if l.n >= maxPlaceLog {
		r.index()
	}
}

// lookup returns the place of the row whose message key is key (hash
// being its hash), if t's decrypter has seen the row and not its delete.
// The decrypter's mu is held.
func (r *rowPlaces) lookup(hash uint64, key string, t *decTable) (place, bool) {
	r.index()
	ref, ok := r.rows[hash]
	switch {
	case !ok:
		return place{}, false
	case ref >= 0:
		return r.kept[ref], true
	case t.spec.UnboundRows:
		return place{tenant: t.tenant}, true
	}
	rowKey, ok := keyRowKey(key, len(t.spec.RowKey))
	return place{t.tenant, rowKey}, ok
}

// index makes r.rows hold the rows recorded so far; the decrypter's mu is
// held.
func (r *rowPlaces) index() {
	if r.rows != nil {
		return
	}
	r.rows = make(map[uint64]int32, r.log.n)
	for _, c := range r.log.chunks {
		for _, rec := range c {
			if rec.ref == deletedRow {
				delete(r.rows, rec.key)
			} else {
				r.rows[rec.key] = rec.ref
			}
		}
	}
	r.log = placeLog{}
	if len(r.kept) >= 1024 && len(r.kept) > 2*len(r.rows) {
		r.compact()
	}
}
