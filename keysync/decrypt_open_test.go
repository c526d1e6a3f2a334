package keysync

import (
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/shapeseal/shapeseal/client"
)

// TestDecrypterManyCells opens messages whose cells share one allocation of
// plaintext: in the value and the old value, of every length (empty too),
// next to cells that fail, which must neither shift nor leak into the
// plaintexts of the others.
func TestDecrypterManyCells(t *testing.T) {
	ks, _ := NewKeyset("acme")
	spec := TableSpec{Table: "items", Columns: []string{"a", "b", "c", "d"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	dec, err := NewDecrypter(staticRing(t, ks), spec)
	if err != nil {
		t.Fatal(err)
	}
	seal := func(col, id, pt string) string {
		c := CellContext{Table: "public.items", Column: col, Tenant: "acme", RowKey: []string{id}}
		cell, err := Seal(ks, c, []byte(pt))
		if err != nil {
			t.Fatal(err)
		}
		return cell
	}
	long := strings.Repeat("long plaintext ", 300)
	m := &client.Message{
		Key:     `"public"."items"/"7"`,
		Headers: client.Headers{Operation: client.Update, Relation: []string{"public", "items"}},
		Value: client.Row{"id": "7", "tenant_id": "acme",
			"a": seal("a", "7", "first"), "b": seal("a", "7", "sealed for a"), "c": seal("c", "7", ""), "d": seal("d", "7", long)},
		OldValue: client.Row{"a": seal("a", "7", "old first"), "b": nil, "c": "plain", "d": seal("d", "7", "old d")},
	}
	if err := dec.Transform(m); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{"a": "first", "b": "auth", "c": "", "d": long}
	wantOld := map[string]any{"a": "old first", "b": nil, "c": "not_encrypted", "d": "old d"}
	for _, rw := range []struct {
		row  client.Row
		want map[string]any
	}{{m.Value, want}, {m.OldValue, wantOld}} {
		for col, w := range rw.want {
			got := rw.row[col]
			if ce, ok := got.(*CellError); ok {
				got = ce.Code()
			}
			if got != w {
				t.Errorf("%s: %#v, want %#v", col, got, w)
			}
		}
	}
}

// TestDecrypterBatch opens a batch large enough to be shared among
// goroutines, with rows of two tenants (one whose key the ring lacks),
// cells that fail, NULLs, updates that take their place from an earlier
// message of the same batch and deletes, and checks that every row ends as
// it does when the same messages are transformed one at a time.
func TestDecrypterBatch(t *testing.T) {
	acme, _ := NewKeyset("acme")
	globex, _ := NewKeyset("globex") // not in the ring
	spec := TableSpec{Table: "items", Columns: []string{"a", "b"}, TenantColumn: "tenant_id", RowKey: []string{"org", "id"}}
	ring := staticRing(t, acme)
	one, err := NewDecrypter(ring, spec)
	if err != nil {
		t.Fatal(err)
	}
	want := batchMessages(t, acme, globex)
	for _, m := range want {
		if err := one.TransformContext(t.Context(), m); err != nil {
			t.Fatal(err)
		}
	}
	batch, _ := NewDecrypter(ring, spec)
	got := batchMessages(t, acme, globex)
	for i := 0; i < len(got); i += 128 {
		if err := batch.TransformBatch(t.Context(), got[i:min(i+128, len(got))]); err != nil {
			t.Fatal(err)
		}
	}
	w, g := showCells(want), showCells(got)
	if !slices.Equal(w, g) {
		for i := range w {
			if w[i] != g[i] {
				t.Fatalf("line %d: one at a time %q, in batches %q", i, w[i], g[i])
			}
		}
	}
	// What the test is about happened: plaintext, each kind of failure,
	// and updates that took their place from the batch.
	for _, s := range []string{`"public"."items"/"o"/"8" update b: new b8`, `"public"."items"/"o"/"3" insert a: error no_key`,
		`"public"."items"/"o"/"1" insert b: error auth`, `"public"."items"/"o"/"2" insert b: bb`, `"public"."items"/"o"/"0" insert b: <nil>`} {
		if !slices.Contains(g, s) {
			t.Errorf("no %q", s)
		}
	}
	if runtime.GOMAXPROCS(0) < 2 {
		t.Log("GOMAXPROCS is 1: the batches were opened by one goroutine")
	}
}

// batchMessages is TestDecrypterBatch's messages: 300 rows of acme and
// globex, some with cells that fail, updates that omit the tenant, deletes.
func batchMessages(t *testing.T, acme, globex *Keyset) []*client.Message {
	var ms []*client.Message
	for i := range 300 {
		id := strconv.Itoa(i)
		ks, tenant := acme, "acme"
		if i%7 == 3 {
			ks, tenant = globex, "globex"
		}
		seal := func(col, pt string) string {
			cell, err := Seal(ks, CellContext{Table: "public.items", Column: col, Tenant: tenant, RowKey: []string{"o", id}}, []byte(pt))
			if err != nil {
				t.Fatal(err)
			}
			return cell
		}
		key := `"public"."items"/"o"/"` + id + `"`
		h := client.Headers{Operation: client.Insert, Relation: []string{"public", "items"}}
		v := client.Row{"org": "o", "id": id, "tenant_id": tenant, "a": seal("a", "a"+id), "b": nil}
		switch i % 5 {
		case 1:
			v["b"] = seal("a", "b"+id) // sealed for another column: auth
		case 2:
			v["b"] = seal("b", strings.Repeat("b", i))
		}
		ms = append(ms, &client.Message{Key: key, Headers: h, Value: v})
		if i%4 == 0 {
			// An update without the tenant column: its place is the
			// insert's, just before it in the batch.
			u := client.Row{"org": "o", "id": id, "b": seal("b", "new b"+id)}
			ms = append(ms, &client.Message{Key: key, Headers: client.Headers{Operation: client.Update, Relation: h.Relation}, Value: u})
		}
		if i%9 == 0 {
			ms = append(ms, &client.Message{Key: key, Headers: client.Headers{Operation: client.Delete, Relation: h.Relation},
				Value: client.Row{"org": "o", "id": id}})
		}
	}
	return ms
}

// showCells lists the a and b cells of ms as text, errors by their code.
func showCells(ms []*client.Message) []string {
	var out []string
	for _, m := range ms {
		for _, col := range []string{"a", "b"} {
			v := m.Value[col]
			if e, ok := v.(*CellError); ok {
				v = "error " + e.Code()
			}
			out = append(out, fmt.Sprintf("%s %s %s: %v", m.Key, m.Headers.Operation, col, v))
		}
	}
	return out
}

// boxString's value is a string like any other: equal to the converted
// string, switched on, compared and printed as one, and keeping its
// header's array alive for the collector.
func TestBoxString(t *testing.T) {
	strs := make([]string, 2)
	strs[0], strs[1] = "first", strings.Repeat("x", 100)
	a, b := boxString(&strs[0]), boxString(&strs[1])
	strs = nil
	runtime.GC()
	if a != any("first") || b != any(strings.Repeat("x", 100)) {
		t.Fatalf("boxed %#v, %#v", a, b)
	}
	if s, ok := a.(string); !ok || s != "first" {
		t.Fatalf("a.(string) = %q, %v", s, ok)
	}
	switch v := b.(type) {
	case string:
		if len(v) != 100 {
			t.Fatal(len(v))
		}
	default:
		t.Fatalf("b is %T", b)
	}
	if fmt.Sprint(a) != "first" || fmt.Sprintf("%T", a) != "string" {
		t.Fatal(fmt.Sprint(a))
	}
	m := map[any]int{"first": 1}
	if m[a] != 1 {
		t.Fatal("not a map key equal to the string")
	}
}
