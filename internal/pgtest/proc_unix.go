//go:build unix

package pgtest

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
)

// sysProcAttr runs a command as owner (if not nil). A server also gets its
// own process group, so that a terminal's Ctrl-C reaches only our process,
// which then shuts the server down in order, and it is told to shut down if
// its parent dies (on Linux).
func sysProcAttr(owner *runAs, server bool) *syscall.SysProcAttr {
	attr := &syscall.SysProcAttr{}
	if owner != nil {
		attr.Credential = &syscall.Credential{Uid: owner.uid, Gid: owner.gid} // and no supplementary groups
	}
	if server {
		attr.Setpgid = true
		setPdeathsig(attr, syscall.SIGINT)
	}
	return attr
}

// killGroup sends SIGKILL to p's process group (p leads it, see
// sysProcAttr), which also reaches the server's children.
func killGroup(p *os.Process) {
	if err := syscall.Kill(-p.Pid, syscall.SIGKILL); err != nil {
		_ = p.Kill()
	}
}

// reachable reports whether owner can search every ancestor of dir.
// It ignores supplementary groups, so it is only used to explain a failure.
func reachable(dir string, owner *runAs) error {
	for d := filepath.Dir(dir); ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		perm := fi.Mode().Perm()
		st, ok := fi.Sys().(*syscall.Stat_t)
		searchable := perm&0o001 != 0 ||
			ok && st.Uid == owner.uid && perm&0o100 != 0 ||
			ok && st.Gid == owner.gid && perm&0o010 != 0
		if !searchable {
			return fmt.Errorf("%s has mode %v", d, fi.Mode())
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}
