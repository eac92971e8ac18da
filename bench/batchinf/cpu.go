package main

import (
	"bytes"
	"context"
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spotml/spotml/internal/api"
)

// userHZ is the unit of /proc/PID/stat's CPU times: fixed at 100 on Linux
// whatever the kernel's own tick.
const userHZ = 100

// treeCPU samples the CPU time of a process and all its descendants
// (control plane, agents, workers) from /proc, so that a run's CPU is
// counted wherever its work ran. A process is remembered once seen, so
// one that is re-parented (its agent killed by an eviction) still counts;
// one that ends between two samples loses at most one interval's CPU.
type treeCPU struct {
	root int
	t0   time.Time
	mu   sync.Mutex
	seen map[int]procCPU
}

type procCPU struct {
	ticks uint64
	role  role
	// first and last are when the process was first and last seen, after
	// t0; worker is a worker's lease holder (SPOTML_WORKER).
	first, last time.Duration
	worker      string
}

// role is what a process of the tree is.
type role int

const (
	roleUp     role = iota // `spotml up`: control plane, API, simulated market
	roleAgent              // a node's agent (and anything else it starts)
	roleWorker             // a `spotml batch-worker`
)

func newTreeCPU(root int) *treeCPU {
	return &treeCPU{root: root, t0: time.Now(), seen: map[int]procCPU{}}
}

// run samples every interval until ctx ends.
func (t *treeCPU) run(ctx context.Context, interval time.Duration) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		t.sample()
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// sample reads every process once and updates those of the tree.
func (t *treeCPU) sample() {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	parent := map[int]int{}
	ticks := map[int]uint64{}
	for _, d := range dirs {
		pid, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(d + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ... utime(14) stime(15); comm may hold spaces.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(string(b[i+1:]))
		if len(f) < 13 {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		ut, _ := strconv.ParseUint(f[11], 10, 64)
		st, _ := strconv.ParseUint(f[12], 10, 64)
		parent[pid] = ppid
		ticks[pid] = ut + st
	}
	now := time.Since(t.t0)
	t.mu.Lock()
	defer t.mu.Unlock()
	var inTree func(pid, depth int) bool
	inTree = func(pid, depth int) bool {
		if pid == t.root {
			return true
		}
		if _, ok := t.seen[pid]; ok {
			return true
		}
		pp, ok := parent[pid]
		if !ok || pp <= 1 || depth > 32 {
			return false
		}
		return inTree(pp, depth+1)
	}
	for pid, tk := range ticks {
		if !inTree(pid, 0) {
			continue
		}
		p, ok := t.seen[pid]
		// A process first seen as an agent is looked at again: a worker
		// caught between its agent's fork and its exec still shows the
		// agent's command line.
		if !ok {
			p.first = now
		}
		if !ok || p.role == roleAgent {
			cmd, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
			switch {
			case pid == t.root:
				p.role = roleUp
			case bytes.Contains(cmd, []byte("batch-worker")):
				p.role = roleWorker
				p.worker = workerID(pid)
			default:
				p.role = roleAgent
			}
		}
		p.last = now
		p.ticks = max(p.ticks, tk)
		t.seen[pid] = p
	}
}

// workerID is a batch-worker's lease holder, from its environment.
func workerID(pid int) string {
	env, _ := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	for _, kv := range bytes.Split(env, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte(api.EnvWorkerID+"=")); ok {
			return string(v)
		}
	}
	return ""
}

// procs is a copy of every process seen so far, by PID.
func (t *treeCPU) procs() map[int]procCPU {
	t.mu.Lock()
	defer t.mu.Unlock()
	return maps.Clone(t.seen)
}

// seconds is the CPU time of the tree so far, all of it and the workers'.
func (t *treeCPU) seconds() (all, workers float64) {
	r := t.byRole()
	return r[roleUp] + r[roleAgent] + r[roleWorker], r[roleWorker]
}

// byRole is the CPU time of the tree so far by what the processes are.
func (t *treeCPU) byRole() (out [3]float64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, p := range t.seen {
		out[p.role] += float64(p.ticks) / userHZ
	}
	return out
}
