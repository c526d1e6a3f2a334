package proxy_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"

	"github.com/shapeseal/shapeseal/proxy"
)

// suspended stands for the application's own records: what a token,
// signed before, cannot know.
var suspended = map[string]bool{"mallory": true}

// Config.Authorize adds the application's own check to the rules: the
// rule decides what a token may read, the hook whether its user may read
// it now. Its error is logged, never sent: the client gets a bare 403.
func ExampleConfig_authorize() {
	electric := fakeElectric()
	defer electric.Close()
	secret := []byte("an HS256 secret of 32 bytes or more")
	p, err := proxy.New(proxy.Config{
		Upstream: electric.URL,
		Auth:     proxy.AuthConfig{Algorithms: []string{"HS256"}, HMACKeys: []proxy.HMACKey{{Secret: secret}}},
		Shapes: []proxy.ShapeRule{{Name: "items", Table: "items",
			Where: "tenant_id = ANY($1::text[])", Params: []string{"$tenants"}}},
		Authorize: func(ctx context.Context, id *proxy.Identity, req *proxy.Request) error {
			fmt.Printf("%s asks for %s where %s %q\n", id.UserID, req.Table, req.Where, req.Params)
			if suspended[id.UserID] {
				return fmt.Errorf("user %s is suspended", id.UserID)
			}
			return nil
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	for _, user := range []string{"alice", "mallory"} {
		r := httptest.NewRequest("GET", "/v1/shapes/items?offset=-1", nil)
		r.Header.Set("Authorization", "Bearer "+mint(secret, user, "acme"))
		w := httptest.NewRecorder()
		p.ServeHTTP(w, r)
		fmt.Println(w.Code, strings.TrimSpace(w.Body.String()))
	}
	// Output:
	// alice asks for items where tenant_id = ANY($1::text[]) ["{\"acme\"}"]
	// 200 []
	// mallory asks for items where tenant_id = ANY($1::text[]) ["{\"acme\"}"]
	// 403 {"message":"Forbidden"}
}

// mint signs a token as the identity provider would.
func mint(secret []byte, user string, tenants ...string) string {
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.HS256, Key: secret}, nil)
	if err != nil {
		log.Fatal(err)
	}
	claims, _ := json.Marshal(map[string]any{"sub": user, "tenant_ids": tenants, "exp": time.Now().Add(time.Hour).Unix()})
	jws, err := signer.Sign(claims)
	if err != nil {
		log.Fatal(err)
	}
	tok, _ := jws.CompactSerialize()
	return tok
}

// fakeElectric stands in for Electric: every shape is empty and up to date.
func fakeElectric() *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Electric-Handle", "1-1")
		h.Set("Electric-Offset", "0_0")
		h.Set("Electric-Up-To-Date", "")
		w.Write([]byte("[]"))
	}))
}
