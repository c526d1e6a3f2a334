package client

import (
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"testing"
)

func TestParseArray(t *testing.T) {
	id := func(s string) (any, error) { return s, nil }
	tests := []struct {
		in   string
		want any
	}{
		{`{}`, []any{}},
		{`{1,2,3}`, []any{"1", "2", "3"}},
		{`{{1,2,3},{4,5,6}}`, []any{[]any{"1", "2", "3"}, []any{"4", "5", "6"}}},
		{`{"a b","c\"d",NULL,"NULL",null}`, []any{"a b", `c"d`, nil, "NULL", nil}},
		{`{"(1.1,2.2)","(3.3,4.4)"}`, []any{"(1.1,2.2)", "(3.3,4.4)"}},
		{`{ a , b }`, []any{"a", "b"}},
		{`{"back\\slash",""}`, []any{`back\slash`, ""}},
		{`[0:1]={x,y}`, []any{"x", "y"}},
		{`{sad,ok,happy}`, []any{"sad", "ok", "happy"}},
	}
	for _, tt := range tests {
		got, err := ParseArray(tt.in, id)
		if err != nil || !reflect.DeepEqual(got, tt.want) {
			t.Errorf("ParseArray(%s) = %#v, %v; want %#v", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{``, `{`, `{1,}`, `{1`, `{"a}`, `{1} x`, `1,2`, `{a"b}`, `{,}`} {
		if _, err := ParseArray(bad, id); err == nil {
			t.Errorf("ParseArray(%q) accepted", bad)
		}
	}
}

func FuzzParseArray(f *testing.F) {
	for _, s := range []string{`{}`, `{{1,2},{3,4}}`, `{"a\"b",NULL}`, `[1:2]={a,b}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseArray(s, func(e string) (any, error) { return e, nil })
		if err == nil {
			if _, ok := v.([]any); !ok {
				t.Fatalf("%q → %T", s, v)
			}
		}
	})
}

func TestConvertValues(t *testing.T) {
	schema, err := ParseSchema(`{"id":{"type":"int8","pk_index":0,"not_null":true},"i2":{"type":"int2"},"i4":{"type":"int4"},` +
		`"f":{"type":"float8"},"f4":{"type":"float4"},"b":{"type":"bool"},"j":{"type":"jsonb"},"js":{"type":"json"},` +
		`"ints":{"type":"int4","dims":1},"bools":{"type":"bool","dims":2},"t":{"type":"text"},"ts":{"type":"timestamp"},"n":{"type":"numeric"}}`)
	if err != nil {
		t.Fatal(err)
	}
	if *schema["id"].PKIndex != 0 || !schema["id"].NotNull || schema["ints"].Dims != 1 {
		t.Fatalf("schema %+v", schema)
	}
	d := decoder{schema: schema, parse: true, parser: DefaultParsers}
	r := Row{
		"id": "9223372036854775807", "i2": "-5", "i4": "7", "f": "Infinity", "f4": "4.5", "b": "t",
		"j": `{"foo": "bar"}`, "js": `[1,2]`, "ints": "{1,NULL,3}", "bools": "{{t,f},{true,false}}",
		"t": "x", "ts": "2024-11-13 10:45:33", "n": "1.50", "unknown": "u", "nul": nil,
	}
	if err := d.convert(r); err != nil {
		t.Fatal(err)
	}
	want := Row{
		"id": int64(math.MaxInt64), "i2": int64(-5), "i4": int64(7), "f": math.Inf(1), "f4": 4.5, "b": true,
		"j": json.RawMessage(`{"foo": "bar"}`), "js": json.RawMessage(`[1,2]`),
		"ints": []any{int64(1), nil, int64(3)}, "bools": []any{[]any{true, false}, []any{true, false}},
		"t": "x", "ts": "2024-11-13 10:45:33", "n": "1.50", "unknown": "u", "nul": nil,
	}
	if !reflect.DeepEqual(r, want) {
		t.Errorf("got  %#v\nwant %#v", r, want)
	}

	for _, bad := range []Row{{"id": nil}, {"i4": "x"}, {"b": "yes"}, {"j": "{"}, {"ints": "{1,a}"}} {
		err := d.convert(bad)
		var ve *ValueError
		if !errors.As(err, &ve) {
			t.Errorf("%v: err = %v", bad, err)
		}
	}
	if err := d.convert(Row{"f": "NaN"}); err != nil {
		t.Error(err)
	}
}

func TestCustomParser(t *testing.T) {
	s, err := New(Options{URL: "http://x/v1/shape", Parse: true, Parsers: map[string]ParseFunc{
		"numeric": func(s string, c Column) (any, error) { return "N:" + s, nil },
	}})
	if err != nil {
		t.Fatal(err)
	}
	s.dec.schema = Schema{"n": {Type: "numeric"}, "i": {Type: "int4"}}
	m, err := s.dec.parseMessage([]byte(`{"headers":{"operation":"insert"},"key":"k","value":{"n":"1.5","i":"2"}}`), 0)
	if err != nil {
		t.Fatal(err)
	}
	if m.Value["n"] != "N:1.5" || m.Value["i"] != int64(2) {
		t.Errorf("%#v", m.Value)
	}
	// DefaultParsers is not modified by Options.Parsers.
	if _, ok := DefaultParsers["numeric"]; ok {
		t.Error("DefaultParsers modified")
	}
}
