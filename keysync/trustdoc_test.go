package keysync

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestTrustModelNamesTests: every test that docs/trust-model.md names as
// the proof of a claim exists, so that a renamed or deleted test cannot
// leave a claim unproven.
func TestTrustModelNamesTests(t *testing.T) {
	doc, err := os.ReadFile("../docs/trust-model.md")
	if err != nil {
		t.Fatal(err)
	}
	refs := regexp.MustCompile("`([a-z0-9/]+): (Test[A-Za-z0-9_]+)").FindAllStringSubmatch(string(doc), -1)
	if len(refs) < 20 {
		t.Fatalf("only %d test references in trust-model.md", len(refs))
	}
	for _, r := range refs {
		pkg, name := r[1], r[2]
		if pkg == "package" {
			continue // the doc's own example of the notation
		}
		files, _ := filepath.Glob(filepath.Join("..", pkg, "*_test.go"))
		found := false
		for _, f := range files {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), "func "+name+"(") {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("trust-model.md names %s: %s, which does not exist", pkg, name)
		}
	}
}
