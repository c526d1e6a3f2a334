package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/shapeseal/shapeseal/electrictest"
	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/internal/vaulttest"
)

// TestMain runs the tests, or, run by a testscript script as "shapeseal",
// the command itself (see TestScript).
func TestMain(m *testing.M) {
	testscript.Main(testsM{m}, map[string]func(){
		"shapeseal": func() { os.Exit(shapesealMain(os.Args[1:])) },
	})
}

// testsM runs the package's tests.
type testsM struct{ m *testing.M }

func (t testsM) Run() int {
	// No test writes into the user's configuration directory (write's
	// default floor).
	cfg, err := os.MkdirTemp("", "shapeseal-test-config-")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_CONFIG_HOME", cfg)
	os.Unsetenv("SHAPESEAL_WRITER_FLOOR")
	os.Unsetenv("SHAPESEAL_ROOT")
	os.Unsetenv("SHAPESEAL_KEY")
	code := pgtest.Run(t.m)
	os.RemoveAll(cfg)
	vaulttest.StopShared()
	return code
}

// syncBuffer is a bytes.Buffer safe for a writer and a polling reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Split(strings.TrimSuffix(s.b.String(), "\n"), "\n")
}

func tailEnv(t *testing.T) (*electrictest.TestServer, string) {
	db := pgtest.NewDB(t)
	pgtest.Exec(t, db, `CREATE TABLE items (id int8 PRIMARY KEY, title text)`)
	pgtest.Exec(t, db, `INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 3) i`)
	srv := electrictest.StartTest(t, electrictest.Options{DatabaseURL: db, LongPollTimeout: 300 * time.Millisecond})
	return srv, db
}

func TestTailOnce(t *testing.T) {
	srv, _ := tailEnv(t)
	var out, errOut syncBuffer
	// Flags after the URL work too; a bare base URL gets /v1/shape.
	if err := tail(t.Context(), []string{srv.URL, "--table", "items", "--columns", "id,title"}, &out, &errOut); err != nil {
		t.Fatal(err, errOut.lines())
	}
	lines := out.lines()
	inserts := 0
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("line %q: %v", l, err)
		}
		if h, _ := m["headers"].(map[string]any); h["operation"] == "insert" {
			inserts++
		}
	}
	if inserts != 3 || !strings.Contains(lines[len(lines)-1], `"up-to-date"`) {
		t.Errorf("output:\n%s", strings.Join(lines, "\n"))
	}
	// The lines are the server's own bytes.
	if !strings.Contains(lines[0], `"value":{"id":"1","title":"item 1"}`) {
		t.Errorf("first line %s", lines[0])
	}
}

func TestTailLiveWithRotationAndTokenCommand(t *testing.T) {
	srv, db := tailEnv(t)
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "token")
	os.WriteFile(tokFile, []byte("t1\n"), 0o600)
	var mu sync.Mutex
	valid := "t1"
	var refused int
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		ok := r.Header.Get("Authorization") == "Bearer "+valid
		if !ok {
			refused++
		}
		mu.Unlock()
		if !ok {
			http.Error(w, "expired", http.StatusUnauthorized)
			return
		}
		srv.Server.ServeHTTP(w, r)
	}))
	defer front.Close()

	ctx, cancel := context.WithCancel(t.Context())
	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- tail(ctx, []string{"--live", "--table=items", "--token-command", "cat " + tokFile, front.URL + "/v1/shape"}, &out, &errOut)
	}()
	waitFor := func(what string, cond func([]string) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond(out.lines()) {
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s; output:\n%s\nstderr: %s", what, strings.Join(out.lines(), "\n"), errOut.lines())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	count := func(sub string) func([]string) bool {
		return func(ls []string) bool {
			n := 0
			for _, l := range ls {
				if strings.Contains(l, sub) {
					n++
				}
			}
			return n > 0
		}
	}
	waitFor("up-to-date", count(`"up-to-date"`))

	// The token expires; the command is run again and yields the new one.
	os.WriteFile(tokFile, []byte("t2\n"), 0o600)
	mu.Lock()
	valid = "t2"
	mu.Unlock()
	pgtest.Exec(t, db, `INSERT INTO items VALUES (10, 'ten')`)
	waitFor("the live insert", count(`"id":"10"`))

	srv.Rotate("items")
	waitFor("must-refetch", count(`"must-refetch"`))
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("tail: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if refused == 0 {
		t.Error("no 401 happened")
	}
}

func TestTailErrors(t *testing.T) {
	srv, _ := tailEnv(t)
	var out, errOut syncBuffer
	err := tail(t.Context(), []string{srv.URL + "/v1/shape", "--table", "nope"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("unknown table: %v", err)
	}
	if err := tail(t.Context(), []string{"--table", "items"}, &out, &errOut); err == nil {
		t.Error("no URL accepted")
	}
	if err := tail(t.Context(), []string{srv.URL, "--offset", "5_0"}, &out, &errOut); err == nil {
		t.Error("offset without handle accepted")
	}
}
