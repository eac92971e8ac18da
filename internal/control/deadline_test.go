package control_test

import (
	"context"
	"fmt"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/deadline"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// TestDecideJob is the control plane's glue around deadline.Decide: what
// it reads of a job, its nodes and pools, and the task changes it makes.
func TestDecideJob(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	price := func(v float64) *float64 { return &v }
	pools := []spec.Pool{
		{Metadata: spec.Metadata{Name: "od"}, Spec: spec.PoolSpec{Priority: spec.PriorityOnDemand, InstanceType: "local-small", Max: 4, PricePerHour: price(3)}},
		{Metadata: spec.Metadata{Name: "spot"}, Spec: spec.PoolSpec{Priority: spec.PrioritySpot, InstanceType: "local-small", Max: 4, PricePerHour: price(1)}},
	}
	node := func(name, pool, prio, state string, created, stateAt time.Duration, tasks int) store.Node {
		return store.Node{Name: name, Pool: pool, Priority: prio, State: state, CreatedAt: t0.Add(created), StateAt: t0.Add(stateAt),
			Tasks: tasks, PricePerHour: map[string]float64{spec.PrioritySpot: 1, spec.PriorityOnDemand: 3}[prio], OnDemandPrice: 3}
	}
	frac := func(f float64) *float64 { return &f }
	job := func(spec_ spec.JobSpec, tasks ...store.Task) store.Job {
		for i := range tasks {
			tasks[i].ID = int64(i + 1)
		}
		return store.Job{Spec: spec.Job{Spec: spec_}, State: store.JobRunning, SubmittedAt: t0, Tasks: tasks}
	}
	dl := spec.JobSpec{Deadline: "10h", Work: spec.Duration{Duration: 6 * time.Hour}}
	pending := func(prio string, progress float64) store.Task {
		return store.Task{State: store.TaskPending, Priority: prio, Progress: frac(progress)}
	}
	running := func(node string, prio string, progress float64, started time.Duration) store.Task {
		return store.Task{State: store.TaskRunning, Node: node, Priority: prio, Progress: frac(progress),
			Attempts: []store.Attempt{{Node: node, StartedAt: t0.Add(started)}}}
	}
	type want struct {
		mode, next deadline.Mode
		steers     []store.Steer
		probe      string
	}
	tests := []struct {
		name  string
		job   store.Job
		nodes []store.Node
		short map[string]bool
		now   time.Duration
		want  want
	}{
		{
			name: "fresh job takes spot",
			job:  job(dl, pending("", 0)),
			now:  time.Minute,
			want: want{mode: deadline.Wait, next: deadline.Spot, steers: []store.Steer{{TaskID: 1, Priority: spec.PrioritySpot}}},
		},
		{
			name:  "no spot, behind the line: on-demand",
			job:   job(dl, pending(spec.PrioritySpot, 0.1)),
			short: map[string]bool{"spot": true},
			now:   3 * time.Hour,
			want:  want{mode: deadline.Wait, next: deadline.OnDemand, steers: []store.Steer{{TaskID: 1, Priority: spec.PriorityOnDemand}}},
		},
		{
			name:  "no spot, ahead of the line: wait",
			job:   job(dl, pending(spec.PrioritySpot, 0.5)),
			short: map[string]bool{"spot": true},
			now:   2 * time.Hour,
			want:  want{mode: deadline.Wait, next: deadline.Wait},
		},
		{
			name:  "deadline guard moves a spot task to on-demand",
			job:   job(dl, running("s1", spec.PrioritySpot, 0.5, 0)),
			nodes: []store.Node{node("s1", "spot", spec.PrioritySpot, store.NodeReady, 0, time.Minute, 1)},
			now:   6*time.Hour + 59*time.Minute,
			want: want{mode: deadline.Spot, next: deadline.OnDemand,
				steers: []store.Steer{{TaskID: 1, Priority: spec.PriorityOnDemand, Move: true}}},
		},
		{
			name: "on-demand with an idle spot node moves back",
			job:  job(dl, running("o1", spec.PriorityOnDemand, 0.2, 90*time.Minute)),
			nodes: []store.Node{
				node("o1", "od", spec.PriorityOnDemand, store.NodeReady, 89*time.Minute, 90*time.Minute, 1),
				node("s2", "spot", spec.PrioritySpot, store.NodeReady, 2*time.Hour, 2*time.Hour+time.Minute, 0),
			},
			now: 2*time.Hour + 2*time.Minute,
			want: want{mode: deadline.OnDemand, next: deadline.Spot,
				steers: []store.Steer{{TaskID: 1, Priority: spec.PrioritySpot, Move: true}}},
		},
		{
			name:  "on-demand without a spot node probes",
			job:   job(dl, running("o1", spec.PriorityOnDemand, 0.2, 90*time.Minute)),
			nodes: []store.Node{node("o1", "od", spec.PriorityOnDemand, store.NodeReady, 89*time.Minute, 90*time.Minute, 1)},
			short: map[string]bool{"spot": true},
			now:   2 * time.Hour,
			want:  want{mode: deadline.OnDemand, next: deadline.OnDemand, probe: "spot"},
		},
		{
			name: "short-lived spot is not worth a changeover",
			job:  job(dl, pending(spec.PrioritySpot, 0.1)),
			nodes: []store.Node{
				// Three spot nodes that lived 2 minutes each against a
				// 10 minute start: no spot.
				node("a", "spot", spec.PrioritySpot, store.NodePreempted, 0, 2*time.Minute, 0),
				node("b", "spot", spec.PrioritySpot, store.NodePreempted, 10*time.Minute, 12*time.Minute, 0),
				node("c", "spot", spec.PrioritySpot, store.NodePreempted, 20*time.Minute, 22*time.Minute, 0),
				node("o", "od", spec.PriorityOnDemand, store.NodeReady, 0, 10*time.Minute, 0),
			},
			now:  3 * time.Hour,
			want: want{mode: deadline.Wait, next: deadline.OnDemand, steers: []store.Steer{{TaskID: 1, Priority: spec.PriorityOnDemand}}},
		},
		{
			name: "finished task is left alone",
			job: job(dl, store.Task{State: store.TaskSucceeded, Progress: frac(1)},
				pending(spec.PrioritySpot, 0.5)),
			now:  time.Hour,
			want: want{mode: deadline.Wait, next: deadline.Spot},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st, ok := control.DecideJob(control.JobView{Job: tt.job, Nodes: tt.nodes, Pools: pools, Now: t0.Add(tt.now), Short: tt.short})
			if !ok {
				t.Fatal("a deadline job was not decided")
			}
			for i := range st.Steers {
				st.Steers[i].Why = ""
			}
			if st.Mode != tt.want.mode || st.Next != tt.want.next || st.Probe != tt.want.probe || !slices.Equal(st.Steers, tt.want.steers) {
				t.Errorf("mode %s next %s probe %q steers %+v\nwant mode %s next %s probe %q steers %+v (done %s, changeover %s, life %s, spot %v)",
					st.Mode, st.Next, st.Probe, st.Steers, tt.want.mode, tt.want.next, tt.want.probe, tt.want.steers,
					st.Done, st.Changeover, st.SpotLife, st.SpotAvailable)
			}
		})
	}
}

