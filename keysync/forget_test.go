package keysync

import (
	"context"
	"fmt"
	"io"
	"iter"
	"testing"

	"github.com/shapeseal/shapeseal/client"
)

// sliceStream is a client.Stream over a list of messages.
type sliceStream struct {
	msgs []client.Message
	xf   func(*client.Message) error
}

func (s *sliceStream) Next(ctx context.Context) (client.Message, error) {
	if len(s.msgs) == 0 {
		return client.Message{}, io.EOF
	}
	m := s.msgs[0]
	s.msgs = s.msgs[1:]
	if m.IsChange() {
		if err := s.xf(&m); err != nil {
			return m, err
		}
	}
	return m, nil
}

func (s *sliceStream) Messages(ctx context.Context) iter.Seq2[client.Message, error] {
	return func(yield func(client.Message, error) bool) {
		for {
			m, err := s.Next(ctx)
			if err == io.EOF || !yield(m, err) || err != nil {
				return
			}
		}
	}
}

func (s *sliceStream) Close() error          { return nil }
func (s *sliceStream) Offset() string        { return "" }
func (s *sliceStream) Handle() string        { return "" }
func (s *sliceStream) IsUpToDate() bool      { return false }
func (s *sliceStream) Schema() client.Schema { return nil }

// remembered is how many rows d remembers the place of.
func (d *Decrypter) remembered() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.index()
	return len(d.places)
}

// TestDecrypterForgetsAtRefetch: rows that leave a shape without a delete
// (a TRUNCATE, then must-refetch) are forgotten through WithDecrypter, as
// Follow and tail use it. Before, a decrypter remembered every row it had
// ever seen the place of: the soak (bench/soak, with TRUNCATEs and
// restarts) found its readers' heaps growing by their messages.
func TestDecrypterForgetsAtRefetch(t *testing.T) {
	spec := TableSpec{Table: "public.items", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	d, err := NewDecrypter(&Keyring{}, spec)
	if err != nil {
		t.Fatal(err)
	}
	insert := func(i int) client.Message {
		id := fmt.Sprint(i)
		return client.Message{Key: `"public"."items"/"` + id + `"`, Value: client.Row{"id": id, "tenant_id": "acme", "title": nil},
			Headers: client.Headers{Operation: client.Insert, Relation: []string{"public", "items"}}}
	}
	var msgs []client.Message
	for i := range 100 {
		msgs = append(msgs, insert(i))
	}
	msgs = append(msgs, client.Message{Headers: client.Headers{Control: client.MustRefetch}})
	for i := range 10 {
		msgs = append(msgs, insert(1000+i))
	}
	s := WithDecrypter(&sliceStream{msgs: msgs, xf: d.Transform}, d)
	n := 0
	for _, err := range s.Messages(context.Background()) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 100 {
			if got := d.remembered(); got != 100 {
				t.Fatalf("after 100 inserts: %d rows remembered", got)
			}
		}
	}
	if got := d.remembered(); got != 10 {
		t.Errorf("after a must-refetch and 10 inserts: %d rows remembered, want 10", got)
	}
}
