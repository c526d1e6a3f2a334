//go:build !linux

package main

// setParentDeathSignal does nothing: only Linux signals a process when its
// parent exits; watchParent polls the parent instead.
func setParentDeathSignal() {}
