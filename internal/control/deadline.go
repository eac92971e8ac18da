package control

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/deadline"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// Lookback is how much of a pool's history the deadline policy reads for
// spot lifetimes.
const Lookback = 48 * time.Hour

// defaultChangeover is what a start is taken to cost before the pool or
// the job has shown one.
const defaultChangeover = time.Minute

// JobView is what the deadline policy sees of one job: a snapshot, so
// that DecideJob stays pure.
type JobView struct {
	Job   store.Job    // with its tasks and their attempts
	Nodes []store.Node // the live nodes and those ended within Lookback
	Pools []spec.Pool
	Now   time.Time
	// Short names the spot pools whose last launch was refused (no
	// capacity now, as far as spotml knows).
	Short map[string]bool
}

// JobStatus is the policy's reading of a job, what it chose and what the
// job has cost.
type JobStatus struct {
	Deadline      time.Time
	Work          time.Duration // each task's compute
	WorkEstimated bool          // Work comes from the tasks' progress, not spec.work
	Done          time.Duration // progress, in Work (the slowest task's)
	Changeover    time.Duration // measured: launch to first progress (start, restore), median of recent starts
	SpotLife      time.Duration // expected spot lifetime from the pools' recent evictions; 0 unknown
	SpotAvailable bool
	Mode          deadline.Mode // where the job runs now
	Next          deadline.Mode // where the policy wants it
	Cost          cost.Work     // so far
	Projected     float64       // cost at the end, if the policy's choice holds
	OnDemandCost  float64       // the whole job on on-demand alone
	// Steers are the task changes that carry the choice out; Probe names
	// a spot pool to launch one node in, to learn whether spot is back.
	Steers []store.Steer
	Probe  string
}

// Steered says whether the control plane chooses the capacity of the
// job's tasks: a deadline policy, or a cap on preemptions.
func Steered(j spec.Job) bool {
	return j.DeadlinePolicy() || j.Spec.OnDemandAfterPreemptions > 0
}

