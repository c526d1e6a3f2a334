package main

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/internal/pgtest"
	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// TestTailFailsFast: a server tail cannot reach is an error within 15 s
// that names its address and the cause, for the shape and for the key
// shapes of --encrypted.
func TestTailFailsFast(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()

	id, err := keysync.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(t.TempDir(), "id.age")
	if err := keysync.WriteIdentityFile(idFile, id); err != nil {
		t.Fatal(err)
	}
	root, _ := chain.GenerateKey()
	for name, args := range map[string][]string{
		"shape":   {"http://" + addr + "/v1/shape", "--table", "items"},
		"keyring": {"http://" + addr + "/v1/shape", "--table", "items", "--encrypted", "items:title", "--identity", idFile, "--root", root.Public().String(), "--no-floor"},
	} {
		start := time.Now()
		var out, errOut syncBuffer
		err := tail(t.Context(), args, &out, &errOut)
		if err == nil || !strings.Contains(err.Error(), addr) || !strings.Contains(err.Error(), "connection refused") {
			t.Errorf("%s: %v", name, err)
		}
		if d := time.Since(start); d > 15*time.Second {
			t.Errorf("%s: gave up after %s", name, d)
		}
	}
}

// TestTailKeysURLMissing: behind a proxy, forgetting --keys-url is a 404
// of the server's /v1/shape; the error says to pass --keys-url.
func TestTailKeysURLMissing(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	id, err := keysync.GenerateIdentity()
	if err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(t.TempDir(), "id.age")
	if err := keysync.WriteIdentityFile(idFile, id); err != nil {
		t.Fatal(err)
	}
	root, _ := chain.GenerateKey()
	var out, errOut syncBuffer
	err = tail(t.Context(), []string{srv.URL + "/v1/shapes/items", "--encrypted", "items:title", "--identity", idFile,
		"--root", root.Public().String(), "--no-floor"}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "no tenant-key shape at "+srv.URL+"/v1/shape") || !strings.Contains(err.Error(), "pass --keys-url") {
		t.Errorf("tail: %v", err)
	}
}

// TestTailLiveKeepsRetrying: once tail has read the shape, a server that
// fails for longer than the first contact's budget is retried until it
// is back.
func TestTailLiveKeepsRetrying(t *testing.T) {
	srv, db := tailEnv(t)
	var down atomic.Bool
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if down.Load() {
			http.Error(w, "down for maintenance", http.StatusServiceUnavailable)
			return
		}
		srv.Server.ServeHTTP(w, r)
	}))
	defer front.Close()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errOut syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- tail(ctx, []string{front.URL + "/v1/shape", "--table", "items", "--live"}, &out, &errOut)
	}()
	waitFor := func(what string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !strings.Contains(strings.Join(out.lines(), "\n"), what) {
			select {
			case err := <-done:
				t.Fatalf("tail ended waiting for %s: %v", what, err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("waiting for %s; output:\n%s", what, strings.Join(out.lines(), "\n"))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	waitFor(`"up-to-date"`)
	down.Store(true)
	time.Sleep(4 * time.Second) // longer than contactTries tries take
	select {
	case err := <-done:
		t.Fatalf("tail gave up on a server it had reached: %v", err)
	default:
	}
	down.Store(false)
	pgtest.Exec(t, db, `INSERT INTO items VALUES (42, 'back again')`)
	waitFor("back again")
	cancel()
	if err := <-done; err != nil {
		t.Errorf("tail: %v", err)
	}
}