// TestDecideJobMeasures checks what the glue measures: the changeover from
// the job's own starts, spot lifetimes from the pool's evictions, the
// work from progress, and the cost so far.
func TestDecideJobMeasures(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	pools := []spec.Pool{
		{Metadata: spec.Metadata{Name: "od"}, Spec: spec.PoolSpec{Priority: spec.PriorityOnDemand, InstanceType: "local-small", Max: 4}},
		{Metadata: spec.Metadata{Name: "spot"}, Spec: spec.PoolSpec{Priority: spec.PrioritySpot, InstanceType: "local-small", Max: 4}},
	}
	p := 0.5
	j := store.Job{Spec: spec.Job{Spec: spec.JobSpec{Deadline: "10h"}}, State: store.JobRunning, SubmittedAt: t0,
		Tasks: []store.Task{{ID: 1, State: store.TaskRunning, Node: "o1", Progress: &p, ProgressAt: t0.Add(4 * time.Hour),
			Attempts: []store.Attempt{
				// launched at 0, started at 3m, preempted at 1h.
				{Node: "s1", StartedAt: t0.Add(3 * time.Minute), EndedAt: t0.Add(time.Hour), Outcome: "preempted"},
				// launched at 1h, started at 1h05.
				{Node: "o1", StartedAt: t0.Add(65 * time.Minute)},
			}}}}
	nodes := []store.Node{
		{Name: "s1", Pool: "spot", Priority: spec.PrioritySpot, State: store.NodePreempted, CreatedAt: t0, StateAt: t0.Add(time.Hour), PricePerHour: 0.01, OnDemandPrice: 0.04},
		{Name: "o1", Pool: "od", Priority: spec.PriorityOnDemand, State: store.NodeReady, CreatedAt: t0.Add(time.Hour), StateAt: t0.Add(62 * time.Minute), PricePerHour: 0.04, OnDemandPrice: 0.04, Tasks: 1},
	}
	st, _ := control.DecideJob(control.JobView{Job: j, Nodes: nodes, Pools: pools, Now: t0.Add(4 * time.Hour)})
	if st.Changeover != 5*time.Minute { // the median of 3m and 5m, upper
		t.Errorf("changeover %s, want 5m", st.Changeover)
	}
	if st.SpotLife != time.Hour {
		t.Errorf("spot life %s, want 1h", st.SpotLife)
	}
	// Ran 57m + 2h55m = 3h52m for half the work.
	if want := 2 * (3*time.Hour + 52*time.Minute); st.Work != want || !st.WorkEstimated {
		t.Errorf("work %s (estimated %v), want %s estimated", st.Work, st.WorkEstimated, want)
	}
	c := st.Cost
	if c.Changeovers != 1 || c.SpotHours != 1 || c.OnDemandHours != 3 || c.Spent < 0.01+0.12-1e-9 || c.Spent > 0.13+1e-9 {
		t.Errorf("cost %+v: want 1 changeover, 1 spot hour, 3 on-demand hours, $0.13", c)
	}
	if st.Mode != deadline.OnDemand {
		t.Errorf("mode %s, want ondemand", st.Mode)
	}
}