// DecideJob reads one job against the pools' history and says where its
// tasks run next. It is pure: the same view gives the same status. ok is
// false for a job without a deadline (its Cost is still filled).
func DecideJob(v JobView) (st JobStatus, ok bool) {
	j := v.Job
	nodes := make(map[string]store.Node, len(v.Nodes))
	for _, n := range v.Nodes {
		nodes[n.Name] = n
	}
	stints, _ := jobStints(j, nodes)
	st.Cost = cost.Explain(stints, v.Now)
	st.Steers = capSteers(j)
	at, hasDeadline := j.Spec.DeadlineAt(j.SubmittedAt)
	if !hasDeadline {
		return st, false
	}
	st.Deadline = at
	st.Work, st.WorkEstimated = workOf(j, at)
	spotPrice, odPrice, spotPools := cheapest(v.Pools)
	st.Changeover = measuredChangeover(j, nodes, v.Pools)
	if st.Changeover == 0 {
		// Nothing measured yet: a tenth of the slack, at most a minute,
		// so that a first guess cannot force a tight job onto on-demand.
		st.Changeover = min(defaultChangeover, max(at.Sub(j.SubmittedAt)-st.Work, 0)/10)
	}
	st.SpotLife = spotLife(v.Nodes, spotPools, v.Now)
	st.OnDemandCost = odPrice * (st.Work + st.Changeover).Hours() * float64(len(j.Tasks))
	if j.State != store.JobRunning {
		st.Done = st.Work
		return st, true
	}
	open := 0
	for _, t := range j.Tasks {
		if t.State == store.TaskPending || t.State == store.TaskRunning {
			open++
		}
	}
	st.Done = doneOf(j, st.Work)
	st.Mode = modeOf(j, nodes)

	// Spot is there when a spot node without a notice is live, or, as
	// far as spotml knows, when no spot pool refused its last launch.
	idleSpot := false
	for _, n := range v.Nodes {
		if spotPools[n.Pool] && store.Live(n.State) && n.NoticeDeadline.IsZero() {
			st.SpotAvailable = true
			idleSpot = idleSpot || n.State == store.NodeReady && n.Tasks == 0
		}
	}
	if st.SpotAvailable && st.Mode == deadline.Wait {
		st.Mode = deadline.Spot // starting on the spot nodes that are there
	}
	if !st.SpotAvailable && st.Mode != deadline.OnDemand {
		for p := range spotPools {
			st.SpotAvailable = st.SpotAvailable || !v.Short[p]
		}
	}
	if open == 0 || spotPrice <= 0 || odPrice <= spotPrice || len(spotPools) == 0 {
		// Nothing to choose: no work left, or no spot and on-demand pools
		// to choose between.
		st.Next = st.Mode
		return st, true
	}
	dj := deadline.Job{Work: st.Work, Deadline: at.Sub(j.SubmittedAt), Changeover: st.Changeover,
		SpotPrice: spotPrice, OnDemandPrice: odPrice}
	ds := deadline.State{Elapsed: v.Now.Sub(j.SubmittedAt), Done: st.Done, Mode: st.Mode,
		Spent: st.Cost.Spent / float64(len(j.Tasks)), SpotAvailable: st.SpotAvailable, SpotLife: st.SpotLife}
	st.Next = deadline.Decide(dj, ds, deadline.Options{})
	st.OnDemandCost = deadline.OnDemandCost(dj) * float64(len(j.Tasks))
	price := spotPrice
	if st.Next == deadline.OnDemand {
		price = odPrice
	}
	st.Projected = st.Cost.Spent + price*float64(open)*(st.Work-st.Done).Hours()
	if st.Next != st.Mode {
		st.Projected += price * float64(open) * st.Changeover.Hours()
	}

	capped := map[int64]bool{}
	for _, s := range st.Steers {
		capped[s.TaskID] = true
	}
	want := spec.PrioritySpot
	why := fmt.Sprintf("%s of %s done, %s to the deadline", st.Done.Round(time.Second), st.Work.Round(time.Second), at.Sub(v.Now).Round(time.Second))
	if st.Next == deadline.OnDemand {
		want = spec.PriorityOnDemand
	}
	for _, t := range j.Tasks {
		if capped[t.ID] {
			continue
		}
		switch t.State {
		case store.TaskPending:
			if t.Priority != want {
				st.Steers = append(st.Steers, store.Steer{TaskID: t.ID, Priority: want, Why: why})
			}
		case store.TaskRunning:
			on := nodes[t.Node].Priority
			switch {
			case on == spec.PrioritySpot && want == spec.PriorityOnDemand:
				st.Steers = append(st.Steers, store.Steer{TaskID: t.ID, Priority: want, Move: true, Why: why})
			case on == spec.PriorityOnDemand && want == spec.PrioritySpot && idleSpot:
				// Back to spot only onto a node that is there already, so
				// that the task does not wait in the queue for a launch.
				st.Steers = append(st.Steers, store.Steer{TaskID: t.ID, Priority: want, Move: true, Why: why})
			}
		}
	}
	// Running on on-demand without a spot node to tell whether spot is
	// back: launch one, if spot would be taken were it there.
	if st.Mode == deadline.OnDemand && !st.SpotAvailable {
		ds.SpotAvailable = true
		if deadline.Decide(dj, ds, deadline.Options{}) == deadline.Spot {
			st.Probe = probePool(v.Pools, spotPools, v.Short)
		}
	}
	return st, true
}

// capSteers moves to on-demand the pending tasks preempted
// onDemandAfterPreemptions times.
func capSteers(j store.Job) []store.Steer {
	n := j.Spec.Spec.OnDemandAfterPreemptions
	if n <= 0 {
		return nil
	}
	var out []store.Steer
	for _, t := range j.Tasks {
		if t.State == store.TaskPending && t.Evictions >= n && t.Priority != spec.PriorityOnDemand {
			out = append(out, store.Steer{TaskID: t.ID, Priority: spec.PriorityOnDemand,
				Why: fmt.Sprintf("preempted %d times (onDemandAfterPreemptions: %d)", t.Evictions, n)})
		}
	}
	return out
}

