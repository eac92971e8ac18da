package cloudtest

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// Deallocate is the scenario "a Spot VM evicted with its disk kept is
// started again under the same name", run against one provider's fake
// cloud whose VMs keep their SPOTML_ROOT (their disk) across a stop.
type Deallocate struct {
	Plane *Plane
	// Pool is the provider's pool; the scenario makes it a spot pool of
	// one node with evictionPolicy deallocate.
	Pool spec.Pool
	// Evict takes the node's VM away as the platform does with the pool's
	// policy: stopped (deallocated), its disk kept.
	Evict func(node string) error
	// VMID is the cloud's own ID of the node's VM (not its name); "" once
	// the VM is deleted.
	VMID func(node string) string
	// Cleared says whether the node's credential has left its VM's
	// metadata (after the agent registered).
	Cleared func(node string) bool
	// Downloads is how often the VMs downloaded spotml.
	Downloads func() int
	Dump      func()
}

// Run applies a job of one task to the pool. Its node's agent registers
// (its credential then leaves the metadata) and runs the task; the
// platform evicts the VM with its disk kept. The node is deallocated,
// the task requeued without spending a retry, and spotml starts the same
// VM again (the same cloud ID) under the same node name with a new
// credential: the start script finds spotml on the kept disk (no second
// download), the agent registers as the node's next incarnation and the
// task finishes there. Last, the idle node is scaled in: its VM is
// deleted, not stopped.
func (d Deallocate) Run(t *testing.T) {
	t.Helper()
	p := d.Plane
	ctx := p.Ctx
	pool := d.Pool
	pool.Spec.Priority, pool.Spec.EvictionPolicy = spec.PrioritySpot, spec.EvictionDeallocate
	pool.Spec.Min, pool.Spec.Max = 0, 1
	pool.Spec.Capacity = &spec.Resources{CPU: 2, Memory: 1 << 30}
	pool.Default()
	if err := pool.Validate(); err != nil {
		t.Fatal(err)
	}
	// The task runs until the test releases it, after the eviction.
	release := filepath.Join(p.Dir, "release")
	job := spec.Job{APIVersion: spec.APIVersion, Kind: spec.KindJob, Metadata: spec.Metadata{Name: "train"},
		Spec: spec.JobSpec{Pool: pool.Metadata.Name, Tasks: []spec.TaskSpec{{Name: "t", Command: GatedCommand(release)}}}}
	if _, err := p.Store.Apply(ctx, []spec.Pool{pool}, []spec.Job{job}); err != nil {
		t.Fatal(err)
	}
	var first string
	p.Wait("the task running on the first VM's agent", 90*time.Second, func() bool {
		task, err := p.Store.GetTask(ctx, "train", "t")
		first = task.Node
		return err == nil && task.State == store.TaskRunning
	}, d.Dump)
	p.Wait("the registered node's credential to leave its VM's metadata", 30*time.Second, func() bool { return d.Cleared(first) }, d.Dump)
	id := d.VMID(first)
	if err := d.Evict(first); err != nil {
		t.Fatal(err)
	}
	p.Wait("the deallocated node started again", 60*time.Second, func() bool {
		es, err := p.Store.ListEvents(ctx, store.EventFilter{Object: "node/" + first, Kind: "Restarted"})
		return err == nil && len(es) > 0
	}, d.Dump)
	p.Wait("the task requeued by the eviction", 30*time.Second, func() bool {
		task, err := p.Store.GetTask(ctx, "train", "t")
		return err == nil && task.Evictions == 1
	}, d.Dump)
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	p.Wait("the task finished", 90*time.Second, func() bool {
		task, err := p.Store.GetTask(ctx, "train", "t")
		return err == nil && task.State == store.TaskSucceeded
	}, d.Dump)
	task, _ := p.Store.GetTask(ctx, "train", "t")
	if task.Node != first || task.Evictions != 1 || task.Failures != 0 {
		t.Errorf("task on %s (first %s), evictions %d, failures %d; want the same node, 1 eviction, no failure", task.Node, first, task.Evictions, task.Failures)
	}
	n, err := p.Store.GetNode(ctx, first)
	if err != nil || n.Incarnation != 2 || !store.Live(n.State) {
		t.Errorf("node %s: %+v, %v; want live in its second incarnation", first, n, err)
	}
	if got := d.VMID(first); got != id {
		t.Errorf("the node runs on VM %q, was %q: want the same VM started again", got, id)
	}
	if n := d.Downloads(); n != 1 {
		t.Errorf("spotml downloaded %d times, want once: the restarted VM keeps its disk", n)
	}
	// spotml's own stop (here a scale-in) deletes the VM, also in a
	// deallocate pool: the kept disk is for a node coming back from an
	// eviction, not for one spotml ends.
	pool.Spec.IdleTimeout = spec.Duration{Duration: time.Second}
	if _, err := p.Store.Apply(ctx, []spec.Pool{pool}, nil); err != nil {
		t.Fatal(err)
	}
	p.Wait("the idle node scaled in and its VM deleted", 60*time.Second, func() bool {
		return len(p.LiveNodes(pool.Metadata.Name)) == 0 && d.VMID(first) == ""
	}, d.Dump)
}

// GatedCommand is a task's command that runs until the file release
// exists: a test makes "the task still runs when the VM is evicted" true
// by construction, and then lets it finish.
func GatedCommand(release string) spec.Command {
	return spec.Command{"sh", "-c", "while [ ! -e '" + release + "' ]; do sleep 0.2; done"}
}
