package keysync

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"

	"github.com/shapeseal/shapeseal/keysync/chain"
)

// A Floor remembers, across runs, how far a device or writer has seen each
// tenant's log: the newest entry's sequence number and hash, and the newest
// keyset generation it adopted. Keyrings, writers and admin tools refuse a
// log below their floor — shorter ([chain.ErrRollback]) or different at
// the floor's entry ([chain.ErrFork]) — and a keyset below its generation
// ([ErrStaleGeneration]), so that whoever can write the database cannot put
// back an older log or an older payload once signed for the device, after
// a revocation, and have a restarted device or writer use it.
//
// [OpenFileFloor] keeps a floor in a file (shapeseal tail keeps one next to
// the identity by default); [NewMemoryFloor] keeps one for the life of the
// process only. Implement the interface to keep it elsewhere (a mobile
// keychain, a database the device owns).
type Floor interface {
	// Mark returns what has been seen of tenant's log; the zero FloorMark
	// if nothing.
	Mark(tenant string) (FloorMark, error)
	// Raise records m for tenant if it is further than the mark held.
	Raise(tenant string, m FloorMark) error
}

// A FloorMark is how far a tenant's log has been seen.
type FloorMark struct {
	Seq        uint64   // the newest entry verified
	Head       [32]byte // its hash
	Generation uint64   // the newest keyset generation adopted
}

// further reports whether m is past old.
func (m FloorMark) further(old FloorMark) bool {
	return m.Seq > old.Seq || m.Seq == old.Seq && m.Generation > old.Generation
}

// checkMark refuses st if it is below m: shorter, different at m's entry,
// or with an older current keyset.
func checkMark(st *chain.State, m FloorMark) error {
	if m.Seq == 0 && m.Generation == 0 {
		return nil
	}
	t := st.Tenant()
	if st.Seq() < m.Seq || st.Seq() == 0 {
		return &chain.Error{Tenant: t, Err: fmt.Errorf("%w: %d entries, %d seen before (a tenant deleted and created again must be forgotten: FileFloor.Forget)", chain.ErrRollback, st.Seq(), m.Seq)}
	}
	if h, _ := st.HashAt(m.Seq); m.Seq > 0 && h != m.Head {
		return &chain.Error{Tenant: t, Seq: m.Seq, Err: fmt.Errorf("%w: entry %d differs from the one seen before (a tenant deleted and created again must be forgotten: FileFloor.Forget)", chain.ErrFork, m.Seq)}
	}
	if g := st.Keyset().Generation; g < m.Generation {
		return &chain.Error{Tenant: t, Err: fmt.Errorf("%w: keyset generation %d, %d adopted before", chain.ErrRollback, g, m.Generation)}
	}
	return nil
}

// MemoryFloor is a [Floor] held in memory, for a process that keeps no
// state across runs: it still refuses, within the run, a log that goes
// back. It is safe for concurrent use.
type MemoryFloor struct {
	mu    sync.Mutex
	marks map[string]FloorMark
}

// NewMemoryFloor returns an empty MemoryFloor.
func NewMemoryFloor() *MemoryFloor { return &MemoryFloor{marks: map[string]FloorMark{}} }

// Mark implements [Floor].
func (f *MemoryFloor) Mark(tenant string) (FloorMark, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.marks[tenant], nil
}

// Raise implements [Floor].
func (f *MemoryFloor) Raise(tenant string, m FloorMark) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if m.further(f.marks[tenant]) {
		f.marks[tenant] = m
	}
	return nil
}

// FileFloor is a [Floor] in a JSON file,
// {"tenant": {"seq": n, "head": "hex", "generation": g}}, readable only by
// its owner and replaced atomically on every raise. It is safe for
// concurrent use within one process.
type FileFloor struct {
	path  string
	mu    sync.Mutex
	marks map[string]FloorMark
}

type fileMark struct {
	Seq        uint64 `json:"seq"`
	Head       string `json:"head"`
	Generation uint64 `json:"generation"`
}

// DefaultFloorPath returns where shapeseal keeps the floor of a device
// whose identity file is identityPath: next to it, with ".floor" added.
func DefaultFloorPath(identityPath string) string { return identityPath + ".floor" }

// OpenFileFloor opens the floor file at path, or starts an empty floor if
// the file does not exist (it is created on the first raise). Like an
// identity file, it is refused if the group or others can access it. A file
// of an older shapeseal, {"tenant": generation}, is read as generations
// only.
func OpenFileFloor(path string) (*FileFloor, error) {
	f := &FileFloor{path: path, marks: map[string]FloorMark{}}
	b, err := readSecretFile(path, 16<<20)
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, err
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("keysync: floor %s: %w", path, err)
	}
	for t, v := range raw {
		var fm fileMark
		if err := json.Unmarshal(v, &fm.Generation); err != nil {
			if err := json.Unmarshal(v, &fm); err != nil {
				return nil, fmt.Errorf("keysync: floor %s: tenant %q: %w", path, t, err)
			}
		}
		m := FloorMark{Seq: fm.Seq, Generation: fm.Generation}
		if fm.Head != "" {
			if h, err := hex.DecodeString(fm.Head); err != nil || len(h) != 32 {
				return nil, fmt.Errorf("keysync: floor %s: tenant %q: bad head", path, t)
			} else {
				copy(m.Head[:], h)
			}
		}
		f.marks[t] = m
	}
	return f, nil
}

// Mark implements [Floor].
func (f *FileFloor) Mark(tenant string) (FloorMark, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.marks[tenant], nil
}

// Raise implements [Floor].
func (f *FileFloor) Raise(tenant string, m FloorMark) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !m.further(f.marks[tenant]) {
		return nil
	}
	return f.write(tenant, &m)
}

// Forget drops what the floor remembers of tenant. It is the way back for
// a tenant that was deleted and created again under the same id, whose new
// log the floor otherwise refuses as a fork: check out of band that the
// new tenant is genuine before forgetting the old one.
func (f *FileFloor) Forget(tenant string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.marks[tenant]; !ok {
		return nil
	}
	return f.write(tenant, nil)
}

// write stores the marks with tenant's set to m, or removed if m is nil.
func (f *FileFloor) write(tenant string, m *FloorMark) error {
	next := make(map[string]FloorMark, len(f.marks)+1)
	out := make(map[string]fileMark, len(f.marks)+1)
	for k, v := range f.marks {
		next[k] = v
	}
	if m == nil {
		delete(next, tenant)
	} else {
		next[tenant] = *m
	}
	for k, v := range next {
		out[k] = fileMark{v.Seq, hex.EncodeToString(v.Head[:]), v.Generation}
	}
	b, err := json.Marshal(out)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(f.path, b); err != nil {
		return fmt.Errorf("keysync: floor: %w", err)
	}
	f.marks = next
	return nil
}

// writeFileAtomic replaces path with b, mode 0600, through a synced
// temporary file and a rename.
func writeFileAtomic(path string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".floor-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
