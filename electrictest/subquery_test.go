package electrictest_test

import (
	"context"
	"fmt"
	"math/rand"
	"regexp"
	"strings"
	"testing"

	"github.com/shapeseal/shapeseal/electrictest"
)

// Subquery shapes (`col IN (SELECT col FROM t WHERE ...)`), with Electric
// 1.7's wire format: tags and active_conditions on rows, move-in events
// followed by is_move_in inserts and snapshot-end, move-out events.

const subquerySetup = `
CREATE TABLE memberships (user_id int, tenant_id int, PRIMARY KEY (user_id, tenant_id));
CREATE TABLE items (id int PRIMARY KEY, tenant_id int, title text);
INSERT INTO memberships VALUES (1, 10), (1, 20), (2, 30);
INSERT INTO items VALUES (1, 10, 'a'), (2, 20, 'b'), (3, 30, 'c'), (4, 40, 'd');`

const memberWhere = `tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id = $1)`

var md5RE = regexp.MustCompile(`^[0-9a-f]{32}$`)

// commitXid runs sql in a transaction and returns its xid.
func (e *env) commitXid(sql string) string {
	e.t.Helper()
	ctx := context.Background()
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, sql); err != nil {
		e.t.Fatal(err)
	}
	var xid string
	tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid)
	if err := tx.Commit(ctx); err != nil {
		e.t.Fatal(err)
	}
	return xid
}

func tagOf(t *testing.T, m msg) string {
	t.Helper()
	tags, _ := m.headers()["tags"].([]any)
	if len(tags) != 1 {
		t.Fatalf("tags of %v", m)
	}
	return tags[0].(string)
}

// liveMsgs polls live until a response has messages, and returns them.
func (f *follower) liveMsgs() []msg {
	f.e.t.Helper()
	for i := 0; i < 20; i++ {
		if _, msgs := f.step(true); len(msgs) > 1 {
			return msgs
		}
	}
	f.e.t.Fatal("no messages")
	return nil
}

func TestSubqueryShape(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, subquerySetup)
	def := []string{"table", "items", "where", memberWhere, "params[1]", "1"}

	// Initial snapshot: rows tagged with the hash of their tenant.
	tags := snapshotTags(t, e, def)

	f := e.follow(def...)
	f.equal(e.rows(`SELECT format('"public"."items"/"%s"', id), id::text, tenant_id::text, title FROM items WHERE tenant_id IN (10, 20)`))

	// An update of a row in the shape keeps its tag.
	xid := e.commitXid(`UPDATE items SET title = 'a2' WHERE id = 1`)
	msgs := f.liveMsgs()
	lsn := msgs[0].headers()["lsn"].(string)
	mustJSON(t, mustMarshal(msgs[0]), fmt.Sprintf(`{"key":"\"public\".\"items\"/\"1\"","value":{"id":"1","title":"a2"},
		"headers":{"operation":"update","relation":["public","items"],"lsn":%q,"op_position":0,"txids":[%s],"last":true,
		"tags":[%q],"removed_tags":[],"active_conditions":[true]}}`, lsn, xid, tags["10"]))

	// Move-in: a membership brings tenant 30's rows, as inserts after a
	// move-in event, then snapshot-end.
	tag30 := checkMoveIn(t, e, f, tags)

	// New rows of a tenant in the subquery, and rows changing tenant.
	e.exec(`INSERT INTO items VALUES (5, 30, 'e')`)
	msgs = f.liveMsgs()
	if msgs[0].op() != "insert" || tagOf(t, msgs[0]) != tag30 {
		t.Fatalf("insert %v", msgs)
	}
	e.exec(`UPDATE items SET tenant_id = 20 WHERE id = 1`)
	msgs = f.liveMsgs()
	h := msgs[0].headers()
	if msgs[0].op() != "update" || tagOf(t, msgs[0]) != tags["20"] || mustMarshal(h["removed_tags"]) != mustMarshal([]string{tags["10"]}) {
		t.Fatalf("tenant change %v", msgs)
	}

	// Move-out: an event whose pattern matches the rows' tags; no deletes.
	xid = e.commitXid(`DELETE FROM memberships WHERE user_id = 1 AND tenant_id = 30`)
	msgs = f.liveMsgs()
	if len(msgs) != 2 {
		t.Fatalf("move-out %v", msgs)
	}
	mustJSON(t, mustMarshal(msgs[0]), fmt.Sprintf(`{"headers":{"event":"move-out","patterns":[{"pos":0,"value":%q}],"txids":[%s]}}`, tag30, xid))
	want := `SELECT format('"public"."items"/"%s"', id), id::text, tenant_id::text, title FROM items WHERE tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id = 1)`
	f.equal(e.rows(want))

	// Rows of a tenant that moved out no longer reach the shape.
	e.exec(`UPDATE items SET title = 'c2' WHERE id = 3`)
	e.exec(`UPDATE items SET title = 'b2' WHERE id = 2`)
	f.converge(want)
	for _, m := range f.log[len(f.log)-1:] {
		if m.key() == itemKey("3") {
			t.Fatalf("change of a moved-out row: %v", m)
		}
	}

	// Another user's shape (params) is its own.
	g := e.follow("table", "items", "where", memberWhere, "params[1]", "2")
	g.equal(e.rows(`SELECT format('"public"."items"/"%s"', id), id::text, tenant_id::text, title FROM items WHERE tenant_id = 30`))
	if g.handle == f.handle {
		t.Fatal("same handle for other params")
	}

	// Membership and rows in one transaction: the rows arrive once.
	e.exec(`INSERT INTO memberships VALUES (1, 50); INSERT INTO items VALUES (6, 50, 'f')`)
	f.converge(want)
	// A membership that changes nothing for the shape (a second way to the
	// same tenant does not exist here; another user's) sends nothing.
	e.exec(`INSERT INTO memberships VALUES (2, 10)`)
	g.converge(`SELECT format('"public"."items"/"%s"', id), id::text, tenant_id::text, title FROM items WHERE tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id = 2)`)
	f.converge(want)
}

