package keysync

import (
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// TestFileFloor: a floor is what keeps a restarted device from being
// rolled back (the attacks are in TestKeyringRollback and TestKeyringFork);
// here, the floor file itself.
func TestFileFloor(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "floor.json")
	f, err := OpenFileFloor(path)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := f.Mark("acme"); err != nil || m != (FloorMark{}) {
		t.Fatalf("empty floor: %+v, %v", m, err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the file exists before the first raise: %v", err)
	}
	h5, h9 := sha256.Sum256([]byte("entry 5")), sha256.Sum256([]byte("entry 9"))
	acme := FloorMark{Seq: 5, Head: h5, Generation: 3}
	for _, m := range []FloorMark{
		acme,
		{Seq: 4, Generation: 9},                   // shorter: no change
		{Seq: 5, Head: h5, Generation: 2},         // same entry, lower generation: no change
		{Seq: 5, Head: h9, Generation: 3},         // not further: no change
		{Seq: 0, Head: [32]byte{}, Generation: 0}, // nothing: no change
	} {
		if err := f.Raise("acme", m); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Raise("globex", FloorMark{Seq: 1, Head: h9, Generation: 1}); err != nil {
		t.Fatal(err)
	}
	g, err := OpenFileFloor(path)
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := g.Mark("acme"); m != acme {
		t.Fatalf("reopened floor: acme %+v, want %+v", m, acme)
	}
	if m, _ := g.Mark("globex"); m != (FloorMark{Seq: 1, Head: h9, Generation: 1}) {
		t.Fatalf("reopened floor: globex %+v", m)
	}
	// Further: a longer log, or the same one with a newer generation.
	for _, m := range []FloorMark{{Seq: 5, Head: h5, Generation: 4}, {Seq: 9, Head: h9, Generation: 4}} {
		if err := g.Raise("acme", m); err != nil {
			t.Fatal(err)
		}
		if got, _ := g.Mark("acme"); got != m {
			t.Fatalf("after raising to %+v: %+v", m, got)
		}
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("floor file mode %v, %v", fi.Mode(), err)
	}

	checkFloorForget(t, g, path)
	checkFloorFiles(t, dir, path)
}

// checkFloorForget: Forget drops one tenant, in the file too.
func checkFloorForget(t *testing.T, g *FileFloor, path string) {
	t.Helper()
	if err := g.Forget("acme"); err != nil {
		t.Fatal(err)
	}
	if err := g.Forget("initech"); err != nil {
		t.Fatal(err)
	}
	h, err := OpenFileFloor(path)
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := h.Mark("acme"); m != (FloorMark{}) {
		t.Fatalf("forgotten acme: %+v", m)
	}
	if m, _ := h.Mark("globex"); m.Seq != 1 {
		t.Fatalf("globex after forgetting acme: %+v", m)
	}
}

// checkFloorFiles: OpenFileFloor refuses a floor file others can write or
// one malformed, and reads a floor file of an older shapeseal, which holds
// generations only.
func checkFloorFiles(t *testing.T, dir, path string) {
	t.Helper()
	os.Chmod(path, 0o666)
	if _, err := OpenFileFloor(path); !errors.Is(err, ErrInsecureFile) {
		t.Fatalf("a floor file others can write: %v", err)
	}
	for name, content := range map[string]string{
		"bad.json":  "not json",
		"head.json": `{"acme": {"seq": 1, "head": "abcd", "generation": 1}}`,
		"type.json": `{"acme": "three"}`,
	} {
		os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600)
		if _, err := OpenFileFloor(filepath.Join(dir, name)); err == nil {
			t.Errorf("%s: a malformed floor file was accepted", name)
		}
	}
	// A floor file of an older shapeseal holds generations only.
	old := filepath.Join(dir, "old.json")
	os.WriteFile(old, []byte(`{"acme": 3}`), 0o600)
	o, err := OpenFileFloor(old)
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := o.Mark("acme"); m != (FloorMark{Generation: 3}) {
		t.Fatalf("old floor file: %+v", m)
	}
}

func TestMemoryFloor(t *testing.T) {
	f := NewMemoryFloor()
	h := sha256.Sum256([]byte("entry"))
	f.Raise("acme", FloorMark{Seq: 3, Head: h, Generation: 2})
	f.Raise("acme", FloorMark{Seq: 2, Generation: 5})
	if m, _ := f.Mark("acme"); m != (FloorMark{Seq: 3, Head: h, Generation: 2}) {
		t.Fatalf("%+v", m)
	}
	if m, _ := f.Mark("globex"); m != (FloorMark{}) {
		t.Fatalf("%+v", m)
	}
}
