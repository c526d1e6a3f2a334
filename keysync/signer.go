package keysync

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/shapeseal/shapeseal/keysync/chain"
)

// Who may grant keys
//
// age encrypts to a public recipient and says nothing about who encrypted;
// a database row says nothing about who wrote it. So authority over a
// tenant's keys lives in the tenant's signed log (package chain), and every
// key payload, log entry and device certificate is signed:
//
//   - a root key, which devices, writers and admin tools pin out of band
//     (KeyringOptions.Roots, shapeseal --root, $SHAPESEAL_ROOT), creates
//     tenants and names their admins; keep it offline;
//   - admin keys, each delegated by a root to the tenants it may
//     administer, certify devices, grant, rotate and revoke.
//
// Both are Ed25519 keys kept in files ([GenerateKeyFile], [LoadKeyFile])
// or in a KMS that implements [chain.Signer]. Neither is stored under a
// KEK: writers, who can use the KEK, cannot grant.

// VerifyKey is the public half of a signing key: a root that devices pin,
// or an admin key. Its text form is "ssvk1…".
type VerifyKey = chain.PublicKey

// VerifyKeyPrefix starts the text form of a [VerifyKey].
const VerifyKeyPrefix = chain.PublicKeyPrefix

// ParseVerifyKey parses the text form of a VerifyKey.
func ParseVerifyKey(s string) (VerifyKey, error) { return chain.ParsePublicKey(s) }

// ParseVerifyKeys parses a comma- or space-separated list of VerifyKeys, the
// form of the SHAPESEAL_ROOT variable and of repeated flags.
func ParseVerifyKeys(list string) ([]VerifyKey, error) { return chain.ParsePublicKeys(list) }

// GenerateKeyFile creates a new Ed25519 signing key (a root or admin key)
// in a file at path, mode 0600, and returns it. It refuses to overwrite a
// file. The file holds a comment line naming the public key and the
// private key as "sssk1…".
func GenerateKeyFile(path string) (*chain.PrivateKey, error) {
	k, err := chain.GenerateKey()
	if err != nil {
		return nil, err
	}
	text := "# shapeseal signing key; public key: " + k.Public().String() + "\n" + k.Text() + "\n"
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, fmt.Errorf("keysync: signing key: %w", err)
	}
	_, err = f.WriteString(text)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("keysync: signing key: %w", err)
	}
	return k, nil
}

// LoadKeyFile reads a signing key file that GenerateKeyFile wrote. Like an
// identity file, it is refused if the group or others can access it
// ([ErrInsecureFile]).
func LoadKeyFile(path string) (*chain.PrivateKey, error) {
	b, err := readSecretFile(path, 4096)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("keysync: signing key %s does not exist", path)
	}
	if err != nil {
		return nil, err
	}
	defer clear(b)
	for line := range strings.Lines(string(b)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			k, err := chain.ParsePrivateKey(line)
			if err != nil {
				return nil, fmt.Errorf("keysync: signing key %s: %w", path, err)
			}
			return k, nil
		}
	}
	return nil, fmt.Errorf("keysync: signing key %s holds no key", path)
}
