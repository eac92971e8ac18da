// Package proc names a process by more than its PID, so that a PID stored
// for later (by the agent for its tasks, by the local provider for its
// agents) is signalled only while it still names the process spotml started.
//
// Linux hands a PID number out again once its process is gone. A process is
// identified by its PID and its start time (field 22 of /proc/PID/stat, in
// clock ticks since boot): no two processes of one boot share both, and the
// start time survives exec. Identities are Linux-only; elsewhere Identify
// fails and nothing stored is ever killed.
package proc

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// ID identifies one process.
type ID struct {
	PID   int
	Start uint64 // start time in clock ticks since boot; 0 when unknown
}

// ErrNotSame is returned when a PID now names another process than the one
// recorded.
var ErrNotSame = errors.New("the PID now names another process")

// Identify returns the identity of the running process pid. Called by the
// parent right after starting a child, before it is reaped, it names that
// child.
func Identify(pid int) (ID, error) {
	start, err := startTime(pid)
	if err != nil {
		return ID{}, err
	}
	return ID{PID: pid, Start: start}, nil
}

// KillGroup sends SIGKILL to the process group led by id, if id's leader is
// still the recorded process, or if the leader is gone: Linux does not hand
// out a PID again while a process group of that number has members, so the
// group's number then still names only what the leader left behind. A
// leader that now is another process, or an id with no start time, gets
// ErrNotSame and no signal.
func KillGroup(id ID) error {
	if id.PID <= 1 {
		return fmt.Errorf("proc: refusing to kill process group %d", id.PID)
	}
	start, err := startTime(id.PID)
	switch {
	case errors.Is(err, os.ErrNotExist):
		// The leader is gone; the group, if any of it is left, is ours.
	case err != nil:
		return err
	case id.Start == 0 || start != id.Start:
		return fmt.Errorf("process group %d: %w (started at tick %d, recorded %d)", id.PID, ErrNotSame, start, id.Start)
	}
	if err := syscall.Kill(-id.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill process group %d: %w", id.PID, err)
	}
	return nil
}

// startTime reads field 22 of /proc/pid/stat. The second field, the command
// name in parentheses, may itself hold spaces and parentheses, so fields are
// counted from the last ')'.
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name in %q", pid, b)
	}
	fields := strings.Fields(string(b[i+1:]))
	// fields[0] is field 3 (state); the start time is field 22.
	const startField = 22 - 3
	if len(fields) <= startField {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after the command name, want more than %d", pid, len(fields), startField)
	}
	start, err := strconv.ParseUint(fields[startField], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: start time %q: %w", pid, fields[startField], err)
	}
	return start, nil
}

// WriteFile records ids in path, one "PID START" per line, replacing the
// file atomically so that a reader sees the old list or the new one.
func WriteFile(path string, ids []ID) error {
	var b strings.Builder
	for _, id := range ids {
		fmt.Fprintf(&b, "%d %d\n", id.PID, id.Start)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ReadFile reads what WriteFile wrote. A line holding a PID alone (written
// by an agent that predates start times) gives an ID with no start time.
func ReadFile(path string) ([]ID, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var ids []ID
	for n, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		var id ID
		if id.PID, err = strconv.Atoi(f[0]); err != nil || id.PID <= 0 {
			return nil, fmt.Errorf("%s:%d: %q is not a PID", path, n+1, f[0])
		}
		if len(f) > 1 {
			if id.Start, err = strconv.ParseUint(f[1], 10, 64); err != nil {
				return nil, fmt.Errorf("%s:%d: %q is not a start time", path, n+1, f[1])
			}
		}
		ids = append(ids, id)
	}
	return ids, nil
}
