package client_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"

	"github.com/shapeseal/shapeseal/client"
)

// An item is a row of items, decoded by column name (the shape tag), with
// the conversions Options.Parse makes, by the shape's schema.
type item struct {
	ID    int64          `shape:"id"`
	Title string         `shape:"title"`
	Tags  []string       `shape:"tags"`
	Due   sql.NullString `shape:"due"` // NULL: Valid false (or a pointer field: nil)
	Price *float64       `shape:"price"`
}

// Decode a shape into structs: look rows up by key, iterate in key order,
// wait for a view, and follow what each batch changed.
func ExampleTypedShape() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("electric-handle", "1-1")
		w.Header().Set("electric-offset", "0_inf")
		w.Header().Set("electric-schema", `{"id":{"type":"int8","pk_index":0},"title":{"type":"text"},`+
			`"tags":{"type":"text","dims":1},"due":{"type":"date"},"price":{"type":"float8"}}`)
		io.WriteString(w, `[`+
			`{"headers":{"operation":"insert"},"key":"2","value":{"id":"2","title":"pears","tags":"{fruit}","due":null,"price":null}},`+
			`{"headers":{"operation":"insert"},"key":"1","value":{"id":"1","title":"apples","tags":"{fruit,red}","due":"2026-12-24","price":"1.5"}},`+
			`{"headers":{"control":"up-to-date"}}]`)
	}))
	defer srv.Close()
	ctx := context.Background()

	stream, err := client.New(client.Options{URL: srv.URL + "/v1/shape"}) // or a *WSStream
	if err != nil {
		log.Fatal(err)
	}
	items, err := client.NewTypedShape[item](stream)
	if err != nil {
		log.Fatal(err)
	}
	changes := items.Changes(ctx)          // the batches from now on
	if err := items.Run(ctx); err != nil { // a live stream runs until ctx ends
		log.Fatal(err)
	}

	for key, it := range items.All() { // key order
		fmt.Println(key, it.Title, it.Tags, it.Due.Valid, it.Price != nil)
	}
	if it, ok := items.Get("1"); ok {
		fmt.Println("1 costs", *it.Price)
	}
	v, _ := items.Wait(ctx, func(v *client.View[item]) bool { return v.Len() >= 2 })
	fmt.Println(v.Len(), "rows")
	for b := range changes {
		fmt.Println("batch:", len(b.Inserted), "inserted", len(b.Updated), "updated", len(b.Deleted), "deleted")
	}
	// Output:
	// 1 apples [fruit red] true true
	// 2 pears [fruit] false false
	// 1 costs 1.5
	// 2 rows
	// batch: 2 inserted 0 updated 0 deleted
}

// A column whose value does not fit its field is a *FieldError naming both.
func ExampleRowDecoder() {
	type counter struct {
		Name  string `shape:"name"`
		Count int32  `shape:"count"`
	}
	d, _ := client.NewRowDecoder[counter]()
	schema := client.Schema{"name": {Type: "text"}, "count": {Type: "int4"}}

	var c counter
	err := d.Decode(client.Row{"name": "visits", "count": "41"}, schema, &c)
	fmt.Println(c, err)

	err = d.Decode(client.Row{"count": nil}, schema, &c)
	var fe *client.FieldError
	if errors.As(err, &fe) {
		fmt.Println(fe.Column, fe.Field, errors.Is(err, client.ErrNullField))
	}
	// Output:
	// {visits 41} <nil>
	// count counter.Count true
}
