package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"

	"github.com/shapeseal/shapeseal/client"
)

// Follow a shape and handle its messages one at a time.
func ExampleShapeStream_Messages() {
	ctx := context.Background()
	s, err := client.New(client.Options{
		URL:    "http://localhost:3000/v1/shape",
		Params: client.Params{Table: "items", Where: "owner = $1", Params: []string{"alice"}},
		Live:   true,
	})
	if err != nil {
		log.Fatal(err)
	}
	for m, err := range s.Messages(ctx) {
		if err != nil {
			log.Fatal(err)
		}
		switch {
		case m.IsChange():
			fmt.Println(m.Headers.Operation, m.Key, m.Value)
		case m.IsMustRefetch():
			fmt.Println("start over")
		case m.IsUpToDate():
			// A consistent point: remember where to resume.
			fmt.Println("resume with", s.Offset(), s.Handle())
		}
	}
}

// Materialize a shape and read its rows whenever a batch lands.
func ExampleShape() {
	ctx := context.Background()
	s, err := client.New(client.Options{
		URL:    "http://localhost:3000/v1/shape",
		Params: client.Params{Table: "items"},
		Live:   true,
		Parse:  true, // int8 → int64, bool → bool, ...
	})
	if err != nil {
		log.Fatal(err)
	}
	shape := client.NewShape(s)
	shape.Subscribe(func(sh *client.Shape) {
		fmt.Println(sh.Len(), "rows")
	})
	if err := shape.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Fatal(err)
	}
}

// Share one token source among all streams of a user: when the token
// expires, every stream gets a 401, and the token is fetched once.
func ExampleSharedTokenSource() {
	tokens := client.NewSharedTokenSource(func(ctx context.Context) (string, error) {
		return fetchTokenFromYourAuthServer(ctx)
	})
	for _, table := range []string{"items", "comments"} {
		s, err := client.New(client.Options{
			URL:         "https://app.example/api/shapes/" + table,
			TokenSource: tokens,
			Live:        true,
		})
		if err != nil {
			log.Fatal(err)
		}
		go client.NewShape(s).Run(context.Background())
	}
}

func fetchTokenFromYourAuthServer(context.Context) (string, error) { return "token", nil }

// A transform hook sees every change before it is delivered: the place to
// decrypt columns.
func ExampleOptions_transform() {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("electric-handle", "1-1")
		w.Header().Set("electric-offset", "0_inf")
		w.Header().Set("electric-schema", `{"id":{"type":"int8","pk_index":0},"secret":{"type":"text"}}`)
		io.WriteString(w, `[{"headers":{"operation":"insert","relation":["public","items"]},"key":"\"public\".\"items\"/\"1\"","value":{"id":"1","secret":"ss1:olleh"}},`+
			`{"headers":{"control":"up-to-date","global_last_seen_lsn":"1"}}]`)
	}))
	defer srv.Close()

	s, _ := client.New(client.Options{
		URL: srv.URL + "/v1/shape",
		Transform: func(m *client.Message) error {
			if v, ok := m.Value["secret"].(string); ok {
				m.Value["secret"] = reverse(strings.TrimPrefix(v, "ss1:")) // stand-in for decryption
			}
			return nil
		},
	})
	for m, err := range s.Messages(context.Background()) {
		if err != nil {
			log.Fatal(err)
		}
		if m.IsChange() {
			fmt.Println(m.Value["secret"])
			fmt.Println(strings.Contains(string(m.Raw()), "ss1:olleh")) // Raw is what the server sent
			b, _ := m.MarshalJSON()                                     // MarshalJSON has the new value
			os.Stdout.Write(b)
			fmt.Println()
		}
	}
	// Output:
	// hello
	// true
	// {"headers":{"operation":"insert","relation":["public","items"]},"key":"\"public\".\"items\"/\"1\"","value":{"id":"1","secret":"hello"}}
}

func reverse(s string) string {
	r := []rune(s)
	for i, j := 0, len(r)-1; i < j; i, j = i+1, j-1 {
		r[i], r[j] = r[j], r[i]
	}
	return string(r)
}
