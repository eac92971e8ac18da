package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
)

// TestDeadlineJobRidesOutSpotOutage runs a checkpointing job with a
// deadline on a trace-driven spot pool whose capacity disappears a
// fifth of the way in (testdata/spot-gone-halfway.json: 10 minutes of
// spot, 30 without, then spot again, replayed 30× faster: 20 s, 60 s, then
// back). The job needs 100 s of work by 180 s. It must start on spot, fall
// behind while spot is gone and finish on time on on-demand capacity, and
// go back to spot once spot returns.
func TestDeadlineJobRidesOutSpotOutage(t *testing.T) {
	tr, err := filepath.Abs("testdata/spot-gone-halfway.json")
	if err != nil {
		t.Fatal(err)
	}
	c := newCluster(t)
	const steps, tick = 100, "1" // 100 s of work; long steps, so that a busy machine adds little
	script := strings.Replace(fmt.Sprintf(counterTask, steps, tick), `mv "$SPOTML_CHECKPOINT_DIR/step.tmp" "$SPOTML_CHECKPOINT_DIR/step";`,
		fmt.Sprintf(`mv "$SPOTML_CHECKPOINT_DIR/step.tmp" "$SPOTML_CHECKPOINT_DIR/step"; echo "$i/%d steps" > "$SPOTML_PROGRESS_FILE";`, steps), 1)
	var job strings.Builder
	job.WriteString("apiVersion: spotml/v1\nkind: Job\nmetadata: {name: trainer}\nspec:\n  deadline: 180s\n  work: 100s\n  count: 1\n  template:\n    command: |\n")
	for _, line := range strings.Split(strings.TrimSpace(script), "\n") {
		job.WriteString("      " + line + "\n")
	}
	job.WriteString("    checkpoint: {path: ckpt, interval: 300ms}\n    maxRetries: 0\n    resources: {cpu: 2, memory: 256Mi}\n") // a node each: its whole price is the job's
	docs := fmt.Sprintf(`apiVersion: spotml/v1
kind: Pool
metadata: {name: spot}
spec:
  provider: local
  priority: spot
  instanceType: local-small
  max: 2
  idleTimeout: 10s
  local:
    notice: 1s
    market: {trace: %q, speedup: 30}
---
apiVersion: spotml/v1
kind: Pool
metadata: {name: od}
spec: {provider: local, priority: ondemand, instanceType: local-small, max: 2, idleTimeout: 10s}
---
`, tr) + job.String()
	c.apply(docs)

	start := time.Now()
	// Where the task ran, in order, as seen every half second.
	var seen []string
	priority := map[string]string{}
	var j api.Job
	waitFor(t, 220*time.Second, "the job to finish", func() bool {
		for _, n := range c.nodes() {
			priority[n.Name] = n.Priority
		}
		j = c.job("trainer")
		for _, tk := range j.Tasks {
			if tk.State == api.TaskRunning && tk.Node != "" {
				if p := priority[tk.Node]; len(seen) == 0 || seen[len(seen)-1] != p {
					seen = append(seen, p)
					t.Logf("%5.1fs: running on %s (%s)", time.Since(start).Seconds(), p, tk.Node)
				}
			}
		}
		return j.State != api.JobRunning
	})
	if j.State != api.JobSucceeded {
		t.Fatalf("job %s, want succeeded", j.State)
	}
	if j.Deadline == nil || j.FinishedAt.After(j.Deadline.Deadline) {
		t.Fatalf("job finished at %s, after its deadline (%+v)", j.FinishedAt, j.Deadline)
	}
	// The attempts say it too, whatever the polling missed.
	var ran []string
	for _, a := range j.Tasks[0].Attempts {
		ran = append(ran, priority[a.Node]+":"+a.Outcome)
	}
	t.Logf("attempts: %v; cost %+v; deadline %+v", ran, *j.Cost, *j.Deadline)
	first, last := j.Tasks[0].Attempts[0], j.Tasks[0].Attempts[len(j.Tasks[0].Attempts)-1]
	onDemand := false
	for _, a := range j.Tasks[0].Attempts {
		onDemand = onDemand || priority[a.Node] == "ondemand"
	}
	if priority[first.Node] != "spot" || !onDemand || priority[last.Node] != "spot" || last.Outcome != api.OutcomeSucceeded {
		t.Errorf("attempts ran %v: want spot first, on-demand while spot was gone, and spot again to the end", ran)
	}
	if j.Evictions < 1 || j.Failures != 0 {
		t.Errorf("%d evictions, %d failures: want the spot outage's eviction and no failure", j.Evictions, j.Failures)
	}
	if c := j.Cost; c.SpotHours <= 0 || c.OnDemandHours <= 0 || c.Spent >= c.AllOnDemand {
		t.Errorf("cost %+v: want spot and on-demand hours, below the all-on-demand cost", *c)
	}
	// Plan vs reality: spotml plan on the same trace, offset and speed,
	// with the work and changeover the run measured (a busy machine runs
	// the counter slower than its nominal 100 s).
	specFile := filepath.Join(t.TempDir(), "job.yaml")
	measured := strings.Replace(docs, "work: 100s", "work: "+j.Deadline.Work.String(), 1)
	if err := os.WriteFile(specFile, []byte(measured), 0o644); err != nil {
		t.Fatal(err)
	}
	var p struct {
		Run struct {
			Cost, SpotHours, OnDemandHours float64
			Met                            bool
		}
	}
	planned := c.mustCLI("plan", "-f", specFile, "--trace", tr, "--speedup", "30", "--changeover", j.Deadline.Changeover.String(),
		"--step", "250ms", "--offsets", "1", "-o", "json")
	if err := json.Unmarshal([]byte(planned), &p); err != nil {
		t.Fatalf("%v\n%s", err, planned)
	}
	off := math.Abs(j.Cost.Spent-p.Run.Cost) / p.Run.Cost
	t.Logf("plan vs reality: cost $%.6f planned, $%.6f spent (%.1f %% apart); spot %.2f/%.2f min, on-demand %.2f/%.2f min; deadline met %v/true",
		p.Run.Cost, j.Cost.Spent, 100*off, 60*p.Run.SpotHours, 60*j.Cost.SpotHours, 60*p.Run.OnDemandHours, 60*j.Cost.OnDemandHours, p.Run.Met)
	if !p.Run.Met || off > 0.25 {
		t.Errorf("plan and reality differ by %.0f %% (met %v): want them close (target 10 %%)", 100*off, p.Run.Met)
	}
	out := c.mustCLI("get", "jobs")
	if !strings.Contains(out, "DEADLINE") || !strings.Contains(out, "met by") {
		t.Errorf("get jobs shows no met deadline:\n%s", out)
	}
}
