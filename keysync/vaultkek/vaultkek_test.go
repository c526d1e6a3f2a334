package vaultkek

import (
	"bytes"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/hashicorp/vault/api"

	"github.com/shapeseal/shapeseal/internal/vaulttest"
	"github.com/shapeseal/shapeseal/keysync"
)

func TestMain(m *testing.M) {
	code := m.Run()
	vaulttest.StopShared()
	os.Exit(code)
}

// vaultClient returns a client for the test Vault with a fresh transit key
// (aes256-gcm96, no derivation) and the key's URI, which names the test
// Vault's host (127.0.0.1:PORT when vaulttest starts it).
func vaultClient(t *testing.T) (*api.Client, string) {
	t.Helper()
	v := vaulttest.New(t)
	cfg := api.DefaultConfig()
	cfg.Address = v.Addr
	client, err := api.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	client.SetToken(v.Token)
	name := strings.ReplaceAll(strings.ToLower(t.Name()), "/", "-")
	if _, err := client.Logical().Write("transit/keys/"+name, nil); err != nil {
		t.Fatal(err)
	}
	return client, "hcvault://" + hostOf(t, client.Address()) + "/transit/keys/" + name
}

// hostOf returns the Host of the URL addr.
func hostOf(t *testing.T, addr string) string {
	t.Helper()
	u, err := url.Parse(addr)
	if err != nil || u.Host == "" {
		t.Fatalf("Vault address %q: %v", addr, err)
	}
	return u.Host
}

// TestRealVault seals and opens keysets with a transit key of a real Vault:
// the associated data (tenant, generation) is enforced by Vault itself.
func TestRealVault(t *testing.T) {
	client, uri := vaultClient(t)
	kek, err := New(uri, client)
	if err != nil {
		t.Fatal(err)
	}
	if kek.URI() != uri {
		t.Fatalf("URI = %q", kek.URI())
	}
	ks, _ := keysync.NewKeyset("acme")
	enc, err := keysync.EncryptKeyset(ks, kek)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(enc, []byte(ks.String())) {
		t.Fatal("the encrypted keyset contains the keyset's description")
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
	if _, err := keysync.DecryptKeyset(kek, "other", 1, enc); err == nil {
		t.Fatal("decrypted with the associated data of another tenant")
	}
	tampered := bytes.Clone(enc)
	tampered[len(tampered)/2] ^= 1
	if _, err := keysync.DecryptKeyset(kek, "acme", 1, tampered); err == nil {
		t.Fatal("decrypted a tampered keyset")
	}

	// Another transit key cannot open it.
	client.Logical().Write("transit/keys/another", nil)
	kek2, err := New("hcvault://"+hostOf(t, client.Address())+"/transit/keys/another", client)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keysync.DecryptKeyset(kek2, "acme", 1, enc); err == nil {
		t.Fatal("another transit key decrypted the keyset")
	}

	client.SetToken("wrong")
	if _, err := keysync.EncryptKeyset(ks, kek); err == nil {
		t.Fatal("encrypted with a bad token")
	}
}

// TestOpenFromEnvironment configures the client from VAULT_ADDR/VAULT_TOKEN.
func TestOpenFromEnvironment(t *testing.T) {
	client, uri := vaultClient(t)
	t.Setenv("VAULT_ADDR", client.Address())
	t.Setenv("VAULT_TOKEN", client.Token())
	t.Setenv("VAULT_AGENT_ADDR", "")
	t.Setenv("VAULT_NAMESPACE", "")
	// keysync.OpenKEK opens hcvault:// URIs once this package is imported.
	kek, err := keysync.OpenKEK(uri)
	if err != nil {
		t.Fatal(err)
	}
	ks, _ := keysync.NewKeyset("t1")
	enc, err := keysync.EncryptKeyset(ks, kek)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keysync.DecryptKeyset(kek, "t1", 1, enc); err != nil {
		t.Fatal(err)
	}
}

func TestParse(t *testing.T) {
	for uri, want := range map[string][2]string{
		"hcvault://vault:8200/transit/keys/shapeseal": {"vault:8200", "/transit/keys/shapeseal"},
		"hcvault://Vault.Example/transit/keys/k":      {"Vault.Example", "/transit/keys/k"},
		"hcvault://v/team/transit/keys/k":             {"v", "/team/transit/keys/k"},
		"hcvault://[::1]:8200/transit/keys/k":         {"[::1]:8200", "/transit/keys/k"},
	} {
		if host, path, err := parse(uri); err != nil || host != want[0] || path != want[1] {
			t.Errorf("parse(%q) = %q, %q, %v; want %q, %q", uri, host, path, err, want[0], want[1])
		}
	}
	for _, uri := range []string{
		"", "local:///kek.json", "hcvault://vault", "hcvault://vault/transit/k",
		"hcvault://vault/transit/keys/", "hcvault://vault/keys/k", "hcvault://v/transit/keys/k?x=1",
		"hcvault:///transit/keys/k", "hcvault://s.tok@vault/transit/keys/k",
	} {
		if _, _, err := parse(uri); err == nil {
			t.Errorf("parse(%q) succeeded", uri)
		}
		if _, err := New(uri, nil); err == nil {
			t.Errorf("New(%q) succeeded", uri)
		}
	}
	if _, _, err := parse("hcvault://s.tok:pw@vault/transit/keys/k"); err == nil || strings.Contains(err.Error(), "s.tok") || strings.Contains(err.Error(), "pw") {
		t.Errorf("user information in a URI: %v", err)
	}
}

// testToken is the Vault token of the tests with a fake Vault: no error may
// contain it.
const testToken = "hvs.test-token-not-for-errors"

// fakeVault is a stand-in for Vault that records the requests it gets and
// answers transit encrypt calls, for the tests that need no real Vault.
type fakeVault struct {
	*httptest.Server
	mu   sync.Mutex
	reqs []string // "METHOD PATH TOKEN"
}

func newFakeVault(t *testing.T, tls bool) *fakeVault {
	t.Helper()
	f := &fakeVault{}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.reqs = append(f.reqs, r.Method+" "+r.URL.Path+" "+r.Header.Get("X-Vault-Token"))
		f.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"ciphertext": "vault:v1:ZmFrZQ=="}})
	})
	if tls {
		f.Server = httptest.NewTLSServer(h)
	} else {
		f.Server = httptest.NewServer(h)
	}
	t.Cleanup(f.Close)
	return f
}

