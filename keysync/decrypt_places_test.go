package keysync

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"unsafe"

	"github.com/shapeseal/shapeseal/client"
)

// The places of rows are logged until an update needs one: the log,
// deletes included, replays into the index in order, across chunks and
// past the log's limit.
func TestDecrypterPlaceLog(t *testing.T) {
	acme, _ := NewKeyset("acme")
	globex, _ := NewKeyset("globex")
	seal := func(ks *Keyset, id, title string) string {
		row := map[string]any{"id": id, "tenant_id": ks.Tenant(), "title": title}
		if err := ringSpec.SealRow(ks, row); err != nil {
			t.Fatal(err)
		}
		return row["title"].(string)
	}
	msg := func(op client.Operation, id string, v client.Row) *client.Message {
		return &client.Message{Key: `"public"."items"/"` + id + `"`, Value: v,
			Headers: client.Headers{Operation: op, Relation: []string{"public", "items"}}}
	}
	for _, n := range []int{3, placeChunk + 5, maxPlaceLog + 5} {
		dec, err := NewDecrypter(staticRing(t, acme, globex), ringSpec)
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			ks := acme
			if i%2 == 1 {
				ks = globex
			}
			id := fmt.Sprint(i)
			row := client.Row{"id": id, "tenant_id": ks.Tenant()}
			if i < 4 || i > n-4 {
				row["title"] = seal(ks, id, "t"+id) // the rest need no crypto to be logged
			}
			dec.Transform(msg(client.Insert, id, row))
		}
		dec.Transform(msg(client.Delete, "0", client.Row{"id": "0"}))
		if places := dec.only.rows.rows; places != nil != (n > maxPlaceLog) {
			t.Errorf("%d rows: index built %v", n, places != nil)
		}
		for _, id := range []string{"1", "2", fmt.Sprint(n - 2)} {
			ks := acme
			if id == "1" || (n-2)%2 == 1 && id == fmt.Sprint(n-2) {
				ks = globex
			}
			m := msg(client.Update, id, client.Row{"id": id, "title": seal(ks, id, "new "+id)})
			dec.Transform(m)
			if m.Value["title"] != "new "+id {
				t.Errorf("%d rows: update of %s without its tenant: %#v", n, id, m.Value["title"])
			}
		}
		m := msg(client.Update, "0", client.Row{"id": "0", "title": seal(acme, "0", "gone")})
		dec.Transform(m)
		if ce, ok := m.Value["title"].(*CellError); !ok || !errors.Is(ce, ErrInvalidContext) {
			t.Errorf("%d rows: update of a deleted row: %#v", n, m.Value["title"])
		}
	}
}

// A decrypter remembers of most rows only that it has seen them: rows of
// the table's first tenant whose row key is their Electric key. An update
// that omits their tenant finds it again all the same, as it does for rows
// of another tenant and rows whose row key is not their key, whose places
// are kept, copied out of the messages.
func TestDecrypterRemembersLittle(t *testing.T) {
	acme, _ := NewKeyset("acme")
	globex, _ := NewKeyset("globex")
	spec := TableSpec{Table: "items", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"ext"}}
	dec, err := NewDecrypter(staticRing(t, acme, globex), spec)
	if err != nil {
		t.Fatal(err)
	}
	seal := func(ks *Keyset, ext, title string) string {
		cell, err := Seal(ks, CellContext{Table: "public.items", Column: "title", Tenant: ks.Tenant(), RowKey: []string{ext}}, []byte(title))
		if err != nil {
			t.Fatal(err)
		}
		return cell
	}
	// Rows 1 and 2 are told again; 3 has another tenant; 4's row key is
	// not its key. Each message's strings share one big string, as the
	// client's do.
	rows := []struct {
		id, ext string
		ks      *Keyset
	}{{"1", "1", acme}, {"2", "2", acme}, {"3", "3", globex}, {"4", "x4", acme}}
	var big []string
	for _, r := range rows {
		raw := strings.Repeat(" ", 1000) + `"public"."items"/"` + r.id + `"` + r.ext + r.ks.Tenant()
		big = append(big, raw)
		i := 1000
		key := raw[i : i+len(`"public"."items"/"`)+len(r.id)+1]
		i += len(key)
		ext, tenant := raw[i:i+len(r.ext)], raw[i+len(r.ext):]
		m := &client.Message{Key: key, Headers: client.Headers{Operation: client.Insert, Relation: []string{"public", "items"}},
			Value: client.Row{"id": r.id, "ext": ext, "tenant_id": tenant, "title": seal(r.ks, r.ext, "t")}}
		if err := dec.Transform(m); err != nil || m.Value["title"] != "t" {
			t.Fatalf("insert %s: %v, %#v", r.id, err, m.Value["title"])
		}
	}
	kept := dec.only.rows.kept
	if len(kept) != 2 || kept[0].tenant != "globex" || kept[1].rowKey != "x4" {
		t.Fatalf("kept %+v, want the places of rows 3 and 4", kept)
	}
	for _, p := range append(kept, place{tenant: dec.only.tenant}) {
		for _, s := range []string{p.tenant, p.rowKey} {
			for _, raw := range big {
				if s != "" && uintptr(unsafe.Pointer(unsafe.StringData(s)))-uintptr(unsafe.Pointer(unsafe.StringData(raw))) < uintptr(len(raw)) {
					t.Errorf("a remembered place holds %q of a message's memory", s)
				}
			}
		}
	}
	for _, r := range rows {
		key := `"public"."items"/"` + r.id + `"`
		v := client.Row{"id": r.id, "title": seal(r.ks, r.ext, "new")}
		if r.ext == r.id {
			// The Electric key holds the row key: the update may omit it.
		} else {
			v["ext"] = r.ext
		}
		m := &client.Message{Key: key, Headers: client.Headers{Operation: client.Update, Relation: []string{"public", "items"}}, Value: v}
		if err := dec.Transform(m); err != nil || m.Value["title"] != "new" {
			t.Errorf("update of %s without its tenant: %v, %#v", r.id, err, m.Value["title"])
		}
	}
	// An update of row 4 that omits its row key finds the kept one.
	m := &client.Message{Key: `"public"."items"/"4"`, Headers: client.Headers{Operation: client.Update, Relation: []string{"public", "items"}},
		Value: client.Row{"id": "4", "title": seal(acme, "x4", "newer")}}
	if err := dec.Transform(m); err != nil || m.Value["title"] != "newer" {
		t.Errorf("update of 4 without its row key: %v, %#v", err, m.Value["title"])
	}
}
