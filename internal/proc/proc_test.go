package proc_test

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/proc"
)

// start runs a shell script as the leader of its own process group.
func start(t *testing.T, script string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sh", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); cmd.Wait() })
	return cmd
}

// alive reports whether pid runs (a zombie does not count).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	return len(f) > 0 && f[0] != "Z"
}

func waitDead(t *testing.T, pid int) {
	t.Helper()
	for range 300 {
		if !alive(pid) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("process %d still runs", pid)
}

func identify(t *testing.T, pid int) proc.ID {
	t.Helper()
	id, err := proc.Identify(pid)
	if err != nil {
		t.Fatal(err)
	}
	if id.PID != pid || id.Start == 0 {
		t.Fatalf("Identify(%d) = %+v", pid, id)
	}
	return id
}

func TestKillGroupKillsTheRecordedGroup(t *testing.T) {
	childFile := filepath.Join(t.TempDir(), "child")
	cmd := start(t, "sleep 60 & echo $! > "+childFile+".tmp; mv "+childFile+".tmp "+childFile+"; wait")
	id := identify(t, cmd.Process.Pid)
	child := readPID(t, childFile)
	if err := proc.KillGroup(id); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	waitDead(t, id.PID)
	waitDead(t, child)
}

// readPID waits for a shell to write a PID into path.
func readPID(t *testing.T, path string) int {
	t.Helper()
	for range 300 {
		if b, err := os.ReadFile(path); err == nil {
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				t.Fatal(err)
			}
			return pid
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s never written", path)
	return 0
}

// TestKillGroupSparesAnotherProcess: a PID whose process is not the one
// recorded (the number was handed out again) is not signalled.
func TestKillGroupSparesAnotherProcess(t *testing.T) {
	cmd := start(t, "exec sleep 60")
	id := identify(t, cmd.Process.Pid)
	for _, stored := range []proc.ID{
		{PID: id.PID, Start: id.Start - 1}, // the process that held the PID before
		{PID: id.PID},                      // recorded with no start time
	} {
		if err := proc.KillGroup(stored); !errors.Is(err, proc.ErrNotSame) {
			t.Errorf("KillGroup(%+v) = %v, want ErrNotSame", stored, err)
		}
	}
	time.Sleep(50 * time.Millisecond)
	if !alive(id.PID) {
		t.Fatal("a process that was not the recorded one was killed")
	}
}

// TestKillGroupLeaderGone: the group's number outlives its leader while
// members remain, and KillGroup still kills them.
func TestKillGroupLeaderGone(t *testing.T) {
	childFile := filepath.Join(t.TempDir(), "child")
	cmd := start(t, "sleep 60 & echo $! > "+childFile)
	id := identify(t, cmd.Process.Pid)
	if err := cmd.Wait(); err != nil { // the leader exits and is reaped
		t.Fatal(err)
	}
	child := readPID(t, childFile)
	t.Cleanup(func() { syscall.Kill(child, syscall.SIGKILL) })
	if !alive(child) {
		t.Fatal("the group's member is not running")
	}
	if err := proc.KillGroup(id); err != nil {
		t.Fatal(err)
	}
	waitDead(t, child)
}

func TestFileRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tasks.pids")
	want := []proc.ID{{PID: 12, Start: 345}, {PID: 67, Start: 8}}
	if err := proc.WriteFile(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := proc.ReadFile(path)
	if err != nil || len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("ReadFile = %v, %v; want %v", got, err, want)
	}
	os.WriteFile(path, []byte("12\n"), 0o644)
	if got, err := proc.ReadFile(path); err != nil || len(got) != 1 || got[0] != (proc.ID{PID: 12}) {
		t.Fatalf("a PID alone: %v, %v", got, err)
	}
	for _, bad := range []string{"x 1\n", "12 y\n", "-3 1\n"} {
		os.WriteFile(path, []byte(bad), 0o644)
		if _, err := proc.ReadFile(path); err == nil || !strings.Contains(err.Error(), "tasks.pids:1") {
			t.Errorf("ReadFile(%q) = %v, want an error naming the line", bad, err)
		}
	}
}
