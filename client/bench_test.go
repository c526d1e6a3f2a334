package client

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"testing"
)

// shapeLogRow writes one insert message as Electric encodes it.
func shapeLogRow(b *bytes.Buffer, i int) {
	fmt.Fprintf(b, `{"key":"\"public\".\"items\"/\"%d\"","value":{"id":"%d","title":"item number %d","n":"%d","flag":"%v","tags":"{a,b}","doc":null},"headers":{"operation":"insert","relation":["public","items"]}}`,
		i, i, i, i%1000, i%2 == 0)
}

const benchSchema = `{"id":{"type":"int8","pk_index":0,"not_null":true},"title":{"type":"text"},"n":{"type":"int4"},"flag":{"type":"bool"},"tags":{"type":"text","dims":1},"doc":{"type":"jsonb"}}`

// shapeLogBody returns a shape log response of n inserts, a snapshot-end
// and an up-to-date.
func shapeLogBody(n int) []byte {
	var b bytes.Buffer
	b.WriteByte('[')
	for i := range n {
		if i > 0 {
			b.WriteString(",\n")
		}
		shapeLogRow(&b, i)
	}
	b.WriteString(`,{"headers":{"control":"snapshot-end","xmin":"1","xmax":"1","xip_list":[]}},{"headers":{"control":"up-to-date","global_last_seen_lsn":"1"}}]`)
	return b.Bytes()
}

// memTransport answers every request with body() and the electric-schema
// header schema (benchSchema when empty).
type memTransport struct {
	body   func() io.Reader
	schema string
}

func (t memTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	h := http.Header{}
	h.Set("electric-handle", "1-1")
	h.Set("electric-offset", "0_inf")
	h.Set("electric-schema", cmp.Or(t.schema, benchSchema))
	h.Set("electric-cursor", "1")
	return &http.Response{StatusCode: 200, Status: "200 OK", Header: h, Body: io.NopCloser(t.body()), Request: r}, nil
}

// BenchmarkDecode measures the client reading a 100k-row shape log held in
// memory: the full ShapeStream path (request, streaming split, message
// parse, optional value parsing); and, as "structs", a TypedShape reading
// the same log into structs up to its view after the up-to-date.
//
// With SHAPESEAL_DECODE_BODY naming a file that holds a shape log response
// body ending in up-to-date, and SHAPESEAL_DECODE_SCHEMA one that holds its
// electric-schema header, it reads that body instead of the generated one.
// bench/clientdecode does so, to give this benchmark and the TypeScript
// client's the very same bytes.
func BenchmarkDecode(b *testing.B) {
	rows := 100_000
	body, schema := shapeLogBody(rows), benchSchema
	if file := os.Getenv("SHAPESEAL_DECODE_BODY"); file != "" {
		var err error
		if body, err = os.ReadFile(file); err != nil {
			b.Fatal(err)
		}
		s, err := os.ReadFile(os.Getenv("SHAPESEAL_DECODE_SCHEMA"))
		if err != nil {
			b.Fatalf("SHAPESEAL_DECODE_SCHEMA: %v", err)
		}
		schema = string(bytes.TrimSpace(s))
		rows = -1 // counted by the first pass
	}
	for _, mode := range []string{"parse=false", "parse=true", "structs"} {
		parse := mode == "parse=true"
		count := func(b *testing.B, hc *http.Client) int {
			if mode == "structs" {
				return decodeStructs(b, hc)
			}
			return decodeCount(b, hc, parse)
		}
		b.Run(mode, func(b *testing.B) {
			hc := &http.Client{Transport: memTransport{body: func() io.Reader { return bytes.NewReader(body) }, schema: schema}}
			if rows < 0 {
				rows = count(b, hc)
			}
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			for b.Loop() {
				if n := count(b, hc); n != rows {
					b.Fatalf("%d rows, want %d", n, rows)
				}
			}
			runtime.ReadMemStats(&ms1)
			b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
			b.ReportMetric(float64(ms1.Mallocs-ms0.Mallocs)/float64(rows*b.N), "allocs/row")
			b.ReportMetric(float64(ms1.TotalAlloc-ms0.TotalAlloc)/float64(rows*b.N), "B/row")
		})
	}
}

