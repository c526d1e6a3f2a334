package electrictest_test

import (
	"fmt"
	"maps"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"time"
)

// A follower materialises a shape from raw HTTP responses, like a
// client's Shape.
type follower struct {
	e       *env
	def     []string // the shape definition as key/value pairs
	handle  string
	offset  string
	cursor  string
	schema  string
	rows    map[string]map[string]any
	tags    map[string][]string // subquery shapes: each row's tags
	lenient bool                // changes_only: updates and deletes of unseen rows are fine
	log     []msg
	refetch int // 409s seen
}

func (e *env) newFollower(def ...string) *follower {
	return &follower{e: e, def: def, offset: "-1", rows: map[string]map[string]any{}}
}

// follow starts a follower and syncs it to up-to-date.
func (e *env) follow(def ...string) *follower {
	e.t.Helper()
	f := e.newFollower(def...)
	f.catchUp()
	return f
}

func (f *follower) query(live bool) string {
	kv := slices.Clone(f.def)
	kv = append(kv, "offset", f.offset)
	if f.offset != "-1" && f.offset != "now" {
		kv = append(kv, "handle", f.handle)
	}
	if live {
		kv = append(kv, "live", "true", "cursor", f.cursor)
	}
	return qs(kv...)
}

// step makes one request and applies its messages; it reports whether the
// response ended with up-to-date. A 409 resets the follower.
func (f *follower) step(live bool) (upToDate bool, msgs []msg) {
	t := f.e.t
	t.Helper()
	if f.offset == "-1" {
		live = false // live is invalid with offset=-1
	}
	r := f.e.request("GET", "/v1/shape?"+f.query(live))
	if r.status == http.StatusConflict {
		if string(r.body) != mustRefBody {
			t.Fatalf("409 body %s", r.body)
		}
		f.refetch++
		f.handle = r.header.Get("electric-handle")
		f.offset = "-1"
		f.rows = map[string]map[string]any{}
		f.tags = nil
		f.schema = ""
		return false, nil
	}
	r.expectStatus(t, http.StatusOK)
	if r.err != nil {
		t.Fatalf("reading body: %v", r.err)
	}
	f.handle = r.header.Get("electric-handle")
	f.offset = r.header.Get("electric-offset")
	if !handleRE.MatchString(f.handle) || !offsetRE.MatchString(f.offset) {
		t.Fatalf("bad handle %q or offset %q", f.handle, f.offset)
	}
	if live {
		f.cursor = r.header.Get("electric-cursor")
	} else if s := r.header.Get("electric-schema"); f.schema == "" {
		f.schema = s
	}
	msgs = r.msgs(t)
	f.apply(msgs)
	_, utd := r.header["Electric-Up-To-Date"]
	last := len(msgs) > 0 && msgs[len(msgs)-1].control() == "up-to-date"
	if utd != last {
		t.Fatalf("electric-up-to-date header %v but body ends with up-to-date %v", utd, last)
	}
	return utd, msgs
}

func (f *follower) apply(msgs []msg) {
	t := f.e.t
	t.Helper()
	if f.tags == nil {
		f.tags = map[string][]string{}
	}
	for _, m := range msgs {
		if m.control() != "" {
			continue
		}
		f.log = append(f.log, m)
		k := m.key()
		if tags, ok := m.headers()["tags"].([]any); ok {
			f.tags[k] = nil
			for _, tg := range tags {
				f.tags[k] = append(f.tags[k], tg.(string))
			}
		}
		switch ev, _ := m.headers()["event"].(string); ev {
		case "move-in":
			continue
		case "move-out":
			// Rows whose tag has the pattern's value at its position leave.
			for _, p := range m.headers()["patterns"].([]any) {
				pat := p.(map[string]any)
				pos, val := int(pat["pos"].(float64)), pat["value"].(string)
				for key, tags := range f.tags {
					for _, tg := range tags {
						if slots := strings.Split(tg, "/"); pos < len(slots) && slots[pos] == val {
							delete(f.rows, key)
							delete(f.tags, key)
							break
						}
					}
				}
			}
			continue
		}
		switch m.op() {
		case "insert":
			if _, ok := f.rows[k]; ok {
				for _, l := range f.log {
					if j := mustMarshal(l); strings.Contains(j, `"event"`) || l.key() == k {
						t.Log(j)
					}
				}
				t.Fatalf("insert of a row already present (doubled): %v", m)
			}
			f.rows[k] = maps.Clone(m.value())
		case "update":
			row, ok := f.rows[k]
			if !ok {
				if f.lenient {
					continue
				}
				t.Fatalf("update of a row not present (lost insert): %v", m)
			}
			maps.Copy(row, m.value())
		case "delete":
			if _, ok := f.rows[k]; !ok && !f.lenient {
				t.Fatalf("delete of a row not present: %v", m)
			}
			delete(f.rows, k)
			delete(f.tags, k)
		default:
			t.Fatalf("unexpected message %v", m)
		}
	}
}

