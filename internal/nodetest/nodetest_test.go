package nodetest_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/shapeseal/shapeseal/internal/nodetest"
)

// TestDir finds electrictest/interop from outside it.
func TestDir(t *testing.T) {
	dir, err := nodetest.Dir()
	if err != nil {
		t.Fatal(err)
	}
	if !filepath.IsAbs(dir) || filepath.Base(dir) != "interop" {
		t.Errorf("Dir() = %q, want an absolute path ending in electrictest/interop", dir)
	}
	for _, name := range []string{"package.json", "package-lock.json", "follow.mjs"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Error(err)
		}
	}
}

// TestSetup: after Setup, node imports the pinned client from the
// directory, and a second Setup returns the same without installing again.
func TestSetup(t *testing.T) {
	node, dir := nodetest.Setup(t)
	cmd := exec.Command(node, "--input-type=module", "-e",
		`import { ShapeStream, Shape } from '@electric-sql/client'
		import { readFileSync } from 'node:fs'
		if (typeof ShapeStream !== 'function' || typeof Shape !== 'function') throw new Error('no ShapeStream')
		console.log(JSON.parse(readFileSync('node_modules/@electric-sql/client/package.json')).version)`)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
	lock, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	if err != nil {
		t.Fatal(err)
	}
	if v := strings.TrimSpace(string(out)); v == "" || !strings.Contains(string(lock), `"version": "`+v+`"`) {
		t.Errorf("installed @electric-sql/client %q is not in package-lock.json", v)
	}
	if n2, d2 := nodetest.Setup(t); n2 != node || d2 != dir {
		t.Errorf("second Setup = %q, %q; want %q, %q", n2, d2, node, dir)
	}
}
