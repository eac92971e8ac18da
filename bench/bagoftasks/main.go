// Command bagoftasks measures what checkpoints and spot capacity are worth
// on a whole system. It builds spotml and runs the same bag of tasks three
// ways, side by side in one run, each on its own `spotml up` (control plane,
// simulated spot market and agent processes on this machine):
//
//	(a) a spot pool, tasks checkpointing their progress;
//	(b) the same spot pool, no checkpoints: an evicted task starts over;
//	(c) an on-demand pool: no evictions.
//
// For each it reports the makespan, the task-seconds lost to evictions,
// the evictions, and what the nodes cost against the same node-time on
// demand, as a Markdown table.
//
//	go run ./bench/bagoftasks -tasks 12 -work 30s -rate 60 -notice 5s -max-nodes 3
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/spotml/spotml/bench/cluster"
	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/store"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bagoftasks:", err)
		os.Exit(1)
	}
}

// config is the benchmark's parameters, from its flags.
type config struct {
	tasks    int
	work     time.Duration
	rate     float64
	notice   time.Duration
	maxNodes int
	timeout  time.Duration
	keep     bool
}

// step is the unit of work of a task: one sleep of the shell loop.
const step = 500 * time.Millisecond

// instanceType is the pools' machine: 2 cpu, so 2 tasks per node, priced
// by spotml's table.
const instanceType = "Standard_D2s_v3"

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	var cfg config
	fs := flag.NewFlagSet("bagoftasks", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&cfg.tasks, "tasks", 12, "tasks in the bag (1 cpu each)")
	fs.DurationVar(&cfg.work, "work", 30*time.Second, "work per task, in steps of 0.5s")
	fs.Float64Var(&cfg.rate, "rate", 60, "spot evictions per node-hour")
	fs.DurationVar(&cfg.notice, "notice", 5*time.Second, "eviction notice")
	fs.IntVar(&cfg.maxNodes, "max-nodes", 3, "max nodes per pool ("+instanceType+": 2 tasks per node)")
	fs.DurationVar(&cfg.timeout, "timeout", 30*time.Minute, "give up after this long")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the data directories (logs, databases) and say where")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	switch {
	case cfg.tasks < 1:
		return errors.New("-tasks must be at least 1")
	case cfg.work < step || cfg.work%step != 0:
		return fmt.Errorf("-work %s: must be a positive multiple of %s", cfg.work, step)
	case cfg.rate < 0:
		return errors.New("-rate must not be negative")
	case cfg.maxNodes < 1:
		return errors.New("-max-nodes must be at least 1")
	}

	ws, err := cluster.NewWorkspace(ctx, "spotml-bagoftasks", stderr)
	if err != nil {
		return err
	}
	defer func() { ws.Close(cfg.keep, err) }()
	dir, bin := ws.Dir, ws.Bin

	scenarios := []scenario{
		{name: "(a) spot, checkpoints", priority: "spot", checkpoint: true},
		{name: "(b) spot, no checkpoints", priority: "spot"},
		{name: "(c) on-demand", priority: "ondemand"},
	}
	results := make([]result, len(scenarios))
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	g, gctx := errgroup.WithContext(ctx) // one scenario failing stops the others
	start := time.Now()
	for i, sc := range scenarios {
		g.Go(func() error {
			results[i] = sc.run(gctx, bin, filepath.Join(dir, strconv.Itoa(i)), cfg, stderr)
			results[i].name = sc.name
			if err := results[i].err; err != nil {
				return fmt.Errorf("%s: %w", sc.name, err)
			}
			return nil
		})
	}
	err = g.Wait()
	for _, r := range results {
		if r.done {
			printReport(stdout, args, cfg, results, time.Since(start))
			break
		}
	}
	return err
}

// scenario is one way of running the bag.
type scenario struct {
	name       string
	priority   string // of the pool: spot or ondemand
	checkpoint bool
}

// result is what one scenario measured.
type result struct {
	name          string
	done          bool
	makespan      time.Duration // job submitted → finished
	attemptSecs   float64       // all attempts of all tasks
	nodeEvictions int           // nodes taken back by the market before the job ended
	requeues      int           // task attempts ended by an eviction
	cost          cost.Summary  // read as the job finished
	costLag       time.Duration // how long after the job's end the cost was read
	err           error
}