// benchItem is a row of the benchmark's shape log, typed.
type benchItem struct {
	ID    int64           `shape:"id"`
	Title string          `shape:"title"`
	N     int32           `shape:"n"`
	Flag  bool            `shape:"flag"`
	Tags  []string        `shape:"tags"`
	Doc   json.RawMessage `shape:"doc"`
}

// decodeStructs reads one shape log through a ShapeStream into a
// TypedShape of benchItem, to the view after the up-to-date, and returns
// its number of rows.
func decodeStructs(b *testing.B, hc *http.Client) int {
	s, err := New(Options{URL: "http://mem/v1/shape", HTTPClient: hc})
	if err != nil {
		b.Fatal(err)
	}
	sh, err := NewTypedShape[benchItem](s)
	if err != nil {
		b.Fatal(err)
	}
	if err := sh.Run(context.Background()); err != nil {
		b.Fatal(err)
	}
	return sh.Len()
}

// decodeCount reads one shape log through a ShapeStream and returns the
// number of change messages.
func decodeCount(b *testing.B, hc *http.Client, parse bool) int {
	s, err := New(Options{URL: "http://mem/v1/shape", HTTPClient: hc, Parse: parse})
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	for {
		m, err := s.Next(context.Background())
		if err == io.EOF {
			return n
		}
		if err != nil {
			b.Fatal(err)
		}
		if m.IsChange() {
			n++
		}
	}
}

// genReader produces a shape log of n rows on the fly, so that the body
// itself takes no memory.
type genReader struct {
	n, i  int
	buf   bytes.Buffer
	state int
}

func (g *genReader) Read(p []byte) (int, error) {
	for g.buf.Len() < len(p) && g.state < 2 {
		switch {
		case g.state == 0:
			g.buf.WriteByte('[')
			g.state = 1
		case g.i < g.n:
			if g.i > 0 {
				g.buf.WriteByte(',')
			}
			shapeLogRow(&g.buf, g.i)
			g.i++
		default:
			g.buf.WriteString(`,{"headers":{"control":"up-to-date","global_last_seen_lsn":"1"}}]`)
			g.state = 2
		}
	}
	if g.buf.Len() == 0 {
		return 0, io.EOF
	}
	return g.buf.Read(p)
}

// BenchmarkPeakHeap reads 1 MB and 100 MB shape logs through a ShapeStream
// and reports the peak live heap seen while reading: it must not grow with
// the response size.
func BenchmarkPeakHeap(b *testing.B) {
	rowBytes := func() int { var bb bytes.Buffer; shapeLogRow(&bb, 500000); return bb.Len() + 1 }()
	for _, mb := range []int{1, 100} {
		b.Run(strconv.Itoa(mb)+"MB", func(b *testing.B) {
			rows := mb << 20 / rowBytes
			var peak uint64
			for b.Loop() {
				hc := &http.Client{Transport: memTransport{body: func() io.Reader { return &genReader{n: rows} }}}
				s, _ := New(Options{URL: "http://mem/v1/shape", HTTPClient: hc})
				runtime.GC()
				var base runtime.MemStats
				runtime.ReadMemStats(&base)
				n := 0
				for {
					_, err := s.Next(context.Background())
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
					if n++; n%(rows/20+1) == 0 {
						runtime.GC()
						var ms runtime.MemStats
						runtime.ReadMemStats(&ms)
						if ms.HeapAlloc > base.HeapAlloc {
							peak = max(peak, ms.HeapAlloc-base.HeapAlloc)
						}
					}
				}
			}
			b.ReportMetric(float64(peak), "peak-heap-B")
			b.ReportMetric(float64(rows*rowBytes), "body-B")
		})
	}
}
