package keysync

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"strings"
	"time"

	"filippo.io/age"
)

// GenerateIdentity returns a new post-quantum hybrid age identity
// (ML-KEM-768 + X25519), whose recipient starts with "age1pq1". It is the
// default identity of a device.
func GenerateIdentity() (*age.HybridIdentity, error) {
	return age.GenerateHybridIdentity()
}

// RecipientOf returns the public recipient of identity, the string a device
// registers in shapeseal_devices: "age1pq1…" for a hybrid identity, "age1…"
// for X25519.
func RecipientOf(identity age.Identity) (string, error) {
	switch id := identity.(type) {
	case *age.HybridIdentity:
		return id.Recipient().String(), nil
	case *age.X25519Identity:
		return id.Recipient().String(), nil
	}
	return "", fmt.Errorf("keysync: unsupported identity type %T", identity)
}

// ParseRecipient parses a device recipient: post-quantum hybrid ("age1pq1…")
// or X25519 ("age1…"). SSH keys, plugins and passphrases are refused.
func ParseRecipient(s string) (age.Recipient, error) {
	switch {
	case strings.HasPrefix(s, "age1pq1"):
		return age.ParseHybridRecipient(s)
	case strings.HasPrefix(s, "age1"):
		return age.ParseX25519Recipient(s)
	}
	return nil, errors.New("keysync: unsupported recipient: want age1pq1… or age1…")
}

// WriteIdentityFile writes identity to a new file at path, readable only by
// its owner (mode 0600), in the format of age-keygen: comment lines with the
// creation time and the public recipient, then the secret key. It refuses to
// overwrite an existing file, so a device key is never lost by accident.
func WriteIdentityFile(path string, identity age.Identity) error {
	recipient, err := RecipientOf(identity)
	if err != nil {
		return err
	}
	secret := identity.(fmt.Stringer).String()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("keysync: write identity: %w", err)
	}
	_, err = fmt.Fprintf(f, "# created: %s\n# public key: %s\n%s\n",
		time.Now().UTC().Format(time.RFC3339), recipient, secret)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("keysync: write identity: %w", err)
	}
	return nil
}

// LoadIdentityFile reads the one age identity (hybrid or X25519) in the file
// at path. It refuses a file that the group or others can access, with a
// *[FilePermissionError] that wraps [ErrInsecureFile], as ssh does for
// private keys.
func LoadIdentityFile(path string) (age.Identity, error) {
	b, err := readSecretFile(path, 1<<16)
	if err != nil {
		return nil, err
	}
	defer clear(b)
	ids, err := age.ParseIdentities(bytes.NewReader(b))
	if err != nil {
		// age's errors never include key material.
		return nil, fmt.Errorf("keysync: identity file %s: %w", path, err)
	}
	if len(ids) != 1 {
		return nil, fmt.Errorf("keysync: identity file %s holds %d identities, want 1", path, len(ids))
	}
	return ids[0], nil
}

// readSecretFile reads at most max bytes of the file at path after checking
// that only its owner can access it.
func readSecretFile(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("keysync: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("keysync: %w", err)
	}
	if err := checkSecretMode(path, fi.Mode()); err != nil {
		return nil, err
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("keysync: read %s: %w", path, err)
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("keysync: %s is larger than %d bytes", path, max)
	}
	return b, nil
}

// checkSecretMode refuses a file that the group or others can access.
// Windows has no such permission bits; there the check is skipped.
func checkSecretMode(path string, mode fs.FileMode) error {
	if runtime.GOOS == "windows" {
		return nil
	}
	if !mode.IsRegular() {
		return fmt.Errorf("keysync: %s is not a regular file", path)
	}
	if mode.Perm()&0o077 != 0 {
		return &FilePermissionError{Path: path, Mode: uint32(mode.Perm())}
	}
	return nil
}
