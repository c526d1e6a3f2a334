package proxy

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/shapeseal/shapeseal/client"
	"github.com/shapeseal/shapeseal/internal/nodetest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// TestTypeScriptClientSubqueryRule follows alice's membership rule
// (member_items: items of the tenants she is a member of, her id from the
// token's sub) end to end — Postgres → electrictest → the proxy, with
// real RS256 tokens → four followers: the official @electric-sql/client
// (follow.mjs) with long polls and with SSE, and client.Shape with long
// polls and with SSE — through scripted, then random, membership changes
// (hers and bob's) and item inserts, updates and deletes, one transaction
// at a time, sometimes several before the followers may catch up.
//
// After each step, every follower must reach its expected view:
//
//   - client.Shape (both transports): exactly the rule's query in Postgres.
//   - The TypeScript client's stream, replayed into a client.Shape (see
//     tsFollower): exactly the query too. Its ShapeStream delivers the
//     tags and the move-in and move-out events unharmed.
//   - The TypeScript client's own Shape: the query plus the rows that a
//     move-out took away, with the values they had then, until a change
//     to the row itself (a move back in by a move-in or by its own update)
//     brings it back into the shape. The Shape of @electric-sql/client
//     1.5.26 handles change and control messages only (shape.ts,
//     Shape.#process): event messages are ignored, so a move-out removes
//     nothing, and no delete follows (Electric sends none: the rows left
//     the shape). Such a row stays in shape.rows even after it is deleted
//     in Postgres, until a must-refetch. Electric's docs show this Shape
//     on a subquery shape and say rows "move in or out of the shape"; the
//     client's own types say tags exist so that clients can "react to
//     move-outs", which this Shape does not do. The test models this
//     exactly (ghost rows), so that a client version that starts applying
//     move-outs fails it and the model can go.
func TestTypeScriptClientSubqueryRule(t *testing.T) {
	node, interop := nodetest.Setup(t)
	e := newMemberEnv(t)
	pgtest.Exec(t, e.db, `
		INSERT INTO items VALUES (6,'initech','carol','i6','n'),(7,'initech','dave','i7','n'),(8,'umbrella','erin','u8','n');
		INSERT INTO memberships VALUES ('alice','initech'),('bob','acme')`)
	m := newMemberModel(t, e.db, "alice")
	shapeURL := e.url + "/v1/shapes/member_items"
	tok := token(t, "alice", nil)

	ts := []*tsFollower{
		startTS(t, "TS long-poll", node, interop, shapeURL, tok),
		startTS(t, "TS SSE", node, interop, shapeURL, tok, "--live-sse"),
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	goSSE, goSSEStream := goMemberShape(t, ctx, shapeURL, tok, true)
	goLP, _ := goMemberShape(t, ctx, shapeURL, tok, false)
	gos := map[string]*client.Shape{"Go long-poll": goLP, "Go SSE": goSSE}
	converge := func(step string) {
		t.Helper()
		waitMembers(t, step, m, ts, gos)
	}
	converge("initial")

	// Scripted: every case of the TypeScript Shape's divergence.
	m.write("alice leaves acme (move-out of 1, 2)", true, `DELETE FROM memberships WHERE user_id = 'alice' AND tenant_id = 'acme'`)
	converge("leave acme")
	m.write("update a row that moved out", false, `UPDATE items SET title = 'a1 renamed' WHERE id = 1`)
	m.write("delete a row that moved out", false, `DELETE FROM items WHERE id = 2`)
	converge("ghost rows change in Postgres")
	m.write("a moved-out row moves back in by its own update", false, `UPDATE items SET tenant_id = 'initech' WHERE id = 1`)
	converge("own update")
	m.write("bob leaves acme (no effect)", false, `DELETE FROM memberships WHERE user_id = 'bob' AND tenant_id = 'acme'`)
	m.write("alice leaves initech", true, `DELETE FROM memberships WHERE user_id = 'alice' AND tenant_id = 'initech'`)
	m.write("alice joins initech again (move-in)", false, `INSERT INTO memberships VALUES ('alice','initech')`)
	converge("leave and join in a row")
	m.write("alice joins acme again (move-in; row 2 is gone)", false, `INSERT INTO memberships VALUES ('alice','acme')`)
	converge("join acme")
	// An update of a row that stays in, so that every kind of change is
	// seen whatever the random steps draw.
	m.write("update a visible row", false, `UPDATE items SET title = 'a1 seen' WHERE id = 1`)
	converge("visible update")
	if len(m.ghosts) == 0 {
		t.Fatal("the script left no moved-out row: it exercises nothing")
	}

	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 10))
	for step := 1; step <= 40; step++ {
		for range 1 + rng.IntN(3)/2 { // now and then two transactions before a wait
			name, moveOut, sql := m.randomOp(rng)
			m.write(name, moveOut, sql)
		}
		converge(fmt.Sprintf("random step %d", step))
	}

	for _, f := range ts {
		events, ops, untagged := f.counts()
		t.Logf("%s: events %v, changes %v", f.name, events, ops)
		if events["move-out"] == 0 || events["move-in"] == 0 || ops["insert"] == 0 || ops["update"] == 0 || ops["delete"] == 0 {
			t.Errorf("%s: events %v, changes %v: want move-in, move-out, insert, update and delete", f.name, events, ops)
		}
		if untagged > 0 {
			t.Errorf("%s: %d change messages without tags", f.name, untagged)
		}
	}
	// The SSE followers did follow by SSE: the TypeScript client marks its
	// requests with experimental_live_sse as well, the Go client does not.
	var tsSSE, goSSEReqs int
	for _, q := range e.rec.all() {
		switch {
		case q.Get("experimental_live_sse") == "true":
			tsSSE++
		case q.Get("live_sse") == "true":
			goSSEReqs++
		}
	}
	if tsSSE == 0 || goSSEReqs == 0 || goSSEStream.SSEFallback() {
		t.Errorf("SSE requests upstream: %d from the TypeScript client, %d from the Go client (fell back to long polls: %v)",
			tsSSE, goSSEReqs, goSSEStream.SSEFallback())
	}
	t.Logf("%d transactions, %d membership moves out; %d steps ended with rows the TypeScript Shape kept after a move-out (at most %d at once)",
		len(m.names), m.moveOuts, m.ghostSteps, m.maxGhosts)
}

