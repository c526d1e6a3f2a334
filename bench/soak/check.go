package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/shapeseal/shapeseal/keysync"
)

// compare counts the differences between what the reader's Shapes hold
// and want (every table's rows, from the oracle), and describes the first.
// A reader sees the rows of its token's tenants, every cell opened, except
// a revokee, for which a cell it cannot open is a *keysync.CellError.
func (r *reader) compare(want map[string]map[string]wantRow) (diffs int, first string) {
	note := func(format string, args ...any) {
		diffs++
		if first == "" {
			first = fmt.Sprintf(format, args...)
		}
	}
	if r.shapes == nil {
		note("never started")
		return diffs, first
	}
	for _, table := range r.tables() {
		got := r.shapes[table].Rows()
		seen := 0
		for key, w := range want[table] {
			if !slices.Contains(r.u.tenants, w.tenant) {
				continue
			}
			seen++
			row, ok := got[key]
			if !ok {
				note("%s: missing %s", table, key)
				continue
			}
			for col, v := range w.values {
				if msg := r.mismatch(row[col], v); msg != "" {
					note("%s: %s.%s: %s", table, key, col, msg)
				}
			}
		}
		if extra := len(got) - seen; extra > 0 {
			for key := range got {
				if w, ok := want[table][key]; !ok || !slices.Contains(r.u.tenants, w.tenant) {
					note("%s: extra %s", table, key)
				}
			}
		}
	}
	return diffs, first
}

// mismatch says how a value differs from the wanted one ("" if it does
// not).
func (r *reader) mismatch(got any, want string) string {
	if want == null {
		if got != nil {
			return fmt.Sprintf("%v, want NULL", got)
		}
		return ""
	}
	switch g := got.(type) {
	case string:
		if g != want {
			return "another value"
		}
		return ""
	case *keysync.CellError:
		if r.u.role == "revokee" && r.heldBefore.Load() != nil {
			return "" // revoked: not opening is right
		}
		return "did not open: " + g.Error()
	default:
		return fmt.Sprintf("a %T", got)
	}
}

// settle waits, up to limit, until every reader's Shapes equal the
// oracle's rows, and returns the readers that do not and their
// differences.
func settle(ctx context.Context, w *world, readers []*reader, limit time.Duration) (lagging map[*reader]int, err error) {
	deadline := time.Now().Add(limit)
	for {
		want := map[string]map[string]wantRow{}
		for t := range specs {
			if want[t], err = w.expected(ctx, t); err != nil {
				return nil, err
			}
		}
		lagging = map[*reader]int{}
		var example string
		for _, r := range readers {
			if d, first := r.compare(want); d > 0 {
				lagging[r] = d
				if example == "" {
					example = r.u.name + " (" + r.mode + "): " + first
				}
			}
		}
		if len(lagging) == 0 || time.Now().After(deadline) {
			for r, d := range lagging {
				_, first := r.compare(want)
				logf("%s (%s, %s): %d differences, first: %s; stopped: %v", r.u.name, r.mode, r.u.role, d, first, r.failure())
			}
			return lagging, nil
		}
		logf("settling: %d readers behind, e.g. %s", len(lagging), example)
		select {
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), errors.New("settling interrupted"))
		case <-time.After(2 * time.Second):
		}
	}
}
