package keysync

import (
	"errors"
	"fmt"
	"testing"

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
		if dec.places != nil != (n > maxPlaceLog) {
			t.Errorf("%d rows: index built %v", n, dec.places != nil)
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