// goMemberShape follows shapeURL with client.Shape, live, by long polls or
// SSE.
func goMemberShape(t *testing.T, ctx context.Context, shapeURL, tok string, sse bool) (*client.Shape, *client.ShapeStream) {
	s, err := client.New(client.Options{URL: shapeURL, TokenSource: client.StaticToken(tok), Live: true, LiveSSE: sse,
		OnError: func(error) *client.Recovery { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	sh := client.NewShape(s)
	errc := make(chan error, 1)
	go func() { errc <- sh.Run(ctx) }()
	t.Cleanup(func() {
		if err := <-errc; err != nil && ctx.Err() == nil {
			t.Errorf("client.Shape (sse=%v): %v", sse, err)
		}
	})
	return sh, s
}

// memberCanon renders a row of member_items for comparison: the same for
// the Go client's strings and the TypeScript client's parsed values.
func memberCanon(r map[string]any) string { return fmt.Sprint(r["tenant_id"], "|", r["title"]) }

// waitMembers waits until every follower has its expected view (see
// TestTypeScriptClientSubqueryRule), or fails the test with the
// differences.
func waitMembers(t *testing.T, step string, m *memberModel, ts []*tsFollower, gos map[string]*client.Shape) {
	t.Helper()
	want, wantTS := m.want()
	deadline := time.Now().Add(20 * time.Second)
	for {
		var bad []string
		for name, sh := range gos {
			got := map[string]string{}
			for k, r := range sh.Rows() {
				got[k] = memberCanon(r)
			}
			if !sh.IsUpToDate() || !maps.Equal(got, want) {
				bad = append(bad, name+" (client.Shape): "+viewDiff(want, got))
			}
		}
		for _, f := range ts {
			shape, replay, ok := f.views(memberCanon)
			if shape == nil || !maps.Equal(shape, wantTS) {
				bad = append(bad, f.name+" (its Shape): "+viewDiff(wantTS, shape))
			}
			if !ok || !maps.Equal(replay, want) {
				bad = append(bad, f.name+" (its stream, replayed): "+viewDiff(want, replay))
			}
		}
		if len(bad) == 0 {
			if len(m.ghosts) > 0 {
				m.ghostSteps++
				m.maxGhosts = max(m.maxGhosts, len(m.ghosts))
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not converged within 20 s after %q:\n%s", step, m.names[len(m.names)-1], strings.Join(bad, "\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// viewDiff describes how got differs from want.
func viewDiff(want, got map[string]string) string {
	if got == nil {
		return "no view yet"
	}
	var d []string
	for k, v := range want {
		if g, ok := got[k]; !ok {
			d = append(d, "missing "+k+"="+v)
		} else if g != v {
			d = append(d, k+"="+g+", want "+v)
		}
	}
	for k, v := range got {
		if _, ok := want[k]; !ok {
			d = append(d, "extra "+k+"="+v)
		}
	}
	slices.Sort(d)
	if len(d) == 0 {
		return "same rows, not up to date"
	}
	return strings.Join(d, "; ")
}

// memberModel writes to the database and keeps what each follower must
// show: state, the rule's query for the user (read inside each
// transaction, so known before any follower can see it), and ghosts, the
// rows the TypeScript Shape keeps after a move-out.
type memberModel struct {
	t      *testing.T
	conn   *pgx.Conn
	user   string
	state  map[string]string
	ghosts map[string]string
	names  []string
	nextID int

	moveOuts, ghostSteps, maxGhosts int
}

func newMemberModel(t *testing.T, db, user string) *memberModel {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	m := &memberModel{t: t, conn: conn, user: user, ghosts: map[string]string{}, nextID: 100}
	m.write("initial", false)
	return m
}

// write commits sqls in one transaction. moveOut says that the
// transaction takes a membership of the user away and does nothing else:
// the rows it takes out of the shape leave by a move-out event.
func (m *memberModel) write(name string, moveOut bool, sqls ...string) {
	m.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tx, err := m.conn.Begin(ctx)
	if err != nil {
		m.t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	for _, s := range sqls {
		if _, err := tx.Exec(ctx, s); err != nil {
			m.t.Fatalf("%s: %s: %v", name, s, err)
		}
	}
	rows, err := tx.Query(ctx, `SELECT format('"public"."items"/"%s"', id), tenant_id || '|' || title FROM items
		WHERE tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id = $1)`, m.user)
	if err != nil {
		m.t.Fatal(err)
	}
	next := map[string]string{}
	for rows.Next() {
		var k, v string
		if err := rows.Scan(&k, &v); err != nil {
			m.t.Fatal(err)
		}
		next[k] = v
	}
	if err := rows.Err(); err != nil {
		m.t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		m.t.Fatal(err)
	}
	if moveOut {
		for k, v := range m.state {
			if _, ok := next[k]; !ok {
				m.ghosts[k] = v
				m.moveOuts++
			}
		}
	}
	for k := range next {
		delete(m.ghosts, k)
	}
	m.state = next
	m.names = append(m.names, name)
}

// want returns the rule's rows now, and what the TypeScript Shape holds:
// those and the ghosts.
func (m *memberModel) want() (rows, tsShape map[string]string) {
	tsShape = maps.Clone(m.state)
	maps.Copy(tsShape, m.ghosts)
	return m.state, tsShape
}

// randomOp returns a random single-statement transaction: a membership
// change (alice's or bob's) or an item insert, update or delete, on any
// row, in the shape, out of it or a ghost.
func (m *memberModel) randomOp(rng *rand.Rand) (name string, moveOut bool, sql string) {
	tenants := []string{"acme", "globex", "initech", "umbrella"}
	tenant := tenants[rng.IntN(len(tenants))]
	user := m.user
	if rng.IntN(4) == 0 {
		user = "bob"
	}
	pick := `(SELECT id FROM items ORDER BY random() LIMIT 1)`
	switch rng.IntN(8) {
	case 0, 1:
		return user + " joins " + tenant, false,
			fmt.Sprintf(`INSERT INTO memberships VALUES ('%s','%s') ON CONFLICT DO NOTHING`, user, tenant)
	case 2, 3:
		return user + " leaves " + tenant, user == m.user,
			fmt.Sprintf(`DELETE FROM memberships WHERE user_id = '%s' AND tenant_id = '%s'`, user, tenant)
	case 4:
		m.nextID++
		return "insert item", false, fmt.Sprintf(`INSERT INTO items VALUES (%d,'%s','x','t%d','n')`, m.nextID, tenant, m.nextID)
	case 5:
		return "rename an item", false, `UPDATE items SET title = title || '+' WHERE id = ` + pick
	case 6:
		return "move an item to " + tenant, false, fmt.Sprintf(`UPDATE items SET tenant_id = '%s' WHERE id = %s`, tenant, pick)
	default:
		return "delete an item", false, `DELETE FROM items WHERE id = ` + pick
	}
}
