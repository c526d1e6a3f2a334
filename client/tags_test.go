package client

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// tagScript builds messages: "i k t1,t2" (insert with tags), "i k -" (no
// tags), "u k +t3 -t1" (update adding t3, removing t1), "d k",
// "out 0:v 1:w" (move-out with patterns), "in 0:v" (move-in), "utd",
// "refetch". Every row's value is {"id": k, "n": <step>}.
func tagScript(t *testing.T, lines ...string) []Message {
	t.Helper()
	var out []Message
	var d decoder
	for n, l := range lines {
		f := strings.Fields(l)
		var js string
		q := jsonStrings
		switch f[0] {
		case "i", "u", "d":
			op := map[string]string{"i": "insert", "u": "update", "d": "delete"}[f[0]]
			h := fmt.Sprintf(`"operation":%q`, op)
			var tags, removed []string
			for _, a := range f[2:] {
				switch {
				case a == "-":
				case f[0] == "i":
					tags = strings.Split(a, ",")
				case a[0] == '+':
					tags = append(tags, a[1:])
				case a[0] == '-':
					removed = append(removed, a[1:])
				}
			}
			if tags != nil {
				h += `,"tags":` + q(tags)
			}
			if f[0] == "u" {
				h += `,"removed_tags":` + q(removed)
			}
			js = fmt.Sprintf(`{"key":%q,"value":{"id":%q,"n":"%d"},"headers":{%s}}`, f[1], f[1], n, h)
		case "out", "in":
			var ps []string
			for _, p := range f[1:] {
				pos, val, _ := strings.Cut(p, ":")
				ps = append(ps, fmt.Sprintf(`{"pos":%s,"value":%q}`, pos, val))
			}
			js = fmt.Sprintf(`{"headers":{"event":"move-%s","patterns":[%s],"txids":[7]}}`, f[0], strings.Join(ps, ","))
		case "utd":
			js = `{"headers":{"control":"up-to-date"}}`
		case "refetch":
			js = `{"headers":{"control":"must-refetch"}}`
		default:
			t.Fatalf("bad line %q", l)
		}
		m, err := d.parseMessage([]byte(js), 0)
		if err != nil {
			t.Fatalf("%s: %v", js, err)
		}
		out = append(out, m)
	}
	return out
}

func jsonStrings(v []string) string {
	var b strings.Builder
	b.WriteByte('[')
	for i, s := range v {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%q", s)
	}
	b.WriteByte(']')
	return b.String()
}

type tagRow struct {
	ID string `shape:"id"`
	N  string `shape:"n"`
}

