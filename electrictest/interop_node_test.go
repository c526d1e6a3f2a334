package electrictest_test

// The Node follower of the interop tests (see interop_test.go).

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

type interopRows struct {
	at      time.Time
	canon   string // rendered as by interopEnv.expected
	typeErr string // a value of the wrong JSON type, or an unknown column
}

type interopFollower struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stderr *interopTail
	extra  func() string

	mu        sync.Mutex
	lines     []string // stdout, last 200 lines
	rows      []*interopRows
	refetches int
	ops       map[string]int
	badLines  []string
	errLine   string
	exited    bool
	exitErr   error
	wake      chan struct{} // closed and replaced on every line and at exit
	done      chan struct{} // closed once the process has exited
	stopOnce  sync.Once
	dumped    bool
}

func startFollower(t *testing.T, node, dir, shapeURL string, extra func() string, args ...string) *interopFollower {
	t.Helper()
	f := &interopFollower{
		t: t, stderr: &interopTail{max: 256 << 10}, extra: extra,
		ops: map[string]int{}, wake: make(chan struct{}), done: make(chan struct{}),
	}
	f.cmd = exec.Command(node, append([]string{"follow.mjs", "--url", shapeURL, "--log-requests"}, args...)...)
	f.cmd.Dir = dir
	f.cmd.Stderr = f.stderr
	f.cmd.SysProcAttr = &syscall.SysProcAttr{}
	interopSetPdeathsig(f.cmd.SysProcAttr)
	var err error
	if f.stdin, err = f.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := f.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatalf("start %s follow.mjs: %v", node, err)
	}
	go f.read(stdout)
	t.Cleanup(func() {
		f.stop()
		if t.Failed() {
			f.dump()
		}
	})
	return f
}

func (f *interopFollower) read(stdout io.Reader) {
	sc := bufio.NewScanner(stdout)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		f.handle(sc.Text(), time.Now())
	}
	err := f.cmd.Wait()
	f.mu.Lock()
	f.exited, f.exitErr = true, err
	close(f.wake)
	f.mu.Unlock()
	close(f.done)
}

func (f *interopFollower) handle(line string, at time.Time) {
	var ev struct {
		Rows    []map[string]json.RawMessage `json:"rows"`
		Keys    []string                     `json:"keys"`
		Error   json.RawMessage              `json:"error"`
		Key     *string                      `json:"key"`
		Headers *struct {
			Operation string   `json:"operation"`
			Control   string   `json:"control"`
			Relation  []string `json:"relation"`
		} `json:"headers"`
	}
	err := json.Unmarshal([]byte(line), &ev)
	f.mu.Lock()
	defer f.mu.Unlock()
	defer func() {
		close(f.wake)
		f.wake = make(chan struct{})
	}()
	f.lines = append(f.lines, line)
	if len(f.lines) > 200 {
		f.lines = f.lines[len(f.lines)-200:]
	}
	switch {
	case err != nil:
		f.badLines = append(f.badLines, fmt.Sprintf("not JSON (%v): %s", err, line))
	case ev.Error != nil:
		f.errLine = line
	case ev.Rows != nil || ev.Keys != nil:
		f.rows = append(f.rows, interopRender(ev.Rows, ev.Keys, at))
	case ev.Headers != nil && ev.Headers.Control != "":
		if ev.Headers.Control == "must-refetch" {
			f.refetches++
		}
	case ev.Headers != nil && ev.Key != nil:
		f.ops[ev.Headers.Operation]++
		if !slices.Equal(ev.Headers.Relation, []string{"public", "items"}) {
			f.badLines = append(f.badLines, "change message with relation "+fmt.Sprint(ev.Headers.Relation)+": "+line)
		}
	default:
		f.badLines = append(f.badLines, "unexpected line: "+line)
	}
}

// interopRender renders a rows notification like interopEnv.expected,
// noting values whose JSON type is not what the client's parser must give.
func interopRender(rows []map[string]json.RawMessage, keys []string, at time.Time) *interopRows {
	r := &interopRows{at: at}
	var typeErrs []string
	if len(rows) != len(keys) {
		typeErrs = append(typeErrs, fmt.Sprintf("%d rows but %d keys", len(rows), len(keys)))
	}
	lines := make([]string, len(rows))
	for i, row := range rows {
		var b strings.Builder
		if i < len(keys) {
			b.WriteString(keys[i])
		}
		for _, c := range interopColumns {
			b.WriteString(" " + c.name + "=")
			raw, ok := row[c.name]
			if !ok {
				b.WriteString("<missing>")
				continue
			}
			var v any
			d := json.NewDecoder(bytes.NewReader(raw))
			d.UseNumber()
			if err := d.Decode(&v); err != nil {
				typeErrs = append(typeErrs, fmt.Sprintf("%s: %v", c.name, err))
				continue
			}
			kind := byte(0)
			switch v := v.(type) {
			case nil:
				b.WriteString("NULL")
				continue
			case string:
				kind = 's'
				b.WriteString(strconv.Quote(v))
			case json.Number:
				kind = 'n'
				b.WriteString(v.String())
			case bool:
				kind = 'b'
				b.WriteString(strconv.FormatBool(v))
			default:
				b.WriteString(string(raw))
			}
			if kind != c.kind {
				typeErrs = append(typeErrs, fmt.Sprintf("row %d column %s: JSON value %s, want a %s", i, c.name, raw, map[byte]string{'n': "number", 's': "string", 'b': "boolean"}[c.kind]))
			}
		}
		for name := range row {
			if !slices.ContainsFunc(interopColumns, func(c interopColumn) bool { return c.name == name }) {
				typeErrs = append(typeErrs, "unknown column "+strconv.Quote(name))
			}
		}
		lines[i] = b.String()
	}
	r.canon = strings.Join(lines, "\n")
	r.typeErr = strings.Join(typeErrs, "; ")
	return r
}

