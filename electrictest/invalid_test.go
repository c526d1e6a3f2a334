package electrictest_test

// §1, §1.4, §5.2: every invalid parameter is a 400 in Electric's format;
// offsets out of bounds; bad input never crashes the server.

import (
	"encoding/json"
	"math/rand/v2"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
)

// invalid checks a 400 in Electric's format. want is the exact errors
// object, or "" to check only that field is the one in error.
func checkInvalid(t *testing.T, r response, field, want string) {
	t.Helper()
	if r.status != 400 {
		t.Errorf("status %d, want 400: %s", r.status, abbrev(string(r.body), 300))
		return
	}
	hdrIs(t, r, "content-type", jsonCT)
	hdrIs(t, r, "cache-control", "no-store")
	hdrIs(t, r, "surrogate-control", "no-store")
	hdrAbsent(t, r, "electric-schema", "electric-up-to-date", "electric-has-data")
	var body struct {
		Message string              `json:"message"`
		Errors  map[string][]string `json:"errors"`
	}
	dec := json.NewDecoder(strings.NewReader(string(r.body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&body); err != nil {
		t.Errorf("400 body is not {message, errors}: %v: %s", err, r.body)
		return
	}
	if body.Message != "Invalid request" || len(body.Errors) != 1 || len(body.Errors[field]) == 0 {
		t.Errorf("400 body %s, want errors for %q only", r.body, field)
		return
	}
	for _, m := range body.Errors[field] {
		if m == "" {
			t.Errorf("empty message in %s", r.body)
		}
	}
	if want != "" {
		mustJSON(t, string(r.body), `{"message":"Invalid request","errors":{`+mustMarshal(field)+`:`+want+`}}`)
	}
	noPgLeak(t, r)
}

// pgLeaks are fragments of Postgres' own error texts that must never reach
// a client verbatim.
var pgLeaks = []string{"ERROR", "SQLSTATE", "does not exist", "at or near", "at end of input", "cannot execute",
	"read-only transaction", "permission denied", "pq:", "pgx", "42601", "42703", "42883", "22P02", "function pg_", "(integer)",
	"operator does not exist", "invalid input syntax", "not allowed in WHERE", "canceling statement",
	"terminating connection"}

func noPgLeak(t *testing.T, r response) {
	t.Helper()
	for _, l := range pgLeaks {
		// The table-not-found message of Electric says "does not exist" itself.
		if l == "does not exist" && strings.Contains(string(r.body), "If the table name contains capitals") {
			continue
		}
		if strings.Contains(string(r.body), l) {
			t.Errorf("response leaks %q: %s", l, r.body)
		}
	}
}

func TestInvalidParameters(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, itemsTable, `CREATE TABLE "Caps" (id int PRIMARY KEY)`)
	handle := e.follow("table", "items").handle
	long := strings.Repeat("a", 64)
	cases := []struct {
		query, field, want string
	}{
		{"offset=-1", "table", `["can't be blank"]`},
		{"table=&offset=-1", "table", `["can't be blank"]`},
		{"table=items", "offset", `["can't be blank"]`},
		{"table=items&offset=", "offset", `["can't be blank"]`},
		{"table=items&offset=10", "offset", `["has invalid format"]`},
		{"table=items&offset=1_2_3", "offset", `["has invalid format"]`},
		{"table=items&offset=0_-1", "offset", `["has invalid format"]`},
		{"table=items&offset=10_32.1", "offset", `["has invalid format"]`},
		{"table=items&offset=1_2%20", "offset", `["has invalid format"]`},
		{"table=items&offset=abc", "offset", `["has invalid format"]`},
		{"table=items&offset=_1", "offset", `["has invalid format"]`},
		{"table=items&offset=1_", "offset", `["has invalid format"]`},
		{"table=items&offset=inf_1", "offset", `["has invalid format"]`},
		{"table=items&offset=-2", "offset", `["has invalid format"]`},
		{"table=items&offset=1__2", "offset", `["has invalid format"]`},
		{"table=items&offset=-1_1", "offset", `["has invalid format"]`},
		{"table=items&offset=NOW", "offset", `["has invalid format"]`},
		{"table=items&offset=0_0", "handle", `["can't be blank when offset != -1"]`},
		{"table=items&offset=0_inf&handle=", "handle", `["can't be blank when offset != -1"]`},
		{"table=items&offset=-1&replica=partial", "replica", `["is invalid"]`},
		{"table=items&offset=-1&replica=FULL", "replica", `["is invalid"]`},
		{"table=items&offset=-1&log=bogus", "log", `["is invalid"]`},
		{"table=items&offset=now&live=true", "live", `["can't be true when offset is 'now'"]`},
		{"table=items&offset=-1&live=true", "live", `["can't be true when offset == -1"]`},
		{"table=items&offset=-1&live", "live", `["can't be true when offset == -1"]`},
		{"table=items&offset=-1&live_sse=true", "live_sse", `["can't be true unless live is also true"]`},
		{"table=items&offset=-1&where=id+%3D+%241+OR+id+%3D+%243&params%5B1%5D=1&params%5B3%5D=3", "params", `["Parameters must be numbered sequentially, starting from 1"]`},
		{"table=items&offset=-1&where=id+%3D+%241&params%5B0%5D=1", "params", `["Parameters must be numbered sequentially, starting from 1"]`},
		{"table=items&offset=-1&where=id+%3D+%241&params%5B2%5D=1", "params", `["Parameters must be numbered sequentially, starting from 1"]`},
		{"table=items&offset=-1&where=id+%3D+%241&params%5Ba%5D=1", "params", `["Parameters can only use numbers as keys"]`},
		{"table=items&offset=-1&where=id+%3D+%241&params=%7B%221%22%3A%221%22%7D", "params", `["is invalid"]`},
		// Keys are read with Elixir's Integer.parse (Shape.Validators): 01
		// and +1 are the number 1, so they pass the key checks, but $1 is
		// looked up under "1" only (Eval.Parser, ParamRef).
		{"table=items&offset=-1&where=id+%3D+%241&params%5B01%5D=1", "where", `["At location 5: parameter $1 was not provided"]`},
		{"table=items&offset=-1&where=id+%3D+%241&params%5B%2B1%5D=1", "where", `["At location 5: parameter $1 was not provided"]`},
		{"table=items&offset=-1&where=id+%3D+%241&params%5B1%5D=1&params%5B01%5D=1", "params", `["Parameters must be numbered sequentially, starting from 1"]`},
		{"table=items&offset=-1&where=id+%3D+%241&params%5B-1%5D=1", "params", `["Parameters must be numbered sequentially, starting from 1"]`},
		{"table=items&offset=-1&where=id+%3D+%241&params%5B1.0%5D=1", "params", `["Parameters can only use numbers as keys"]`},
		{"table=items&offset=-1&where=id+%3D+%241&params%5B%2B-1%5D=1", "params", `["Parameters can only use numbers as keys"]`},
		{"table=items&offset=-1&where=id+%3D+%241&params%5B%201%5D=1", "params", `["Parameters can only use numbers as keys"]`},
		// A list or a nested map fails Ecto's cast to a map of strings,
		// with or without a where clause.
		{"table=items&offset=-1&params%5B%5D=1", "params", `["is invalid"]`},
		{"table=items&offset=-1&where=id+%3D+%241&params%5B1%5D%5B2%5D=1", "params", `["is invalid"]`},
		{"table=a.b.c&offset=-1", "table", `["Invalid relation identifier, too many delimiters: a.b.c"]`},
		{"table=.invalid_shape&offset=-1", "table", `["Invalid zero-length delimited identifier"]`},
		{"table=%22%22&offset=-1", "table", `["Invalid zero-length delimited identifier"]`},
		{"table=%22a%22b%22&offset=-1", "table", `["Invalid identifier with unescaped quote: a\"b"]`},
		{"table=foo-bar&offset=-1", "table", `["Invalid unquoted identifier contains special characters: foo-bar"]`},
		{"table=1abc&offset=-1", "table", `["Invalid unquoted identifier contains special characters: 1abc"]`},
		{"table=" + long + "&offset=-1", "table", `["Identifier is too long (max length is 63)"]`},
		{"table=nonexistent&offset=-1", "table", `["Table \"public\".\"nonexistent\" does not exist. If the table name contains capitals or special characters you must quote it."]`},
		{"table=Caps&offset=-1", "table", `["Table \"public\".\"caps\" does not exist. If the table name contains capitals or special characters you must quote it."]`},
		{"table=%22items%22.x&offset=-1", "table", `["Table \"items\".\"x\" does not exist. If the table name contains capitals or special characters you must quote it."]`},
		{"table=%22%00%22&offset=-1", "table", ""},
		{"table=%22%FF%22&offset=-1", "table", ""},
		{"table=items&offset=-1&columns=id%2C", "columns", `["Invalid zero-length delimited identifier"]`},
		{"table=items&offset=-1&columns=%22id", "columns", ""},
		{"table=items&offset=-1&where=id+%3D", "where", ""},
		{"table=items&offset=-1&where=foo+%3D+1", "where", ""},
		{"table=items&offset=-1&where=nope.id+%3D+1", "where", ""},
		{"table=items&offset=-1&where=public.items.id+%3D+1", "where", ""},
		{"table=items&offset=-1&where=id+%2B+1", "where", `["WHERE clause must return a boolean"]`},
		{"table=items&offset=-1&where=title", "where", `["WHERE clause must return a boolean"]`},
		{"table=items&offset=-1&where=%20", "where", ""},
		{"table=items&offset=-1&where=id+%3D+%241", "where", `["At location 5: parameter $1 was not provided"]`},
		{"table=items&offset=-1&where=n+%3E+%241&params%5B1%5D=abc", "where", ""},
		{"table=items&offset=-1&where=n+%3E+%241&params%5B1%5D=99999999999", "where", ""},
		{"table=items&offset=-1&where=id+%3D+ANY(%241%3A%3Aint%5B%5D)&params%5B1%5D=%7B1%2Cx%7D", "where", ""},
		{"table=items&offset=-1&where=count(*)+%3E+0", "where", ""},
		{"table=items&offset=-1&where=no_such_fn(id)", "where", ""},
		{"table=items&offset=-1&where=id+%3D+%27x%27", "where", ""},
		{"table=items&offset=-1&where=%22unterminated", "where", ""},
		{"table=items&offset=-1&where=%27unterminated", "where", ""},
		{"table=items&offset=-1&where=id+%3D+1)", "where", ""},
		{"table=items&offset=-1&where=(id+%3D+1", "where", ""},
		{"table=items&offset=-1&where=1%2F0+%3D+1", "where", ""},
		{"table=items&offset=-1&subset__where=id+%3D+1", "subset", ""},
	}
	for _, c := range cases {
		t.Run(c.query, func(t *testing.T) {
			checkInvalid(t, e.request("GET", "/v1/shape?"+c.query), c.field, c.want)
		})
	}
	// Also for requests with a handle, and HEAD.
	checkInvalid(t, e.shape("table", "items", "offset", "0_0", "handle", handle, "replica", "x"), "replica", `["is invalid"]`)
	r := e.request("HEAD", "/v1/shape?table=items&offset=10")
	r.expectStatus(t, 400)

	// Accepted: empty values are absent values, unknown parameters are
	// ignored, leading zeros in offsets are fine.
	for _, q := range []string{
		"table=items&offset=-1&where=",
		"table=items&offset=-1&columns=",
		"table=items&offset=-1&replica=",
		"table=items&offset=-1&log=",
		"table=items&offset=-1&handle=",
		"table=items&offset=-1&foo=bar&cache-buster=1&expired_handle=x",
		// Only subset__* and subset[...] make a subset request (Electric's
		// serve_shape_plug); other unknown names are dropped by the cast.
		"table=items&offset=-1&subsets=1&subset_where=x&subsetlimit=1&source_id=x&Table=x",
		// params[01] is key number 1: valid when the where does not use $1.
		"table=items&offset=-1&where=id+%3E+0&params%5B01%5D=5",
		// Without a where clause the keys are not checked at all.
		"table=items&offset=-1&params%5Ba%5D=1&params%5B7%5D=1",
		"table=items&offset=-1&where=id+%3E+%241&params%5B1%5D=0",
		"table=items&offset=-1&live=false",
		"table=items&offset=now&live=false",
		"table=%22items%22&offset=-1",
		"table=ITEMS&offset=-1",
		"table=public.items&offset=-1",
		"table=items&offset=0_02&handle=" + handle,
		"table=items&offset=-1&columns=id%2Cid%2Ctitle",
		"table=items&offset=-1&where=id+IN+(1%2C2)",
		"table=items&offset=-1&where=title+%3D+%27a%3Bb%27",
		"table=items&offset=-1&where=title+%3D+%27--%27",
		"table=items&offset=-1&where=title+%3D+%27%2F*%27",
		"table=items&offset=-1&where=title+%3D+%27select%27",
		"table=items&offset=-1&where=%22title%22+%3D+%24%24",
	} {
		r := e.request("GET", "/v1/shape?"+q)
		want := 200
		if strings.HasSuffix(q, "%24%24") {
			want = 400 // dollar quoting is refused
		}
		if r.status != want {
			t.Errorf("%s: status %d, want %d: %s", q, r.status, want, r.body)
		}
	}
}

// §1.2: an offset ahead of the shape waits long_poll_timeout/2 for it, then 400.
func TestOffsetOutOfBounds(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: time.Second}, itemsTable)
	f := e.follow("table", "items")
	for _, live := range []string{"false", "true"} {
		r := e.shape("table", "items", "offset", "99999999999_0", "handle", f.handle, "live", live)
		checkInvalid(t, r, "offset", `["out of bounds for this shape"]`)
		// Electric answers it with Response.invalid_request(api, ...): no
		// handle and, even to a live request, no electric-cursor.
		hdrAbsent(t, r, "electric-cursor", "electric-handle")
		if r.elapsed < 400*time.Millisecond || r.elapsed > 3*time.Second {
			t.Errorf("live=%s: answered after %v, want about long_poll_timeout/2", live, r.elapsed)
		}
	}
	// An offset that the shape reaches while waiting is served.
	e.exec(`INSERT INTO items VALUES (1, 'a', 1, true)`)
	f.liveUntil(5*time.Second, func() bool { return len(f.rows) == 1 })
}

