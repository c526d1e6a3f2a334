package electrictest_test

import "syscall"

// interopSetPdeathsig kills a child (node, shapeseal devserver) when the
// test binary dies without running its cleanups (say, on a test timeout).
func interopSetPdeathsig(attr *syscall.SysProcAttr) { attr.Pdeathsig = syscall.SIGKILL }
