// Command bagoftasks measures what checkpoints and spot capacity are worth:
// it runs the same bag of tasks side by side, in one run, on three
// `spotml up` instances: (a) spot nodes with checkpoints, (b) spot nodes
// without checkpoints (an evicted task restarts from zero), (c) on-demand
// nodes. It reports makespan, task-seconds lost to evictions and cost.
//
//	go run ./bench/bagoftasks -tasks 12 -work 30s -rate 60
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/store"
)

type scenario struct {
	name       string
	priority   string
	checkpoint bool
}

type result struct {
	scenario
	makespan  time.Duration
	attemptS  float64 // task-seconds of all attempts
	lostS     float64 // attemptS minus the on-demand run's attemptS
	evictions int
	cost      cost.Summary
	err       error
}

func main() {
	tasks := flag.Int("tasks", 12, "tasks in the bag")
	work := flag.Duration("work", 30*time.Second, "work per task (in 0.5 s steps)")
	rate := flag.Float64("rate", 60, "spot evictions per node-hour")
	notice := flag.Duration("notice", 5*time.Second, "eviction notice")
	maxNodes := flag.Int("max-nodes", 3, "pool size (Standard_D2s_v3: 2 tasks per node)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *tasks, *work, *rate, *notice, *maxNodes); err != nil {
		fmt.Fprintln(os.Stderr, "bagoftasks:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, tasks int, work time.Duration, rate float64, notice time.Duration, maxNodes int) error {
	dir, err := os.MkdirTemp("", "spotml-bagoftasks")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "spotml")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/spotml/spotml/cmd/spotml").CombinedOutput(); err != nil {
		return fmt.Errorf("build: %v\n%s", err, out)
	}
	scenarios := []scenario{
		{"(a) spot, checkpoints", "spot", true},
		{"(b) spot, no checkpoints", "spot", false},
		{"(c) on-demand", "ondemand", false},
	}
	results := make([]result, len(scenarios))
	var wg sync.WaitGroup
	for i, sc := range scenarios {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := result{scenario: sc}
			r.err = r.run(ctx, bin, filepath.Join(dir, fmt.Sprint(i)), tasks, work, rate, notice, maxNodes)
			results[i] = r
		}()
	}
	wg.Wait()

	fmt.Printf("\nbag of %d tasks × %s of work, 1 cpu each; pools of up to %d Standard_D2s_v3 nodes (2 cpu); spot eviction rate %.0f per node-hour, %s notice; maxRetries 0\n",
		tasks, work, maxNodes, rate, notice)
	fmt.Printf("command: go run ./bench/bagoftasks -tasks %d -work %s -rate %g -notice %s -max-nodes %d\n\n", tasks, work, rate, notice, maxNodes)
	fmt.Println("| scenario | makespan | evictions | task-seconds run | lost to evictions (vs (c)) | cost | same node-time on demand |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	// Lost to evictions: task-seconds beyond what the same tasks took on
	// the on-demand nodes, which are never evicted (so start-up and
	// reporting overhead cancel out).
	base := results[len(results)-1]
	for i := range results {
		if base.err == nil {
			results[i].lostS = max(results[i].attemptS-base.attemptS, 0)
		}
	}
	var errs []error
	for _, r := range results {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", r.name, r.err))
			fmt.Printf("| %s | failed: %v | | | | | |\n", r.name, r.err)
			continue
		}
		fmt.Printf("| %s | %s | %d | %.0f | %.0f (%.0f %%) | $%.4f | $%.4f |\n", r.name, r.makespan.Round(time.Second), r.evictions,
			r.attemptS, r.lostS, 100*r.lostS/(float64(tasks)*work.Seconds()), r.cost.Spent, r.cost.OnDemand)
	}
	fmt.Println("\nThe market is random: evictions (and so the figures for (a) and (b)) vary run to run.")
	return errors.Join(errs...)
}

