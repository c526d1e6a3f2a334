package keysync

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// A GenerationFloor remembers, across runs of a device, the newest keyset
// generation the device has adopted for each tenant. A [Keyring] given one
// (KeyringOptions.Floor) refuses keysets below it with
// [ErrStaleGeneration], so that someone who can write shapeseal_tenant_keys,
// and kept an older payload once signed for this device, cannot put it back
// after a rotation and have a restarted device adopt it (see
// docs/keyset-payload.md). Without a floor a keyring only refuses to go
// backwards within one run.
//
// [OpenFileFloor] keeps a floor in a file; implement the interface to keep
// it elsewhere (a mobile keychain, a database the device owns).
type GenerationFloor interface {
	// Floor returns the newest generation adopted for tenant, or 0.
	Floor(tenant string) (uint64, error)
	// Raise records that generation was adopted for tenant; a lower
	// generation than the one recorded changes nothing.
	Raise(tenant string, generation uint64) error
}

// FileFloor is a [GenerationFloor] in a JSON file, {"tenant": generation},
// readable only by its owner and replaced atomically on every raise. It is
// safe for concurrent use within one process.
type FileFloor struct {
	path string
	mu   sync.Mutex
	gens map[string]uint64
}

// OpenFileFloor opens the floor file at path, or starts an empty floor if
// the file does not exist (it is created on the first raise). Like an
// identity file, it is refused if the group or others can access it.
func OpenFileFloor(path string) (*FileFloor, error) {
	f := &FileFloor{path: path, gens: map[string]uint64{}}
	b, err := readSecretFile(path, 16<<20)
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &f.gens); err != nil {
		return nil, fmt.Errorf("keysync: generation floor %s: %w", path, err)
	}
	return f, nil
}

// Floor implements [GenerationFloor].
func (f *FileFloor) Floor(tenant string) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gens[tenant], nil
}

// Raise implements [GenerationFloor].
func (f *FileFloor) Raise(tenant string, generation uint64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if generation <= f.gens[tenant] {
		return nil
	}
	next := make(map[string]uint64, len(f.gens)+1)
	for k, v := range f.gens {
		next[k] = v
	}
	next[tenant] = generation
	b, err := json.Marshal(next)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(f.path), ".floor-*")
	if err != nil {
		return fmt.Errorf("keysync: generation floor: %w", err)
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("keysync: generation floor: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("keysync: generation floor: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("keysync: generation floor: %w", err)
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return fmt.Errorf("keysync: generation floor: %w", err)
	}
	f.gens = next
	return nil
}
