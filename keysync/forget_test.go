package keysync

import (
	"context"
	"fmt"
	"io"
	"iter"
	"strings"
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
	n := 0
	for _, t := range d.tables {
		t.rows.index()
		n += len(t.rows.rows)
	}
	return n
}

// TestDecrypterForgetsAtRefetch: rows that leave a shape without a delete
// (a TRUNCATE, then must-refetch) are forgotten through WithDecrypter, as
// Follow and tail use it, and only those of the stream's table. Before, a
// decrypter remembered every row it had ever seen the place of: the soak
// (bench/soak, with TRUNCATEs and restarts) found its readers' heaps
// growing by their messages.
func TestDecrypterForgetsAtRefetch(t *testing.T) {
	items := TableSpec{Table: "public.items", Columns: []string{"title"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	notes := TableSpec{Table: "public.notes", Columns: []string{"body"}, TenantColumn: "tenant_id", RowKey: []string{"id"}}
	d, err := NewDecrypter(&Keyring{}, items, notes)
	if err != nil {
		t.Fatal(err)
	}
	insert := func(table string, i int) client.Message {
		id := fmt.Sprint(i)
		return client.Message{Key: `"public"."` + table + `"/"` + id + `"`, Value: client.Row{"id": id, "tenant_id": "acme"},
			Headers: client.Headers{Operation: client.Insert, Relation: []string{"public", table}}}
	}
	// Another stream's rows, of another table.
	for i := range 5 {
		m := insert("notes", i)
		if err := d.Transform(&m); err != nil {
			t.Fatal(err)
		}
	}
	var msgs []client.Message
	for i := range 100 {
		msgs = append(msgs, insert("items", i))
	}
	msgs = append(msgs, client.Message{Headers: client.Headers{Control: client.MustRefetch}})
	for i := range 10 {
		msgs = append(msgs, insert("items", 1000+i))
	}
	s := WithDecrypter(&sliceStream{msgs: msgs, xf: d.Transform}, d)
	n := 0
	for _, err := range s.Messages(context.Background()) {
		if err != nil {
			t.Fatal(err)
		}
		if n++; n == 100 {
			if got := d.remembered(); got != 105 {
				t.Fatalf("after 5 notes and 100 items: %d rows remembered", got)
			}
		}
	}
	if got := d.remembered(); got != 15 {
		t.Errorf("after a must-refetch of items and 10 inserts: %d rows remembered, want 15 (the notes and the new items)", got)
	}
	d.Forget()
	if got := d.remembered(); got != 0 {
		t.Errorf("after Forget: %d rows remembered", got)
	}
}
func TestKeyTable(t *testing.T) {
	for key, want := range map[string]string{
		`"public"."items"/"42"`: `"public"."items"/`,
		`"a""b"."c/d"/"1"/"2"`:  `"a""b"."c/d"/`,
		`"public"."items"`:      "",
		`items/1`:               "",
		`"public".items/"1"`:    "",
		`"unterminated`:         "",
		`"s"."t""x"""/"k"`:      `"s"."t""x"""/`,
		`"s"."t"/`:              `"s"."t"/`,
		``:                      "",
	} {
		if got := keyTable(key); got != want {
			t.Errorf("keyTable(%q) = %q, want %q", key, got, want)
		}
	}
}

// keyHolds and keyRowKey read the row key of an Electric key, as Electric
// escapes it, and agree with each other.
func TestKeyRowKey(t *testing.T) {
	for _, c := range []struct {
		key    string
		n      int
		rowKey string
		ok     bool
	}{
		{`"public"."items"/"42"`, 1, "42", true},
		{`"public"."items"/"acme"/"42"`, 2, "acme\x0042", true},
		{`"public"."items"/"a//b"`, 1, "a/b", true},
		{`"public"."items"/"a"//"b"`, 1, `a"/"b`, true},
		{`"public"."items"/"say ""hi"""`, 1, `say ""hi""`, true},
		{`"public"."items"/""`, 1, "", true},
		{`"public"."items"/"42"`, 2, "", false},
		{`"public"."items"/"1"/"2"`, 1, "", false},
		{`"public"."items"/_`, 1, "", false},
		{`"public"."items"/"a/b"`, 1, "", false},
		{`items/42`, 1, "", false},
	} {
		got, ok := keyRowKey(c.key, c.n)
		if got != c.rowKey || ok != c.ok {
			t.Errorf("keyRowKey(%q, %d) = %q, %v; want %q, %v", c.key, c.n, got, ok, c.rowKey, c.ok)
		}
		if ok && !keyHolds(c.key, got, c.n) {
			t.Errorf("keyHolds(%q, %q, %d) = false", c.key, got, c.n)
		}
	}
	for _, c := range []struct{ key, rowKey string }{
		{`"public"."items"/"42"`, "4"},
		{`"public"."items"/"42"`, "42\x00"},
		{`"public"."items"/"a/b"`, "a/b"},
		{`"public"."items"/"1"/"2"`, "1"},
	} {
		if keyHolds(c.key, c.rowKey, strings.Count(c.rowKey, "\x00")+1) {
			t.Errorf("keyHolds(%q, %q) = true", c.key, c.rowKey)
		}
	}
}