// TestShapeTags applies the same messages to a Shape and a TypedShape and
// checks after each up-to-date that both hold the keys of the step.
func TestShapeTags(t *testing.T) {
	type step = tagStep
	tests := []struct {
		name  string
		steps []step
	}{
		{"move-out removes the rows of the value, not untagged rows", []step{
			{[]string{"i a x", "i b y", "i c -", "utd"}, "a,b,c"},
			{[]string{"out 0:x"}, "a,b,c"}, // until the up-to-date
			{[]string{"utd"}, "b,c"},
			{[]string{"out 0:y 0:z", "out 0:w", "utd"}, "c"},
		}},
		{"a row with several tags stays until all are gone", []step{
			{[]string{"i a x,y", "i b y", "utd"}, "a,b"},
			{[]string{"out 0:y", "utd"}, "a"},
			{[]string{"out 0:q", "utd"}, "a"},
			{[]string{"out 0:x", "utd"}, ""},
		}},
		{"patterns match one slot of multi-slot tags", []step{
			{[]string{"i a 1/h1/1", "i b 1/h2/1", "i c 1/h1/1,1/h3/1", "utd"}, "a,b,c"},
			{[]string{"out 0:h1", "out 2:h1", "utd"}, "a,b,c"}, // wrong slot
			{[]string{"out 1:h1", "utd"}, "b,c"},
			{[]string{"out 1:h3 1:h2", "utd"}, ""},
		}},
		{"updates remove and add tags", []step{
			{[]string{"i a x", "i b x", "utd"}, "a,b"},
			{[]string{"u a -x +y", "u b +z", "utd"}, "a,b"},
			{[]string{"out 0:x", "utd"}, "a,b"}, // b still has z
			{[]string{"out 0:z", "utd"}, "a"},
			{[]string{"u a", "out 0:y", "utd"}, ""}, // an update without tags keeps them
		}},
		{"delete drops tags, re-insert starts afresh", []step{
			{[]string{"i a x", "d a", "i a y", "out 0:x", "utd"}, "a"},
			{[]string{"out 0:y", "i b x", "utd"}, "b"},
			{[]string{"i b -", "out 0:x", "utd"}, "b"}, // insert replaces the tags
		}},
		{"move-in events change nothing, their inserts do", []step{
			{[]string{"i a x", "utd"}, "a"},
			{[]string{"in 0:y", "i b y", "utd"}, "a,b"},
			{[]string{"out 0:y", "in 0:x", "utd"}, "a"},
		}},
		{"must-refetch clears the tags", []step{
			{[]string{"i a x", "i b x", "utd"}, "a,b"},
			{[]string{"refetch", "i a -", "i b y"}, "a,b"},
			{[]string{"out 0:x", "utd"}, "a,b"},
			{[]string{"out 0:y", "utd"}, "a"},
			{[]string{"refetch", "i c z", "out 0:z", "utd"}, ""},
		}},
		{"move-out after must-refetch, before the up-to-date", []step{
			{[]string{"i a x", "utd"}, "a"},
			{[]string{"refetch", "i a x", "i b x", "i c y", "out 0:x"}, "a"},
			{[]string{"utd"}, "c"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { runTagSteps(t, tt.steps) })
	}
}

// tagStep is a step of TestShapeTags: messages, and the keys in view after them.
type tagStep struct {
	msgs []string
	keys string // the view after them (both shapes: up-to-date last)
}

// runTagSteps applies each step to a Shape and a TypedShape and checks
// the keys in both views after it.
func runTagSteps(t *testing.T, steps []tagStep) {
	sh := NewShape(nil)
	ts, err := NewTypedShape[tagRow](nil)
	if err != nil {
		t.Fatal(err)
	}
	for i, st := range steps {
		for _, m := range tagScript(t, st.msgs...) {
			sh.Apply(m)
			if _, err := ts.Apply(m); err != nil {
				t.Fatal(err)
			}
		}
		got := slices.Sorted(func(yield func(string) bool) {
			for k := range sh.Rows() {
				if !yield(k) {
					return
				}
			}
		})
		if s := strings.Join(got, ","); s != st.keys {
			t.Errorf("step %d: Shape keys %q, want %q", i, s, st.keys)
		}
		var tk []string
		for k, v := range ts.All() {
			if v.ID != k {
				t.Errorf("step %d: typed row %s = %+v", i, k, v)
			}
			tk = append(tk, k)
		}
		if s := strings.Join(tk, ","); s != st.keys {
			t.Errorf("step %d: TypedShape keys %q, want %q", i, s, st.keys)
		}
	}
}

func TestShapeMoveOutBatch(t *testing.T) {
	ts, _ := NewTypedShape[tagRow](nil)
	var batches []*Batch[tagRow]
	ts.Subscribe(func(b *Batch[tagRow]) { batches = append(batches, b) })
	for _, m := range tagScript(t, "i a x", "i b y", "utd", "u a +z", "out 0:y 0:x", "utd") {
		if _, err := ts.Apply(m); err != nil {
			t.Fatal(err)
		}
	}
	b := batches[1]
	if len(b.Deleted) != 1 || b.Deleted[0].Key != "b" || b.Deleted[0].Value.N != "1" ||
		len(b.Updated) != 1 || b.Updated[0].Key != "a" || len(b.Inserted) != 0 {
		t.Errorf("batch %+v", b)
	}
}

// The tags of a row are its own copy: the decoder shares equal lists
// between messages, and the rows' sets never write into them.
func TestRowTagsShareNothingWritable(t *testing.T) {
	var rt rowTags
	shared := []string{"x", "y"}
	rt.change(&Message{Key: "a", Headers: Headers{Operation: Insert, Tags: shared}})
	rt.change(&Message{Key: "b", Headers: Headers{Operation: Insert, Tags: shared}})
	rt.change(&Message{Key: "a", Headers: Headers{Operation: Update, Tags: []string{"z"}, RemovedTags: []string{"x"}}})
	rt.change(&Message{Key: "c", Headers: Headers{Operation: Insert, Tags: []string{"q", "q", "r"}}})
	var gone []string
	rt.moveOut([]MovePattern{{0, "y"}}, func(k string) { gone = append(gone, k) })
	if !reflect.DeepEqual(shared, []string{"x", "y"}) {
		t.Fatalf("shared list modified: %q", shared)
	}
	want := map[string][]string{"a": {"z"}, "b": {"x"}, "c": {"q", "r"}}
	if !reflect.DeepEqual(rt.rows, want) || len(gone) != 0 {
		t.Fatalf("rows %q gone %q", rt.rows, gone)
	}
	rt.moveOut([]MovePattern{{0, "x"}, {0, "z"}}, func(k string) { gone = append(gone, k) })
	slices.Sort(gone)
	if !slices.Equal(gone, []string{"a", "b"}) || len(rt.index) != 2 {
		t.Fatalf("gone %q index %v", gone, rt.index)
	}
}

func TestTagSlot(t *testing.T) {
	for _, c := range []struct {
		tag  string
		pos  int
		want string
		ok   bool
	}{
		{"abc", 0, "abc", true}, {"abc", 1, "", false}, {"1/h/1", 1, "h", true},
		{"1/h/1", 2, "1", true}, {"1/h/1", 3, "", false}, {"a//b", 1, "", true}, {"x", -1, "", false},
	} {
		if v, ok := tagSlot(c.tag, c.pos); v != c.want || ok != c.ok {
			t.Errorf("tagSlot(%q, %d) = %q, %v", c.tag, c.pos, v, ok)
		}
	}
}
