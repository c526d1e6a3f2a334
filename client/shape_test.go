package client

import (
	"reflect"
	"testing"
)

// msgs builds messages from a compact script: "i k a=1 b=2", "u k b=3",
// "d k", "utd", "refetch".
func script(lines ...string) []Message {
	var out []Message
	for _, l := range lines {
		f := splitFields(l)
		var m Message
		switch f[0] {
		case "i", "u", "d":
			m.Headers.Operation = map[string]Operation{"i": Insert, "u": Update, "d": Delete}[f[0]]
			m.Key = f[1]
			m.Value = Row{}
			for _, kv := range f[2:] {
				for j := range len(kv) {
					if kv[j] == '=' {
						m.Value[kv[:j]] = kv[j+1:]
					}
				}
			}
		case "utd":
			m.Headers.Control = UpToDate
		case "refetch":
			m.Headers.Control = MustRefetch
		case "end":
			m.Headers.Control = SnapshotEnd
		case "move":
			m.Headers.Event = "move-out"
		}
		out = append(out, m)
	}
	return out
}

func splitFields(s string) []string {
	var out []string
	cur := ""
	for _, c := range s + " " {
		if c == ' ' {
			if cur != "" {
				out = append(out, cur)
			}
			cur = ""
		} else {
			cur += string(c)
		}
	}
	return out
}

func TestShapeApply(t *testing.T) {
	type step = shapeApplyStep
	tests := []struct {
		name        string
		changesOnly bool
		steps       []step
	}{
		{
			name: "initial sync is invisible until up-to-date",
			steps: []step{
				{msgs: []string{"i 1 a=1", "i 2 a=2", "end"}, rows: map[string]Row{}},
				{msgs: []string{"u 1 a=9", "utd"}, upToDate: true, rows: map[string]Row{"1": {"a": "9"}, "2": {"a": "2"}}},
			},
		},
		{
			name: "partial updates merge, deletes remove, batches apply whole",
			steps: []step{
				{msgs: []string{"i 1 a=1 b=1", "i 2 a=2 b=2", "utd"}, upToDate: true,
					rows: map[string]Row{"1": {"a": "1", "b": "1"}, "2": {"a": "2", "b": "2"}}},
				{msgs: []string{"u 1 b=5", "d 2", "i 3 a=3"}, upToDate: true,
					rows: map[string]Row{"1": {"a": "1", "b": "1"}, "2": {"a": "2", "b": "2"}}},
				{msgs: []string{"u 3 b=3", "utd"}, upToDate: true,
					rows: map[string]Row{"1": {"a": "1", "b": "5"}, "3": {"a": "3", "b": "3"}}},
			},
		},
		{
			name: "key change is a delete and an insert",
			steps: []step{
				{msgs: []string{"i 1 id=1 v=x", "utd"}, upToDate: true, rows: map[string]Row{"1": {"id": "1", "v": "x"}}},
				{msgs: []string{"d 1 id=1", "i 2 id=2 v=x", "utd"}, upToDate: true, rows: map[string]Row{"2": {"id": "2", "v": "x"}}},
			},
		},
		{
			name: "must-refetch keeps the old view until the new one is complete",
			steps: []step{
				{msgs: []string{"i 1 a=1", "i 2 a=2", "utd"}, upToDate: true, rows: map[string]Row{"1": {"a": "1"}, "2": {"a": "2"}}},
				{msgs: []string{"u 1 a=5", "refetch", "i 2 a=22"}, upToDate: false, rows: map[string]Row{"1": {"a": "1"}, "2": {"a": "2"}}},
				{msgs: []string{"i 3 a=3", "d 3", "utd"}, upToDate: true, rows: map[string]Row{"2": {"a": "22"}}},
			},
		},
		{
			name: "events and unknown controls are ignored",
			steps: []step{
				{msgs: []string{"i 1 a=1", "move", "end", "utd"}, upToDate: true, rows: map[string]Row{"1": {"a": "1"}}},
			},
		},
		{
			name: "update of an unknown key inserts it (log=full)",
			steps: []step{
				{msgs: []string{"u 9 a=1", "utd"}, upToDate: true, rows: map[string]Row{"9": {"a": "1"}}},
			},
		},
		{
			name:        "changes_only ignores updates and deletes of unknown keys",
			changesOnly: true,
			steps: []step{
				{msgs: []string{"u 9 a=1", "d 8", "i 1 a=1", "u 1 b=2", "utd"}, upToDate: true, rows: map[string]Row{"1": {"a": "1", "b": "2"}}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { runShapeApplySteps(t, tt.changesOnly, tt.steps) })
	}
}

// shapeApplyStep is a step of TestShapeApply: messages, and the view after them.
type shapeApplyStep struct {
	msgs     []string
	upToDate bool
	rows     map[string]Row
}

// runShapeApplySteps applies each step to a Shape, checks its view after
// it, and at the end that it notified once per applied batch.
func runShapeApplySteps(t *testing.T, changesOnly bool, steps []shapeApplyStep) {
	sh := NewShape(nil)
	sh.changesOnly = changesOnly
	notified := 0
	sh.Subscribe(func(s *Shape) { notified++ })
	batches := 0
	for i, st := range steps {
		for _, m := range script(st.msgs...) {
			if sh.Apply(m) {
				batches++
			}
		}
		if got := sh.Rows(); !reflect.DeepEqual(got, st.rows) {
			t.Errorf("step %d: rows %v, want %v", i, got, st.rows)
		}
		if sh.IsUpToDate() != st.upToDate {
			t.Errorf("step %d: IsUpToDate %v", i, sh.IsUpToDate())
		}
		if sh.Len() != len(st.rows) {
			t.Errorf("step %d: Len %d", i, sh.Len())
		}
	}
	if notified != batches {
		t.Errorf("notified %d times for %d batches", notified, batches)
	}
}

func TestShapeRowsAreNotMutated(t *testing.T) {
	sh := NewShape(nil)
	for _, m := range script("i 1 a=1 b=1", "utd") {
		sh.Apply(m)
	}
	before, _ := sh.Get("1")
	for _, m := range script("u 1 a=2", "utd") {
		sh.Apply(m)
	}
	if before["a"] != "1" {
		t.Errorf("a row handed out earlier changed: %v", before)
	}
	if after, _ := sh.Get("1"); after["a"] != "2" || after["b"] != "1" {
		t.Errorf("after = %v", after)
	}
}

func TestShapeUnsubscribeAndWait(t *testing.T) {
	sh := NewShape(nil)
	n := 0
	unsub := sh.Subscribe(func(*Shape) { n++ })
	done := make(chan error)
	go func() { done <- sh.Wait(t.Context()) }()
	for _, m := range script("i 1 a=1", "utd") {
		sh.Apply(m)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	unsub()
	for _, m := range script("i 2 a=1", "utd") {
		sh.Apply(m)
	}
	if n != 1 {
		t.Errorf("notified %d times", n)
	}
}
