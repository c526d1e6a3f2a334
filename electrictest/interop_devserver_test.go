package electrictest_test

// The interop tests through `shapeseal devserver` (see interop_test.go):
// building and running it, and psql.

import (
	"bufio"
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func interopBuildShapeseal(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "shapeseal")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/shapeseal/shapeseal/cmd/shapeseal")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/shapeseal: %v\n%s", err, out)
	}
	return bin
}

type interopDevserver struct {
	cmd    *exec.Cmd
	url    string
	stderr *interopTail
	done   chan struct{}
	err    error
	once   sync.Once
}

// startDevserver runs `shapeseal devserver` on a free loopback port and
// waits for its ready line.
func startDevserver(t *testing.T, bin, db string) *interopDevserver {
	t.Helper()
	d := &interopDevserver{stderr: &interopTail{max: 64 << 10}, done: make(chan struct{})}
	d.cmd = exec.Command(bin, "devserver", "--database-url", db, "--listen", "127.0.0.1:0", "--long-poll", interopLongPoll.String(), "-v")
	d.cmd.Stderr = d.stderr
	d.cmd.SysProcAttr = &syscall.SysProcAttr{}
	interopSetPdeathsig(d.cmd.SysProcAttr)
	stdout, err := d.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("start shapeseal devserver: %v", err)
	}
	t.Cleanup(func() { d.stop(t) })
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), "shapeseal devserver ready "); ok {
				select {
				case ready <- rest:
				default:
				}
			}
		}
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	select {
	case line := <-ready:
		var info struct {
			ElectricURL string `json:"electric_url"`
		}
		if err := json.Unmarshal([]byte(line), &info); err != nil || info.ElectricURL == "" {
			t.Fatalf("devserver ready line %q: no electric_url (%v)", line, err)
		}
		d.url = info.ElectricURL
		t.Logf("shapeseal devserver ready at %s", d.url)
	case <-d.done:
		t.Fatalf("shapeseal devserver exited before it was ready: %v\n--- stderr ---\n%s", d.err, d.stderr)
	case <-time.After(60 * time.Second):
		t.Fatalf("shapeseal devserver not ready within 60 s\n--- stderr ---\n%s", d.stderr)
	}
	return d
}

// stop sends SIGTERM and expects a clean exit within 10 s (else kills it).
func (d *interopDevserver) stop(t *testing.T) {
	d.once.Do(func() {
		d.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
			if d.err != nil {
				t.Errorf("shapeseal devserver exited with %v on SIGTERM, want status 0\n--- stderr ---\n%s", d.err, d.stderr)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("shapeseal devserver did not exit within 10 s of SIGTERM; killing it\n--- stderr ---\n%s", d.stderr)
			d.cmd.Process.Kill()
			<-d.done
		}
	})
}

// interopPsql finds psql: on $PATH, else in the newest
// /usr/lib/postgresql/*/bin.
func interopPsql() string {
	if p, err := exec.LookPath("psql"); err == nil {
		return p
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin/psql")
	slices.SortFunc(dirs, func(a, b string) int {
		va, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(a))))
		vb, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(b))))
		return vb - va
	})
	if len(dirs) > 0 {
		return dirs[0]
	}
	return ""
}
