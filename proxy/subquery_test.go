package proxy

import (
	"context"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// Membership-based authorization: a rule whose where is a subquery over a
// memberships table, its parameter the token's user. The where is the
// operator's; the client only chooses its position in the shape's log.

const memberWhere = "tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id = $1)"

const memberSchema = testSchema + `
CREATE TABLE memberships (user_id text, tenant_id text, PRIMARY KEY (user_id, tenant_id));
INSERT INTO memberships VALUES ('alice','acme'),('bob','globex');
`

func memberRules() []ShapeRule {
	return []ShapeRule{
		{Name: "member_items", Table: "items", Where: memberWhere, Params: []string{"$user"},
			Columns: []string{"id", "tenant_id", "title"}},
		// The same membership test ANDed with a claim of its own.
		{Name: "member_owned", Table: "items", Where: "owner = $2 AND " + memberWhere, Params: []string{"$user", "sub"}},
	}
}

// newMemberEnv is newEnvSQL with the membership rules; it checks that
// every upstream request carried one of those rules' definitions with the
// token user's id, and nothing a client chose.
func newMemberEnv(t *testing.T) *env {
	t.Helper()
	testKeys(t)
	db := pgtest.NewDB(t)
	pgtest.Exec(t, db, memberSchema)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	up, err := electrictest.New(ctx, electrictest.Options{DatabaseURL: db, Secret: upSecret, LongPollTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{next: up}
	hs := httptest.NewServer(rec)
	e := &env{t: t, db: db, up: up, rec: rec, upURL: hs.URL, logs: &syncBuffer{}}
	e.p, err = New(Config{Upstream: hs.URL, Secret: upSecret, Auth: testAuth(), Shapes: memberRules(),
		Limits: Limits{RequestsPerSecond: -1, MaxLivePerUser: -1}, Logger: newTestLogger(e.logs)})
	if err != nil {
		t.Fatal(err)
	}
	ps := httptest.NewServer(e.p)
	e.url = ps.URL
	t.Cleanup(func() {
		ps.CloseClientConnections()
		ps.Close()
		hs.CloseClientConnections()
		up.Close()
		hs.Close()
		for _, q := range rec.all() {
			if err := checkMemberPinned(q); err != "" {
				t.Errorf("upstream request outside the rules: %s: %v", err, q)
			}
		}
	})
	return e
}

var memberUsers = map[string]bool{"alice": true, "bob": true, "carol": true, "' OR true OR '": true}

func checkMemberPinned(q url.Values) string {
	allowed := map[string]bool{"offset": true, "handle": true, "live": true, "cursor": true, "live_sse": true,
		"experimental_live_sse": true, "expired_handle": true, "cache-buster": true, "log": true,
		"table": true, "where": true, "params[1]": true, "params[2]": true, "columns": true, "secret": true}
	for k, v := range q {
		if !allowed[k] {
			return "key " + k
		}
		if len(v) != 1 {
			return "repeated " + k
		}
	}
	if q.Get("secret") != upSecret || q.Get("table") != "items" || !memberUsers[q.Get("params[1]")] {
		return "secret/table/params[1]"
	}
	switch q.Get("where") {
	case memberWhere:
		if q.Has("params[2]") || q.Get("columns") == "" || strings.Contains(q.Get("columns"), "note") || strings.Contains(q.Get("columns"), "owner") {
			return "member_items params/columns"
		}
	case "owner = $2 AND " + memberWhere:
		if q.Get("params[2]") != q.Get("params[1]") || q.Has("columns") {
			return "member_owned params/columns"
		}
	default:
		return "where"
	}
	return ""
}

func rowIDs(rows map[string]client.Row) string {
	var ids []string
	for _, r := range rows {
		ids = append(ids, r["id"].(string))
	}
	if len(ids) == 0 {
		return ""
	}
	// small sets: sort by hand to keep the imports short
	for i := range ids {
		for j := i + 1; j < len(ids); j++ {
			if ids[j] < ids[i] {
				ids[i], ids[j] = ids[j], ids[i]
			}
		}
	}
	return strings.Join(ids, ",")
}

// TestSubqueryRuleMembers: each user sees the rows of the tenants they
// are a member of, and nothing else; the where and the user's id go
// upstream as the rule pins them.
func TestSubqueryRuleMembers(t *testing.T) {
	t.Parallel()
	e := newMemberEnv(t)
	for user, want := range map[string]string{
		"alice": "1,2", // acme
		"bob":   "3",   // globex
		"carol": "",    // no membership
		// The claim is a bound parameter, never SQL.
		"' OR true OR '": "",
	} {
		rows := follow(t, e.url+"/v1/shapes/member_items", token(t, user, nil))
		if got := rowIDs(rows); got != want {
			t.Errorf("%q sees items %q, want %q", user, got, want)
		}
		for _, r := range rows {
			if _, ok := r["note"]; ok {
				t.Errorf("column outside the allowlist: %v", r)
			}
		}
	}
	// The conjunction: alice's own rows of her tenants.
	if got := rowIDs(follow(t, e.url+"/v1/shapes/member_owned", token(t, "alice", nil))); got != "1" {
		t.Errorf("member_owned for alice: %q", got)
	}
	// A claim that is not the user claim cannot stand in for it: a token
	// naming bob elsewhere is still alice's.
	if got := rowIDs(follow(t, e.url+"/v1/shapes/member_items", token(t, "alice", map[string]any{"user_id": "bob", "uid": "bob"}))); got != "1,2" {
		t.Errorf("alice with extra claims: %q", got)
	}
	reqs := e.rec.all()
	if len(reqs) == 0 {
		t.Fatal("no upstream requests")
	}
	for _, q := range reqs {
		if q.Get("where") == memberWhere && q.Get("params[1]") == "alice" && q.Get("columns") != `"id","tenant_id","title"` {
			t.Errorf("columns %q", q.Get("columns"))
		}
	}
}

// TestSubqueryRuleAttacks: a client cannot widen the membership test:
// anything naming the table, the where, its params or a column outside
// the allowlist is refused before upstream, and a token can't be made to
// say it is another user.
func TestSubqueryRuleAttacks(t *testing.T) {
	t.Parallel()
	e := newMemberEnv(t)
	alice := token(t, "alice", nil)
	before := e.rec.count()
	for _, q := range []string{
		"offset=-1&where=true",
		"offset=-1&where=tenant_id%20IN%20(SELECT%20tenant_id%20FROM%20memberships)",
		"offset=-1&where=" + url.QueryEscape(memberWhere) + "&params[1]=bob",
		"offset=-1&params[1]=bob",
		"offset=-1&params%5B1%5D=bob",
		"offset=-1&params[2]=x",
		"offset=-1&params=%7B%221%22%3A%22bob%22%7D",
		"offset=-1&table=memberships",
		"offset=-1&table=items",
		"offset=-1&%74able=memberships",
		"offset=-1&columns=note",
		"offset=-1&columns=id,owner",
		"offset=-1&columns=%22note%22",
		"offset=-1&columns=user_id",
		"offset=-1&subset__where=true",
		"offset=-1&subset__params=%7B%221%22%3A%22bob%22%7D",
		"offset=-1&replica=full",
		"offset=-1&secret=" + upSecret,
	} {
		for _, shape := range []string{"member_items", "member_owned"} {
			if shape == "member_owned" && strings.HasPrefix(q, "offset=-1&columns=") {
				continue // no allowlist there: every column of items is the rule's
			}
			resp := e.rawDo("GET", "/v1/shapes/"+shape+"?"+q, alice, nil)
			if body := readBody(t, resp); resp.StatusCode != 400 {
				t.Errorf("%s?%s: %d %s", shape, q, resp.StatusCode, body)
			}
		}
	}
	// Tokens that try to be bob: a payload swapped under alice's
	// signature, bob's claims signed with a key the proxy doesn't know,
	// unsigned ones; and a token without a user.
	parts := splitDots(token(t, "bob", nil))
	for name, tok := range map[string]string{
		"tampered sub":  tamper(alice),
		"swapped":       strings.Join([]string{splitDots(alice)[0], parts[1], splitDots(alice)[2]}, "."),
		"other key":     sign(t, "HS256", "hs", otherHMAC, claimsFor("bob", nil)),
		"alg none":      signHeader(t, `{"alg":"none","typ":"JWT"}`, claimsFor("bob", nil)),
		"no signature":  parts[0] + "." + parts[1] + ".",
		"no user claim": token(t, "", map[string]any{"sub": nil}),
	} {
		resp := e.do("GET", e.url+"/v1/shapes/member_items?offset=-1", tok, nil)
		body := readBody(t, resp)
		if resp.StatusCode != 401 && !(name == "no user claim" && resp.StatusCode == 403) {
			t.Errorf("%s: %d %s", name, resp.StatusCode, body)
		}
	}
	if n := e.rec.count(); n != before {
		t.Fatalf("%d refused requests reached upstream", n-before)
	}
	// Bob's own token still gets bob's rows only.
	if got := rowIDs(follow(t, e.url+"/v1/shapes/member_items", token(t, "bob", nil))); got != "3" {
		t.Errorf("bob: %q", got)
	}
}

// TestSubqueryRuleMoves: alice's live stream follows her memberships.
// Removing her acme membership sends a move-out event and her view
// (client.Shape) drops acme's rows; adding memberships moves rows in.
// Bob's stream, meanwhile, never sees acme's rows.
// Both transports: live HTTP polls and a WebSocket subscription.
func TestSubqueryRuleMoves(t *testing.T) {
	t.Parallel()
	t.Run("http", func(t *testing.T) {
		t.Parallel()
		testMoves(t, func(ctx context.Context, e *env, user string) client.Stream {
			s, err := client.New(client.Options{URL: e.url + "/v1/shapes/member_items", TokenSource: client.StaticToken(token(t, user, nil)),
				Live: true, OnError: func(error) *client.Recovery { return nil }})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		})
	})
	t.Run("ws", func(t *testing.T) {
		t.Parallel()
		testMoves(t, func(ctx context.Context, e *env, user string) client.Stream {
			conn, err := client.DialWS(ctx, e.wsURL(), &client.WSOptions{TokenSource: client.StaticToken(token(t, user, nil))})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { conn.Close() })
			s, err := conn.Stream(ctx, "member_items", client.WSStreamOptions{Live: true})
			if err != nil {
				t.Fatal(err)
			}
			return s
		})
	})
}

func testMoves(t *testing.T, dial func(ctx context.Context, e *env, user string) client.Stream) {
	e := newMemberEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	open := func(user string) client.Stream { return dial(ctx, e, user) }
	type view struct {
		s      client.Stream
		sh     *client.Shape
		events []string
		all    []client.Message
	}
	alice := &view{s: open("alice"), sh: client.NewShape(nil)}
	// await applies messages until an up-to-date leaves the view with ids.
	await := func(v *view, what, ids string) {
		t.Helper()
		for {
			m, err := v.s.Next(ctx)
			if err != nil {
				t.Fatalf("%s: %v (view %q, events %v)", what, err, rowIDs(v.sh.Rows()), v.events)
			}
			v.all = append(v.all, m)
			if m.Headers.Event != "" {
				v.events = append(v.events, m.Headers.Event)
			}
			if v.sh.Apply(m) && rowIDs(v.sh.Rows()) == ids {
				return
			}
		}
	}
	await(alice, "snapshot", "1,2")
	for _, m := range alice.all {
		if m.IsChange() && len(m.Headers.Tags) != 1 {
			t.Fatalf("row without its tag: %+v", m.Headers)
		}
	}

	// Move-out: her membership of acme ends.
	pgtest.Exec(t, e.db, `DELETE FROM memberships WHERE user_id = 'alice' AND tenant_id = 'acme'`)
	alice.events = nil
	await(alice, "move-out", "")
	if len(alice.events) != 1 || alice.events[0] != "move-out" {
		t.Fatalf("events %v, want one move-out", alice.events)
	}
	// Her acme rows change: nothing reaches her.
	pgtest.Exec(t, e.db, `UPDATE items SET title = 'a1x' WHERE id = 1`)

	// Move-in: she joins globex, then acme again.
	alice.events = nil
	pgtest.Exec(t, e.db, `INSERT INTO memberships VALUES ('alice','globex')`)
	await(alice, "move-in globex", "3")
	pgtest.Exec(t, e.db, `INSERT INTO memberships VALUES ('alice','acme')`)
	await(alice, "move-in acme", "1,2,3")
	if len(alice.events) != 2 || alice.events[0] != "move-in" || alice.events[1] != "move-in" {
		t.Fatalf("events %v, want two move-ins", alice.events)
	}
	if r, _ := alice.sh.Get(`"public"."items"/"1"`); r["title"] != "a1x" {
		t.Errorf("moved-in row 1 is %v, want its current title", r)
	}

	// Bob, a member of globex only, sees none of this.
	bob := &view{s: open("bob"), sh: client.NewShape(nil)}
	await(bob, "bob snapshot", "3")
	pgtest.Exec(t, e.db, `INSERT INTO items VALUES (4,'acme','bob','a4','x'); INSERT INTO items VALUES (5,'globex','bob','g5','y')`)
	await(bob, "bob insert", "3,5")
	await(alice, "alice insert", "1,2,3,4,5")
	for _, m := range bob.all {
		if m.IsChange() && m.Value["tenant_id"] == "acme" {
			t.Fatalf("bob got an acme row: %v", m.Value)
		}
	}
}