// waitFor waits until cond (called with f.mu held) is true, the follower
// fails or exits, or timeout.
func (f *interopFollower) waitFor(timeout time.Duration, cond func() bool) bool {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		f.mu.Lock()
		ok := cond()
		wake, errLine, exited, exitErr := f.wake, f.errLine, f.exited, f.exitErr
		typeErr := ""
		if n := len(f.rows); n > 0 {
			typeErr = f.rows[n-1].typeErr
		}
		f.mu.Unlock()
		if ok {
			return true
		}
		if errLine != "" {
			f.fatalf("the stream stopped with an error: %s", errLine)
		}
		if typeErr != "" {
			f.fatalf("the client's rows have values of the wrong type: %s", typeErr)
		}
		if exited {
			f.fatalf("node exited early: %v", exitErr)
		}
		select {
		case <-wake:
		case <-timer.C:
			return false
		}
	}
}

func (f *interopFollower) waitFirstRows(timeout time.Duration) (*interopRows, bool) {
	var r *interopRows
	ok := f.waitFor(timeout, func() bool {
		if len(f.rows) > 0 {
			r = f.rows[0]
		}
		return r != nil
	})
	return r, ok
}

// waitRows waits for the latest rows notification to equal want.
func (f *interopFollower) waitRows(want string, timeout time.Duration) (*interopRows, bool) {
	var r *interopRows
	ok := f.waitFor(timeout, func() bool {
		if n := len(f.rows); n > 0 && f.rows[n-1].canon == want {
			r = f.rows[n-1]
		}
		return r != nil
	})
	return r, ok
}

func (f *interopFollower) waitRefetch(n int, timeout time.Duration) bool {
	return f.waitFor(timeout, func() bool { return f.refetches >= n })
}

func (f *interopFollower) refetchCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.refetches
}

func (f *interopFollower) latest() *interopRows {
	f.mu.Lock()
	defer f.mu.Unlock()
	if n := len(f.rows); n > 0 {
		return f.rows[n-1]
	}
	return nil
}

func (f *interopFollower) diffLatest(want string) string {
	got := f.latest()
	if got == nil {
		return "no rows notification yet; want:\n" + want
	}
	return interopDiff(want, got.canon)
}

// check reports problems with the stream as a whole.
func (f *interopFollower) check() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var probs []string
	if len(f.badLines) > 0 {
		probs = append(probs, "unexpected output:\n"+strings.Join(f.badLines, "\n"))
	}
	for _, op := range []string{"insert", "update", "delete"} {
		if f.ops[op] == 0 {
			probs = append(probs, "no "+op+" message was received")
		}
	}
	for op := range f.ops {
		if op != "insert" && op != "update" && op != "delete" {
			probs = append(probs, fmt.Sprintf("%d change messages with operation %q", f.ops[op], op))
		}
	}
	return strings.Join(probs, "\n")
}

// stop closes node's stdin (follow.mjs exits on EOF), then kills it if it
// has not exited within 5 s. A follower that exits with an error after a
// clean stop is reported.
func (f *interopFollower) stop() {
	f.stopOnce.Do(func() {
		f.stdin.Close()
		select {
		case <-f.done:
		case <-time.After(5 * time.Second):
			f.t.Errorf("node did not exit within 5 s of its stdin closing; killing it")
			f.cmd.Process.Kill()
			select {
			case <-f.done:
			case <-time.After(5 * time.Second):
				f.t.Errorf("node did not exit after SIGKILL")
				return
			}
		}
		f.mu.Lock()
		err, errLine := f.exitErr, f.errLine
		f.mu.Unlock()
		if err != nil && errLine == "" && !f.t.Failed() {
			f.t.Errorf("node exited with %v after its stdin closed, want status 0\n%s", err, f.diag())
		}
	})
}

func (f *interopFollower) diag() string {
	f.mu.Lock()
	last := f.lines[max(0, len(f.lines)-30):]
	out := "--- node stdout (last lines) ---\n" + strings.Join(last, "\n") + "\n"
	f.mu.Unlock()
	out += "--- node stderr (tail) ---\n" + f.stderr.String()
	if f.extra != nil {
		out += "\n" + f.extra()
	}
	return out
}

// fatalf fails the test with the follower's diagnostics.
func (f *interopFollower) fatalf(format string, args ...any) {
	f.t.Helper()
	f.mu.Lock()
	f.dumped = true
	f.mu.Unlock()
	f.t.Fatalf(format+"\n%s", append(args, f.diag())...)
}

// dump logs the diagnostics of a failed test once.
func (f *interopFollower) dump() {
	f.mu.Lock()
	dumped := f.dumped
	f.dumped = true
	f.mu.Unlock()
	if !dumped {
		f.t.Logf("follower diagnostics:\n%s", f.diag())
	}
}

func interopDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			b.WriteString("+ " + l + "\n")
		}
	}
	if b.Len() == 0 {
		b.WriteString("(same rows, different order)\n")
	}
	return "(- in Postgres only, + in the client only)\n" + b.String() +
		"--- want (Postgres) ---\n" + want + "\n--- got (client) ---\n" + got
}

// interopTail keeps the last max bytes written to it.
type interopTail struct {
	mu  sync.Mutex
	max int
	buf []byte
	cut bool
}

func (w *interopTail) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, p...)
	if len(w.buf) > w.max {
		w.buf = append(w.buf[:0], w.buf[len(w.buf)-w.max:]...)
		w.cut = true
	}
	return len(p), nil
}

func (w *interopTail) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cut {
		return "[...]" + string(w.buf)
	}
	return string(w.buf)
}
