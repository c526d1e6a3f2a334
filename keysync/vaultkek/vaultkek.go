// Package vaultkek provides keysync KEKs held by HashiCorp Vault's transit
// secrets engine, through tink-go-hcvault.
//
// A KEK URI names a transit key: "hcvault://HOST[:PORT]/MOUNT/keys/NAME",
// for example "hcvault://vault.internal:8200/transit/keys/shapeseal". Only
// the path selects the key; the address, token and namespace come from the
// Vault client, by default from VAULT_ADDR, VAULT_TOKEN and VAULT_NAMESPACE
// (and the other variables of the Vault CLI).
//
// The transit key must be an AEAD key (aes256-gcm96, the default) created
// without derivation: keysync passes associated data binding each keyset to
// its tenant and generation, which Vault checks on decryption. The keyset
// never leaves the process except as the plaintext of a transit encrypt
// call; the KEK never leaves Vault.
//
//	vault secrets enable transit
//	vault write -f transit/keys/shapeseal
//
// Importing the package registers the scheme with keysync, so that
// [keysync.OpenKEK] opens "hcvault://" URIs with [Open]:
//
//	import _ "github.com/shapeseal/shapeseal/keysync/vaultkek"
package vaultkek

import (
	"errors"
	"fmt"
	"net/url"
	"strings"

	"github.com/hashicorp/vault/api"
	"github.com/tink-crypto/tink-go-hcvault/v2/integration/hcvault"

	"github.com/shapeseal/shapeseal/keysync"
)

// Scheme prefixes the URI of a Vault transit KEK.
const Scheme = "hcvault://"

func init() { keysync.RegisterKEKScheme(Scheme, Open) }

// New returns the KEK for the transit key that uri names, using client to
// reach Vault.
func New(uri string, client *api.Client) (keysync.KEK, error) {
	path, err := keyPath(uri)
	if err != nil {
		return nil, err
	}
	if client == nil {
		return nil, errors.New("vaultkek: nil Vault client")
	}
	a, err := hcvault.NewAEAD(path, client.Logical())
	if err != nil {
		return nil, fmt.Errorf("vaultkek: %s: %w", uri, err)
	}
	return keysync.NewKEK(uri, a), nil
}

// Open returns the KEK for the transit key that uri names, with a Vault
// client configured from the environment (VAULT_ADDR, VAULT_TOKEN,
// VAULT_NAMESPACE, VAULT_CACERT, …) as the Vault CLI is.
func Open(uri string) (keysync.KEK, error) {
	if _, err := keyPath(uri); err != nil {
		return nil, err
	}
	cfg := api.DefaultConfig()
	if cfg.Error != nil {
		return nil, fmt.Errorf("vaultkek: %w", cfg.Error)
	}
	client, err := api.NewClient(cfg) // reads VAULT_TOKEN and VAULT_NAMESPACE
	if err != nil {
		return nil, fmt.Errorf("vaultkek: %w", err)
	}
	return New(uri, client)
}

// keyPath returns the transit key path of uri, "/MOUNT/keys/NAME".
func keyPath(uri string) (string, error) {
	if !strings.HasPrefix(uri, Scheme) {
		return "", fmt.Errorf("vaultkek: %q is not an %s URI", uri, Scheme)
	}
	u, err := url.Parse(uri)
	if err != nil {
		return "", fmt.Errorf("vaultkek: %w", err)
	}
	parts := strings.Split(u.Path, "/")
	if u.RawQuery != "" || u.Fragment != "" || len(parts) < 4 || parts[len(parts)-2] != "keys" || parts[len(parts)-1] == "" || parts[1] == "" {
		return "", fmt.Errorf("vaultkek: %q does not name a transit key (%sHOST/MOUNT/keys/NAME)", uri, Scheme)
	}
	return u.Path, nil
}
