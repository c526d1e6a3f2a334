// Package nodetest gives tests Node.js and the official TypeScript client
// for Electric, @electric-sql/client, so that they can check shapeseal
// against the reference implementation rather than against our reading of
// it.
//
// The client lives in one Node package, electrictest/interop: its
// package.json pins the version, its package-lock.json pins every byte
// (integrity hashes included), and follow.mjs is the script the tests run.
// node_modules is not committed; [Setup] installs it on first use.
//
// # In tests
//
//	func TestAgainstTheTypeScriptClient(t *testing.T) {
//		node, dir := nodetest.Setup(t)
//		cmd := exec.Command(node, "follow.mjs", "--url", shapeURL, "--table", "items")
//		cmd.Dir = dir // so that Node resolves @electric-sql/client from dir/node_modules
//		...
//	}
//
// Setup returns the node binary and the absolute path of
// electrictest/interop, with node_modules matching package-lock.json. It
// works from any package of the module: the directory is found from this
// package's own source file, not from the test's working directory.
//
// # Installing
//
// The first Setup call in a test binary does the work, later calls (in
// that binary) reuse its outcome:
//
//   - node must be on $PATH and be version 18 or later (the client uses the
//     global fetch).
//   - If node_modules holds a stamp file whose content is the SHA-256 of
//     package.json and package-lock.json, and the @electric-sql/client
//     version that package-lock.json pins is installed, nothing is run.
//   - Otherwise Setup runs
//     `npm ci --omit=optional --no-audit --no-fund --ignore-scripts`
//     (a clean install of exactly the lock file, without running any
//     package's install scripts) and writes the stamp.
//
// Test binaries run in parallel (go test ./... runs one per package), and
// npm ci deletes node_modules before it installs, so the check and the
// install happen under an exclusive lock on a file in os.TempDir(), one per
// interop directory (on Linux; elsewhere there is no lock).
//
// # Skip or fail
//
// Without node or npm, with a node older than 18, or when npm ci fails (no
// network, say), Setup skips the test: a developer without Node can still
// run the rest of the suite. When the CI environment variable is true (as
// strconv.ParseBool reads it), Setup fails the test instead: in CI a
// missing dependency must never turn into a silently skipped check.
//
// # Changing the client version
//
// Edit the version in electrictest/interop/package.json, run
// `npm install --package-lock-only --ignore-scripts` in that directory and
// commit both files; the next test run sees the new stamp and reinstalls.
//
// Programs (benchmarks, say) that are not tests call [Install].
package nodetest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// MinNodeMajor is the oldest Node.js major version Setup accepts.
const MinNodeMajor = 18

// stampName is the stamp file in node_modules; its content is the
// hex SHA-256 of package.json and package-lock.json it was installed from.
const stampName = ".shapeseal-interop-lock.sha256"

// npmCITimeout bounds npm ci. The cross-process lock is given up a minute
// later (see lock).
const npmCITimeout = 5 * time.Minute

var once struct {
	sync.Once
	node, dir string
	err       error
}

// Setup returns the node binary and the absolute path of
// electrictest/interop with its dependencies installed (see the package
// documentation). The install is attempted once per test binary. When it
// is impossible or fails, Setup skips the test, or fails it if CI is true.
func Setup(t testing.TB) (node, dir string) {
	t.Helper()
	once.Do(func() {
		once.node, once.dir, once.err = Install(t.Logf)
	})
	if err := once.err; err != nil {
		if inCI() {
			t.Fatalf("nodetest: %v (CI is true, so this fails instead of skipping)", err)
		}
		t.Skipf("nodetest: %v; skipping (install Node.js %d+ and npm to run this test)", err, MinNodeMajor)
	}
	return once.node, once.dir
}

