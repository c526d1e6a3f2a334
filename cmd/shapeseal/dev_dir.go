package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/shapeseal/shapeseal/keysync"
	"github.com/shapeseal/shapeseal/keysync/chain"
)

// devDirPrefix names the temporary directories of shapeseal dev; each holds
// a file "pid" naming the process that uses it, so that the next run removes
// those of a run that was killed.
const devDirPrefix = "shapeseal-dev-"

// openDevDir returns the absolute path of dir, made if need be, or, when
// dir is "", of a new temporary directory (with its pid file), and the
// function that removes the temporary one.
func openDevDir(dir string) (path string, remove func(), err error) {
	if dir == "" {
		d, err := os.MkdirTemp("", devDirPrefix)
		if err != nil {
			return "", nil, err
		}
		if err := os.WriteFile(filepath.Join(d, "pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o600); err != nil {
			removeDevDir(d)
			return "", nil, err
		}
		return d, func() { removeDevDir(d) }, nil
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", nil, err
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", nil, err
	}
	return abs, func() {}, nil
}

// devJWTKey loads the key the demo tokens are signed with from path, or
// creates it, so that tokens stay valid across runs with the same --dir.
func devJWTKey(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		key, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(key) < 32 {
			return nil, fmt.Errorf("%s: not a hex key of 32 bytes or more", path)
		}
		return key, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	key := make([]byte, 32)
	rand.Read(key)
	if err := os.WriteFile(path, []byte(hex.EncodeToString(key)+"\n"), 0o600); err != nil {
		return nil, err
	}
	return key, nil
}

// removeDevDir removes a temporary directory of dev, its pid file last: if
// the process is killed on the way, the next run finds the rest.
func removeDevDir(dir string) {
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if e.Name() != "pid" {
			os.RemoveAll(filepath.Join(dir, e.Name()))
		}
	}
	os.RemoveAll(dir)
}

// removeStaleDevDirs removes the temporary directories of earlier runs
// whose process is gone (killed before it could clean up).
func removeStaleDevDirs() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), devDirPrefix+"*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, "pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		os.RemoveAll(d)
	}
}

// devRoot loads the demo's root signing key from path, or creates it.
func devRoot(path string) (*chain.PrivateKey, error) {
	if _, err := os.Stat(path); err == nil {
		return keysync.LoadKeyFile(path)
	}
	return keysync.GenerateKeyFile(path)
}

// devIdentity loads a demo user's identity from path, or creates it, and
// returns its recipient.
func devIdentity(path string) (string, error) {
	id, err := keysync.LoadIdentityFile(path)
	if errors.Is(err, os.ErrNotExist) {
		hid, gerr := keysync.GenerateIdentity()
		if gerr != nil {
			return "", gerr
		}
		if err := keysync.WriteIdentityFile(path, hid); err != nil {
			return "", err
		}
		id, err = hid, nil
	}
	if err != nil {
		return "", err
	}
	return keysync.RecipientOf(id)
}
