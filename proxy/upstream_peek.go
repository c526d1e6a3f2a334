//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package proxy

import "syscall"

// canPeekIdle: idle connections are checked before reuse (idleAlive).
const canPeekIdle = true

// peekIdle reports whether the idle socket fd has nothing to read and is
// not closed: a non-blocking peek that would block.
func peekIdle(fd uintptr) bool {
	var b [1]byte
	_, _, err := syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
	return err == syscall.EAGAIN || err == syscall.EWOULDBLOCK
}