// cheapest returns the lowest spot and on-demand prices among the pools
// that may grow, and the spot pools.
func cheapest(pools []spec.Pool) (spot, onDemand float64, spotPools map[string]bool) {
	spotPools = map[string]bool{}
	for _, p := range pools {
		if p.Spec.Max <= 0 {
			continue
		}
		price, _ := Prices(p)
		if p.Spec.Priority == spec.PrioritySpot {
			spotPools[p.Metadata.Name] = true
			if spot == 0 || price < spot {
				spot = price
			}
			continue
		}
		if onDemand == 0 || price < onDemand {
			onDemand = price
		}
	}
	return spot, onDemand, spotPools
}

// probePool is the spot pool to launch a probe node in: the first not
// known short, else the first.
func probePool(pools []spec.Pool, spotPools, short map[string]bool) string {
	first := ""
	for _, p := range pools {
		name := p.Metadata.Name
		if !spotPools[name] {
			continue
		}
		if !short[name] {
			return name
		}
		if first == "" {
			first = name
		}
	}
	return first
}

// jobStints are the job's attempts as paid node time. An attempt's
// changeover runs to its first progress report (its start, and the restore
// of a checkpoint when it resumed one), or to its start for a task that
// reports no progress; it begins at the node's launch when the node was
// launched for it: after the task's previous attempt started (a
// replacement is launched on the eviction notice, before that attempt
// ends) or the job was submitted; else at the attempt's start. launched
// says which stints pay a launch.
func jobStints(j store.Job, nodes map[string]store.Node) (out []cost.Stint, launched []bool) {
	type stint struct {
		cost.Stint
		launched bool
	}
	var all []stint
	for _, t := range j.Tasks {
		prev := j.SubmittedAt
		for _, a := range t.Attempts {
			n, ok := nodes[a.Node]
			s := stint{Stint: cost.Stint{Priority: t.Priority, Start: a.StartedAt, End: a.EndedAt}}
			working := a.StartedAt
			if !a.FirstProgressAt.IsZero() && a.FirstProgressAt.After(a.StartedAt) &&
				(a.EndedAt.IsZero() || !a.FirstProgressAt.After(a.EndedAt)) {
				working = a.FirstProgressAt
			}
			if ok {
				s.Priority, s.PricePerHour, s.OnDemandPerHour = n.Priority, n.PricePerHour, n.OnDemandPrice
				s.Share = share(t.Req, n.Capacity)
				if !n.CreatedAt.Before(prev) && n.CreatedAt.Before(a.StartedAt) {
					s.Start, s.launched = n.CreatedAt, true
				}
			}
			s.Changeover = working.Sub(s.Start)
			all = append(all, s)
			prev = a.StartedAt
		}
	}
	slices.SortStableFunc(all, func(a, b stint) int { return a.Start.Compare(b.Start) })
	out, launched = make([]cost.Stint, len(all)), make([]bool, len(all))
	for i, s := range all {
		out[i], launched[i] = s.Stint, s.launched
	}
	return out, launched
}

// share is the part of a node a request takes: its largest fraction of
// any resource; all of it when it asks for nothing.
func share(req, capacity spec.Resources) float64 {
	f := 0.0
	if capacity.CPU > 0 {
		f = max(f, req.CPU/capacity.CPU)
	}
	if capacity.Memory > 0 {
		f = max(f, float64(req.Memory)/float64(capacity.Memory))
	}
	if capacity.GPU > 0 {
		f = max(f, float64(req.GPU)/float64(capacity.GPU))
	}
	if f <= 0 || f > 1 {
		return 1
	}
	return f
}

// measuredChangeover is the median time from a node's launch to the work
// running on it: the job's own starts on nodes launched for them, each to
// the attempt's first progress (launch, start and the restore of a
// checkpoint; to the attempt's start for a task that reports no progress),
// else the pools' ready nodes (launch to ready); 0 without either.
func measuredChangeover(j store.Job, nodes map[string]store.Node, pools []spec.Pool) time.Duration {
	var samples []time.Duration
	stints, launched := jobStints(j, nodes)
	for i, s := range stints {
		if launched[i] && s.Changeover > 0 {
			samples = append(samples, s.Changeover)
		}
	}
	if len(samples) == 0 {
		in := map[string]bool{}
		for _, p := range pools {
			in[p.Metadata.Name] = true
		}
		for _, n := range nodes {
			if in[n.Pool] && n.State == store.NodeReady && n.StateAt.After(n.CreatedAt) {
				samples = append(samples, n.StateAt.Sub(n.CreatedAt))
			}
		}
	}
	if len(samples) == 0 {
		return 0
	}
	slices.Sort(samples)
	return samples[len(samples)/2]
}

