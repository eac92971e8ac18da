package chaos

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/store"
)

// The seeded streams, one per kind of choice, so that one kind's draws do
// not shift when another kind finds nothing to hit.
const (
	streamEvict = iota + 1
	streamNode
	streamTask
	streamReplica
	streamControlPlane
	streamProbe
)

// evictions gives a random ready spot node a 3 s eviction notice every
// 2–5 s.
func (s *soak) evictions(ctx context.Context) {
	r := s.rng(streamEvict)
	for sleep(ctx, between(r, 2*time.Second, 5*time.Second)) {
		draw := r.IntN(1 << 30)
		s.cpMu.RLock()
		ns, err := s.nodes(ctx)
		var spot []store.Node
		for _, n := range ns {
			if n.Priority == "spot" && n.State == store.NodeReady && n.NoticeDeadline.IsZero() {
				spot = append(spot, n)
			}
		}
		if err == nil && len(spot) > 0 {
			n := spot[draw%len(spot)]
			err = s.api.Do(ctx, http.MethodPost, api.Prefix+"/nodes/"+n.Name+"/evict", api.EvictRequest{Notice: "3s"}, nil)
			if err == nil {
				s.count("evictions")
				s.say("evicted %s (%d tasks, %d replicas)", n.Name, n.Tasks, n.Replicas)
			}
		}
		s.cpMu.RUnlock()
		if err != nil && ctx.Err() == nil {
			s.say("evict: %v", err)
		}
	}
}

// agents returns this soak's agent processes by node name.
func (s *soak) agents() map[string]proc {
	out := map[string]proc{}
	for _, p := range ownProcesses(s.bin) {
		if p.subcommand() == "agent" && strings.HasPrefix(p.flag("--workdir"), s.data+"/") {
			out[p.flag("--node")] = p
		}
	}
	return out
}

// nodeKills takes a spot node away without notice every 15–25 s: its
// agent and every process under it are SIGKILLed at once, as when a
// machine dies.
func (s *soak) nodeKills(ctx context.Context) {
	r := s.rng(streamNode)
	for sleep(ctx, between(r, 15*time.Second, 25*time.Second)) {
		draw := r.IntN(1 << 30)
		agents := s.agents()
		var names []string
		for name := range agents {
			if strings.HasPrefix(name, "spot-") {
				names = append(names, name)
			}
		}
		if len(names) == 0 {
			continue
		}
		slices.Sort(names)
		name := names[draw%len(names)]
		tree := descendants(processes(), agents[name].pid)
		kill(tree...)
		s.count("node kills")
		s.say("SIGKILLed node %s (%d processes)", name, len(tree))
	}
}

// killTasks SIGKILLs a running task's process every 6–10 s; no task is
// killed more than twice, so that its retries (4) always cover the kills.
// The task fails for it and is retried; the soak counts the kills per
// task, and a task's failures may never exceed them.
func (s *soak) killTasks(ctx context.Context) {
	r := s.rng(streamTask)
	for sleep(ctx, between(r, 6*time.Second, 10*time.Second)) {
		draw := r.IntN(1 << 30)
		type target struct {
			p   proc
			key string
		}
		var ts []target
		s.mu.Lock()
		for _, p := range taskProcesses(s.data) {
			env := environ(p.pid)
			key := env["SPOTML_JOB"] + "/" + env["SPOTML_TASK"]
			if env["SOAK_STEPS"] != "" && s.taskKills[key] < 2 {
				ts = append(ts, target{p, key})
			}
		}
		s.mu.Unlock()
		if len(ts) == 0 {
			continue
		}
		slices.SortFunc(ts, func(a, b target) int { return strings.Compare(a.key, b.key) })
		t := ts[draw%len(ts)]
		kill(descendants(processes(), t.p.pid)...)
		s.mu.Lock()
		s.taskKills[t.key]++
		s.faults["task kills"]++
		s.mu.Unlock()
		s.say("SIGKILLed task %s (pid %d)", t.key, t.p.pid)
	}
}

