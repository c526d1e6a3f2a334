package electrictest_test

// §0, §7, §8.1, §8.2 of the conformance suite: routes, secret, CORS,
// health, DELETE.

import (
	"strings"
	"testing"

	"github.com/shapeseal/shapeseal/electrictest"
)

func TestRoutes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, itemsTable)

	h := e.request("GET", "/v1/health")
	h.expectStatus(t, 200)
	mustJSON(t, string(h.body), `{"status":"active"}`)
	hdrIs(t, h, "content-type", jsonCT)
	hdrIs(t, h, "cache-control", "no-cache, no-store, must-revalidate")
	if h.header.Get("electric-server") == "" {
		t.Error("health: no electric-server header")
	}

	root := e.request("GET", "/")
	root.expectStatus(t, 200)
	if len(root.body) != 0 {
		t.Errorf("/ body %q", root.body)
	}
	e.request("HEAD", "/").expectStatus(t, 200)

	for _, p := range []string{"/nope", "/v1", "/v1/shapes", "/v2/shape", "/v1/health/x"} {
		r := e.request("GET", p)
		r.expectStatus(t, 404)
		if strings.TrimSpace(string(r.body)) != "Not found" {
			t.Errorf("%s: body %q", p, r.body)
		}
	}

	d := e.request("DELETE", "/v1/shape?"+qs("table", "items"))
	d.expectStatus(t, 405)
	mustJSON(t, string(d.body), `{"message":"DELETE not allowed"}`)
	hdrIs(t, d, "cache-control", "no-cache")

	// Normalised paths are the shape endpoint.
	for _, p := range []string{"/v1//shape", "/v1/shape/", "/v1/%73hape", "/v1/shape//", "//v1/shape"} {
		r := e.rawRequest("GET", p+"?table=items&offset=-1")
		r.expectStatus(t, 200)
		if r.header.Get("electric-handle") == "" {
			t.Errorf("%s: not served as a shape", p)
		}
	}
}

func TestOptionsPreflight(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{Secret: "s3cret"}, itemsTable)
	r := e.request("OPTIONS", "/v1/shape?table=items",
		"Origin", "https://app.example",
		"Access-Control-Request-Method", "GET",
		"Access-Control-Request-Headers", "If-None-Match")
	r.expectStatus(t, 204)
	hdrIs(t, r, "access-control-allow-origin", "https://app.example")
	hdrIs(t, r, "access-control-allow-methods", "GET, POST, HEAD, DELETE, OPTIONS")
	hdrIs(t, r, "access-control-max-age", "86400")
	hdrIs(t, r, "access-control-allow-headers", "If-None-Match")
	hdrIs(t, r, "access-control-expose-headers", exposeHdrs)
	hdrAbsent(t, r, "cache-control")
	if len(r.body) != 0 {
		t.Errorf("body %q", r.body)
	}
	// authorization is never allowed; traceparent is.
	r = e.request("OPTIONS", "/v1/shape", "Access-Control-Request-Headers", "authorization")
	r.expectStatus(t, 204)
	hdrAbsent(t, r, "access-control-allow-headers")
	hdrIs(t, r, "access-control-allow-origin", "*")
	r = e.request("OPTIONS", "/v1/shape", "Access-Control-Request-Headers", "traceparent")
	hdrIs(t, r, "access-control-allow-headers", "traceparent")
	// The value is not split on commas.
	r = e.request("OPTIONS", "/v1/shape", "Access-Control-Request-Headers", "if-none-match, authorization")
	hdrAbsent(t, r, "access-control-allow-headers")
}