// TestOnDemandAfterPreemptions moves a task preempted N times to
// on-demand, without a deadline.
func TestOnDemandAfterPreemptions(t *testing.T) {
	j := store.Job{Spec: spec.Job{Spec: spec.JobSpec{Priority: spec.PrioritySpot, OnDemandAfterPreemptions: 2}}, State: store.JobRunning,
		Tasks: []store.Task{
			{ID: 1, State: store.TaskPending, Priority: spec.PrioritySpot, Evictions: 2},
			{ID: 2, State: store.TaskPending, Priority: spec.PrioritySpot, Evictions: 1},
			{ID: 3, State: store.TaskPending, Priority: spec.PriorityOnDemand, Evictions: 3},
		}}
	if !control.Steered(j.Spec) {
		t.Fatal("a job with a preemption cap is not steered")
	}
	st, ok := control.DecideJob(control.JobView{Job: j, Now: time.Now()})
	if ok {
		t.Error("a job without a deadline was decided")
	}
	if len(st.Steers) != 1 || st.Steers[0].TaskID != 1 || st.Steers[0].Priority != spec.PriorityOnDemand {
		t.Errorf("steers %+v, want task 1 to ondemand", st.Steers)
	}
}

// spotShortProvider refuses spot launches while short is set.
type spotShortProvider struct {
	*fakeProvider
	short bool
}

func (p *spotShortProvider) Launch(ctx context.Context, req control.LaunchRequest) (control.Launched, error) {
	if p.short && req.Pool.Spec.Priority == spec.PrioritySpot {
		return control.Launched{}, fmt.Errorf("%w: spot market empty", control.ErrNoCapacity)
	}
	return p.fakeProvider.Launch(ctx, req)
}

