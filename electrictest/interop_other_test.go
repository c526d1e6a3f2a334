//go:build !linux

package electrictest_test

import "syscall"

// interopSetPdeathsig does nothing outside Linux: node still exits when its
// stdin (a pipe from the test binary) closes.
func interopSetPdeathsig(attr *syscall.SysProcAttr) {}