// snapshotTags checks the initial snapshot of def: rows tagged with the
// hash of their tenant, then snapshot-end. It returns the tags by tenant.
func snapshotTags(t *testing.T, e *env, def []string) map[string]string {
	t.Helper()
	r := e.shape(append(def, "offset", "-1")...)
	r.expectStatus(t, 200)
	msgs := r.msgs(t)
	if len(msgs) != 3 || msgs[2].control() != "snapshot-end" {
		t.Fatalf("snapshot %s", r.body)
	}
	tags := map[string]string{}
	for _, m := range msgs[:2] {
		tag := tagOf(t, m)
		if !md5RE.MatchString(tag) {
			t.Fatalf("tag %q", tag)
		}
		tags[m.value()["tenant_id"].(string)] = tag
		mustJSON(t, mustMarshal(m.headers()), fmt.Sprintf(`{"active_conditions":[true],"tags":[%q],"operation":"insert","relation":["public","items"]}`, tag))
	}
	if len(tags) != 2 || tags["10"] == tags["20"] {
		t.Fatalf("tags %v", tags)
	}
	return tags
}

// checkMoveIn: a membership brings tenant 30's rows to f, as inserts after
// a move-in event, then snapshot-end, tagged apart from tags. It returns
// tenant 30's tag.
func checkMoveIn(t *testing.T, e *env, f *follower, tags map[string]string) string {
	t.Helper()
	xid := e.commitXid(`INSERT INTO memberships VALUES (1, 30)`)
	msgs := f.liveMsgs()
	if len(msgs) != 4 || msgs[3].control() != "up-to-date" || msgs[2].control() != "snapshot-end" {
		t.Fatalf("move-in %v", msgs)
	}
	tag30 := tagOf(t, msgs[1])
	mustJSON(t, mustMarshal(msgs[0]), fmt.Sprintf(`{"headers":{"event":"move-in","patterns":[{"pos":0,"value":%q}],"txids":[%s]}}`, tag30, xid))
	mustJSON(t, mustMarshal(msgs[1]), fmt.Sprintf(`{"key":"\"public\".\"items\"/\"3\"","value":{"id":"3","tenant_id":"30","title":"c"},
		"headers":{"active_conditions":[true],"tags":[%q],"operation":"insert","relation":["public","items"],"is_move_in":true}}`, tag30))
	if tag30 == tags["10"] || tag30 == tags["20"] {
		t.Fatal("tag30 not distinct")
	}
	return tag30
}

