package chaos

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
)

// proc is one process of this machine as /proc shows it.
type proc struct {
	pid, ppid int
	pgid      int      // its process group
	exe       string   // the executable's path ("" when unreadable)
	args      []string // the command line
}

// processes lists this machine's processes; those that vanish while being
// read are left out.
func processes() []proc {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []proc
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		cmd, err := os.ReadFile(filepath.Join(d, "cmdline"))
		if err != nil || len(cmd) == 0 {
			continue
		}
		p := proc{pid: pid, args: strings.Split(strings.TrimRight(string(cmd), "\x00"), "\x00")}
		p.exe, _ = os.Readlink(filepath.Join(d, "exe"))
		p.exe = strings.TrimSuffix(p.exe, " (deleted)")
		if st, err := os.ReadFile(filepath.Join(d, "stat")); err == nil {
			// The command name in parentheses may hold spaces: the fields
			// after the last ')' are state, ppid, ...
			if i := bytes.LastIndexByte(st, ')'); i > 0 {
				if f := strings.Fields(string(st[i+1:])); len(f) > 2 {
					p.ppid, _ = strconv.Atoi(f[1])
					p.pgid, _ = strconv.Atoi(f[2])
				}
			}
		}
		out = append(out, p)
	}
	return out
}

// flag returns the value of --name in the command line.
func (p proc) flag(name string) string {
	for i, a := range p.args {
		if a == name && i+1 < len(p.args) {
			return p.args[i+1]
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// subcommand is the spotml subcommand of a spotml process ("agent", "serve", "up").
func (p proc) subcommand() string {
	for _, a := range p.args[1:] {
		if !strings.HasPrefix(a, "-") {
			return a
		}
	}
	return ""
}

// environ reads a process's environment.
func environ(pid int) map[string]string {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil {
		return nil
	}
	env := map[string]string{}
	for kv := range strings.SplitSeq(string(b), "\x00") {
		if k, v, ok := strings.Cut(kv, "="); ok {
			env[k] = v
		}
	}
	return env
}

// memory returns a process's resident set and its peak, in bytes.
func memory(pid int) (rss, hwm int64) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			continue
		}
		kb, _ := strconv.ParseInt(f[0], 10, 64)
		if k == "VmRSS" {
			rss = kb << 10
		} else {
			hwm = kb << 10
		}
	}
	return rss, hwm
}

// descendants returns pid and every process below it.
func descendants(all []proc, pid int) []int {
	children := map[int][]int{}
	for _, p := range all {
		children[p.ppid] = append(children[p.ppid], p.pid)
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// ownProcesses returns the processes running bin, the spotml binary of
// this soak (other spotml binaries on the machine are not ours), sorted by
// pid.
func ownProcesses(bin string) []proc {
	var out []proc
	for _, p := range processes() {
		if p.exe == bin && p.pid != os.Getpid() {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b proc) int { return a.pid - b.pid })
	return out
}

// taskProcesses returns the shells running this soak's tasks: processes
// whose environment names a spotml task and whose working directory is
// under data, and that lead their process group (the agent starts each
// task in its own group). Their children are left out: a child the shell
// has forked but not yet exec'd is a shell too, and killing it would break
// the task's script from the inside rather than kill the task.
func taskProcesses(data string) []proc {
	var out []proc
	for _, p := range processes() {
		base := filepath.Base(p.exe)
		if (base != "sh" && base != "dash" && base != "bash") || p.pgid != p.pid {
			continue
		}
		cwd, err := os.Readlink("/proc/" + strconv.Itoa(p.pid) + "/cwd")
		if err != nil || !strings.HasPrefix(cwd, data+"/") {
			continue
		}
		if env := environ(p.pid); env["SPOTML_TASK"] != "" && env["SPOTML_JOB"] != "" {
			out = append(out, p)
		}
	}
	slices.SortFunc(out, func(a, b proc) int { return a.pid - b.pid })
	return out
}

// kill SIGKILLs the processes.
func kill(pids ...int) {
	for _, pid := range pids {
		if pid > 1 && pid != os.Getpid() {
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}
