package client

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

type typedItem struct {
	ID      int64           `shape:"id"`
	Title   string          `shape:"title"`
	N       int32           `shape:"n"`
	Flag    bool            `shape:"flag"`
	Tags    []string        `shape:"tags"`
	Doc     json.RawMessage `shape:"doc"`
	Score   *float64        `shape:"score"`
	Note    sql.NullString  `shape:"note"`
	Count   sql.NullInt64   `shape:"count"`
	At      time.Time       `shape:"at"`
	Grid    [][]int         `shape:"grid"`
	Meta    map[string]any  `shape:"meta"`
	Any     any             `shape:"n2"`
	Skipped string          `shape:"-"`
	Plain   string          // untagged: column "plain", any case
}

var typedSchema = mustSchema(`{"id":{"type":"int8","pk_index":0,"not_null":true},"title":{"type":"text"},"n":{"type":"int4"},
	"flag":{"type":"bool"},"tags":{"type":"text","dims":1},"doc":{"type":"jsonb"},"score":{"type":"float8"},
	"note":{"type":"text"},"count":{"type":"int8"},"at":{"type":"timestamptz"},"grid":{"type":"int4","dims":2},
	"meta":{"type":"jsonb"},"n2":{"type":"int4"},"Skipped":{"type":"text"},"plain":{"type":"text"}}`)

func mustSchema(s string) Schema {
	sch, err := ParseSchema(s)
	if err != nil {
		panic(err)
	}
	return sch
}

func fullRow() Row {
	return Row{"id": "7", "title": "hello", "n": "42", "flag": "t", "tags": `{a,"b c",NULLx}`, "doc": `{"x":1}`,
		"score": "1.5", "note": nil, "count": "9", "at": "2024-05-06 07:08:09.123+02", "grid": "{{1,2},{3,4}}",
		"meta": `{"k":"v"}`, "n2": "5", "Skipped": "no", "plain": "p", "unknown": "ignored"}
}

func checkFull(t *testing.T, got typedItem) {
	t.Helper()
	score := 1.5
	want := typedItem{ID: 7, Title: "hello", N: 42, Flag: true, Tags: []string{"a", "b c", "NULLx"}, Doc: json.RawMessage(`{"x":1}`),
		Score: &score, Count: sql.NullInt64{Int64: 9, Valid: true},
		At:   time.Date(2024, 5, 6, 5, 8, 9, 123e6, time.UTC),
		Grid: [][]int{{1, 2}, {3, 4}}, Meta: map[string]any{"k": "v"}, Any: int64(5), Plain: "p"}
	if !got.At.Equal(want.At) {
		t.Errorf("At = %v, want %v", got.At, want.At)
	}
	got.At = want.At
	if !reflect.DeepEqual(got, want) {
		t.Errorf("decoded\n%+v\nwant\n%+v", got, want)
	}
}

func TestRowDecoder(t *testing.T) {
	d, err := NewRowDecoder[typedItem]()
	if err != nil {
		t.Fatal(err)
	}
	var got typedItem
	if err := d.Decode(fullRow(), typedSchema, &got); err != nil {
		t.Fatal(err)
	}
	checkFull(t, got)

	// The same from JSON, as a TypedShape decodes a stream's values.
	b, _ := json.Marshal(map[string]any(fullRow()))
	var fromJSON typedItem
	if err := newPlanSet(d.rt, typedSchema).decodeJSON(string(b), unsafePointer(&fromJSON)); err != nil {
		t.Fatal(err)
	}
	checkFull(t, fromJSON)

	// And from values Options.Parse typed already.
	parsed := fullRow()
	dec := decoder{schema: typedSchema, parse: true, parser: DefaultParsers}
	delete(parsed, "unknown")
	if err := dec.convert(parsed); err != nil {
		t.Fatal(err)
	}
	var fromParsed typedItem
	if err := d.Decode(parsed, typedSchema, &fromParsed); err != nil {
		t.Fatal(err)
	}
	checkFull(t, fromParsed)
}

