package control_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

var now = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

const gib = spec.Bytes(1 << 30)

// pool is a defaulted local pool; its nodes offer 2 cpu and 8Gi unless a
// test's capacity map says otherwise.
func pool(name, priority string, min, max int, mods ...func(*spec.PoolSpec)) spec.Pool {
	p := spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: name},
		Spec: spec.PoolSpec{Provider: spec.ProviderLocal, Priority: priority, InstanceType: "custom", Min: min, Max: max}}
	for _, m := range mods {
		m(&p.Spec)
	}
	p.Default()
	return p
}

func deallocate(s *spec.PoolSpec) { s.EvictionPolicy = spec.EvictionDeallocate }

func node(name, pool, state string, mods ...func(*store.Node)) store.Node {
	n := store.Node{Name: name, Pool: pool, State: state}
	for _, m := range mods {
		m(&n)
	}
	return n
}

func idleFor(d time.Duration) func(*store.Node) {
	return func(n *store.Node) { n.IdleSince = now.Add(-d) }
}

func busy(tasks int) func(*store.Node) { return func(n *store.Node) { n.Tasks = tasks } }

func noticed(n *store.Node) { n.NoticeDeadline = now.Add(30 * time.Second) }

func atRisk(n *store.Node) { n.AtRisk = now.Add(-time.Minute) }

// tasks returns n tasks that ask for r and name pool and priority.
func tasks(n int, pool, priority string, r spec.Resources) []store.Task {
	out := make([]store.Task, n)
	for i := range out {
		out[i] = store.Task{ID: int64(i + 1), Pool: pool, Priority: priority, Req: r}
	}
	return out
}

// on puts tasks on a node, as running tasks.
func on(node string, ts []store.Task) []store.Task {
	for i := range ts {
		ts[i].Node = node
	}
	return ts
}

func cpu(c float64) spec.Resources { return spec.Resources{CPU: c} }

