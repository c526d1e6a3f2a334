//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package proxy

const canPeekIdle = false

// peekIdle cannot look at an idle socket here: it is taken as usable, and
// a closed one is caught by get's retry.
func peekIdle(fd uintptr) bool { return true }