func TestRowDecoderNullAndErrors(t *testing.T) {
	d, _ := NewRowDecoder[typedItem]()
	var v typedItem
	v.Score = new(float64)
	v.Tags = []string{"old"}
	if err := d.Decode(Row{"score": nil, "tags": nil, "note": "x", "count": nil, "meta": nil}, typedSchema, &v); err != nil {
		t.Fatal(err)
	}
	if v.Score != nil || v.Tags != nil || v.Note != (sql.NullString{String: "x", Valid: true}) || v.Count.Valid || v.Meta != nil {
		t.Errorf("after NULLs: %+v", v)
	}

	cases := []struct {
		row    Row
		column string
		is     error
	}{
		{Row{"n": nil}, "n", ErrNullField},
		{Row{"title": nil}, "title", ErrNullField},
		{Row{"n": "not a number"}, "n", strconv.ErrSyntax},
		{Row{"n": "99999999999"}, "n", strconv.ErrRange},
		{Row{"flag": "maybe"}, "flag", nil},
		{Row{"doc": "{not json"}, "doc", nil},
		{Row{"at": "yesterday"}, "at", nil},
		{Row{"tags": "{{a},{b}}"}, "tags", nil},
	}
	for _, c := range cases {
		err := d.Decode(c.row, typedSchema, &v)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Column != c.column || c.is != nil && !errors.Is(err, c.is) {
			t.Errorf("%v: err = %v", c.row, err)
			continue
		}
		if v, _ := c.row[c.column].(string); v != "" && strings.Contains(err.Error(), v) {
			t.Errorf("%v: the error shows the value: %v", c.row, err)
		}
	}

	// Types that do not fit the column's.
	type wrong struct {
		Title int    `shape:"title"`
		Flag  string `shape:"flag"` // every column has a text form: fine
		N     bool   `shape:"n"`
		Tags  int    `shape:"tags"`
	}
	dw, _ := NewRowDecoder[wrong]()
	var w wrong
	for _, col := range []string{"title", "n", "tags"} {
		err := dw.Decode(Row{col: "1"}, typedSchema, &w)
		var fe *FieldError
		if !errors.As(err, &fe) || fe.Column != col || !errors.Is(err, ErrFieldType) || fe.Field != "wrong."+strings.ToUpper(col[:1])+col[1:] {
			t.Errorf("%s: err = %v", col, err)
		}
	}
	if err := dw.Decode(Row{"flag": "t"}, typedSchema, &w); err != nil || w.Flag != "t" {
		t.Errorf("bool into string: %v, %q", err, w.Flag)
	}

	// A value a transform left that is an error is what the FieldError wraps.
	boom := &TransformError{Key: "k", Err: errors.New("cell did not open")}
	err := d.Decode(Row{"title": boom}, typedSchema, &v)
	if te, ok := errors.AsType[*TransformError](err); !ok || te != boom {
		t.Errorf("err = %v", err)
	}

	if _, err := NewRowDecoder[int](); err == nil {
		t.Error("NewRowDecoder[int] did not fail")
	}
}

type keyed struct {
	ID    string `shape:"id"`
	Title string `shape:"title"`
	B     string `shape:"b"`
}

func TestTypedShapeApply(t *testing.T) {
	s, err := NewTypedShape[keyed](nil)
	if err != nil {
		t.Fatal(err)
	}
	var batches []*Batch[keyed]
	s.Subscribe(func(b *Batch[keyed]) { batches = append(batches, b) })
	apply := func(lines ...string) {
		t.Helper()
		for _, m := range script(lines...) {
			if _, err := s.Apply(m); err != nil {
				t.Fatal(err)
			}
		}
	}
	keys := func() string {
		var ks []string
		for k, v := range s.All() {
			ks = append(ks, k+"="+v.Title+v.B)
		}
		return strings.Join(ks, ",")
	}
	apply("i k3 title=c", "i k1 title=a", "i k2 title=b", "u k1 b=x", "d k2")
	if s.Len() != 0 || s.IsUpToDate() {
		t.Fatal("a batch was applied before its up-to-date")
	}
	apply("utd")
	if got := keys(); got != "k1=ax,k3=c" {
		t.Errorf("view %s", got)
	}
	if b := batches[0]; len(b.Inserted) != 2 || !b.Refetched || b.Inserted[0].Key != "k1" {
		t.Errorf("first batch %+v", b)
	}
	apply("u k3 b=y", "i k0 title=z", "d k1", "u k3 title=C", "utd")
	if got := keys(); got != "k0=z,k3=Cy" {
		t.Errorf("view %s", got)
	}
	b := batches[1]
	if b.Refetched || len(b.Inserted) != 1 || b.Inserted[0].Key != "k0" || len(b.Deleted) != 1 || b.Deleted[0].Value.Title != "a" ||
		len(b.Updated) != 1 || b.Updated[0].Old.Title != "c" || b.Updated[0].New.Title != "C" || b.Updated[0].New.B != "y" {
		t.Errorf("second batch %+v", b)
	}
	v := s.View()
	apply("refetch", "i k9 title=n")
	if s.IsUpToDate() || s.Len() != 2 {
		t.Error("the old view must stay until the next up-to-date")
	}
	apply("u k0 title=zz", "utd") // as in a Shape, an update of an unknown key makes a row
	if got := keys(); got != "k0=zz,k9=n" {
		t.Errorf("view after refetch %s", got)
	}
	if b := batches[2]; !b.Refetched || len(b.Deleted) != 1 || len(b.Inserted) != 1 || len(b.Updated) != 1 || b.Updated[0].Old.Title != "z" {
		t.Errorf("refetch batch %+v", b)
	}
	if got, ok := v.Get("k3"); !ok || got.Title != "C" || v.Len() != 2 {
		t.Error("an old view changed")
	}
	if _, ok := s.Get("k3"); ok {
		t.Error("Get sees a row the refetch dropped")
	}
}