// Install does Setup's work without a test: it finds node, checks its
// version, and runs npm ci in electrictest/interop unless node_modules is
// already up to date, logging what it did with logf (which may be nil).
// It returns the node binary and the absolute path of electrictest/interop.
// Unlike Setup it does not remember its outcome: every call checks again.
func Install(logf func(format string, args ...any)) (node, dir string, err error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	dir, err = Dir()
	if err != nil {
		return "", "", err
	}
	node, err = exec.LookPath("node")
	if err != nil {
		return "", "", errors.New("node is not installed (not found on $PATH)")
	}
	version, err := nodeVersion(node)
	if err != nil {
		return "", "", err
	}

	sum, err := lockSum(dir)
	if err != nil {
		return "", "", err
	}
	stamp := filepath.Join(dir, "node_modules", stampName)
	dirSum := sha256.Sum256([]byte(dir))
	unlock, err := lock(filepath.Join(os.TempDir(), "shapeseal-interop-"+hex.EncodeToString(dirSum[:8])+".lock"))
	if err != nil {
		return "", "", fmt.Errorf("lock for npm ci: %v", err)
	}
	defer unlock()
	if b, err := os.ReadFile(stamp); err == nil && strings.TrimSpace(string(b)) == sum && clientInstalled(dir) {
		logf("nodetest: node %s; %s/node_modules is up to date with package-lock.json", version, dir)
		return node, dir, nil
	}

	npm, err := exec.LookPath("npm")
	if err != nil {
		return "", "", errors.New("npm is not installed (not found on $PATH)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), npmCITimeout)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, npm, "ci", "--omit=optional", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=warn")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "npm_config_update_notifier=false")
	cmd.WaitDelay = 10 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", "", fmt.Errorf("npm ci in %s failed: %v\n%s", dir, err, out)
	}
	if !clientInstalled(dir) {
		return "", "", fmt.Errorf("npm ci in %s succeeded, but node_modules lacks the @electric-sql/client version package-lock.json pins", dir)
	}
	if err := os.WriteFile(stamp, []byte(sum+"\n"), 0o644); err != nil {
		return "", "", err
	}
	logf("nodetest: node %s; npm ci in %s took %v", version, dir, time.Since(start).Round(time.Millisecond))
	return node, dir, nil
}

// Dir returns the absolute path of electrictest/interop. It is found from
// this source file's path as the compiler recorded it; when that path is
// not usable (a -trimpath build), from the enclosing module of the working
// directory.
func Dir() (string, error) {
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		dir := filepath.Join(filepath.Dir(file), "..", "..", "electrictest", "interop")
		if _, err := os.Stat(filepath.Join(dir, "package.json")); err == nil {
			return dir, nil
		}
	}
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for d := wd; ; d = filepath.Dir(d) {
		if isModuleRoot(d) {
			return filepath.Join(d, "electrictest", "interop"), nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("cannot find electrictest/interop: the source path of package nodetest is not available (-trimpath?) and %s is not inside module %s", wd, modulePath)
		}
	}
}

const modulePath = "github.com/shapeseal/shapeseal"

// isModuleRoot reports whether dir holds the go.mod of this module.
func isModuleRoot(dir string) bool {
	f, err := os.Open(filepath.Join(dir, "go.mod"))
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`) == modulePath
		}
	}
	return false
}

// nodeVersion returns node's version ("v20.11.1") if it is at least
// MinNodeMajor.
func nodeVersion(node string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, node, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %v", node, err)
	}
	v := string(bytes.TrimSpace(out))
	major, err := strconv.Atoi(strings.SplitN(strings.TrimPrefix(v, "v"), ".", 2)[0])
	if err != nil {
		return "", fmt.Errorf("%s --version printed %q, not a version", node, v)
	}
	if major < MinNodeMajor {
		return "", fmt.Errorf("node %s is too old: @electric-sql/client needs Node %d or later (global fetch)", v, MinNodeMajor)
	}
	return v, nil
}

// lockSum returns the stamp for dir's package.json and package-lock.json.
func lockSum(dir string) (string, error) {
	h := sha256.New()
	for _, name := range []string{"package.json", "package-lock.json"} {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %d\n", name, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// clientInstalled reports whether node_modules holds the version of
// @electric-sql/client that package-lock.json pins.
func clientInstalled(dir string) bool {
	var lock struct {
		Packages map[string]struct {
			Version string `json:"version"`
		} `json:"packages"`
	}
	var pkg struct {
		Version string `json:"version"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "package-lock.json"))
	if err != nil || json.Unmarshal(b, &lock) != nil {
		return false
	}
	want := lock.Packages["node_modules/@electric-sql/client"].Version
	b, err = os.ReadFile(filepath.Join(dir, "node_modules", "@electric-sql", "client", "package.json"))
	if err != nil || json.Unmarshal(b, &pkg) != nil {
		return false
	}
	return want != "" && pkg.Version == want
}

// inCI reports whether the CI environment variable is true.
func inCI() bool {
	ci, _ := strconv.ParseBool(os.Getenv("CI"))
	return ci
}
