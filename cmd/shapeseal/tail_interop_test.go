package main

import (
	"bufio"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/nodetest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// TestTailMatchesTypeScriptClient follows one shape with `shapeseal tail`
// and with the official @electric-sql/client (electrictest/interop/
// follow.mjs) through inserts, updates, deletes and a rotation, and checks
// that both print the same messages in the same order. Up-to-date messages
// are left out of the comparison: how many a client sees depends on when
// its long polls time out. The table has only int8 and text columns, so the
// TypeScript client's parsed values print exactly as the wire strings.
//
// Node and the client come from internal/nodetest (electrictest/interop,
// installed with npm ci when needed): without them the test skips, or
// fails when CI is true.
func TestTailMatchesTypeScriptClient(t *testing.T) {
	node, interop := nodetest.Setup(t)

	db := pgtest.NewDB(t)
	pgtest.Exec(t, db, `CREATE TABLE items (id int8 PRIMARY KEY, title text, note text)`)
	pgtest.Exec(t, db, `INSERT INTO items SELECT i, 'item ' || i, NULL FROM generate_series(1, 5) i`)
	srv := electrictest.StartTest(t, electrictest.Options{DatabaseURL: db, LongPollTimeout: 500 * time.Millisecond})
	shapeURL := srv.URL + "/v1/shape"

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	ts, cmd := startTSFollower(t, ctx, node, interop, shapeURL)
	defer func() { cancel(); cmd.Wait() }()

	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() { done <- tail(ctx, []string{"--live", "--table", "items", shapeURL}, &out, &errOut) }()

	waitBoth := func(what, sub string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			tsText := ts.text()
			if strings.Contains(tsText, sub) && strings.Contains(strings.Join(out.lines(), "\n"), sub) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s\nTS:\n%s\ntail:\n%s", what, tsText, strings.Join(out.lines(), "\n"))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	waitBoth("initial sync", `"snapshot-end"`)
	pgtest.Exec(t, db, `BEGIN; UPDATE items SET note = 'quote " and \ backslash' WHERE id = 1; DELETE FROM items WHERE id = 2; INSERT INTO items VALUES (6, 'six', 'ünï'); COMMIT`)
	pgtest.Exec(t, db, `UPDATE items SET id = 7 WHERE id = 6`)
	waitBoth("live changes", `"key_change_from"`)
	srv.Rotate("items")
	pgtest.Exec(t, db, `INSERT INTO items VALUES (8, 'after rotation', NULL)`)
	waitBoth("refetch", `"must-refetch"`)
	waitBoth("insert after the rotation", `"after rotation"`)
	time.Sleep(300 * time.Millisecond) // let both finish the refetched log

	got, want := interopMessages(t, out.lines()), ts.messages(t)
	if len(got) < 15 {
		t.Errorf("only %d messages compared", len(got))
	}
	if !reflect.DeepEqual(got, want) {
		g, _ := json.MarshalIndent(got, "", " ")
		w, _ := json.MarshalIndent(want, "", " ")
		t.Errorf("tail and the TypeScript client differ\ntail:\n%s\nTS:\n%s", g, w)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("tail: %v", err)
	}
}

// tsFollower collects the lines follow.mjs prints.
type tsFollower struct {
	mu    sync.Mutex
	lines []string
}

// startTSFollower starts follow.mjs on the shape at shapeURL; the caller
// cancels ctx and waits for the command.
func startTSFollower(t *testing.T, ctx context.Context, node, interop, shapeURL string) (*tsFollower, *exec.Cmd) {
	t.Helper()
	cmd := exec.CommandContext(ctx, node, filepath.Join(interop, "follow.mjs"), "--url", shapeURL, "--table", "items", "--ignore-stdin")
	cmd.Dir = interop
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ts := &tsFollower{}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			ts.mu.Lock()
			ts.lines = append(ts.lines, sc.Text())
			ts.mu.Unlock()
		}
	}()
	return ts, cmd
}

func (ts *tsFollower) text() string {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return strings.Join(ts.lines, "\n")
}

func (ts *tsFollower) messages(t *testing.T) []any {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return interopMessages(t, ts.lines)
}

// interopMessages decodes JSON lines, leaving out empty lines, up-to-date
// controls and follow.mjs's materialized views.
func interopMessages(t *testing.T, lines []string) []any {
	var ms []any
	for _, l := range lines {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		if _, ok := m["rows"]; ok {
			continue // follow.mjs's materialized view
		}
		if h, _ := m["headers"].(map[string]any); h != nil && h["control"] == "up-to-date" {
			continue
		}
		ms = append(ms, m)
	}
	return ms
}