func TestTypedShapeRunAndWait(t *testing.T) {
	body := "[" + strings.Join([]string{
		`{"headers":{"operation":"insert"},"key":"b","value":{"id":"b","title":"X","b":"bee"}}`,
		`{"headers":{"operation":"insert"},"key":"a","value":{"id":"a","title":"A"}}`,
		`{"value":{"id":"b","title":"B"},"headers":{"operation":"update"},"key":"b"}`,
		`{"headers":{"operation":"insert"},"key":"c","value":{"id":"c","title":"C"}}`,
		`{"headers":{"operation":"delete"},"key":"c","value":{"id":"c"}}`,
		utd}, ",") + "]"
	for _, transform := range []bool{false, true} {
		_, u := startScripted(t, ok("h", "0_inf", body))
		opts := Options{URL: u}
		if transform {
			opts.Transform = func(m *Message) error {
				if t, ok := m.Value["title"].(string); ok {
					m.Value["title"] = strings.ToLower(t)
				}
				return nil
			}
		}
		st, _ := New(opts)
		s, err := NewTypedShape[keyed](st)
		if err != nil {
			t.Fatal(err)
		}
		if st.dec.lazy == transform {
			t.Errorf("transform %v: lazy %v", transform, st.dec.lazy)
		}
		changes := make(chan []string, 1)
		ctx, cancel := context.WithCancel(t.Context())
		feed := s.Changes(ctx)
		go func() {
			var got []string
			for b := range feed {
				for _, e := range b.Inserted {
					got = append(got, e.Key)
				}
			}
			changes <- got
		}()
		if err := s.Run(t.Context()); err != nil {
			t.Fatal(err)
		}
		v, err := s.Wait(t.Context(), func(v *View[keyed]) bool { return v.Len() == 2 })
		if err != nil {
			t.Fatal(err)
		}
		want := []string{"A", "B"}
		if transform {
			want = []string{"a", "b"}
		}
		var titles []string
		for r := range v.Values() {
			titles = append(titles, r.Title)
		}
		if !slices.Equal(titles, want) {
			t.Errorf("transform %v: titles %v", transform, titles)
		}
		if b, _ := v.Get("b"); b.B != "bee" || v.Len() != 2 {
			t.Errorf("transform %v: the update of b lost its b column: %+v, %d rows", transform, b, v.Len())
		}
		if got := <-changes; !slices.Equal(got, []string{"a", "b"}) {
			t.Errorf("changes %v", got)
		}
		cancel()
	}
}

func TestTypedShapeRowError(t *testing.T) {
	type strict struct {
		ID int64 `shape:"id"`
	}
	body := "[" + strings.Join([]string{
		`{"headers":{"operation":"insert"},"key":"x","value":{"id":"x"}}`,
		`{"headers":{"operation":"insert"},"key":"1","value":{"id":"1"}}`, utd}, ",") + "]"
	_, u := startScripted(t, ok("h", "0_inf", body))
	st, _ := New(Options{URL: u})
	s, _ := NewTypedShape[strict](st)
	err := s.Run(t.Context())
	if fe, ok := errors.AsType[*FieldError](err); !ok || fe.Column != "id" || fe.Type != "int8" {
		t.Fatalf("Run: %v", err)
	}

	_, u = startScripted(t, ok("h", "0_inf", body))
	st, _ = New(Options{URL: u})
	var skipped []string
	s, _ = NewTypedShape[strict](st, TypedOptions{OnRowError: func(key string, err error) error {
		skipped = append(skipped, key)
		return nil
	}})
	if err := s.Run(t.Context()); err != nil {
		t.Fatal(err)
	}
	if r, ok := s.Get("1"); !ok || r.ID != 1 || s.Len() != 1 || !slices.Equal(skipped, []string{"x"}) {
		t.Errorf("view %d rows, skipped %v", s.Len(), skipped)
	}
}

