package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
)

// CPUProfileEnv names a directory where every spotml process (control
// plane, agents, workers) writes a CPU profile of its run, for measuring
// where a benchmark's CPU goes: COMMAND-PID-SEQ.pprof. SIGUSR1 closes the
// current profile and starts the next (SEQ+1), so that a benchmark can cut
// one long-running control plane's profile into its phases. A debugging
// aid: unset, nothing is profiled.
const CPUProfileEnv = "SPOTML_CPUPROFILE"

// startCPUProfile starts profiling if getenv names a directory, and
// returns what stops it (always safe to call).
func startCPUProfile(getenv func(string) string, args []string) (stop func()) {
	dir := getenv(CPUProfileEnv)
	if dir == "" {
		return func() {}
	}
	cmd := "spotml"
	for _, a := range args {
		if len(a) > 0 && a[0] != '-' && !strings.Contains(a, "/") {
			cmd = a
			break
		}
	}
	var mu sync.Mutex
	seq := 0
	var f *os.File
	begin := func() {
		name := filepath.Join(dir, fmt.Sprintf("%s-%d-%d.pprof", cmd, os.Getpid(), seq))
		var err error
		if f, err = os.Create(name); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", CPUProfileEnv, err)
			f = nil
			return
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", CPUProfileEnv, err)
			f.Close()
			f = nil
		}
	}
	end := func() {
		if f != nil {
			pprof.StopCPUProfile()
			f.Close()
			f = nil
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", CPUProfileEnv, err)
		return func() {}
	}
	begin()
	usr1 := make(chan os.Signal, 1)
	signal.Notify(usr1, syscall.SIGUSR1)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-usr1:
				mu.Lock()
				end()
				seq++
				begin()
				mu.Unlock()
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			signal.Stop(usr1)
			close(done)
			mu.Lock()
			end()
			mu.Unlock()
		})
	}
}