func (f *fakeVault) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.reqs...)
}

// cleanVaultEnv sets the Vault environment variables the tests depend on.
func cleanVaultEnv(t *testing.T, addr string) {
	t.Helper()
	t.Setenv("VAULT_ADDR", addr)
	t.Setenv("VAULT_AGENT_ADDR", "")
	t.Setenv("VAULT_TOKEN", testToken)
	t.Setenv("VAULT_NAMESPACE", "")
	t.Setenv("VAULT_CACERT", "")
	t.Setenv("VAULT_PROXY_ADDR", "")
	t.Setenv("VAULT_HTTP_PROXY", "")
}

// wantMismatch checks that err is a *HostMismatchError with these fields
// and no token in its message.
func wantMismatch(t *testing.T, err error, uri, uriHost, vaultAddr string) {
	t.Helper()
	var m *HostMismatchError
	if !errors.As(err, &m) {
		t.Fatalf("err = %v (%T), want a *HostMismatchError", err, err)
	}
	if m.URI != uri || m.URIHost != uriHost || m.VaultAddr != vaultAddr {
		t.Errorf("HostMismatchError = %+v, want URI %q, URIHost %q, VaultAddr %q", *m, uri, uriHost, vaultAddr)
	}
	msg := err.Error()
	if !strings.Contains(msg, uriHost) || !strings.Contains(msg, vaultAddr) {
		t.Errorf("error %q does not name both %q and %q", msg, uriHost, vaultAddr)
	}
	if strings.Contains(msg, testToken) || strings.Contains(msg, "secret-pw") {
		t.Errorf("error %q contains a credential", msg)
	}
}

// TestOpenHostMismatch: with VAULT_ADDR set, a URI naming another host is
// refused before Vault is contacted.
func TestOpenHostMismatch(t *testing.T) {
	f := newFakeVault(t, false)
	cleanVaultEnv(t, f.URL)
	fHost := hostOf(t, f.URL)
	port := fHost[len("127.0.0.1:"):]
	for uri, host := range map[string]string{
		"hcvault://vault.example:8200/transit/keys/k":      "vault.example:8200",
		"hcvault://127.0.0.1/transit/keys/k":               "127.0.0.1", // the port is part of the host
		"hcvault://127.0.0.2:" + port + "/transit/keys/k":  "127.0.0.2:" + port,
		"hcvault://localhost:" + port + "/transit/keys/k":  "localhost:" + port, // names, not addresses, are compared
		"hcvault://127.0.0.1:" + port + "0/transit/keys/k": fHost + "0",
	} {
		_, err := Open(uri)
		wantMismatch(t, err, uri, host, f.URL)
		_, err = keysync.OpenKEK(uri) // as keysync opens the URI a keyset row names
		wantMismatch(t, err, uri, host, f.URL)
	}

	// No default port is implied.
	t.Setenv("VAULT_ADDR", "http://vault.example")
	uri := "hcvault://vault.example:80/transit/keys/k"
	_, err := Open(uri)
	wantMismatch(t, err, uri, "vault.example:80", "http://vault.example")

	// User information in VAULT_ADDR is not repeated.
	t.Setenv("VAULT_ADDR", "http://someone:secret-pw@"+fHost)
	uri = "hcvault://vault.example:8200/transit/keys/k"
	_, err = Open(uri)
	wantMismatch(t, err, uri, "vault.example:8200", f.URL)

	if r := f.requests(); len(r) != 0 {
		t.Errorf("Vault was contacted: %q", r)
	}
}

