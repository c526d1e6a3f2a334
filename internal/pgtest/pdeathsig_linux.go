package pgtest

import "syscall"

// setPdeathsig asks the kernel to send sig to the child when the thread
// that started it exits. Go only ends threads of goroutines that exit while
// locked with runtime.LockOSThread, so in practice this is "when our process
// dies": a test binary killed by a timeout takes its server down with it.
func setPdeathsig(attr *syscall.SysProcAttr, sig syscall.Signal) {
	attr.Pdeathsig = sig
}