func TestSecret(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{Secret: "s3cret"}, itemsTable)
	const unauthorized = `{"message":"Unauthorized - Invalid API secret"}`
	check401 := func(r response, what string) {
		t.Helper()
		if r.status != 401 {
			t.Errorf("%s: status %d, want 401: %s", what, r.status, r.body)
			return
		}
		if !strings.HasPrefix(what, "HEAD") {
			mustJSON(t, string(r.body), unauthorized)
		}
		// The secret check comes before the CORS headers.
		hdrAbsent(t, r, "access-control-allow-origin", "electric-handle")
	}
	check401(e.shape("table", "items", "offset", "-1"), "no secret")
	check401(e.shape("table", "items", "offset", "-1", "secret", "wrong"), "wrong secret")
	check401(e.shape("table", "items", "offset", "-1", "secret", ""), "empty secret")
	check401(e.shape("table", "items", "offset", "-1", "api_secret", "S3CRET"), "wrong api_secret")
	check401(e.request("DELETE", "/v1/shape?table=items"), "DELETE without secret")
	check401(e.request("HEAD", "/v1/shape?table=items&offset=-1"), "HEAD without secret")
	for _, p := range []string{"/v1//shape", "/v1/shape/", "/v1/%73hape", "/v1/shape//", "/v1/./shape", "/v1/x/../shape"} {
		check401(e.rawRequest("GET", p+"?table=items&offset=-1"), "GET "+p)
		check401(e.rawRequest("DELETE", p+"?table=items"), "DELETE "+p)
		// With the secret, the normalised path is the shape endpoint.
		r := e.rawRequest("GET", p+"?secret=s3cret")
		r.expectStatus(t, 400)
	}

	ok := e.shape("table", "items", "offset", "-1", "secret", "s3cret")
	ok.expectStatus(t, 200)
	e.shape("table", "items", "offset", "-1", "api_secret", "s3cret").expectStatus(t, 200)
	// Not the secret: health, root, OPTIONS.
	e.request("GET", "/v1/health").expectStatus(t, 200)
	e.request("GET", "/").expectStatus(t, 200)
	e.request("OPTIONS", "/v1/shape").expectStatus(t, 204)
	// A validation error only after the secret check.
	r := e.shape("secret", "s3cret", "offset", "-1")
	r.expectStatus(t, 400)
	mustJSON(t, string(r.body), `{"message":"Invalid request","errors":{"table":["can't be blank"]}}`)
}

func TestDeleteShape(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{AllowDelete: true}, itemsTable, `INSERT INTO items VALUES (1, 'a', 1, true)`)
	notFound := `{"message":"No existing shape found"}`

	r := e.request("DELETE", "/v1/shape?"+qs("table", "items"))
	r.expectStatus(t, 404)
	mustJSON(t, string(r.body), notFound)

	r = e.request("DELETE", "/v1/shape")
	r.expectStatus(t, 400)
	mustJSON(t, string(r.body), `{"message":"Invalid request","errors":{"handle":["can't be blank when shape definition is missing"]}}`)

	f := e.follow("table", "items")
	old := f.handle
	// A definition with another handle.
	r = e.request("DELETE", "/v1/shape?"+qs("table", "items", "handle", "1-2"))
	r.expectStatus(t, 400)
	if !jsonEq(t, string(r.body), `{"message":"Invalid request","errors":{"handle":["The specified shape definition and handle do not match. Please ensure the shape definition is correct or omit the shape handle from the request to obtain a new one."]}}`) {
		t.Errorf("mismatch body %s", r.body)
	}
	r = e.request("DELETE", "/v1/shape?"+qs("table", "items"))
	r.expectStatus(t, 202)
	if len(r.body) != 0 {
		t.Errorf("202 body %q", r.body)
	}
	hdrIs(t, r, "cache-control", "no-cache")
	// The next request of a client of the deleted shape is a 409.
	c := e.shape("table", "items", "offset", f.offset, "handle", old)
	c.expectStatus(t, 409)
	if string(c.body) != mustRefBody {
		t.Errorf("409 body %s", c.body)
	}
	nh := c.header.Get("electric-handle")
	if nh == "" || nh == old {
		t.Fatalf("409 handle %q (old %q)", nh, old)
	}
	// Deletion by handle alone.
	r = e.request("DELETE", "/v1/shape?"+qs("handle", nh))
	r.expectStatus(t, 202)
	r = e.request("DELETE", "/v1/shape?"+qs("handle", nh))
	r.expectStatus(t, 404)
	mustJSON(t, string(r.body), notFound)
	// Invalid definitions are 400s.
	r = e.request("DELETE", "/v1/shape?"+qs("table", "a.b.c"))
	r.expectStatus(t, 400)
}
