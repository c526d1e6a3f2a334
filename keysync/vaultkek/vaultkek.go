// Package vaultkek provides keysync KEKs held by HashiCorp Vault's transit
// secrets engine, through tink-go-hcvault.
//
// A KEK URI names a transit key: "hcvault://HOST[:PORT]/MOUNT/keys/NAME",
// for example "hcvault://vault.internal:8200/transit/keys/shapeseal". The
// path selects the key; the token and namespace come from the Vault client,
// by default from VAULT_TOKEN and VAULT_NAMESPACE (and the other variables
// of the Vault CLI).
//
// The host is checked, never ignored. A KEK URI may come from data that
// whoever can write the database controls (the shapeseal_keysets table
// stores each keyset's KEK URI), so a URI naming one Vault must not be
// silently served by another, nor send the Vault token to a host of the
// row's choosing. The URI's HOST[:PORT] must equal the Host of the Vault
// address, compared case-insensitively and exactly as written: no default
// port is implied on either side, so "hcvault://vault.internal/…" matches
// VAULT_ADDR=https://vault.internal but not https://vault.internal:8200.
// A URI whose host disagrees with the configured Vault is refused with a
// [*HostMismatchError] before Vault is contacted; a URI with no host
// ("hcvault:///transit/keys/k") is refused too.
//
// [Open] checks the host against VAULT_ADDR when it is set, and otherwise
// connects to https://HOST[:PORT], the URI's own host. [New] checks it
// against the address of the client it is given.
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
	"os"
	"strings"

	"github.com/hashicorp/vault/api"
	"github.com/tink-crypto/tink-go-hcvault/v2/integration/hcvault"

	"github.com/shapeseal/shapeseal/keysync"
)

// Scheme prefixes the URI of a Vault transit KEK.
const Scheme = "hcvault://"

func init() { keysync.RegisterKEKScheme(Scheme, Open) }

// A HostMismatchError refuses a KEK URI whose host is not the configured
// Vault's: the key it names is not looked up in another Vault.
type HostMismatchError struct {
	URI       string // the KEK URI
	URIHost   string // its HOST[:PORT]
	VaultAddr string // the configured Vault address, without any user information
}

func (e *HostMismatchError) Error() string {
	return fmt.Sprintf("vaultkek: KEK %s names Vault host %q, but the configured Vault is %s: refused", e.URI, e.URIHost, e.VaultAddr)
}

// New returns the KEK for the transit key that uri names, using client to
// reach Vault. The URI's host must be the host of client.Address(), the
// address the client connects to; otherwise New returns a
// [*HostMismatchError].
func New(uri string, client *api.Client) (keysync.KEK, error) {
	host, path, err := parse(uri)
	if err != nil {
		return nil, err
	}
	if client == nil {
		return nil, errors.New("vaultkek: nil Vault client")
	}
	if err := checkHost(uri, host, client.Address()); err != nil {
		return nil, err
	}
	return newKEK(uri, path, client)
}

// Open returns the KEK for the transit key that uri names, with a Vault
// client configured from the environment (VAULT_ADDR, VAULT_TOKEN,
// VAULT_NAMESPACE, VAULT_CACERT, …) as the Vault CLI is.
//
// When VAULT_ADDR is set, the URI's host must be its host, or Open returns
// a [*HostMismatchError]. When it is not set, Open connects to
// https://HOST[:PORT], the URI's host. VAULT_AGENT_ADDR is honoured only
// with VAULT_ADDR, the Vault the agent is taken to forward to: without it
// the Vault behind the agent cannot be checked, and Open refuses.
func Open(uri string) (keysync.KEK, error) {
	host, path, err := parse(uri)
	if err != nil {
		return nil, err
	}
	cfg := api.DefaultConfig()
	if cfg.Error != nil {
		return nil, fmt.Errorf("vaultkek: %w", cfg.Error)
	}
	switch {
	case os.Getenv(api.EnvVaultAddress) != "":
		if err := checkHost(uri, host, cfg.Address); err != nil {
			return nil, err
		}
	case os.Getenv(api.EnvVaultAgentAddr) != "":
		return nil, fmt.Errorf("vaultkek: KEK %s: %s is set without %s, so the Vault behind the agent cannot be checked against the URI's host %q", uri, api.EnvVaultAgentAddr, api.EnvVaultAddress, host)
	default:
		cfg.Address = "https://" + host
	}
	client, err := api.NewClient(cfg) // reads VAULT_TOKEN and VAULT_NAMESPACE
	if err != nil {
		return nil, fmt.Errorf("vaultkek: %w", err)
	}
	return newKEK(uri, path, client)
}

func newKEK(uri, path string, client *api.Client) (keysync.KEK, error) {
	a, err := hcvault.NewAEAD(path, client.Logical())
	if err != nil {
		return nil, fmt.Errorf("vaultkek: %s: %w", uri, err)
	}
	return keysync.NewKEK(uri, a), nil
}

// checkHost returns a *HostMismatchError unless uriHost is the host of the
// Vault address addr, compared case-insensitively.
func checkHost(uri, uriHost, addr string) error {
	u, err := url.Parse(addr)
	if err != nil {
		// Not wrapped: url.Error repeats the address, user information and all.
		return errors.New("vaultkek: the Vault address is not a URL")
	}
	if strings.EqualFold(uriHost, u.Host) {
		return nil
	}
	u.User = nil
	return &HostMismatchError{URI: uri, URIHost: uriHost, VaultAddr: u.String()}
}

// parse returns the Vault host of uri, "HOST[:PORT]", and its transit key
// path, "/MOUNT/keys/NAME".
func parse(uri string) (host, path string, err error) {
	if !strings.HasPrefix(uri, Scheme) {
		return "", "", fmt.Errorf("vaultkek: %q is not an %s URI", uri, Scheme)
	}
	u, err := url.Parse(uri)
	if err != nil {
		return "", "", fmt.Errorf("vaultkek: %w", err)
	}
	if u.User != nil {
		u.User = nil // it could be a token: not repeated
		return "", "", fmt.Errorf("vaultkek: %q: a KEK URI carries no user information", u.String())
	}
	if u.Host == "" {
		return "", "", fmt.Errorf("vaultkek: %q names no Vault host (%sHOST[:PORT]/MOUNT/keys/NAME)", uri, Scheme)
	}
	parts := strings.Split(u.Path, "/")
	if u.RawQuery != "" || u.Fragment != "" || len(parts) < 4 || parts[len(parts)-2] != "keys" || parts[len(parts)-1] == "" || parts[1] == "" {
		return "", "", fmt.Errorf("vaultkek: %q does not name a transit key (%sHOST[:PORT]/MOUNT/keys/NAME)", uri, Scheme)
	}
	return u.Host, u.Path, nil
}
