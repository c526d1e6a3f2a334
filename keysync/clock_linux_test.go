package keysync

import (
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// cpuClock returns the CPU time of the calling thread, so that benchmark
// ratios do not count the time other processes take on a busy machine.
// Callers lock their goroutine to its thread (see lockThread).
func cpuClock() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return time.Duration(time.Now().UnixNano())
	}
	return time.Duration(ts.Nano())
}

// processClock returns the CPU time of the process, all its threads.
func processClock() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts); err != nil {
		return time.Duration(time.Now().UnixNano())
	}
	return time.Duration(ts.Nano())
}

func lockThread() func() {
	runtime.LockOSThread()
	return runtime.UnlockOSThread
}
