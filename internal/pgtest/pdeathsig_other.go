//go:build unix && !linux

package pgtest

import "syscall"

// setPdeathsig does nothing: only Linux can signal a child when its parent
// dies. A killed test binary leaves its server running there.
func setPdeathsig(attr *syscall.SysProcAttr, sig syscall.Signal) {}
