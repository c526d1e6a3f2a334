package vaulttest

import (
	"os/exec"
	"syscall"
)

// setParentDeath makes Linux stop Vault if the test binary dies.
func setParentDeath(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
