package proxy

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shapeseal/shapeseal/client"
)

// tsFollower runs electrictest/interop/follow.mjs — the ShapeStream and
// Shape of the official @electric-sql/client — and keeps what it prints:
//
//   - the rows of its Shape at the latest notification;
//   - every message its ShapeStream delivered, applied in order to a
//     client.Shape (the replay): what the TypeScript client received,
//     materialized with the tag semantics of Electric's Elixir client and
//     of client.Shape, so that the stream and the Shape can be judged
//     apart.
//
// The token goes in the Authorization header (follow.mjs --token); it is
// never logged, and the command line is not printed.
type tsFollower struct {
	t      testing.TB
	name   string
	cmd    *exec.Cmd
	stderr syncBuffer
	done   chan struct{}

	mu       sync.Mutex
	lines    []string         // stdout
	rows     []map[string]any // the Shape's rows at its latest notification
	keys     []string         // their keys; nil before the first notification
	replay   *client.Shape
	events   map[string]int // event messages by name (move-in, move-out)
	ops      map[string]int // change messages by operation
	untagged int            // change messages without tags
	errLine  string
	exitErr  error
}

// startTS starts follow.mjs on shapeURL with tok and the extra args, and
// stops it when the test ends.
func startTS(t testing.TB, name, node, dir, shapeURL, tok string, args ...string) *tsFollower {
	t.Helper()
	f := &tsFollower{t: t, name: name, done: make(chan struct{}), replay: client.NewShape(nil),
		events: map[string]int{}, ops: map[string]int{}}
	ctx, cancel := context.WithCancel(context.Background())
	f.cmd = exec.CommandContext(ctx, node, append([]string{filepath.Join(dir, "follow.mjs"),
		"--url", shapeURL, "--token", tok, "--ignore-stdin", "--log-requests"}, args...)...)
	f.cmd.Dir = dir
	f.cmd.Stderr = &f.stderr
	f.cmd.WaitDelay = 5 * time.Second
	stdout, err := f.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatalf("start follow.mjs: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 16<<20)
		for sc.Scan() {
			f.handle(sc.Text())
		}
		err := f.cmd.Wait()
		f.mu.Lock()
		f.exitErr = err
		f.mu.Unlock()
		close(f.done)
	}()
	t.Cleanup(func() {
		f.cmd.Process.Signal(os.Interrupt) // follow.mjs exits 0 on SIGINT
		select {
		case <-f.done:
		case <-time.After(5 * time.Second):
			t.Errorf("%s: follow.mjs did not exit within 5 s of SIGINT", name)
		}
		cancel()
		<-f.done
		if t.Failed() {
			t.Logf("%s:\n%s", name, f.diag())
		}
	})
	return f
}

// tsLine is one line of follow.mjs's output.
type tsLine struct {
	Headers *struct {
		Operation   string               `json:"operation"`
		Control     string               `json:"control"`
		Event       string               `json:"event"`
		Tags        []string             `json:"tags"`
		RemovedTags []string             `json:"removed_tags"`
		Patterns    []client.MovePattern `json:"patterns"`
	} `json:"headers"`
	Key   *string          `json:"key"`
	Value map[string]any   `json:"value"`
	Rows  []map[string]any `json:"rows"`
	Keys  []string         `json:"keys"`
	Error json.RawMessage  `json:"error"`
}

func (f *tsFollower) handle(line string) {
	var l tsLine
	err := json.Unmarshal([]byte(line), &l)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lines = append(f.lines, line)
	switch {
	case err != nil:
		f.errLine = fmt.Sprintf("not JSON (%v): %s", err, line)
	case l.Error != nil:
		f.errLine = line
	case l.Keys != nil:
		f.rows, f.keys = l.Rows, l.Keys
	case l.Headers != nil:
		h := l.Headers
		m := client.Message{Value: client.Row(l.Value), Headers: client.Headers{
			Operation: client.Operation(h.Operation), Control: client.Control(h.Control), Event: h.Event,
			Tags: h.Tags, RemovedTags: h.RemovedTags, Patterns: h.Patterns}}
		if l.Key != nil {
			m.Key = *l.Key
		}
		if h.Event != "" {
			f.events[h.Event]++
		}
		if m.IsChange() {
			f.ops[h.Operation]++
			if len(h.Tags) == 0 {
				f.untagged++
			}
		}
		f.replay.Apply(m)
	default:
		f.errLine = "unexpected line: " + line
	}
}

// views returns the Shape's view and the replay's, each key → canon(row),
// and false before the Shape's first notification. It fails the test if
// the client stopped on an error or printed something unexpected.
func (f *tsFollower) views(canon func(map[string]any) string) (shape, replay map[string]string, ok bool) {
	f.t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.errLine != "" {
		f.t.Fatalf("%s: %s", f.name, f.errLine)
	}
	if f.keys == nil {
		return nil, nil, false
	}
	shape = map[string]string{}
	for i, k := range f.keys {
		if i < len(f.rows) {
			shape[k] = canon(f.rows[i])
		}
	}
	replay = map[string]string{}
	for k, r := range f.replay.Rows() {
		replay[k] = canon(r)
	}
	return shape, replay, f.replay.IsUpToDate()
}

// counts returns the event and operation counts and the number of change
// messages without tags.
func (f *tsFollower) counts() (events, ops map[string]int, untagged int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.events, f.ops, f.untagged
}

// output returns every line printed so far.
func (f *tsFollower) output() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.lines)
}

func (f *tsFollower) diag() string {
	f.mu.Lock()
	last := strings.Join(f.lines[max(0, len(f.lines)-40):], "\n")
	exit := f.exitErr
	f.mu.Unlock()
	return fmt.Sprintf("--- stdout (last lines) ---\n%s\n--- stderr ---\n%s\n--- exit: %v", last, f.stderr.String(), exit)
}
