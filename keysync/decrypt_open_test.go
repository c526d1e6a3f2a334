package keysync

import (
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