// run runs the bag on a fresh `spotml up` in data and measures it. The
// control plane and its nodes are stopped before it returns, whatever
// happened.
func (sc scenario) run(ctx context.Context, bin, data string, cfg config, progress io.Writer) (r result) {
	c, err := cluster.Start(ctx, bin, data, "")
	if err != nil {
		return result{err: err}
	}
	defer c.Stop()

	specFile := filepath.Join(data, "bag.yaml")
	if err := os.WriteFile(specFile, []byte(sc.yaml(cfg)), 0o644); err != nil {
		return result{err: err}
	}
	if _, err := c.CLI(ctx, "apply", "-f", specFile); err != nil {
		return result{err: err}
	}
	fmt.Fprintf(progress, "%s: submitted (spotml up on %s, data %s)\n", sc.name, c.Addr, data)

	// Watch the job closely (not with `spotml wait`, which polls every
	// second): the cost is read the moment it ends, before idle node time
	// adds to it.
	var j store.Job
	lastPrint := time.Now()
	for {
		if err := c.API.Do(ctx, http.MethodGet, api.Prefix+"/jobs/bag", nil, &j); err != nil {
			return result{err: err}
		}
		if j.State != store.JobRunning {
			break
		}
		if time.Since(lastPrint) >= 15*time.Second {
			fmt.Fprintf(progress, "%s: %d/%d done, %d running, %d evictions, %s\n", sc.name, j.Counts[store.TaskSucceeded],
				len(j.Tasks), j.Counts[store.TaskRunning], j.Evictions, time.Since(j.SubmittedAt).Round(time.Second))
			lastPrint = time.Now()
		}
		select {
		case <-ctx.Done():
			return result{err: fmt.Errorf("job still running: %w", context.Cause(ctx))}
		case <-c.Exited():
			return result{err: errors.New("spotml up exited; see " + filepath.Join(data, "up.log"))}
		case <-time.After(200 * time.Millisecond):
		}
	}
	out, err := c.CLI(ctx, "cost", "-o", "json")
	if err != nil {
		return result{err: err}
	}
	r.costLag = time.Since(j.FinishedAt)
	if err := json.Unmarshal(out, &r.cost); err != nil {
		return result{err: fmt.Errorf("spotml cost -o json: %w", err)}
	}
	if _, err := c.CLI(ctx, "delete", "pool", "bench"); err != nil {
		return result{err: err}
	}

	var jobs []store.Job
	if out, err = c.CLI(ctx, "get", "jobs", "bag", "-o", "json"); err != nil {
		return result{err: err}
	}
	if err := json.Unmarshal(out, &jobs); err != nil || len(jobs) != 1 {
		return result{err: fmt.Errorf("spotml get jobs bag -o json: %d jobs, %v", len(jobs), err)}
	}
	var nodes []store.Node
	if out, err = c.CLI(ctx, "get", "nodes", "--all", "-o", "json"); err != nil {
		return result{err: err}
	}
	if err := json.Unmarshal(out, &nodes); err != nil {
		return result{err: fmt.Errorf("spotml get nodes --all -o json: %w", err)}
	}

	j = jobs[0]
	r.done = true
	r.makespan = j.FinishedAt.Sub(j.SubmittedAt)
	for _, t := range j.Tasks {
		r.requeues += t.Evictions
		for _, a := range t.Attempts {
			end := a.EndedAt
			if end.IsZero() {
				end = j.FinishedAt
			}
			r.attemptSecs += end.Sub(a.StartedAt).Seconds()
		}
	}
	for _, n := range nodes {
		if (n.State == store.NodePreempted || n.State == store.NodeDeallocated) && !n.StateAt.After(j.FinishedAt) {
			r.nodeEvictions++
		}
	}
	if j.State != store.JobSucceeded {
		r.err = fmt.Errorf("job %s (with maxRetries 0, an eviction that used a retry fails it); see spotml get tasks bag --data %s", j.State, data)
	}
	fmt.Fprintf(progress, "%s: %s after %s\n", sc.name, j.State, r.makespan.Round(time.Second))
	return r
}