// replicaKills SIGKILLs a replica's model server every 12–20 s.
func (s *soak) replicaKills(ctx context.Context) {
	r := s.rng(streamReplica)
	for sleep(ctx, between(r, 12*time.Second, 20*time.Second)) {
		draw := r.IntN(1 << 30)
		var rs []proc
		for _, p := range ownProcesses(s.bin) {
			if p.subcommand() == "serve" {
				rs = append(rs, p)
			}
		}
		if len(rs) == 0 {
			continue
		}
		// --model is under the replica's own directory: one per replica.
		slices.SortFunc(rs, func(a, b proc) int { return strings.Compare(a.flag("--model"), b.flag("--model")) })
		p := rs[draw%len(rs)]
		kill(p.pid)
		s.count("replica kills")
		s.say("SIGKILLed replica %s (pid %d)", p.flag("--name"), p.pid)
	}
}

// controlPlaneKills SIGKILLs spotml up about once a minute (every
// 0.75–1.25 × min(60 s, duration/2)) and starts it again a second later
// over the same data directory and addresses.
func (s *soak) controlPlaneKills(ctx context.Context) {
	r := s.rng(streamControlPlane)
	every := min(time.Minute, s.cfg.Duration/2)
	for sleep(ctx, between(r, every*3/4, every*5/4)) {
		s.cpMu.Lock()
		s.up.kill()
		s.count("control-plane kills")
		s.say("SIGKILLed spotml up; starting it again in 1s")
		time.Sleep(time.Second)
		t0 := time.Now()
		err := s.up.start(context.Background())
		if err != nil {
			s.mu.Lock()
			s.restarts = append(s.restarts, err.Error())
			s.mu.Unlock()
			s.say("restart: %v", err)
			// Try again until it is up: the rest of the soak needs it.
			for err != nil && ctx.Err() == nil {
				time.Sleep(2 * time.Second)
				err = s.up.start(context.Background())
			}
		} else {
			s.say("spotml up healthy again after %s", time.Since(t0).Round(time.Millisecond))
		}
		s.cpMu.Unlock()
	}
}

// sampleMemory reads the control plane's resident memory every second.
func (s *soak) sampleMemory(ctx context.Context) {
	for sleep(ctx, time.Second) {
		pid := s.up.pid()
		if pid == 0 {
			continue
		}
		rss, hwm := memory(pid)
		if rss == 0 {
			continue
		}
		s.mu.Lock()
		s.rss = append(s.rss, Sample{At: time.Since(s.started), RSS: rss, HWM: hwm})
		s.mu.Unlock()
	}
}

// secretScan is what the soak found in the environments of task and
// replica processes.
type secretScan struct {
	seen  int
	leaks []string
}

// scanSecrets looks every 3 s at the environment of each task and replica
// process for a spotml credential: the admin token, the join token, or any
// SPOTML_ variable named like a token, credential or secret. A task or a
// replica runs the user's code and should hold none.
func (s *soak) scanSecrets(ctx context.Context) {
	join, _ := os.ReadFile(filepath.Join(s.data, "join-token"))
	secrets := []string{s.token, strings.TrimSpace(string(join))}
	for sleep(ctx, 3*time.Second) {
		var ps []proc
		ps = append(ps, taskProcesses(s.data)...)
		for _, p := range ownProcesses(s.bin) {
			if p.subcommand() == "serve" {
				ps = append(ps, p)
			}
		}
		for _, p := range ps {
			env := environ(p.pid)
			if env == nil {
				continue
			}
			what := env["SPOTML_JOB"] + "/" + env["SPOTML_TASK"]
			if env["SPOTML_TASK"] == "" {
				what = "replica " + p.flag("--name")
			}
			var found []string
			for k, v := range env {
				named := strings.HasPrefix(k, "SPOTML_") && (strings.Contains(k, "TOKEN") || strings.Contains(k, "CREDENTIAL") || strings.Contains(k, "SECRET"))
				if named || (v != "" && (v == secrets[0] || v == secrets[1])) {
					found = append(found, k)
				}
			}
			s.mu.Lock()
			s.secrets.seen++
			if len(found) > 0 && len(s.secrets.leaks) < 1000 {
				slices.Sort(found)
				s.secrets.leaks = append(s.secrets.leaks, fmt.Sprintf("%s (pid %d): %s", what, p.pid, strings.Join(found, ", ")))
			}
			s.mu.Unlock()
		}
	}
}
