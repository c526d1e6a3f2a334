package proxy_test

import (
	"crypto/ecdsa"
	"log"
	"log/slog"
	"net/http"
	"time"

	"github.com/shapeseal/shapeseal/proxy"
)

// The proxy is an http.Handler: mount it next to the application's own
// routes. Clients follow https://app.example/sync/v1/shapes/items with
// "Authorization: Bearer <JWT>".
func ExampleNew() {
	var idpKey *ecdsa.PublicKey // the identity provider's signing key
	p, err := proxy.New(proxy.Config{
		Upstream: "http://electric:3000",
		Secret:   "electric-secret", // from ELECTRIC_SECRET in real life
		Auth: proxy.AuthConfig{
			Algorithms: []string{"ES256"},
			PublicKeys: []proxy.PublicKey{{ID: "2026-11", Key: idpKey}},
			Issuer:     "https://idp.example/",
			Audience:   []string{"shapeseal"},
			Leeway:     30 * time.Second,
		},
		Shapes: []proxy.ShapeRule{
			{Name: "items", Table: "items", Where: "tenant_id = ANY($1::text[])",
				Params: []string{"$tenants"}, Columns: []string{"id", "tenant_id", "title", "body"}},
			{Name: "keys", Kind: proxy.KindTenantKeys},
		},
		Logger: slog.Default(),
	})
	if err != nil {
		log.Print(err) // here: the nil example key is refused
		return
	}
	mux := http.NewServeMux()
	mux.Handle("/sync/", http.StripPrefix("/sync", p))
	// Long polls last 20 s and SSE 60 s: no short WriteTimeout.
	srv := &http.Server{Addr: ":8080", Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(srv.ListenAndServe())
}
