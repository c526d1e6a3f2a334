package main

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/shapeseal/shapeseal/internal/pgtest"
)

// TestDev runs `shapeseal dev` on a fresh database and follows the demo
// shape through its proxy as two users, with the key and log shapes of the
// proxy and the root key of the ready line: each reads the plaintext of
// their own tenant's rows and nothing of the other tenant's.
func TestDev(t *testing.T) {
	t.Setenv("DATABASE_URL", pgtest.NewDB(t))
	ctx, cancel := context.WithCancel(t.Context())
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- dev(ctx, []string{"--dir", t.TempDir()}, pw)
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("dev: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("dev did not stop")
		}
	})

	lines := make(chan string, 1)
	go func() {
		s := bufio.NewScanner(pr)
		s.Buffer(nil, 1<<20)
		for s.Scan() {
			lines <- s.Text()
		}
	}()
	var line string
	select {
	case line = <-lines:
	case err := <-done:
		t.Fatalf("dev ended: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("no ready line")
	}
	readyJSON, ok := strings.CutPrefix(line, "shapeseal dev ready ")
	if !ok {
		t.Fatalf("first line %q", line)
	}
	var ready struct {
		Proxy    string `json:"proxy_url"`
		Electric string `json:"electric_url"`
		Database string `json:"database_url"`
		Root     string
		KEK      string
		Shapes   map[string]string
		Users    map[string]struct {
			Token, Identity string
			Tenants         []string
		}
	}
	if err := json.Unmarshal([]byte(readyJSON), &ready); err != nil {
		t.Fatal(err)
	}
	if ready.Proxy == "" || ready.Electric == "" || ready.Database == "" || len(ready.Users) != 3 ||
		!strings.HasPrefix(ready.Root, "ssvk1") || ready.Shapes["log"] != ready.Proxy+"/v1/shapes/log" || !strings.HasPrefix(ready.KEK, "local://") {
		t.Fatalf("ready line %s", readyJSON)
	}

	follow := func(user string) string {
		u := ready.Users[user]
		var out, errOut syncBuffer
		err := tail(ctx, []string{ready.Shapes["items"], "--token", u.Token, "--identity", u.Identity, "--root", ready.Root,
			"--encrypted", "items:title,body", "--keys-url", ready.Shapes["keys"]}, &out, &errOut)
		if err != nil {
			t.Fatalf("tail as %s: %v\n%s", user, err, strings.Join(errOut.lines(), "\n"))
		}
		if e := strings.Join(errOut.lines(), "\n"); e != "" {
			t.Errorf("tail as %s, stderr:\n%s", user, e)
		}
		return strings.Join(out.lines(), "\n")
	}
	alice := follow("alice")
	if !strings.Contains(alice, "Only acme members can read this.") || strings.Contains(alice, "globex") || strings.Contains(alice, "ss1:") {
		t.Errorf("alice sees:\n%s", alice)
	}
	carol := follow("carol")
	if !strings.Contains(carol, "Only globex members can read this.") || strings.Contains(carol, "acme") {
		t.Errorf("carol sees:\n%s", carol)
	}
	conn, err := pgx.Connect(ctx, ready.Database)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var plain, total int
	err = conn.QueryRow(ctx, "SELECT count(*) FILTER (WHERE title NOT LIKE 'ss1:%' OR body NOT LIKE 'ss1:%'), count(*) FROM items").Scan(&plain, &total)
	if err != nil || plain != 0 || total != 3 {
		t.Errorf("items in Postgres: %d of %d not encrypted (%v)", plain, total, err)
	}
}