// spotLife estimates how long a spot node lives from the spot pools' nodes
// of the last Lookback: their time up divided by the evictions among them
// (a node still up counts its time so far); 0 without an eviction.
func spotLife(nodes []store.Node, spotPools map[string]bool, now time.Time) time.Duration {
	var up time.Duration
	evicted := 0
	for _, n := range nodes {
		if !spotPools[n.Pool] || now.Sub(n.CreatedAt) > Lookback {
			continue
		}
		end := now
		if !store.Live(n.State) {
			end = n.StateAt
		}
		up += max(end.Sub(n.CreatedAt), 0)
		if n.State == store.NodePreempted || n.State == store.NodeDeallocated {
			evicted++
		}
	}
	if evicted == 0 {
		return 0
	}
	return up / time.Duration(evicted)
}

// workOf is each task's compute: the larger of spec.work and the largest
// estimate from a task's progress (time run over fraction done, once a
// task reports 5 %: a job slower than its spec.work said must not be
// planned as if it were not); without spec.work and before any report,
// half the time to the deadline.
func workOf(j store.Job, at time.Time) (time.Duration, bool) {
	w := j.Spec.Spec.Work.Duration
	var est time.Duration
	for _, t := range j.Tasks {
		if t.Progress == nil || *t.Progress < 0.05 {
			continue
		}
		var ran time.Duration
		for _, a := range t.Attempts {
			end := a.EndedAt
			if end.IsZero() {
				end = t.ProgressAt
			}
			ran += max(end.Sub(a.StartedAt), 0)
		}
		est = max(est, time.Duration(float64(ran) / *t.Progress))
	}
	switch {
	case w > 0 && est <= w:
		return w, false
	case est > 0:
		return est, true
	}
	return at.Sub(j.SubmittedAt) / 2, true
}

// doneOf is the job's progress in work: the slowest open task's.
func doneOf(j store.Job, work time.Duration) time.Duration {
	done := work
	for _, t := range j.Tasks {
		if t.State != store.TaskPending && t.State != store.TaskRunning {
			continue
		}
		f := 0.0
		if t.Progress != nil {
			f = min(max(*t.Progress, 0), 1)
		}
		done = min(done, time.Duration(f*float64(work)))
	}
	return done
}

// modeOf is where the job runs now: on-demand if any task runs or waits
// for on-demand, spot if any runs on spot, else waiting.
func modeOf(j store.Job, nodes map[string]store.Node) deadline.Mode {
	mode := deadline.Wait
	for _, t := range j.Tasks {
		switch {
		case t.State == store.TaskRunning && nodes[t.Node].Priority == spec.PriorityOnDemand,
			t.State == store.TaskPending && t.Priority == spec.PriorityOnDemand:
			return deadline.OnDemand
		case t.State == store.TaskRunning:
			mode = deadline.Spot
		}
	}
	return mode
}

