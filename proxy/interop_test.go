package proxy

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/internal/nodetest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// TestTypeScriptClientThroughProxy follows the items rule with the official
// @electric-sql/client (electrictest/interop/follow.mjs) through the proxy,
// with a real RS256 bearer token (headers option), Electric and Postgres
// upstream: the initial rows, then a live insert, update and delete. Every
// row the client ever sees is inside the rule (tenant acme, no note
// column), and env's cleanup checks that every upstream request was too.
//
// Node and the client come from internal/nodetest: without them the test
// skips, or fails when CI is true.
func TestTypeScriptClientThroughProxy(t *testing.T) {
	node, interop := nodetest.Setup(t)
	e := newEnv(t, nil)
	tok := token(t, "alice", nil) // roles [reader], tenant_ids [acme]

	f := startTS(t, "TS", node, interop, e.url+"/v1/shapes/items", tok)
	// waitRows waits until the materialized shape is want (id → title).
	waitRows := func(want map[int]string) {
		t.Helper()
		wantKeys := map[string]string{}
		for id, title := range want {
			wantKeys[fmt.Sprintf(`"public"."items"/"%d"`, id)] = title
		}
		deadline := time.Now().Add(20 * time.Second)
		for {
			got, _, _ := f.views(func(r map[string]any) string { return fmt.Sprint(r["title"]) })
			if maps.Equal(got, wantKeys) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("rows %v, want %v", got, wantKeys)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}

	waitRows(map[int]string{1: "a1", 2: "a2"})
	// Live changes, inside and outside the rule.
	pgtest.Exec(t, e.db, `INSERT INTO items VALUES (4,'acme','dave','a4','secret4'),(5,'globex','erin','g5','secret5')`)
	waitRows(map[int]string{1: "a1", 2: "a2", 4: "a4"})
	pgtest.Exec(t, e.db, `UPDATE items SET title = 'a1 v2', note = 'secret1 v2' WHERE id = 1; UPDATE items SET title = 'g1 v2' WHERE id = 3`)
	waitRows(map[int]string{1: "a1 v2", 2: "a2", 4: "a4"})
	pgtest.Exec(t, e.db, `DELETE FROM items WHERE id IN (2, 5)`)
	waitRows(map[int]string{1: "a1 v2", 4: "a4"})
	// A globex change last: had it leaked, it would arrive in the next poll.
	pgtest.Exec(t, e.db, `UPDATE items SET title = 'g1 v3' WHERE id = 3`)
	time.Sleep(500 * time.Millisecond)

	lines := f.output()
	ops := map[string]int{}
	for _, l := range lines {
		var m struct {
			Headers map[string]any   `json:"headers"`
			Value   map[string]any   `json:"value"`
			Rows    []map[string]any `json:"rows"`
			Error   any              `json:"error"`
		}
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		if m.Error != nil {
			t.Errorf("client error: %s", l)
		}
		for _, v := range append(m.Rows, m.Value) {
			if v == nil {
				continue
			}
			keys := make([]string, 0, len(v))
			for k := range v {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			if v["tenant_id"] != nil && v["tenant_id"] != "acme" || slices.Contains(keys, "note") || slices.Contains(keys, "owner") {
				t.Errorf("outside the rule: %s", l)
			}
		}
		if op, _ := m.Headers["operation"].(string); op != "" {
			ops[op]++
		}
		if strings.Contains(l, "globex") || strings.Contains(l, "secret") {
			t.Errorf("outside the rule: %s", l)
		}
	}
	if ops["insert"] < 3 || ops["update"] < 1 || ops["delete"] < 1 {
		t.Errorf("operations %v; output:\n%s", ops, strings.Join(lines, "\n"))
	}
	if strings.Contains(f.stderr.String(), "-> 4") || strings.Contains(f.stderr.String(), "-> 5") {
		t.Errorf("the client got errors through the proxy:\n%s", f.stderr.String())
	}
}