func TestPlanPools(t *testing.T) {
	small := spec.Resources{CPU: 2, Memory: 8 * gib}
	for _, tc := range []struct {
		name     string
		pools    []spec.Pool
		capacity map[string]spec.Resources // default: small for every pool
		nodes    []store.Node
		pending  []store.Task
		running  []store.Task
		want     []control.PoolPlan
	}{{
		name:  "no demand keeps min",
		pools: []spec.Pool{pool("a", "spot", 1, 3)},
		want:  []control.PoolPlan{{Pool: "a", Target: 1, Launch: 1}},
	}, {
		name:    "pending demand in nodes",
		pools:   []spec.Pool{pool("a", "spot", 0, 3)},
		pending: tasks(3, "a", "", cpu(1)),
		want:    []control.PoolPlan{{Pool: "a", Demand: 2, Target: 2, Launch: 2}},
	}, {
		name:    "demand capped by max",
		pools:   []spec.Pool{pool("a", "spot", 0, 3)},
		pending: tasks(10, "a", "", cpu(1)),
		want:    []control.PoolPlan{{Pool: "a", Demand: 5, Target: 3, Launch: 3}},
	}, {
		name:    "the scarcest dimension decides",
		pools:   []spec.Pool{pool("a", "spot", 0, 5)},
		pending: tasks(3, "a", "", spec.Resources{CPU: 0.5, Memory: 6 * gib}),
		want:    []control.PoolPlan{{Pool: "a", Demand: 3, Target: 3, Launch: 3}},
	}, {
		name:    "live nodes count toward the target",
		pools:   []spec.Pool{pool("a", "spot", 0, 5)},
		nodes:   []store.Node{node("a-1", "a", store.NodeReady), node("a-2", "a", store.NodeProvisioning)},
		pending: tasks(6, "a", "", cpu(1)),
		want:    []control.PoolPlan{{Pool: "a", Demand: 3, Target: 3, Live: 2, Launch: 1}},
	}, {
		name:    "running tasks count toward their node's pool",
		pools:   []spec.Pool{pool("a", "spot", 0, 5), pool("b", "spot", 0, 5)},
		nodes:   []store.Node{node("a-1", "a", store.NodeReady, busy(1))},
		running: on("a-1", tasks(1, "", "", cpu(2))),
		pending: tasks(1, "a", "", cpu(1)),
		want: []control.PoolPlan{
			{Pool: "a", Demand: 2, Target: 2, Live: 1, Launch: 1},
			{Pool: "b"},
		},
	}, {
		name:    "pool-less tasks fill spot before on-demand",
		pools:   []spec.Pool{pool("aaa", "ondemand", 0, 3), pool("zzz", "spot", 0, 1)},
		pending: tasks(3, "", "", cpu(1)),
		want: []control.PoolPlan{
			{Pool: "aaa", Demand: 1, Target: 1, Launch: 1},
			{Pool: "zzz", Demand: 1, Target: 1, Launch: 1},
		},
	}, {
		name:    "pool-less tasks that fit stay in spot",
		pools:   []spec.Pool{pool("aaa", "ondemand", 0, 3), pool("zzz", "spot", 0, 1)},
		pending: tasks(2, "", "", cpu(1)),
		want: []control.PoolPlan{
			{Pool: "aaa"},
			{Pool: "zzz", Demand: 1, Target: 1, Launch: 1},
		},
	}, {
		name:    "priority selects the pools",
		pools:   []spec.Pool{pool("aaa", "ondemand", 0, 3), pool("zzz", "spot", 0, 3)},
		pending: tasks(1, "", "ondemand", cpu(1)),
		want: []control.PoolPlan{
			{Pool: "aaa", Demand: 1, Target: 1, Launch: 1},
			{Pool: "zzz"},
		},
	}, {
		name:    "no pool of the priority: no demand",
		pools:   []spec.Pool{pool("zzz", "spot", 0, 3)},
		pending: append(tasks(1, "", "ondemand", cpu(1)), tasks(1, "deleted", "", cpu(1))...),
		want:    []control.PoolPlan{{Pool: "zzz"}},
	}, {
		name:  "idle nodes above target go, longest idle first",
		pools: []spec.Pool{pool("a", "spot", 0, 5)},
		nodes: []store.Node{
			node("i1", "a", store.NodeReady, idleFor(5*time.Minute)),
			node("i2", "a", store.NodeReady, idleFor(10*time.Minute)),
			node("i3", "a", store.NodeReady, idleFor(30*time.Second)), // not idle long enough
			node("i4", "a", store.NodeReady, idleFor(time.Minute)),    // exactly idleTimeout
			node("busy", "a", store.NodeReady, busy(1)),
			node("starting", "a", store.NodeProvisioning, idleFor(time.Hour)),
		},
		running: on("busy", tasks(1, "a", "", cpu(1))),
		want:    []control.PoolPlan{{Pool: "a", Demand: 1, Target: 1, Live: 6, Terminate: []string{"i2", "i1", "i4"}}},
	}, {
		name:  "idle nodes go only down to the target",
		pools: []spec.Pool{pool("a", "spot", 3, 5)},
		nodes: []store.Node{
			node("i1", "a", store.NodeReady, idleFor(5*time.Minute)),
			node("i2", "a", store.NodeReady, idleFor(10*time.Minute)),
			node("i3", "a", store.NodeReady, idleFor(20*time.Minute)),
			node("i4", "a", store.NodeReady, idleFor(15*time.Minute)),
		},
		want: []control.PoolPlan{{Pool: "a", Target: 3, Live: 4, Terminate: []string{"i3"}}},
	}, {
		name:  "idle nodes at min stay",
		pools: []spec.Pool{pool("a", "spot", 2, 5)},
		nodes: []store.Node{
			node("i1", "a", store.NodeReady, idleFor(5*time.Minute)),
			node("i2", "a", store.NodeReady, idleFor(10*time.Minute)),
		},
		want: []control.PoolPlan{{Pool: "a", Target: 2, Live: 2}},
	}, {
		name:  "a node with a notice is replaced",
		pools: []spec.Pool{pool("a", "spot", 2, 5)},
		nodes: []store.Node{
			node("n1", "a", store.NodeReady),
			node("n2", "a", store.NodeReady, noticed),
			node("n3", "a", store.NodeDraining, noticed),
		},
		want: []control.PoolPlan{{Pool: "a", Target: 2, Live: 1, Launch: 1}},
	}, {
		name:    "a node at risk is replaced but keeps its work",
		pools:   []spec.Pool{pool("a", "spot", 0, 5)},
		nodes:   []store.Node{node("n1", "a", store.NodeReady, atRisk, busy(1)), node("n2", "a", store.NodeReady, busy(1))},
		running: append(on("n1", tasks(1, "", "", cpu(2))), on("n2", tasks(1, "", "", cpu(2)))...),
		want:    []control.PoolPlan{{Pool: "a", Demand: 2, Target: 2, Live: 1, AtRisk: 1, Launch: 1}},
	}, {
		name:    "replacements of nodes at risk stay within max",
		pools:   []spec.Pool{pool("a", "spot", 0, 2)},
		nodes:   []store.Node{node("n1", "a", store.NodeReady, atRisk, busy(1)), node("n2", "a", store.NodeReady, busy(1))},
		running: append(on("n1", tasks(1, "", "", cpu(2))), on("n2", tasks(1, "", "", cpu(2)))...),
		want:    []control.PoolPlan{{Pool: "a", Demand: 2, Target: 2, Live: 1, AtRisk: 1}},
	}, {
		name:  "a node at risk gone idle goes once replaced",
		pools: []spec.Pool{pool("a", "spot", 1, 5)},
		nodes: []store.Node{node("n1", "a", store.NodeReady, atRisk, idleFor(time.Hour)), node("n2", "a", store.NodeReady, idleFor(time.Second))},
		want:  []control.PoolPlan{{Pool: "a", Target: 1, Live: 1, AtRisk: 1, Terminate: []string{"n1"}}},
	}, {
		name:  "a node at risk with a notice is a noticed node",
		pools: []spec.Pool{pool("a", "spot", 2, 5)},
		nodes: []store.Node{node("n1", "a", store.NodeDraining, atRisk, noticed), node("n2", "a", store.NodeReady)},
		want:  []control.PoolPlan{{Pool: "a", Target: 2, Live: 1, Launch: 1}},
	}, {
		name:  "a deallocating node comes back itself",
		pools: []spec.Pool{pool("a", "spot", 2, 5, deallocate)},
		nodes: []store.Node{
			node("n1", "a", store.NodeReady),
			node("n2", "a", store.NodeDraining, noticed),
		},
		want: []control.PoolPlan{{Pool: "a", Target: 2, Live: 2}},
	}, {
		name:  "deallocated nodes restart before new ones launch",
		pools: []spec.Pool{pool("a", "spot", 3, 5, deallocate)},
		nodes: []store.Node{
			node("d-b", "a", store.NodeDeallocated),
			node("d-a", "a", store.NodeDeallocated),
			node("gone", "a", store.NodePreempted),
		},
		want: []control.PoolPlan{{Pool: "a", Target: 3, Restart: []string{"d-a", "d-b"}, Launch: 1}},
	}, {
		name:  "only the deallocated nodes needed restart",
		pools: []spec.Pool{pool("a", "spot", 1, 5, deallocate)},
		nodes: []store.Node{
			node("d-b", "a", store.NodeDeallocated),
			node("d-a", "a", store.NodeDeallocated),
		},
		want: []control.PoolPlan{{Pool: "a", Target: 1, Restart: []string{"d-a"}}},
	}, {
		name:  "ended nodes and other pools' nodes do not count",
		pools: []spec.Pool{pool("a", "spot", 1, 5)},
		nodes: []store.Node{
			node("p", "a", store.NodePreempted),
			node("l", "a", store.NodeLost),
			node("t", "a", store.NodeTerminated),
			node("b-1", "b", store.NodeReady),
		},
		want: []control.PoolPlan{{Pool: "a", Target: 1, Launch: 1}},
	}, {
		name:     "a dimension the nodes lack asks for max",
		pools:    []spec.Pool{pool("a", "spot", 0, 4)},
		capacity: map[string]spec.Resources{"a": small},
		pending:  tasks(1, "a", "", spec.Resources{CPU: 1, GPU: 1}),
		want:     []control.PoolPlan{{Pool: "a", Demand: 1e9, Target: 4, Launch: 4}},
	}, {
		name:     "a dimension the nodes lack but nobody asks for is no matter",
		pools:    []spec.Pool{pool("a", "spot", 0, 4)},
		capacity: map[string]spec.Resources{"a": {CPU: 2}},
		pending:  tasks(3, "a", "", cpu(1)),
		want:     []control.PoolPlan{{Pool: "a", Demand: 2, Target: 2, Launch: 2}},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			caps := tc.capacity
			if caps == nil {
				caps = map[string]spec.Resources{}
				for _, p := range tc.pools {
					caps[p.Metadata.Name] = small
				}
			}
			got := control.PlanPools(tc.pools, caps, tc.nodes, tc.pending, tc.running, now)
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got\n%+v\nwant\n%+v", got, tc.want)
			}
		})
	}
}