const deadlinePools = `
apiVersion: spotml/v1
kind: Pool
metadata: {name: spot}
spec: {provider: local, priority: spot, instanceType: local-small, max: 2}
---
apiVersion: spotml/v1
kind: Pool
metadata: {name: od}
spec: {provider: local, priority: ondemand, instanceType: local-small, max: 2}
---
apiVersion: spotml/v1
kind: Job
metadata: {name: train}
spec: {deadline: 10h, work: 6h, count: 1, template: {command: [train], resources: {cpu: 2}}}
`

// TestDeadlineJobOnThePlane runs a deadline job through the control
// plane over a real store: on spot; preempted and spot gone, on-demand
// once behind; spot back, a probe node and back to spot.
func TestDeadlineJobOnThePlane(t *testing.T) {
	p := newPlane(t)
	prov := &spotShortProvider{fakeProvider: p.prov}
	p.p = control.New(p.st, map[string]control.Provider{spec.ProviderLocal: prov}, nil, p.clock.Now, control.Options{})
	p.apply(deadlinePools)
	task := func() store.Task { return p.job("train").Tasks[0] }
	nodeOf := func(t store.Task) store.Node {
		for _, n := range p.nodes() {
			if n.Name == t.Node {
				return n
			}
		}
		return store.Node{}
	}
	settle := func() {
		// Agents beat first: a clock moved by hours would call them lost.
		for range 3 {
			p.heartbeat()
			p.reconcile()
		}
	}
	progress := func(f float64) {
		tk := task()
		if err := p.st.SetProgress(p.ctx, tk.Node, []store.Progress{{TaskID: tk.ID, Attempt: tk.Attempt, Fraction: f}}); err != nil {
			t.Fatal(err)
		}
	}

	settle()
	if tk := task(); tk.State != store.TaskRunning || nodeOf(tk).Priority != spec.PrioritySpot {
		t.Fatalf("fresh deadline job: %s on %+v, want running on spot", tk.State, nodeOf(tk))
	}
	p.clock.Advance(time.Hour)
	progress(0.17) // an hour of 6h
	prov.short = true
	if err := p.p.Gone(p.ctx, task().Node, store.NodePreempted, "spot capacity gone"); err != nil {
		t.Fatal(err)
	}
	settle()
	if tk := task(); tk.State != store.TaskPending || tk.Priority != spec.PrioritySpot {
		t.Fatalf("preempted ahead of the line: %s %s, want pending, waiting for spot", tk.State, tk.Priority)
	}
	// Behind the uniform-progress line without spot: on-demand.
	for range 4 {
		p.clock.Advance(time.Hour)
		settle()
	}
	if tk := task(); tk.State != store.TaskRunning || nodeOf(tk).Priority != spec.PriorityOnDemand {
		t.Fatalf("behind without spot: %s on %+v, want running on on-demand", tk.State, nodeOf(tk))
	}
	progress(0.62) // 3h on on-demand: 0.1 + 3/6, and a little
	// Spot returns: a probe node comes up and the task moves back.
	prov.short = false
	p.clock.Advance(time.Minute)
	settle()
	p.clock.Advance(time.Minute)
	settle()
	tk := task()
	if tk.State != store.TaskRunning || nodeOf(tk).Priority != spec.PrioritySpot {
		t.Fatalf("spot back: %s on %+v, want running on spot", tk.State, nodeOf(tk))
	}
	var outcomes []string
	for _, a := range tk.Attempts {
		outcomes = append(outcomes, a.Outcome)
	}
	if want := []string{store.NodePreempted, store.OutcomeMoved, ""}; !slices.Equal(outcomes, want) {
		t.Errorf("attempts ended %q, want %q", outcomes, want)
	}
	if j := p.job("train"); j.Evictions != 1 || j.Failures != 0 {
		t.Errorf("job counts %d evictions, %d failures; want 1 and 0 (a move is neither)", j.Evictions, j.Failures)
	}
}