// steerJobs runs the deadline policy (and the preemption cap) over every
// running job that has one, and carries its choices out: re-labels and
// moves tasks, and launches a spot node to probe for spot.
func (p *Plane) steerJobs(ctx context.Context) error {
	jobs, err := p.store.RunningJobs(ctx)
	if err != nil {
		return err
	}
	var mine []store.Job
	for _, j := range jobs {
		if j.State == store.JobRunning && Steered(j.Spec) {
			mine = append(mine, j)
		}
	}
	if len(mine) == 0 {
		return nil
	}
	now := p.now()
	nodes, err := p.store.RecentNodes(ctx, now.Add(-Lookback))
	if err != nil {
		return err
	}
	stored, err := p.store.ListPools(ctx)
	if err != nil {
		return err
	}
	pools := make([]spec.Pool, len(stored))
	for i, pl := range stored {
		pools[i] = pl.Spec
	}
	short := p.shortPools()
	var errs []error
	for _, j := range mine {
		full, err := p.store.GetJob(ctx, j.Spec.Metadata.Name)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		st, _ := DecideJob(JobView{Job: full, Nodes: nodes, Pools: pools, Now: now, Short: short})
		if n, err := p.store.SteerTasks(ctx, st.Steers); err != nil {
			errs = append(errs, err)
		} else if n > 0 {
			p.log.Info("steered job", "job", j.Spec.Metadata.Name, "tasks", n, "mode", st.Mode, "next", st.Next,
				"done", st.Done, "work", st.Work, "changeover", st.Changeover, "spotLife", st.SpotLife)
		}
		if st.Probe != "" {
			errs = append(errs, p.probe(ctx, st.Probe, st.Changeover, nodes, stored))
		}
	}
	return errors.Join(errs...)
}

// shortPools are the pools whose last launch was refused.
func (p *Plane) shortPools() map[string]bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := map[string]bool{}
	for pool, n := range p.fails {
		if n > 0 {
			out[pool] = true
		}
	}
	return out
}

// probe launches one spot node in pool to learn whether spot is back, at
// most once every two changeovers (5s to 10m) and never beside a live
// node of the pool or in its launch backoff. Unused, it goes at the
// pool's idle timeout.
func (p *Plane) probe(ctx context.Context, pool string, changeover time.Duration, nodes []store.Node, pools []store.Pool) error {
	now := p.now()
	for _, n := range nodes {
		if n.Pool == pool && store.Live(n.State) && n.NoticeDeadline.IsZero() {
			return nil
		}
	}
	every := min(max(2*changeover, 5*time.Second), 10*time.Minute)
	p.mu.Lock()
	if p.probed == nil {
		p.probed = map[string]time.Time{}
	}
	if now.Sub(p.probed[pool]) < every || now.Before(p.backoff[pool]) {
		p.mu.Unlock()
		return nil
	}
	p.probed[pool] = now
	p.mu.Unlock()
	for _, pl := range pools {
		if pl.Spec.Metadata.Name != pool {
			continue
		}
		c, err := NodeCapacity(pl.Spec)
		if err != nil {
			return err
		}
		live := 0
		for _, n := range nodes {
			if n.Pool == pool && store.Live(n.State) {
				live++
			}
		}
		if live >= pl.Spec.Spec.Max {
			return nil
		}
		p.log.Info("probing for spot", "pool", pool)
		return p.launch(ctx, pl.Spec, p.newNode(pl.Spec, c, zoneCounts(pl.Spec, nodes)), false)
	}
	return nil
}

// ServiceCost explains what a service's replicas cost: each replica's
// time on its node, the start (placement to ready) as its changeover.
func ServiceCost(reps []store.Replica, nodes []store.Node, now time.Time) cost.Work {
	byName := make(map[string]store.Node, len(nodes))
	for _, n := range nodes {
		byName[n.Name] = n
	}
	var stints []cost.Stint
	for _, r := range reps {
		n, ok := byName[r.Node]
		if !ok {
			continue // never placed, or its node is pruned
		}
		s := cost.Stint{Priority: n.Priority, Start: r.CreatedAt, End: r.EndedAt, Share: share(r.Req, n.Capacity),
			PricePerHour: n.PricePerHour, OnDemandPerHour: n.OnDemandPrice}
		if n.CreatedAt.After(s.Start) {
			s.Start = n.CreatedAt // a node launched for it: its launch is the replica's start
		}
		if r.ReadyAt.IsZero() {
			end := r.EndedAt
			if end.IsZero() {
				end = now
			}
			s.Changeover = end.Sub(s.Start)
		} else {
			s.Changeover = max(r.ReadyAt.Sub(s.Start), 0)
		}
		stints = append(stints, s)
	}
	slices.SortStableFunc(stints, func(a, b cost.Stint) int { return a.Start.Compare(b.Start) })
	return cost.Explain(stints, now)
}
