package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/examples/internal/exampletest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m)) }

// TestService runs the service as alice, a member of acme, against a real
// stack: rows written after it started are served decrypted, and rows of
// globex, another tenant, never appear.
func TestService(t *testing.T) {
	t.Parallel()
	env := exampletest.New(t)
	env.StartProxy(t)
	identity := env.Member(t, "alice", "laptop", "acme")
	env.Member(t, "carol", "laptop", "globex") // creates globex, which alice is not in
	before := env.WriteItem(t, "acme", "written before", "the service started")

	// A hang guard, not an assertion on timing: every wait below is for an
	// event (an output line), never for an amount of time.
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	out := newLines()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, options{
			ProxyURL: env.ProxyURL,
			Token:    env.Token("alice", "laptop", "acme"),
			Identity: identity,
			Root:     env.Root,
			Listen:   "127.0.0.1:0",
		}, out)
	}()

	addr, _ := strings.CutPrefix(out.waitFor(t, ctx, "service listening on "), "service listening on ")
	items := func() map[string]map[string]any {
		t.Helper()
		resp, err := http.Get(addr + "/items")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if strings.Contains(string(body), "ss1:") || strings.Contains(string(body), "globex") {
			t.Fatalf("GET /items served ciphertext or another tenant's row: %s", body)
		}
		var rows []map[string]any
		if err := json.Unmarshal(body, &rows); err != nil {
			t.Fatalf("GET /items: %v: %s", err, body)
		}
		byID := map[string]map[string]any{}
		for _, r := range rows {
			byID[r["id"].(string)] = r
		}
		return byID
	}
	// waitItem returns the row id once GET /items serves it, looking after
	// every batch the service reports.
	waitItem := func(id string) map[string]any {
		t.Helper()
		for n := 0; ; n++ {
			if row, ok := items()[id]; ok {
				return row
			}
			out.waitCount(t, ctx, "items up to date:", n+1)
		}
	}

	if row := waitItem(before); row["title"] != "written before" {
		t.Errorf("initial row: %v", row)
	}
	// globex's row is committed first, so by the time acme's row arrives
	// the globex row has gone through replication and the proxy too.
	env.WriteItem(t, "globex", "globex secret", "not for alice")
	after := env.WriteItem(t, "acme", "written after", "while the service ran")
	if row := waitItem(after); row["title"] != "written after" || row["body"] != "while the service ran" {
		t.Errorf("live row: %v", row)
	}
	if got := len(items()); got != 2 {
		t.Errorf("GET /items serves %d rows, want alice's 2", got)
	}
	for _, l := range out.all() {
		if strings.Contains(l, "written") || strings.Contains(l, "ss1:") || strings.Contains(l, "globex") {
			t.Errorf("summary leaks content: %q", l)
		}
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
	// The device's floor, next to its identity, remembers acme's log.
	floor, err := keysync.OpenFileFloor(keysync.DefaultFloorPath(identity))
	if err != nil {
		t.Fatal(err)
	}
	if m, err := floor.Mark("acme"); err != nil || m.Seq == 0 || m.Generation != 1 {
		t.Errorf("floor mark of acme: %+v (%v), want the log seen and generation 1", m, err)
	}
}

// lines is an io.Writer that keeps what run prints, line by line, and
// wakes waitFor on every write. It never blocks the writer.
type lines struct {
	mu      sync.Mutex
	buf     string
	changed chan struct{}
}

func newLines() *lines { return &lines{changed: make(chan struct{})} }

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf += string(p)
	close(l.changed)
	l.changed = make(chan struct{})
	return len(p), nil
}

func (l *lines) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Split(strings.TrimSuffix(l.buf, "\n"), "\n")
}

// waitCount waits until n complete lines start with prefix and returns the
// last of them.
func (l *lines) waitCount(t *testing.T, ctx context.Context, prefix string, n int) string {
	t.Helper()
	for {
		l.mu.Lock()
		var found []string
		for line := range strings.Lines(l.buf) {
			if strings.HasPrefix(line, prefix) && strings.HasSuffix(line, "\n") {
				found = append(found, strings.TrimSuffix(line, "\n"))
			}
		}
		changed := l.changed
		l.mu.Unlock()
		if len(found) >= n {
			return found[n-1]
		}
		select {
		case <-changed:
		case <-ctx.Done():
			t.Fatalf("no line %q (#%d) in output:\n%s", prefix, n, strings.Join(l.all(), "\n"))
		}
	}
}

func (l *lines) waitFor(t *testing.T, ctx context.Context, prefix string) string {
	t.Helper()
	return l.waitCount(t, ctx, prefix, 1)
}