// TestServiceCost prices a service's replicas: one on spot evicted, its
// stand-in on on-demand still running.
func TestServiceCost(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	nodes := []store.Node{
		{Name: "s", Priority: spec.PrioritySpot, CreatedAt: t0, PricePerHour: 1, OnDemandPrice: 4},
		{Name: "o", Priority: spec.PriorityOnDemand, CreatedAt: t0.Add(2 * time.Hour), PricePerHour: 4, OnDemandPrice: 4},
	}
	reps := []store.Replica{
		// ready 6 minutes after its node's launch, evicted at 2h.
		{Node: "s", CreatedAt: t0, ReadyAt: t0.Add(6 * time.Minute), EndedAt: t0.Add(2 * time.Hour)},
		// created at 1h59, its node launched at 2h, ready at 2h06, still up at 3h.
		{Node: "o", CreatedAt: t0.Add(119 * time.Minute), ReadyAt: t0.Add(126 * time.Minute)},
		{Node: "", CreatedAt: t0}, // never placed: nothing spent
	}
	c := control.ServiceCost(reps, nodes, t0.Add(3*time.Hour))
	if c.SpotHours != 2 || c.OnDemandHours != 1 || c.Changeovers != 1 || math.Abs(c.ChangeoverHours-0.1) > 1e-9 ||
		math.Abs(c.Spent-6) > 1e-9 || math.Abs(c.AllOnDemand-(2+0.9)*4) > 1e-9 {
		t.Errorf("cost %+v: want 2 spot h, 1 on-demand h, 1 changeover of 0.1h, $6 spent, $11.6 all on-demand", c)
	}
}

// TestChangeoverCountsRestore: the changeover a job plans with is measured
// from each node's launch to the attempt's first progress, so a resumed
// attempt's restore of its checkpoint is in it (launch to start alone
// would say 1m here).
func TestChangeoverCountsRestore(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	pools := []spec.Pool{
		{Metadata: spec.Metadata{Name: "od"}, Spec: spec.PoolSpec{Priority: spec.PriorityOnDemand, InstanceType: "local-small", Max: 4}},
		{Metadata: spec.Metadata{Name: "spot"}, Spec: spec.PoolSpec{Priority: spec.PrioritySpot, InstanceType: "local-small", Max: 4}},
	}
	p := 0.5
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	j := store.Job{Spec: spec.Job{Spec: spec.JobSpec{Deadline: "10h", Work: spec.Duration{Duration: 6 * time.Hour}}}, State: store.JobRunning,
		SubmittedAt: t0, Tasks: []store.Task{{ID: 1, State: store.TaskRunning, Node: "s3", Progress: &p, ProgressAt: at(3 * time.Hour),
			Attempts: []store.Attempt{
				// launched at 0, started at 1m, working at 2m.
				{Node: "s1", StartedAt: at(time.Minute), FirstProgressAt: at(2 * time.Minute), EndedAt: at(time.Hour), Outcome: "preempted"},
				// launched on its notice at 59m, started at 1h01, restored until 1h09.
				{Node: "s2", StartedAt: at(61 * time.Minute), FirstProgressAt: at(69 * time.Minute), EndedAt: at(2 * time.Hour), Outcome: "preempted"},
				// launched at 2h, started at 2h01, restored until 2h12.
				{Node: "s3", StartedAt: at(121 * time.Minute), FirstProgressAt: at(132 * time.Minute)},
			}}}}
	spot := func(name string, from, to time.Duration, state string) store.Node {
		return store.Node{Name: name, Pool: "spot", Priority: spec.PrioritySpot, State: state, CreatedAt: at(from), StateAt: at(to),
			PricePerHour: 1, OnDemandPrice: 4}
	}
	nodes := []store.Node{spot("s1", 0, time.Hour, store.NodePreempted), spot("s2", 59*time.Minute, 2*time.Hour, store.NodePreempted),
		spot("s3", 2*time.Hour, 2*time.Hour+time.Minute, store.NodeReady)}
	st, _ := control.DecideJob(control.JobView{Job: j, Nodes: nodes, Pools: pools, Now: at(3 * time.Hour)})
	if st.Changeover != 10*time.Minute { // the median of 2m, 10m and 12m
		t.Errorf("changeover %s, want 10m (launch to first progress)", st.Changeover)
	}
	// The cost report's changeovers are the two after the first: 10m + 12m.
	if c := st.Cost; c.Changeovers != 2 || math.Abs(c.ChangeoverHours-22.0/60) > 1e-9 || math.Abs(c.ChangeoverCost-22.0/60) > 1e-9 {
		t.Errorf("cost %+v: want 2 changeovers of 22m in all, $0.37", c)
	}
	// A task that reports no progress: launch to start (1m, 2m, 1m).
	for i := range j.Tasks[0].Attempts {
		j.Tasks[0].Attempts[i].FirstProgressAt = time.Time{}
	}
	if st, _ := control.DecideJob(control.JobView{Job: j, Nodes: nodes, Pools: pools, Now: at(3 * time.Hour)}); st.Changeover != time.Minute {
		t.Errorf("changeover without progress reports %s, want 1m (launch to start)", st.Changeover)
	}
}

