package electrictest_test

import (
	"errors"
	"os"
	"syscall"
	"time"
)

// interopSetPdeathsig kills a child (node, shapeseal devserver) when the
// test binary dies without running its cleanups (say, on a test timeout).
func interopSetPdeathsig(attr *syscall.SysProcAttr) { attr.Pdeathsig = syscall.SIGKILL }

// interopLock takes an exclusive lock on the file path (creating it), so
// that test binaries running at the same time do not run npm ci in the same
// directory together. It gives up after 6 minutes (npm ci's own limit is 5).
func interopLock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(6 * time.Minute)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			break
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			return nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return func() {
		syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		f.Close()
	}, nil
}