func TestSnapshot(t *testing.T) {
	nodes := []store.Node{
		{Name: "ready", Pool: "a", Priority: "spot", Zone: "z1", State: store.NodeReady, Capacity: spec.Resources{CPU: 4, Memory: 8 * gib, GPU: 1}},
		{Name: "noticed", Pool: "a", State: store.NodeReady, NoticeDeadline: now, Capacity: spec.Resources{CPU: 4}},
		{Name: "starting", Pool: "a", State: store.NodeProvisioning, Capacity: spec.Resources{CPU: 4}},
		{Name: "draining", Pool: "a", State: store.NodeDraining, NoticeDeadline: now, Capacity: spec.Resources{CPU: 4}},
	}
	running := on("ready", tasks(2, "a", "", spec.Resources{CPU: 1.5, Memory: 2 * gib, GPU: 0}))
	pending := []store.Task{{ID: 7, Order: 3, Pool: "a", Priority: "spot", Req: cpu(1)}}
	s := control.Snapshot(pending, nodes, running)
	if len(s.Nodes) != 1 {
		t.Fatalf("nodes that take work: %+v, want only ready", s.Nodes)
	}
	n := s.Nodes[0]
	if n.Name != "ready" || n.Pool != "a" || n.Priority != "spot" || n.Zone != "z1" || n.Running != 2 ||
		n.Free != (spec.Resources{CPU: 1, Memory: 4 * gib, GPU: 1}) {
		t.Errorf("node: %+v", n)
	}
	if len(s.Pending) != 1 || s.Pending[0].ID != 7 || s.Pending[0].Order != 3 || s.Pending[0].Req != cpu(1) {
		t.Errorf("pending: %+v", s.Pending)
	}
}

// Replicas of one service (same Spread) need a node each, however little
// they ask for.
func TestPlanPoolsSpreadNeedsNodeEach(t *testing.T) {
	pools := []spec.Pool{pool("spot", spec.PrioritySpot, 0, 5)}
	caps := map[string]spec.Resources{"spot": {CPU: 2, Memory: 8 * gib}}
	pending := tasks(3, "spot", "", spec.Resources{CPU: 0.5})
	for i := range pending {
		pending[i].Spread = "svc"
	}
	running := on("spot-1", []store.Task{{ID: 9, Req: spec.Resources{CPU: 0.5}, Spread: "svc"}})
	nodes := []store.Node{node("spot-1", "spot", store.NodeReady)}
	got := control.PlanPools(pools, caps, nodes, pending, running, now)
	if len(got) != 1 || got[0].Target != 4 || got[0].Launch != 3 {
		t.Fatalf("plan = %+v, want target 4 (one node per replica), launch 3", got)
	}
}
