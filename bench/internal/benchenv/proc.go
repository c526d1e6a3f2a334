package benchenv

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// A Proc is a child process that announced itself ready: the long-running
// shapeseal commands (and the benchmarks' peers) print one line
// "<what> ready {json}" on stdout once they serve.
type Proc struct {
	Cmd   *exec.Cmd
	Ready map[string]string // the ready line's JSON object

	done     chan struct{} // closed once the process has exited and been reaped
	stopOnce sync.Once
}

// StartProc starts cmd (with its Env as set), sends its stderr to stderr,
// and waits up to 30 s for a stdout line that begins with ready and goes on
// with a JSON object of strings. Later stdout lines are discarded. On
// Linux, the process is killed if this one dies.
func StartProc(ctx context.Context, cmd *exec.Cmd, stderr io.Writer, ready string) (*Proc, error) {
	cmd.Stderr = stderr
	dieWithParent(cmd)
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Proc{Cmd: cmd, done: make(chan struct{})}
	got := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if s, ok := strings.CutPrefix(sc.Text(), ready); ok {
				select {
				case got <- s:
				default:
				}
			}
		}
		io.Copy(io.Discard, out)
		cmd.Wait()
		close(p.done)
	}()
	select {
	case line := <-got:
		if err := json.Unmarshal([]byte(line), &p.Ready); err != nil {
			p.Kill()
			return nil, fmt.Errorf("%s: bad ready line: %v", cmd.Path, err)
		}
		return p, nil
	case <-p.done:
		return nil, fmt.Errorf("%s: exited before it was ready (%v)", cmd.Path, cmd.ProcessState)
	case <-time.After(30 * time.Second):
		p.Kill()
		return nil, fmt.Errorf("%s: not ready after 30 s", cmd.Path)
	case <-ctx.Done():
		p.Kill()
		return nil, ctx.Err()
	}
}

// Pid is the process's id.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Exited is closed once the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.done }

// Stop asks the process to stop (SIGTERM) and waits for it, killing it
// after 10 s. It may be called more than once.
func (p *Proc) Stop() {
	p.stopOnce.Do(func() {
		p.Cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.Kill()
		}
	})
}

// Kill kills the process at once (SIGKILL) and waits for it.
func (p *Proc) Kill() {
	p.Cmd.Process.Kill()
	<-p.done
}

// FreeAddr returns a loopback address whose port was free a moment ago,
// for a child process to listen on.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// ProcStatus reads a "kB" field of /proc/PID/status (VmRSS, VmHWM), in
// bytes.
func ProcStatus(pid int, field string) (uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for l := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(l, field+":"); ok {
			kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", field, pid)
}

// OpenFiles counts the open file descriptors of process pid.
func OpenFiles(pid int) (int, error) {
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(fds), err
}

// SignHS256 mints an HS256 JWT with claims.
func SignHS256(key []byte, claims map[string]any) string {
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`))
	c, _ := json.Marshal(claims)
	in := h + "." + base64.RawURLEncoding.EncodeToString(c)
	m := hmac.New(sha256.New, key)
	m.Write([]byte(in))
	return in + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}
