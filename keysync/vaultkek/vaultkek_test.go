package vaultkek

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/shapeseal/shapeseal/keysync"
)

// These tests check the provider against a fake transit endpoint that
// records requests and "encrypts" by tagging the plaintext with the
// associated data. They show which paths and parameters keysync sends; they
// are not a substitute for the tests against a real Vault (TODO: issue 4,
// with the vault binary of docs/vault-in-tests.md).

type fakeTransit struct {
	mu    sync.Mutex
	paths []string
}

func (f *fakeTransit) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	f.paths = append(f.paths, r.Method+" "+r.URL.Path)
	f.mu.Unlock()
	if r.Header.Get("X-Vault-Token") != "test-token" {
		http.Error(w, `{"errors":["permission denied"]}`, http.StatusForbidden)
		return
	}
	var req map[string]string
	json.NewDecoder(r.Body).Decode(&req)
	ad := req["associated_data"]
	var data map[string]string
	switch {
	case strings.HasSuffix(r.URL.Path, "/encrypt/k"):
		data = map[string]string{"ciphertext": "vault:v1:" + ad + ":" + req["plaintext"]}
	case strings.HasSuffix(r.URL.Path, "/decrypt/k"):
		rest, ok := strings.CutPrefix(req["ciphertext"], "vault:v1:"+ad+":")
		if !ok {
			http.Error(w, `{"errors":["cipher: message authentication failed"]}`, http.StatusBadRequest)
			return
		}
		data = map[string]string{"plaintext": rest}
	default:
		http.NotFound(w, r)
		return
	}
	json.NewEncoder(w).Encode(map[string]any{"data": data})
}

func TestFakeTransit(t *testing.T) {
	fake := &fakeTransit{}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	cfg := api.DefaultConfig()
	cfg.Address = srv.URL
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client.SetToken("test-token")

	kek, err := New("hcvault://vault.example:8200/transit/keys/k", client)
	if err != nil {
		t.Fatal(err)
	}
	if kek.URI() != "hcvault://vault.example:8200/transit/keys/k" {
		t.Fatalf("URI = %q", kek.URI())
	}
	ks, _ := keysync.NewKeyset("acme")
	enc, err := keysync.EncryptKeyset(ks, kek)
	if err != nil {
		t.Fatal(err)
	}
	got, err := keysync.DecryptKeyset(kek, "acme", 1, enc)
	if err != nil {
		t.Fatal(err)
	}
	if got.PrimaryKeyID() != ks.PrimaryKeyID() {
		t.Fatal("decrypted another keyset")
	}
	if _, err := keysync.DecryptKeyset(kek, "acme", 2, enc); err == nil {
		t.Fatal("decrypted with the associated data of another generation")
	}
	want := []string{"PUT /v1/transit/encrypt/k", "PUT /v1/transit/decrypt/k", "PUT /v1/transit/decrypt/k"}
	if strings.Join(fake.paths, ",") != strings.Join(want, ",") {
		t.Fatalf("requests %v, want %v", fake.paths, want)
	}

	client.SetToken("wrong")
	if _, err := keysync.EncryptKeyset(ks, kek); err == nil {
		t.Fatal("encrypted with a bad token")
	}
}

func TestKeyPath(t *testing.T) {
	for uri, want := range map[string]string{
		"hcvault://vault:8200/transit/keys/shapeseal": "/transit/keys/shapeseal",
		"hcvault:///transit/keys/k":                   "/transit/keys/k",
		"hcvault://v/team/transit/keys/k":             "/team/transit/keys/k",
	} {
		if got, err := keyPath(uri); err != nil || got != want {
			t.Errorf("keyPath(%q) = %q, %v; want %q", uri, got, err, want)
		}
	}
	for _, uri := range []string{
		"", "local:///kek.json", "hcvault://vault", "hcvault://vault/transit/k",
		"hcvault://vault/transit/keys/", "hcvault://vault/keys/k", "hcvault://v/transit/keys/k?x=1",
	} {
		if _, err := keyPath(uri); err == nil {
			t.Errorf("keyPath(%q) succeeded", uri)
		}
		if _, err := New(uri, nil); err == nil {
			t.Errorf("New(%q) succeeded", uri)
		}
	}
}
