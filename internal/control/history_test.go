package control_test

import (
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// TestReconcileReadsLiveNodesOnce: a reconcile pass reads each live node
// once and no ended node, however many there are.
func TestReconcileReadsLiveNodesOnce(t *testing.T) {
	p := newPlane(t)
	p.apply(strings.Replace(cpuPool, "max: 5", "min: 2, max: 2", 1) + "---" + job("train", 3))
	p.reconcile()
	p.heartbeat()
	// 30 nodes that ran and ended.
	for i := range 30 {
		n := store.Node{Name: "gone-" + string(rune('a'+i%26)) + string(rune('a'+i/26)), Pool: "cpu", Priority: spec.PrioritySpot,
			InstanceType: "local-small", Capacity: spec.Resources{CPU: 2, Memory: 4 << 30}}
		if err := p.st.CreateNode(p.ctx, n); err != nil {
			t.Fatal(err)
		}
		if err := p.st.EndNode(p.ctx, n.Name, store.NodePreempted, "test"); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 {
		before := p.st.Stats().NodeRowsRead
		p.reconcile()
		if got := p.st.Stats().NodeRowsRead - before; got != 2 {
			t.Errorf("a pass read %d node rows; want 2 (the live nodes, once)", got)
		}
	}
	if j := p.job("train"); j.Tasks[0].State != store.TaskRunning {
		t.Errorf("tasks not scheduled: %+v", j.Tasks)
	}
}

// TestRestartedPlaneGivesNodesTimeout: heartbeats are kept in memory, so a
// control plane that starts over a store whose last stored heartbeat is
// old gives every node a full NodeTimeout before calling it lost.
func TestRestartedPlaneGivesNodesTimeout(t *testing.T) {
	p := newPlane(t)
	p.apply(strings.Replace(cpuPool, "max: 5", "min: 1, max: 1", 1))
	p.reconcile()
	p.heartbeat()
	name := p.nodes()[0].Name
	p.clock.Advance(time.Minute) // the control plane was down a minute

	restarted := control.New(p.st, map[string]control.Provider{spec.ProviderLocal: p.prov}, slog.New(slog.NewTextHandler(io.Discard, nil)),
		p.clock.Now, control.Options{})
	if err := restarted.Reconcile(p.ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := p.st.GetNode(p.ctx, name); n.State != store.NodeReady {
		t.Fatalf("node right after a restart: %s (%s)", n.State, n.Reason)
	}
	// Its agent heartbeats: it lives on.
	p.clock.Advance(10 * time.Second)
	p.heartbeat()
	p.clock.Advance(10 * time.Second)
	if err := restarted.Reconcile(p.ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := p.st.GetNode(p.ctx, name); n.State != store.NodeReady {
		t.Fatalf("heartbeating node after a restart: %s (%s)", n.State, n.Reason)
	}
	// Silent past NodeTimeout: lost, as before.
	p.clock.Advance(6 * time.Second)
	if err := restarted.Reconcile(p.ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := p.st.GetNode(p.ctx, name); n.State != store.NodeLost {
		t.Errorf("silent node: %s", n.State)
	}
}

// TestPlanePrunesPastRetention: Plane.Prune removes ended nodes older than
// the retention, in batches, and keeps recent ones and live ones.
func TestPlanePrunesPastRetention(t *testing.T) {
	p := newPlaneWith(t, control.Options{Retention: time.Hour, PruneBatch: 3})
	p.apply(strings.Replace(cpuPool, "max: 5", "min: 1, max: 1", 1))
	for i := range 7 {
		n := store.Node{Name: "old-" + string(rune('a'+i)), Pool: "cpu", Priority: spec.PrioritySpot, InstanceType: "local-small"}
		if err := p.st.CreateNode(p.ctx, n); err != nil {
			t.Fatal(err)
		}
		if err := p.st.EndNode(p.ctx, n.Name, store.NodeTerminated, "test"); err != nil {
			t.Fatal(err)
		}
	}
	p.clock.Advance(2 * time.Hour)
	if err := p.st.CreateNode(p.ctx, store.Node{Name: "recent", Pool: "cpu", Priority: spec.PrioritySpot, InstanceType: "local-small"}); err != nil {
		t.Fatal(err)
	}
	if err := p.st.EndNode(p.ctx, "recent", store.NodeTerminated, "test"); err != nil {
		t.Fatal(err)
	}
	p.reconcile()
	p.heartbeat()
	st, err := p.p.Prune(p.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Nodes != 7 || st.Runs != 7 {
		t.Errorf("pruned %+v, want 7 nodes and runs", st)
	}
	var names []string
	for _, n := range p.nodes() {
		names = append(names, n.Name+"="+n.State)
	}
	if len(names) != 2 || !strings.HasPrefix(names[1], "recent=") || !strings.HasSuffix(names[0], "=ready") {
		t.Errorf("nodes left: %q", names)
	}
}
