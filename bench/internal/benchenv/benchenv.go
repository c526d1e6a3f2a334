// Package benchenv holds what the benchmark programs under bench/ share
// about their surroundings: where the module is, which version of a Node
// package is installed, the child processes they run (Proc) and what they
// read of them, and the tokens they mint.
package benchenv

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ModuleRoot returns the directory of the main module's go.mod.
func ModuleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("not inside the shapeseal module: run from its root")
	}
	return filepath.Dir(mod), nil
}

// PackageVersion returns the version in the package.json of the Node
// package installed in dir.
func PackageVersion(dir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dir, "package.json"))
	if err != nil {
		return "", err
	}
	var pkg struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal(b, &pkg); err != nil {
		return "", err
	}
	return pkg.Version, nil
}
