package vaultkek

import (
	"bytes"
	"os"
	"strings"
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
// (aes256-gcm96, no derivation) and the key's URI.
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
	return client, "hcvault://127.0.0.1:8200/transit/keys/" + name
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
	kek2, _ := New("hcvault://127.0.0.1:8200/transit/keys/another", client)
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