// TestResumedRestoreOnThePlane runs a job through the control plane over a
// real store: its first attempt works a minute after its node booted, the
// attempt resumed after a preemption restores its checkpoint for six; the
// changeover the policy plans with, and the job's cost report, count the
// restore.
func TestResumedRestoreOnThePlane(t *testing.T) {
	p := newPlane(t)
	p.apply(deadlinePools)
	task := func() store.Task { return p.job("train").Tasks[0] }
	progress := func(f float64) {
		t.Helper()
		tk := task()
		if err := p.st.SetProgress(p.ctx, tk.Node, []store.Progress{{TaskID: tk.ID, Attempt: tk.Attempt, Fraction: f}}); err != nil {
			t.Fatal(err)
		}
	}
	// start launches a node, boots it for a minute and starts the task.
	start := func() {
		t.Helper()
		p.reconcile()
		p.clock.Advance(time.Minute)
		for range 3 {
			p.heartbeat()
			p.reconcile()
		}
		if tk := task(); tk.State != store.TaskRunning {
			t.Fatalf("task %s after its node booted, want running", tk.State)
		}
	}
	decide := func() control.JobStatus {
		t.Helper()
		st, ok := control.DecideJob(control.JobView{Job: p.job("train"), Nodes: p.nodes(), Pools: poolsOf(t, p), Now: p.clock.Now()})
		if !ok {
			t.Fatal("a deadline job was not decided")
		}
		return st
	}

	start()
	p.clock.Advance(time.Minute)
	progress(0.01) // working 2m after its node's launch
	p.clock.Advance(time.Hour)
	progress(0.17)
	if err := p.p.Gone(p.ctx, task().Node, store.NodePreempted, "spot capacity gone"); err != nil {
		t.Fatal(err)
	}
	start()
	if st := decide(); st.Changeover != 2*time.Minute {
		t.Fatalf("changeover before the resumed attempt works: %s, want 2m (the first attempt's)", st.Changeover)
	}
	p.clock.Advance(6 * time.Minute) // restoring the checkpoint
	progress(0.17)
	p.clock.Advance(time.Minute)
	progress(0.18)
	tk := task()
	if len(tk.Attempts) != 2 {
		t.Fatalf("attempts %+v, want 2", tk.Attempts)
	}
	if got := tk.Attempts[1].FirstProgressAt.Sub(tk.Attempts[1].StartedAt); got != 6*time.Minute {
		t.Errorf("resumed attempt's first progress %s after its start, want 6m", got)
	}
	st := decide()
	if st.Changeover != 7*time.Minute { // the larger of 2m and 1m + 6m
		t.Errorf("changeover %s, want 7m: the resumed attempt's launch, boot and restore", st.Changeover)
	}
	if c := st.Cost; c.Changeovers != 1 || math.Abs(c.ChangeoverHours-7.0/60) > 1e-9 {
		t.Errorf("cost %+v: want one changeover of 7m", c)
	}
}

func poolsOf(t *testing.T, p *plane) []spec.Pool {
	t.Helper()
	stored, err := p.st.ListPools(p.ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]spec.Pool, len(stored))
	for i, pl := range stored {
		out[i] = pl.Spec
	}
	return out
}