// yaml is the scenario's pool and job. Every task counts to work/step,
// one step per 0.5s sleep, keeping its count in a file: in the checkpoint
// directory with checkpoints (saved every 2s and on an eviction notice,
// restored on the next attempt), else in its working directory, which a
// new attempt starts without.
func (sc scenario) yaml(cfg config) string {
	market, ckpt, state := "", "", "."
	if sc.priority == "spot" {
		market = fmt.Sprintf("  local:\n    evictionRate: %g\n    notice: %s\n", cfg.rate, cfg.notice)
	}
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
  instanceType: %s
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
      state=%s
      i=$(cat "$state/step" 2>/dev/null || echo 0)
      trap 'exit 143' TERM
      while [ "$i" -lt %d ]; do sleep %g; i=$((i+1)); echo "$i" > "$state/step.tmp"; mv "$state/step.tmp" "$state/step"; done
%s    maxRetries: 0
    resources: {cpu: 1}
`, sc.priority, instanceType, cfg.maxNodes, market, cfg.tasks, state, int(cfg.work/step), step.Seconds(), ckpt)
}

func printReport(w io.Writer, args []string, cfg config, results []result, elapsed time.Duration) {
	useful := float64(cfg.tasks) * cfg.work.Seconds()
	fmt.Fprintf(w, "\n### Bag of %d tasks × %s of work\n\n", cfg.tasks, cfg.work)
	fmt.Fprintf(w, "command: `go run ./bench/bagoftasks %s`\n\n", strings.Join(args[1:], " "))
	fmt.Fprintf(w, "effective flags: -tasks %d -work %s -rate %g -notice %s -max-nodes %d; wall time %s\n\n",
		cfg.tasks, cfg.work, cfg.rate, cfg.notice, cfg.maxNodes, elapsed.Round(time.Second))
	fmt.Fprintf(w, "%d tasks × %s (1 cpu each, %.0f task-seconds of useful work), pools of up to %d %s nodes (2 cpu), "+
		"spot pools evicting at %g per node-hour with %s notice, maxRetries 0.\n\n",
		cfg.tasks, cfg.work, useful, cfg.maxNodes, instanceType, cfg.rate, cfg.notice)
	fmt.Fprintln(w, "| scenario | makespan | node evictions | task requeues | task-seconds run | lost (run − N×W) | node-hours | cost | same node-time on demand | cost vs (c) |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	base := results[len(results)-1]
	var lag time.Duration
	for _, r := range results {
		if !r.done {
			fmt.Fprintf(w, "| %s | not measured: %v | | | | | | | | |\n", r.name, r.err)
			continue
		}
		lag = max(lag, r.costLag)
		lost := r.attemptSecs - useful
		vs := "–"
		if base.done && base.cost.Spent > 0 {
			vs = fmt.Sprintf("%.0f %%", 100*r.cost.Spent/base.cost.Spent)
		}
		fmt.Fprintf(w, "| %s | %s | %d | %d | %.0f | %.0f (%.0f %%) | %.3f | $%.4f | $%.4f | %s |\n", r.name,
			r.makespan.Round(100*time.Millisecond), r.nodeEvictions, r.requeues, r.attemptSecs, lost, 100*lost/useful,
			r.cost.NodeSeconds/3600, r.cost.Spent, r.cost.OnDemand, vs)
	}
	fmt.Fprintf(w, "\n- lost = the sum of all attempts' durations (assignment to report, from `spotml get jobs bag -o json`) − N×W;"+
		" (c) is never evicted, so its figure is the per-attempt overhead (pick-up, process start, report), not a loss to evictions.\n")
	fmt.Fprintf(w, "- node evictions: nodes the market took back before the job ended (idle ones too); task requeues: attempts those evictions ended.\n")
	fmt.Fprintf(w, "- cost: `spotml cost -o json`, all node time (idle included) from submit to the job's end (read at most %s after it), then the pool was deleted.\n",
		lag.Round(10*time.Millisecond))
	fmt.Fprintf(w, "- The market is random (no seed): evictions, and so the figures of (a) and (b), vary run to run.\n")
}
