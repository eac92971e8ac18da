package control

import (
	"math"
	"sort"
	"time"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// PoolPlan is what the pool scaler decided for one pool: launch Launch new
// nodes (restarting deallocated ones first), remove the named idle nodes.
// A node with an eviction notice does not count toward the target, so its
// replacement starts at once — except in a deallocate pool, where the same
// node is restarted once it has stopped. Nor does a node at risk (an early
// warning, no notice yet): it keeps its work, a replacement is launched
// beside it as long as the pool's max allows, and once idle it is removed
// first.
type PoolPlan struct {
	Pool      string
	Demand    int // nodes the tasks need, before min/max
	Target    int
	Live      int // nodes counted toward the target (no notice, not at risk)
	AtRisk    int // live nodes at risk, without notice
	Launch    int
	Restart   []string
	Terminate []string
}

// PlanPools decides the size of every pool from its tasks, like Azure
// Batch's `$TargetNodes = min(max, $PendingTasks)` formula but in node
// units: the nodes needed to hold the pending and running tasks, kept
// within min and max. It is pure: state in, plan out.
func PlanPools(pools []spec.Pool, capacity map[string]spec.Resources, nodes []store.Node, pending, running []store.Task, now time.Time) []PoolPlan {
	// Demand per pool, in summed resources.
	demand := map[string]*spec.Resources{}
	for _, p := range pools {
		demand[p.Metadata.Name] = &spec.Resources{}
	}
	add := func(pool string, r spec.Resources) {
		if d := demand[pool]; d != nil {
			d.CPU += r.CPU
			d.Memory += r.Memory
			d.GPU += r.GPU
		}
	}
	nodePool := map[string]string{}
	for _, n := range nodes {
		nodePool[n.Name] = n.Pool
	}
	// Tasks with a Spread key (a service's replicas) need a node each.
	apart := map[string]map[string]int{} // pool -> spread key -> tasks
	countApart := func(pool string, t store.Task) {
		if t.Spread == "" || pool == "" {
			return
		}
		if apart[pool] == nil {
			apart[pool] = map[string]int{}
		}
		apart[pool][t.Spread]++
	}
	for _, t := range running {
		add(nodePool[t.Node], t.Req)
		countApart(nodePool[t.Node], t)
	}
	// Pinned tasks first; then tasks that may run in several pools fill
	// the preferred pool up to its max before spilling to the next.
	var loose []store.Task
	for _, t := range pending {
		if t.Pool != "" {
			add(t.Pool, t.Req)
			countApart(t.Pool, t)
		} else {
			loose = append(loose, t)
		}
	}
	for _, t := range loose {
		add(poolFor(t, pools, demand, capacity), t.Req)
	}

	var plans []PoolPlan
	for _, p := range pools {
		name := p.Metadata.Name
		c := capacity[name]
		d := demand[name]
		need := 0
		for _, q := range []float64{ratio(d.CPU, c.CPU), ratio(float64(d.Memory), float64(c.Memory)), ratio(float64(d.GPU), float64(c.GPU))} {
			need = max(need, int(math.Ceil(q-1e-9)))
		}
		for _, k := range apart[name] {
			need = max(need, k)
		}
		plan := PoolPlan{Pool: name, Demand: need, Target: min(max(need, p.Spec.Min), p.Spec.Max)}
		var idle, risky []store.Node
		var deallocated []string
		for _, n := range nodes {
			if n.Pool != name {
				continue
			}
			switch {
			case n.State == store.NodeDeallocated:
				deallocated = append(deallocated, n.Name)
			case store.Live(n.State) && n.NoticeDeadline.IsZero() && !n.AtRisk.IsZero():
				plan.AtRisk++
				if n.State == store.NodeReady && n.Tasks == 0 && n.Replicas == 0 && !n.IdleSince.IsZero() && now.Sub(n.IdleSince) >= p.Spec.IdleTimeout.Duration {
					risky = append(risky, n)
				}
			case store.Live(n.State) && n.NoticeDeadline.IsZero():
				plan.Live++
				idleFor := p.Spec.IdleTimeout.Duration
				if n.State == store.NodeReady && n.Tasks == 0 && n.Replicas == 0 && !n.IdleSince.IsZero() && now.Sub(n.IdleSince) >= idleFor {
					idle = append(idle, n)
				}
			case store.Live(n.State) && p.Spec.EvictionPolicy == spec.EvictionDeallocate:
				// A deallocating node comes back itself (same name, same
				// disk) once stopped: no new node replaces it meanwhile.
				plan.Live++
			}
		}
		if plan.Live < plan.Target {
			want := plan.Target - plan.Live
			sort.Strings(deallocated)
			for _, d := range deallocated {
				if want == 0 {
					break
				}
				plan.Restart = append(plan.Restart, d)
				want--
			}
			// Replacements of nodes at risk stay within max: the node at
			// risk may yet live for hours.
			want = min(want, p.Spec.Max-plan.Live-plan.AtRisk-len(plan.Restart))
			plan.Launch = max(want, 0)
		}
		if plan.Live >= plan.Target {
			// A node at risk that has gone idle is not needed: its
			// replacement is in place.
			sort.Slice(risky, func(i, j int) bool { return risky[i].IdleSince.Before(risky[j].IdleSince) })
			for _, n := range risky {
				plan.Terminate = append(plan.Terminate, n.Name)
			}
		}
		if plan.Live > plan.Target {
			// Remove the nodes idle longest first.
			sort.Slice(idle, func(i, j int) bool { return idle[i].IdleSince.Before(idle[j].IdleSince) })
			for _, n := range idle[:min(len(idle), plan.Live-plan.Target)] {
				plan.Terminate = append(plan.Terminate, n.Name)
			}
		}
		plans = append(plans, plan)
	}
	return plans
}

func ratio(a, b float64) float64 {
	if a <= 0 {
		return 0
	}
	if b <= 0 {
		return 1e9 // cannot fit; capped by max
	}
	return a / b
}

// poolFor says which pool a task that names no pool counts toward: of the
// pools whose priority matches and that may grow, spot before on-demand,
// then by name, the first that still has room at its max; else the first.
func poolFor(t store.Task, pools []spec.Pool, demand map[string]*spec.Resources, capacity map[string]spec.Resources) string {
	var cands []spec.Pool
	for _, p := range pools {
		if p.Spec.Max > 0 && (t.Priority == "" || p.Spec.Priority == t.Priority) {
			cands = append(cands, p)
		}
	}
	if len(cands) == 0 {
		return ""
	}
	sort.SliceStable(cands, func(i, j int) bool {
		si, sj := cands[i].Spec.Priority == spec.PrioritySpot, cands[j].Spec.Priority == spec.PrioritySpot
		if si != sj {
			return si
		}
		return cands[i].Metadata.Name < cands[j].Metadata.Name
	})
	for _, p := range cands {
		d, c, n := demand[p.Metadata.Name], capacity[p.Metadata.Name], float64(p.Spec.Max)
		if d.CPU+t.Req.CPU <= c.CPU*n && float64(d.Memory+t.Req.Memory) <= float64(c.Memory)*n && float64(d.GPU+t.Req.GPU) <= float64(c.GPU)*n {
			return p.Metadata.Name
		}
	}
	return cands[0].Metadata.Name
}