// Bad input never crashes the server: random garbage in every parameter
// gets a 2xx/4xx answer and the server keeps serving.
func TestGarbageRequests(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{LongPollTimeout: 200 * time.Millisecond}, itemsTable,
		`INSERT INTO items VALUES (1, 'a', 1, true)`)
	handle := e.follow("table", "items").handle
	rng := rand.New(rand.NewPCG(1, 2))
	atoms := []string{"", "-1", "now", "0_0", "0_inf", "1_2", "items", `"items"`, "public.items", "id", `"id","title"`,
		"id = 1", "id = $1", "$1", "$$", "'", `"`, "(", ")", ";", "--", "/*", "\x00", "\xff", "é", "%", "%zz", "true",
		"false", "full", "default", "changes_only", handle, "1-2", strings.Repeat("x", 5000), "[", "]", "params[1]", "9999999999999999999999_1"}
	keys := []string{"table", "offset", "handle", "live", "cursor", "where", "columns", "replica", "log", "params[1]",
		"params[2]", "params", "params[]", "params[x]", "live_sse", "experimental_live_sse", "secret", "subset__where", "params[1][2]"}
	for i := 0; i < 300; i++ {
		var sb strings.Builder
		for j := rng.IntN(6); j >= 0; j-- {
			if sb.Len() > 0 {
				sb.WriteByte('&')
			}
			k := keys[rng.IntN(len(keys))]
			v := atoms[rng.IntN(len(atoms))] + atoms[rng.IntN(len(atoms))]
			if rng.IntN(2) == 0 {
				sb.WriteString(url.QueryEscape(k) + "=" + url.QueryEscape(v))
			} else {
				sb.WriteString(k + "=" + v) // raw: may be an invalid query string
			}
		}
		target := "/v1/shape?" + strings.NewReplacer(" ", "%20", "\x00", "%00", "\n", "%0A").Replace(sb.String())
		if _, err := url.ParseRequestURI(target); err != nil {
			continue
		}
		r := e.rawRequest("GET", target)
		switch {
		case r.status == 200 || r.status == 400 || r.status == 409:
		default:
			t.Errorf("%s: status %d: %s", target, r.status, abbrev(string(r.body), 200))
		}
		if r.status == 400 && strings.HasPrefix(string(r.body), "{") {
			noPgLeak(t, r)
		}
	}
	f := e.follow("table", "items")
	e.exec(`INSERT INTO items VALUES (2, 'b', 2, false)`)
	f.converge(`SELECT format('"public"."items"/"%s"', id), id::text, title, n::text, done::text FROM items`)
}