func TestSubqueryConjunction(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, subquerySetup)
	where := `title <> 'x' AND tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id = $1) AND id < $2`
	def := []string{"table", "items", "where", where, "params[1]", "1", "params[2]", "100", "columns", "id,title"}
	f := e.follow(def...)
	want := `SELECT format('"public"."items"/"%s"', id), id::text, title FROM items WHERE title <> 'x' AND tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id = 1) AND id < 100`
	f.equal(e.rows(want))
	for _, m := range f.log {
		tg := tagOf(t, m)
		if p := strings.Split(tg, "/"); len(p) != 3 || p[0] != "1" || !md5RE.MatchString(p[1]) || p[2] != "1" {
			t.Fatalf("tag %q", tg)
		}
		if mustMarshal(m.headers()["active_conditions"]) != `[true,true,true]` {
			t.Fatalf("active_conditions %v", m)
		}
	}
	e.exec(`INSERT INTO memberships VALUES (1, 30)`)
	msgs := f.liveMsgs()
	if ev := msgs[0].headers(); ev["event"] != "move-in" || mustMarshal(ev["patterns"].([]any)[0].(map[string]any)["pos"]) != "1" {
		t.Fatalf("move-in %v", msgs)
	}
	f.equal(e.rows(want))
	// The tag follows the subquery's column even when it is not selected.
	e.exec(`UPDATE items SET tenant_id = 10 WHERE id = 3`)
	msgs = f.liveMsgs()
	if msgs[0].op() != "update" || len(msgs[0].headers()["removed_tags"].([]any)) != 1 {
		t.Fatalf("tag change %v", msgs)
	}
	e.exec(`DELETE FROM memberships WHERE tenant_id = 10`)
	f.converge(want)
	if len(f.rows) != 1 {
		t.Fatalf("rows %v", f.rows)
	}
}

// TestSubqueryChurn follows a shape while memberships and rows change
// concurrently, and checks the materialised rows (tags and move-outs
// applied) against Postgres: no row doubled, lost or left behind.
func TestSubqueryChurn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, subquerySetup)
	f := e.follow("table", "items", "where", memberWhere, "params[1]", "1")
	rng := rand.New(rand.NewSource(1))
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 400; i++ {
			tenant := 10 * (1 + rng.Intn(5))
			var sql string
			switch rng.Intn(5) {
			case 0:
				sql = fmt.Sprintf(`INSERT INTO memberships VALUES (1, %d) ON CONFLICT DO NOTHING`, tenant)
			case 1:
				sql = fmt.Sprintf(`DELETE FROM memberships WHERE user_id = 1 AND tenant_id = %d`, tenant)
			case 2:
				sql = fmt.Sprintf(`INSERT INTO items VALUES (%d, %d, 'n') ON CONFLICT (id) DO UPDATE SET tenant_id = EXCLUDED.tenant_id`, 10+rng.Intn(30), tenant)
			case 3:
				sql = fmt.Sprintf(`UPDATE items SET title = title || 'x', tenant_id = %d WHERE id = %d`, tenant, 1+rng.Intn(40))
			default:
				sql = fmt.Sprintf(`INSERT INTO memberships VALUES (1, %d) ON CONFLICT DO NOTHING; UPDATE items SET title = 'm' WHERE tenant_id = %d`, tenant, tenant)
			}
			ctx := context.Background()
			tx, err := e.pool.Begin(ctx)
			if err != nil {
				t.Error(err)
				return
			}
			var xid string
			if _, err := tx.Exec(ctx, sql); err != nil {
				t.Error(err)
				return
			}
			tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid)
			if err := tx.Commit(ctx); err != nil {
				t.Error(err)
				return
			}
			if testing.Verbose() {
				t.Log(xid, sql)
			}
		}
	}()
	for {
		select {
		case <-done:
			f.converge(`SELECT format('"public"."items"/"%s"', id), id::text, tenant_id::text, title FROM items WHERE tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id = 1)`)
			return
		default:
			f.step(true)
		}
	}
}

func TestSubqueryRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{}, subquerySetup, `CREATE FUNCTION evil() RETURNS bool VOLATILE LANGUAGE sql AS $$ SELECT true $$`)
	for _, w := range []string{
		`tenant_id IN (SELECT tenant_id FROM memberships WHERE tenant_id IN (SELECT 1))`,
		`tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id IN (SELECT user_id FROM memberships))`,
		`tenant_id IN (SELECT tenant_id FROM memberships) AND id IN (SELECT tenant_id FROM memberships)`,
		`tenant_id NOT IN (SELECT tenant_id FROM memberships)`,
		`tenant_id IN (SELECT tenant_id FROM memberships) OR id = 1`,
		`NOT tenant_id IN (SELECT tenant_id FROM memberships)`,
		`tenant_id IN (SELECT * FROM memberships)`,
		`tenant_id IN (SELECT tenant_id, user_id FROM memberships)`,
		`tenant_id IN (SELECT tenant_id + 1 FROM memberships)`,
		`tenant_id IN (SELECT tenant_id FROM memberships, items)`,
		`tenant_id IN (SELECT tenant_id FROM memberships WHERE evil())`,
		`tenant_id IN (SELECT tenant_id FROM memberships WHERE random() < 1)`,
		`tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id = 1; DELETE FROM items)`,
		`tenant_id IN (SELECT tenant_id FROM memberships GROUP BY tenant_id)`,
		`tenant_id IN (SELECT tenant_id FROM nope)`,
		`tenant_id IN (SELECT nope FROM memberships)`,
		`nope IN (SELECT tenant_id FROM memberships)`,
		`tenant_id IN (SELECT oid FROM pg_catalog.pg_class)`,
		`tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id = $1)`, // no params
		`(tenant_id IN (SELECT tenant_id FROM memberships))`,
		`id = 1 AND (title = 'a' OR title = 'b') AND tenant_id IN (SELECT tenant_id FROM memberships)`,
		`EXISTS (SELECT 1 FROM memberships)`,
		`tenant_id = ANY(ARRAY(SELECT tenant_id FROM memberships))`,
	} {
		r := e.shape("table", "items", "offset", "-1", "where", w)
		if r.status != 400 || !strings.Contains(string(r.body), `"errors":{"where":[`) {
			t.Errorf("%q: %d %s", w, r.status, r.body)
		}
	}
	if n := e.scalar(`SELECT count(*)::text FROM items`); n != "4" {
		t.Errorf("items: %s", n)
	}
	// Accepted: no inner WHERE, quoted names, a schema-qualified table.
	for _, w := range []string{
		`tenant_id IN (SELECT tenant_id FROM memberships)`,
		`"tenant_id" IN (SELECT "tenant_id" FROM public."memberships" WHERE user_id = 2 AND tenant_id IS NOT NULL)`,
		`id > 0 AND tenant_id IN (SELECT tenant_id FROM memberships WHERE user_id <> 3)`,
	} {
		if r := e.shape("table", "items", "offset", "-1", "where", w); r.status != 200 {
			t.Errorf("%q: %d %s", w, r.status, r.body)
		}
	}
}

// A subquery on the shape's own table, with replica=full: a change can
// move rows in or out and be a change of the shape's rows at once.
func TestSubquerySelfReference(t *testing.T) {
	t.Parallel()
	e := newEnv(t, electrictest.Options{},
		`CREATE TABLE nodes (id int PRIMARY KEY, parent int, open bool NOT NULL, name text)`,
		`INSERT INTO nodes VALUES (1, NULL, true, 'root'), (2, 1, true, 'a'), (3, 2, false, 'b'), (4, 3, true, 'c')`)
	f := e.follow("table", "nodes", "where", `parent IN (SELECT id FROM nodes WHERE open)`, "replica", "full")
	want := `SELECT format('"public"."nodes"/"%s"', id), id::text, parent::text, open::text, name FROM nodes WHERE parent IN (SELECT id FROM nodes WHERE open)`
	f.equal(e.rows(want))
	for _, sql := range []string{
		`UPDATE nodes SET open = true WHERE id = 3`,
		`UPDATE nodes SET open = false WHERE id = 1`,
		`UPDATE nodes SET name = 'b2' WHERE id = 3`,
		`INSERT INTO nodes VALUES (5, 4, true, 'd'), (6, 5, true, 'e')`,
		`UPDATE nodes SET open = false, name = 'x' WHERE id IN (2, 4)`,
		`DELETE FROM nodes WHERE id = 3`,
		`UPDATE nodes SET parent = 5 WHERE id = 2`,
		`UPDATE nodes SET open = true`,
	} {
		e.exec(sql)
		f.converge(want)
	}
}