// TestOpenHostMatch: with VAULT_ADDR set, the URI naming its host
// (case-insensitively) opens a KEK that calls that Vault.
func TestOpenHostMatch(t *testing.T) {
	f := newFakeVault(t, false)
	port := hostOf(t, f.URL)[len("127.0.0.1:"):]
	cleanVaultEnv(t, "http://LocalHost:"+port)
	if _, err := Open("hcvault://localhost:" + port + "/transit/keys/k"); err != nil {
		t.Fatal(err)
	}
	cleanVaultEnv(t, f.URL)
	kek, err := Open("hcvault://" + hostOf(t, f.URL) + "/transit/keys/k")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kek.Encrypt([]byte("keyset"), []byte("ad")); err != nil {
		t.Fatal(err)
	}
	if r := f.requests(); len(r) != 1 || r[0] != "PUT /v1/transit/encrypt/k "+testToken {
		t.Errorf("Vault got %q", r)
	}
}

// TestOpenUsesURIHost: without VAULT_ADDR, Open calls https://HOST[:PORT],
// the URI's own host.
func TestOpenUsesURIHost(t *testing.T) {
	f := newFakeVault(t, true)
	cleanVaultEnv(t, "")
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VAULT_CACERT", ca)
	kek, err := Open("hcvault://" + hostOf(t, f.URL) + "/transit/keys/k")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kek.Encrypt([]byte("keyset"), []byte("ad")); err != nil {
		t.Fatal(err)
	}
	if r := f.requests(); len(r) != 1 || r[0] != "PUT /v1/transit/encrypt/k "+testToken {
		t.Errorf("Vault got %q", r)
	}
}

// TestOpenAgentHostUnchecked: VAULT_AGENT_ADDR without VAULT_ADDR leaves
// the Vault behind the agent unknown, so Open refuses.
func TestOpenAgentHostUnchecked(t *testing.T) {
	f := newFakeVault(t, false)
	cleanVaultEnv(t, "")
	t.Setenv("VAULT_AGENT_ADDR", f.URL)
	_, err := Open("hcvault://" + hostOf(t, f.URL) + "/transit/keys/k")
	if err == nil || !strings.Contains(err.Error(), "VAULT_AGENT_ADDR") || strings.Contains(err.Error(), testToken) {
		t.Fatalf("Open with VAULT_AGENT_ADDR only: %v", err)
	}
	if r := f.requests(); len(r) != 0 {
		t.Errorf("Vault was contacted: %q", r)
	}
}

// TestNewHostMismatch: New refuses a URI whose host is not the client's,
// before contacting Vault, and accepts the client's own host.
func TestNewHostMismatch(t *testing.T) {
	f := newFakeVault(t, false)
	cleanVaultEnv(t, "")
	client, err := api.NewClient(&api.Config{Address: f.URL})
	if err != nil {
		t.Fatal(err)
	}
	client.SetToken(testToken)
	port := hostOf(t, f.URL)[len("127.0.0.1:"):]
	for uri, host := range map[string]string{
		"hcvault://vault.example:8200/transit/keys/k":     "vault.example:8200",
		"hcvault://127.0.0.1/transit/keys/k":              "127.0.0.1",
		"hcvault://localhost:" + port + "/transit/keys/k": "localhost:" + port,
	} {
		_, err := New(uri, client)
		wantMismatch(t, err, uri, host, f.URL)
	}
	if r := f.requests(); len(r) != 0 {
		t.Errorf("Vault was contacted: %q", r)
	}

	kek, err := New("hcvault://"+hostOf(t, f.URL)+"/transit/keys/k", client)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kek.Encrypt([]byte("keyset"), []byte("ad")); err != nil {
		t.Fatal(err)
	}
	if r := f.requests(); len(r) != 1 || r[0] != "PUT /v1/transit/encrypt/k "+testToken {
		t.Errorf("Vault got %q", r)
	}
}

// TestEmptyHostRefused: "hcvault:///…" names no Vault, so neither Open
// (with or without VAULT_ADDR) nor New accepts it.
func TestEmptyHostRefused(t *testing.T) {
	f := newFakeVault(t, false)
	uri := "hcvault:///transit/keys/k"
	for _, addr := range []string{f.URL, ""} {
		cleanVaultEnv(t, addr)
		if _, err := Open(uri); err == nil || !strings.Contains(err.Error(), "no Vault host") {
			t.Errorf("Open(%q) with VAULT_ADDR=%q: %v", uri, addr, err)
		}
	}
	client, err := api.NewClient(&api.Config{Address: f.URL})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := New(uri, client); err == nil || !strings.Contains(err.Error(), "no Vault host") {
		t.Errorf("New(%q): %v", uri, err)
	}
	if r := f.requests(); len(r) != 0 {
		t.Errorf("Vault was contacted: %q", r)
	}
}