// A TransformContext cut short by the caller's context does not lose the
// message: the next Next delivers it, transformed.
func TestTransformContextRetries(t *testing.T) {
	resp := ok("h", "0_inf", "["+row1+","+row2+","+utd+"]")
	// The abort of the cut-short request may land late and cut the next
	// one too (a retry, no loss): a third response is there for that.
	sc, u := startScripted(t, resp, resp, resp)
	var blocked atomic.Bool
	s, err := New(Options{URL: u, TransformContext: func(ctx context.Context, m *Message) error {
		if m.Key == "2" && !blocked.Swap(true) {
			<-ctx.Done() // waits for a key that does not come in time
			return errors.New("no key")
		}
		m.Value["seen"] = "yes"
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	var got []Message
	ctx, cancel := context.WithCancel(t.Context())
	m, err := s.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, m)
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	if _, err := s.Next(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next = %v, want context.Canceled", err)
	}
	for {
		m, err := s.Next(t.Context())
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, m)
	}
	if k := keysOf(got); k != "12U" || got[1].Value["seen"] != "yes" || len(sc.requests()) < 2 {
		t.Errorf("messages %s, %v, %d requests", k, got[1].Value, len(sc.requests()))
	}

	if _, err := New(Options{URL: u, Transform: func(*Message) error { return nil },
		TransformContext: func(context.Context, *Message) error { return nil }}); err == nil {
		t.Error("New accepted both transforms")
	}
}

func unsafePointer[T any](p *T) unsafe.Pointer { return unsafe.Pointer(p) }

// The word-at-a-time scans find every special byte, wherever it falls in
// its word.
func TestScanWords(t *testing.T) {
	for _, special := range []string{`"`, `\n`, `\"`, "\x01", "é", "\xff"} {
		for n := range 20 {
			content := strings.Repeat("a", n) + special + strings.Repeat("b", n%9)
			lit, _ := json.Marshal(content)
			if special == "\xff" {
				lit = []byte(`"` + content + `"`) // invalid UTF-8, as a server might send
			}
			p := scanner{s: string(lit) + ",1"}
			got, err := p.str()
			want := content
			if special == "\xff" {
				want = strings.ToValidUTF8(content, "\uFFFD")
			}
			if err != nil || got != want || p.s[p.i:] != ",1" {
				t.Errorf("%q: str = %q, %v, rest %q", lit, got, err, p.s[p.i:])
			}
			a := newArrayReader(strings.NewReader("[" + string(lit) + `,{"k":` + string(lit) + `}]`))
			for _, w := range []string{string(lit), `{"k":` + string(lit) + `}`} {
				el, _, err := a.next()
				if err != nil || string(el) != w {
					t.Errorf("element %q, %v; want %q", el, err, w)
				}
			}
		}
	}
	p := scanner{s: "\"abc\x01defghij\""}
	if _, err := p.str(); err == nil {
		t.Error("a control character in a string passed")
	}
}

// Views are in byte order of the keys, whatever their shared prefixes and
// lengths, and the last change of a key in a batch wins.
func TestTypedShapeOrder(t *testing.T) {
	s, _ := NewTypedShape[keyed](nil)
	keys := []string{"p/1", "p/10", "p/1\x00", "p/2", "p/", "p/12345678", "p/123456789", "p/12345677", "q", "p/1"}
	var want []string
	seen := map[string]bool{}
	for i, k := range keys {
		s.Apply(Message{Key: k, Value: Row{"title": strconv.Itoa(i)}, Headers: Headers{Operation: Insert}})
		if !seen[k] {
			want = append(want, k)
			seen[k] = true
		}
	}
	s.Apply(Message{Headers: Headers{Control: UpToDate}})
	slices.Sort(want)
	var got []string
	for k := range s.All() {
		got = append(got, k)
	}
	if !slices.Equal(got, want) {
		t.Errorf("order %q, want %q", got, want)
	}
	if r, _ := s.Get("p/1"); r.Title != "9" {
		t.Errorf("p/1 = %q, want the last insert's", r.Title)
	}
}
