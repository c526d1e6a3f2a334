//go:build !linux

package keysync

import "time"

func cpuClock() time.Duration { return time.Duration(time.Now().UnixNano()) }

func processClock() time.Duration { return time.Duration(time.Now().UnixNano()) }

func lockThread() func() { return func() {} }
