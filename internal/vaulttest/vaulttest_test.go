package vaulttest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	code := m.Run()
	StopShared()
	os.Exit(code)
}

// vaultDo sends one request to Vault and decodes the JSON answer.
func vaultDo(t *testing.T, s *Server, method, path string, body any) map[string]any {
	t.Helper()
	b, _ := json.Marshal(body)
	req, _ := http.NewRequest(method, s.Addr+path, bytes.NewReader(b))
	req.Header.Set("X-Vault-Token", s.Token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	if resp.StatusCode/100 != 2 {
		t.Fatalf("%s %s: %s %v", method, path, resp.Status, out)
	}
	return out
}

// TestTransitRoundTrip proves the server is a real Vault with transit on.
func TestTransitRoundTrip(t *testing.T) {
	s := New(t)
	vaultDo(t, s, "POST", "/v1/transit/keys/test-kek", map[string]any{})
	plain := base64.StdEncoding.EncodeToString([]byte("a keyset"))
	enc := vaultDo(t, s, "POST", "/v1/transit/encrypt/test-kek", map[string]any{"plaintext": plain})
	ct, _ := enc["data"].(map[string]any)["ciphertext"].(string)
	if len(ct) < 10 || ct[:6] != "vault:" {
		t.Fatalf("ciphertext %q does not look like Vault's", ct)
	}
	dec := vaultDo(t, s, "POST", "/v1/transit/decrypt/test-kek", map[string]any{"ciphertext": ct})
	if got := dec["data"].(map[string]any)["plaintext"]; got != plain {
		t.Fatalf("decrypt = %v, want %v", got, plain)
	}
}

func TestStopRemovesFiles(t *testing.T) {
	if _, err := Binary(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	t.Setenv("VAULT_ADDR", "")
	s, err := Start(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	dir := s.dir
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("%s still exists after Stop", dir)
	}
	if err := s.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
}