// run runs one scenario on its own spotml up and fills in the figures.
func (r *result) run(ctx context.Context, bin, data string, tasks int, work time.Duration, rate float64, notice time.Duration, maxNodes int) error {
	if err := os.MkdirAll(data, 0o755); err != nil {
		return err
	}
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(data, "up.log"))
	if err != nil {
		return err
	}
	defer logf.Close()
	up := exec.Command(bin, "up", "--data", data, "--addr", addr, "--heartbeat", "200ms", "--reconcile-interval", "200ms")
	up.Stdout, up.Stderr = logf, logf
	if err := up.Start(); err != nil {
		return err
	}
	defer func() {
		up.Process.Signal(os.Interrupt) // stops its nodes too
		up.Wait()
	}()
	cli := func(args ...string) ([]byte, error) {
		cmd := exec.CommandContext(ctx, bin, append([]string{"--data", data, "--server", "http://" + addr}, args...)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			return out, fmt.Errorf("spotml %s: %v: %s", strings.Join(args, " "), err, stderr.String())
		}
		return out, nil
	}
	for i := 0; ; i++ {
		if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if i > 100 {
			return errors.New("spotml up did not start")
		}
		time.Sleep(100 * time.Millisecond)
	}

	spec := filepath.Join(data, "bench.yaml")
	if err := os.WriteFile(spec, []byte(specYAML(r.scenario, tasks, work, rate, notice, maxNodes)), 0o644); err != nil {
		return err
	}
	if _, err := cli("apply", "-f", spec); err != nil {
		return err
	}
	if _, err := cli("wait", "job", "bag", "--timeout", "60m", "-q"); err != nil {
		return err
	}
	// Cost up to the job's end: read it now, then remove the pools.
	out, err := cli("cost", "-o", "json")
	if err != nil {
		return err
	}
	if err := json.Unmarshal(out, &r.cost); err != nil {
		return err
	}
	cli("delete", "pool", "bench")
	out, err = cli("get", "jobs", "bag", "-o", "json")
	if err != nil {
		return err
	}
	var jobs []store.Job
	if err := json.Unmarshal(out, &jobs); err != nil || len(jobs) != 1 {
		return fmt.Errorf("decode job: %v", err)
	}
	j := jobs[0]
	r.makespan = j.FinishedAt.Sub(j.SubmittedAt)
	for _, t := range j.Tasks {
		r.evictions += t.Evictions
		for _, a := range t.Attempts {
			end := a.EndedAt
			if end.IsZero() {
				end = j.FinishedAt
			}
			r.attemptS += end.Sub(a.StartedAt).Seconds()
		}
	}
	return nil
}

func specYAML(sc scenario, tasks int, work time.Duration, rate float64, notice time.Duration, maxNodes int) string {
	steps := int(work / (500 * time.Millisecond))
	market := ""
	if sc.priority == "spot" {
		market = fmt.Sprintf("  evictionRate: %g\n  notice: %s\n", rate, notice)
	}
	ckpt, state := "", `"$HOME/none"`
	if sc.checkpoint {
		ckpt = "    checkpoint: {path: ckpt, interval: 2s}\n"
		state = `"$SPOTML_CHECKPOINT_DIR"`
	}
	return fmt.Sprintf(`apiVersion: spotml/v1
kind: Pool
metadata: {name: bench}
spec:
  provider: local
  priority: %s
  instanceType: Standard_D2s_v3
  zones: ["1", "2", "3"]
  min: 0
  max: %d
  idleTimeout: 5s
%s---
apiVersion: spotml/v1
kind: Job
metadata: {name: bag}
spec:
  pool: bench
  count: %d
  template:
    command: |
      dir=%s; [ -d "$dir" ] || dir=.
      i=$(cat "$dir/step" 2>/dev/null || echo 0)
      trap 'exit 143' TERM
      while [ "$i" -lt %d ]; do sleep 0.5; i=$((i+1)); echo "$i" > "$dir/step.tmp"; mv "$dir/step.tmp" "$dir/step"; done
%s    maxRetries: 0
    resources: {cpu: 1}
`, sc.priority, maxNodes, market, tasks, state, steps, ckpt)
}

func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
