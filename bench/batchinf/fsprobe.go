package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// probeFiles is how many empty files newFileCost creates.
const probeFiles = 2000

// newFileCost creates probeFiles empty files in dir (made afresh, left in
// place: removing them would make the next probe dearer) and returns the
// CPU time one creation took, in µs, on this thread.
//
// Every result a way writes is a new file, and what a new file costs is
// not the code's: on an ext4 file system without a journal (this
// machine's) the kernel allocates an inode by walking the free ones of
// the directory's block group, and passes over each that was deleted in
// the last minute, or six if its inode table block is dirty (fs/ext4/ialloc.c,
// recently_deleted), looking it up in the buffer cache. After a mass
// delete nearby (the previous run's workspace, other engineers' tests) a
// creation measured 11-220 µs of CPU here, depending on the directory:
// (d1) writes 70,000 results at about 220 µs an item in all. The ways'
// figures are read beside this.
func newFileCost(dir string) (float64, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	t0 := threadCPU()
	for i := range probeFiles {
		fd, err := unix.Open(filepath.Join(dir, fmt.Sprintf("p%05d", i)), unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o644)
		if err != nil {
			return 0, err
		}
		unix.Close(fd)
	}
	return float64((threadCPU() - t0).Microseconds()) / probeFiles, nil
}

func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// settle waits, up to max, until creating a file in a fresh directory
// under dir costs under 40 µs of CPU, probing every 30 s, and says so on
// log: a run started right after the previous one removed its workspace
// (some 300,000 files) otherwise measures that removal.
func settle(ctx context.Context, max time.Duration, dir string, log io.Writer) {
	deadline := time.Now().Add(max)
	for i := 0; ; i++ {
		us, err := newFileCost(filepath.Join(dir, fmt.Sprintf("settle-%d", i)))
		if err != nil {
			fmt.Fprintf(log, "probing the file system: %v\n", err)
			return
		}
		if us < 40 || time.Now().Add(30*time.Second).After(deadline) {
			fmt.Fprintf(log, "creating a file costs %.0f µs of CPU here\n", us)
			return
		}
		fmt.Fprintf(log, "creating a file costs %.0f µs of CPU here (inodes deleted nearby lately, see fsprobe.go): waiting 30 s\n", us)
		select {
		case <-ctx.Done():
			return
		case <-time.After(30 * time.Second):
		}
	}
}
