//go:build !unix

package pgtest

import (
	"errors"
	"os"
	"syscall"
)

func sysProcAttr(owner *runAs, server bool) *syscall.SysProcAttr { return nil }

func killGroup(p *os.Process) { _ = p.Kill() }

func reachable(dir string, owner *runAs) error { return errors.ErrUnsupported }
