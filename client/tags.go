package client

// rowTags keeps the tags of the rows of a subquery shape, as Electric's
// clients do, to apply move-out events: each row's set of tags, and an
// index from (slot position, slot value) to the rows having a tag with
// that slot. It stays empty (and costs nothing) for shapes without tags.
// The tag slices it keeps are never modified: a change builds a new one.
type rowTags struct {
	rows  map[string][]string             // key → tags (never empty)
	index map[slotRef]map[string]struct{} // slot → keys
}

type slotRef struct {
	pos   int
	value string
}

// reset forgets every row (must-refetch).
func (t *rowTags) reset() {
	t.rows, t.index = nil, nil
}

// change applies the tags of an applied change message: an insert sets the
// row's tags, an update takes away removed_tags and adds tags, a delete
// drops them.
func (t *rowTags) change(m *Message) {
	h := &m.Headers
	switch h.Operation {
	case Insert:
		if len(t.rows) > 0 {
			t.drop(m.Key)
		}
		t.set(m.Key, nil, h.Tags)
	case Update:
		old := t.rows[m.Key]
		if len(h.RemovedTags) == 0 && len(h.Tags) == 0 {
			return
		}
		if len(old) > 0 {
			t.drop(m.Key)
		}
		var kept []string
		for _, tg := range old {
			if !contains(h.RemovedTags, tg) {
				kept = append(kept, tg)
			}
		}
		t.set(m.Key, kept, h.Tags)
	case Delete:
		if len(t.rows) > 0 {
			t.drop(m.Key)
		}
	}
}

// set gives key the tags base ∪ add (base is the set's own, add is not).
func (t *rowTags) set(key string, base, add []string) {
	tags := base
	shared := base == nil // tags is add[:len(tags)], or owned
	for i, tg := range add {
		if contains(tags, tg) {
			continue
		}
		if shared && len(tags) == i {
			// no duplicates in add so far: share it, as the decoder
			// shares equal tag lists between messages
			tags = add[:i+1]
			continue
		}
		if shared {
			tags = append([]string(nil), tags...)
			shared = false
		}
		tags = append(tags, tg)
	}
	if len(tags) == 0 {
		return
	}
	if shared {
		tags = tags[:len(tags):len(tags)]
	}
	if t.rows == nil {
		t.rows = map[string][]string{}
		t.index = map[slotRef]map[string]struct{}{}
	}
	t.rows[key] = tags
	for _, tg := range tags {
		forSlots(tg, func(s slotRef) {
			keys := t.index[s]
			if keys == nil {
				keys = map[string]struct{}{}
				t.index[s] = keys
			}
			keys[key] = struct{}{}
		})
	}
}

// drop forgets the tags of key.
func (t *rowTags) drop(key string) {
	tags, ok := t.rows[key]
	if !ok {
		return
	}
	delete(t.rows, key)
	for _, tg := range tags {
		forSlots(tg, func(s slotRef) {
			if keys := t.index[s]; keys != nil {
				delete(keys, key)
				if len(keys) == 0 {
					delete(t.index, s)
				}
			}
		})
	}
}

// moveOut applies a move-out event: every row loses its tags matching one
// of the patterns, and gone is called with each row that has no tag left,
// which must then leave the view.
func (t *rowTags) moveOut(patterns []MovePattern, gone func(key string)) {
	if len(t.rows) == 0 {
		return
	}
	var keys []string
	for _, p := range patterns {
		for k := range t.index[slotRef{p.Pos, p.Value}] {
			keys = append(keys, k)
		}
	}
	for _, k := range keys {
		old, ok := t.rows[k]
		if !ok {
			continue // seen already
		}
		var kept []string
		for _, tg := range old {
			if !matchesAny(patterns, tg) {
				kept = append(kept, tg)
			}
		}
		if len(kept) == len(old) {
			continue
		}
		t.drop(k)
		if len(kept) == 0 {
			gone(k)
			continue
		}
		t.set(k, kept, nil)
	}
}

func matchesAny(patterns []MovePattern, tag string) bool {
	for _, p := range patterns {
		if p.matches(tag) {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// forSlots calls f with each slot of tag.
func forSlots(tag string, f func(slotRef)) {
	pos, start := 0, 0
	for i := 0; i <= len(tag); i++ {
		if i == len(tag) || tag[i] == '/' {
			f(slotRef{pos, tag[start:i]})
			pos++
			start = i + 1
		}
	}
}