// catchUp requests non-live until up-to-date.
func (f *follower) catchUp() {
	f.e.t.Helper()
	for i := 0; ; i++ {
		if i > 10000 {
			f.e.t.Fatal("no up-to-date after 10000 requests")
		}
		if utd, _ := f.step(false); utd {
			return
		}
	}
}

// live makes one live request and returns its change messages.
func (f *follower) live() []msg {
	f.e.t.Helper()
	_, msgs := f.step(true)
	var out []msg
	for _, m := range msgs {
		if m.control() == "" {
			out = append(out, m)
		}
	}
	return out
}

// liveUntil polls live until cond holds or the deadline passes.
func (f *follower) liveUntil(d time.Duration, cond func() bool) {
	f.e.t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			f.e.t.Fatalf("condition not met within %v; rows: %v", d, f.rows)
		}
		f.step(true)
	}
}

// converge follows the shape until it equals the rows of sql (see rows).
func (f *follower) converge(sql string, args ...any) {
	f.e.t.Helper()
	want := f.e.rows(sql, args...)
	deadline := time.Now().Add(30 * time.Second)
	for !reflect.DeepEqual(normBools(f.rows), normBools(want)) && time.Now().Before(deadline) {
		f.step(true)
		// A writer whose context was cancelled may still commit its last
		// transaction after want was read (the server finishes the query
		// the client gave up on): read the table again.
		want = f.e.rows(sql, args...)
	}
	f.equal(want)
}

// equal compares the materialised rows with what Postgres has.
func (f *follower) equal(want map[string]map[string]any) {
	f.e.t.Helper()
	if !reflect.DeepEqual(normBools(f.rows), normBools(want)) {
		var diff []string
		for k, w := range want {
			if g, ok := f.rows[k]; !ok {
				diff = append(diff, fmt.Sprintf("missing %s %v", k, w))
			} else if !reflect.DeepEqual(g, w) {
				diff = append(diff, fmt.Sprintf("differs %s: got %v want %v", k, g, w))
			}
		}
		for k, g := range f.rows {
			if _, ok := want[k]; !ok {
				diff = append(diff, fmt.Sprintf("extra %s %v", k, g))
			}
		}
		slices.Sort(diff)
		if len(diff) > 20 {
			diff = append(diff[:20], "...")
		}
		f.e.t.Fatalf("materialised shape differs from the table (%d vs %d rows):\n%s", len(f.rows), len(want), strings.Join(diff, "\n"))
	}
}

// normBools maps the booleans of replicated changes ("t", "f") to their
// snapshot form ("true", "false"), as clients parse both the same way (§4.2).
func normBools(rows map[string]map[string]any) map[string]map[string]any {
	out := make(map[string]map[string]any, len(rows))
	for k, r := range rows {
		n := make(map[string]any, len(r))
		for c, v := range r {
			switch v {
			case "t":
				v = "true"
			case "f":
				v = "false"
			}
			n[c] = v
		}
		out[k] = n
	}
	return out
}

// itemKey is the row key of public.items with a single PK value.
func itemKey(id string) string { return `"public"."items"/"` + id + `"` }
