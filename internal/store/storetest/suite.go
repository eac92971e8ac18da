// Package storetest is the store's conformance suite (Run), which every
// backend runs against its own database, and the harness its tests share.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/clock"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// Opener opens a store over one database that belongs to the test; called
// again after Close it reopens the same database, so that durability can be
// checked. Every backend of the store passes Run.
type Opener func(now func() time.Time) (*sqlstore.Store, error)

// Run is the conformance suite: every test of the store's behaviour that
// holds whatever database is under it. newDB returns an Opener over a
// fresh, empty database.
func Run(t *testing.T, newDB func(t *testing.T) Opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, h *Harness)
	}{
		{"MigrateTwice", testMigrateTwice},
		{"BootstrapSecret", testBootstrapSecret},
		{"NodeCredentials", testNodeCredentials},
		{"NodeWork", testNodeWork},
		{"FirstProgress", testFirstProgress},
		{"APITokens", testAPITokens},
		{"ApplyPools", testApplyPools},
		{"ApplyJobImmutable", testApplyJobImmutable},
		{"ApplyAllOrNothing", testApplyAllOrNothing},
		{"Assign", testAssign},
		{"ReportFencing", testReportFencing},
		{"ReportBatch", testReportBatch},
		{"PendingQueue", testPendingQueue},
		{"FailedRetriedThenFailed", testFailedRetried},
		{"PreemptedOutcomeRequeues", testPreemptedOutcome},
		{"EndNodeRequeues", testEndNodeRequeues},
		{"JobSettles", testJobSettles},
		{"HeartbeatAndNotice", testHeartbeatAndNotice},
		{"AtRisk", testAtRisk},
		{"ListEventsFilters", testListEvents},
		{"ListEventsOf", testListEventsOf},
		{"Runs", testRuns},
		{"RecentNodes", testRecentNodes},
		{"DeleteJobCascades", testDeleteJob},
		{"DeletePool", testDeletePool},
		{"Durable", testDurable},
		{"ConcurrentReports", testConcurrentReports},
		{"ConcurrentAssign", testConcurrentAssign},
		{"GatewayStats", testGatewayStats},
		{"ServiceSamples", testServiceSamples},
		{"ServiceSamplesRetention", testServiceSamplesRetention},
		{"Prune", testPrune},
		{"LiveNodes", testLiveNodes},
		{"HeartbeatInMemory", testHeartbeatInMemory},
		{"BatchQueue", testBatchQueue},
		{"BatchBrokerLedger", testBatchBrokerLedger},
		{"BatchLeaseExpiry", testBatchLeaseExpiry},
		{"BatchConcurrentLeases", testBatchConcurrentLeases},
		{"LeaderLease", testLeaderLease},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, NewHarness(t, newDB(t)))
		})
	}
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

// Harness is one test's store, its fake clock, and helpers that fail the
// test on an error.
type Harness struct {
	T     *testing.T
	Ctx   context.Context
	St    *sqlstore.Store
	Clock *clock.Fake
	open  Opener
}

// NewHarness opens a store with open; it is closed when the test ends.
func NewHarness(t *testing.T, open Opener) *Harness {
	h := &Harness{T: t, Ctx: t.Context(), Clock: clock.NewFake(t0), open: open}
	h.St = h.MustOpen()
	t.Cleanup(func() { h.St.Close() })
	return h
}

func (h *Harness) MustOpen() *sqlstore.Store {
	h.T.Helper()
	st, err := h.open(h.Clock.Now)
	if err != nil {
		h.T.Fatalf("open store: %v", err)
	}
	return st
}

// reopen closes the store and opens the same database again, as a
// restarted control plane does.
func (h *Harness) Reopen() {
	h.T.Helper()
	if err := h.St.Close(); err != nil {
		h.T.Fatalf("close: %v", err)
	}
	h.St = h.MustOpen()
}

// apply parses YAML documents and applies them.
func (h *Harness) Apply(yaml string) []store.ApplyResult {
	h.T.Helper()
	pools, jobs := parse(h.T, yaml)
	res, err := h.St.Apply(h.Ctx, pools, jobs)
	if err != nil {
		h.T.Fatalf("apply: %v", err)
	}
	return res
}

func parse(t *testing.T, yaml string) ([]spec.Pool, []spec.Job) {
	t.Helper()
	docs, err := spec.Parse([]byte(yaml))
	if err != nil {
		t.Fatalf("parse: %v", err)
	}
	var pools []spec.Pool
	var jobs []spec.Job
	for _, d := range docs {
		if d.Pool != nil {
			pools = append(pools, *d.Pool)
		}
		if d.Job != nil {
			jobs = append(jobs, *d.Job)
		}
	}
	return pools, jobs
}

// node records a node and, when ready, has its agent report ready.
func (h *Harness) Node(name string, ready bool) {
	h.T.Helper()
	n := store.Node{Name: name, Pool: "cpu", Priority: spec.PrioritySpot, InstanceType: "local-small",
		Capacity: spec.Resources{CPU: 2, Memory: 4 << 30}, PricePerHour: 0.1, OnDemandPrice: 0.4}
	if err := h.St.CreateNode(h.Ctx, n); err != nil {
		h.T.Fatal(err)
	}
	if err := h.St.SetNodeLaunched(h.Ctx, name, ""); err != nil { // the provider launched it
		h.T.Fatal(err)
	}
	if ready {
		if _, err := h.St.Heartbeat(h.Ctx, name, true); err != nil {
			h.T.Fatal(err)
		}
	}
}

func (h *Harness) job(name string) store.Job {
	h.T.Helper()
	j, err := h.St.GetJob(h.Ctx, name)
	if err != nil {
		h.T.Fatal(err)
	}
	return j
}

func (h *Harness) Task(job, task string) store.Task {
	h.T.Helper()
	for _, t := range h.job(job).Tasks {
		if t.Name == task {
			return t
		}
	}
	h.T.Fatalf("no task %s/%s", job, task)
	return store.Task{}
}

func (h *Harness) getNode(name string) store.Node {
	h.T.Helper()
	n, err := h.St.GetNode(h.Ctx, name)
	if err != nil {
		h.T.Fatal(err)
	}
	return n
}

func (h *Harness) Assign(want int, plan ...store.Assignment) {
	h.T.Helper()
	n, err := h.St.Assign(h.Ctx, plan)
	if err != nil {
		h.T.Fatal(err)
	}
	if n != want {
		h.T.Fatalf("Assign applied %d of %v, want %d", n, plan, want)
	}
}

func (h *Harness) report(t store.Task, node string, attempt int, outcome string, exit int, msg string) bool {
	h.T.Helper()
	ok, err := h.St.Report(h.Ctx, t.ID, node, attempt, outcome, exit, msg)
	if err != nil {
		h.T.Fatalf("report %s/%s: %v", t.Job, t.Name, err)
	}
	return ok
}

// events returns "Kind object" of the events whose object starts with
// prefix, oldest first.
func (h *Harness) events(prefix string) []string {
	h.T.Helper()
	es, err := h.St.ListEvents(h.Ctx, store.EventFilter{Object: prefix})
	if err != nil {
		h.T.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Kind+" "+e.Object)
	}
	return out
}

const PoolCPU = `
apiVersion: spotml/v1
kind: Pool
metadata: {name: cpu}
spec: {provider: local, priority: spot, instanceType: local-small, max: 3}
`

// JobYAML is a job of n template tasks (task-0, task-1, …) in pool cpu.
func JobYAML(name string, n, maxRetries int) string {
	return fmt.Sprintf(`
apiVersion: spotml/v1
kind: Job
metadata: {name: %s}
spec:
  pool: cpu
  count: %d
  template: {command: [train], maxRetries: %d}
`, name, n, maxRetries)
}

func testMigrateTwice(t *testing.T, h *Harness) {
	h.Apply(PoolCPU)
	for range 2 {
		h.Reopen()
	}
	ps, err := h.St.ListPools(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Spec.Metadata.Name != "cpu" {
		t.Fatalf("pools after reopening: %+v", ps)
	}
}

func testApplyPools(t *testing.T, h *Harness) {
	if got := h.Apply(PoolCPU); !slices.Equal(got, []store.ApplyResult{{Kind: "Pool", Name: "cpu", Action: "created"}}) {
		t.Errorf("first apply: %+v", got)
	}
	h.Clock.Advance(time.Minute)
	if got := h.Apply(PoolCPU); got[0].Action != "unchanged" {
		t.Errorf("same spec again: %+v", got)
	}
	p, err := h.St.GetPool(h.Ctx, "cpu")
	if err != nil {
		t.Fatal(err)
	}
	if p.Generation != 1 || !p.UpdatedAt.Equal(t0) {
		t.Errorf("unchanged apply touched the pool: generation %d, updated %s", p.Generation, p.UpdatedAt)
	}
	h.Clock.Advance(time.Minute)
	if got := h.Apply(strings.Replace(PoolCPU, "max: 3", "max: 5", 1)); got[0].Action != "configured" {
		t.Errorf("changed spec: %+v", got)
	}
	p, _ = h.St.GetPool(h.Ctx, "cpu")
	if p.Generation != 2 || p.Spec.Spec.Max != 5 || !p.CreatedAt.Equal(t0) || !p.UpdatedAt.Equal(t0.Add(2*time.Minute)) {
		t.Errorf("configured pool: generation %d, max %d, created %s, updated %s", p.Generation, p.Spec.Spec.Max, p.CreatedAt, p.UpdatedAt)
	}
	if got, want := h.events("pool/"), []string{"Created pool/cpu", "Updated pool/cpu"}; !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
}

func testApplyJobImmutable(t *testing.T, h *Harness) {
	res := h.Apply(PoolCPU + "---" + JobYAML("train", 2, 1))
	if res[1] != (store.ApplyResult{Kind: "Job", Name: "train", Action: "created"}) {
		t.Errorf("apply: %+v", res)
	}
	before := h.job("train")
	if res := h.Apply(JobYAML("train", 2, 1)); res[0].Action != "unchanged" {
		t.Errorf("same job again: %+v", res)
	}
	pools, jobs := parse(t, JobYAML("train", 3, 1))
	_, err := h.St.Apply(h.Ctx, pools, jobs)
	if !errors.Is(err, store.ErrConflict) {
		t.Fatalf("changed job: err %v, want ErrConflict", err)
	}
	if !strings.Contains(err.Error(), `"train"`) || !strings.Contains(err.Error(), "delete") {
		t.Errorf("conflict message does not say which job or what to do: %v", err)
	}
	after := h.job("train")
	if after.UID != before.UID || len(after.Tasks) != 2 || after.Spec.Spec.Count != 2 {
		t.Errorf("conflicting apply changed the job: %+v", after)
	}
	if got, want := h.events("job/"), []string{"Submitted job/train"}; !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
}

func testApplyAllOrNothing(t *testing.T, h *Harness) {
	h.Apply(PoolCPU + "---" + JobYAML("train", 1, 0))
	pools, jobs := parse(t, strings.Replace(PoolCPU, "name: cpu", "name: gpu", 1)+"---"+JobYAML("new", 1, 0)+"---"+JobYAML("train", 5, 0))
	if _, err := h.St.Apply(h.Ctx, pools, jobs); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("err %v, want ErrConflict", err)
	}
	if _, err := h.St.GetPool(h.Ctx, "gpu"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("pool of the refused apply: err %v, want ErrNotFound", err)
	}
	if _, err := h.St.GetJob(h.Ctx, "new"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("job of the refused apply: err %v, want ErrNotFound", err)
	}
	if got := h.events(""); len(got) != 2 {
		t.Errorf("refused apply left events: %q", got)
	}
}

func testAssign(t *testing.T, h *Harness) {
	h.Apply(PoolCPU + "---" + JobYAML("train", 4, 0))
	h.Node("prov", false)
	h.Node("ready", true)
	h.Node("noticed", true)
	h.Node("gone", true)
	if _, err := h.St.SetNotice(h.Ctx, "noticed", t0.Add(time.Minute), "provider"); err != nil {
		t.Fatal(err)
	}
	if err := h.St.EndNode(h.Ctx, "gone", store.NodeTerminated, "test"); err != nil {
		t.Fatal(err)
	}
	h.Clock.Advance(time.Minute)
	now := h.Clock.Now()
	tasks := h.job("train").Tasks
	h.Assign(1,
		store.Assignment{TaskID: tasks[0].ID, Node: "prov"},    // not ready yet
		store.Assignment{TaskID: tasks[1].ID, Node: "ready"},   // the one that counts
		store.Assignment{TaskID: tasks[2].ID, Node: "noticed"}, // has an eviction notice
		store.Assignment{TaskID: tasks[3].ID, Node: "gone"},    // ended
		store.Assignment{TaskID: tasks[3].ID, Node: "missing"}, // never existed
		store.Assignment{TaskID: tasks[1].ID, Node: "ready"},   // no longer pending
	)
	j := h.job("train")
	for i, tk := range j.Tasks {
		if i == 1 {
			continue
		}
		if tk.State != store.TaskPending || tk.Node != "" || len(tk.Attempts) != 0 {
			t.Errorf("task %s: state %s on %q with attempts %+v, want pending", tk.Name, tk.State, tk.Node, tk.Attempts)
		}
	}
	got := j.Tasks[1]
	if got.State != store.TaskRunning || got.Node != "ready" || got.Attempt != 1 || !got.StartedAt.Equal(now) {
		t.Errorf("assigned task: %+v", got)
	}
	if want := []store.Attempt{{Attempt: 1, Node: "ready", StartedAt: now}}; !slices.Equal(got.Attempts, want) {
		t.Errorf("attempts %+v, want %+v", got.Attempts, want)
	}
	if n := h.getNode("ready"); !n.IdleSince.IsZero() {
		t.Errorf("busy node still idle since %s", n.IdleSince)
	}
	nt, err := h.St.NodeTasks(h.Ctx, "ready")
	if err != nil {
		t.Fatal(err)
	}
	if len(nt) != 1 || nt[0].ID != got.ID || !slices.Equal(nt[0].Spec.Command, spec.Command{"train"}) {
		t.Errorf("NodeTasks: %+v", nt)
	}
	pending, _ := h.St.PendingTasks(h.Ctx)
	var names []string
	for _, p := range pending {
		names = append(names, p.Name)
	}
	if want := []string{"task-0", "task-2", "task-3"}; !slices.Equal(names, want) {
		t.Errorf("pending %q, want %q", names, want)
	}
	nodes, _ := h.St.ListNodes(h.Ctx)
	for _, n := range nodes {
		if want := map[string]int{"ready": 1}[n.Name]; n.Tasks != want {
			t.Errorf("node %s runs %d tasks, want %d", n.Name, n.Tasks, want)
		}
	}
}

// RecentNodes: the live nodes and those that ended since a time.
func testRecentNodes(t *testing.T, h *Harness) {
	h.Apply(PoolCPU)
	h.Node("old", true)
	h.Node("live", true)
	h.Node("provisioning", false)
	if err := h.St.EndNode(h.Ctx, "old", store.NodePreempted, "evicted"); err != nil {
		t.Fatal(err)
	}
	h.Clock.Advance(10 * time.Minute)
	h.Node("recent", true)
	if err := h.St.EndNode(h.Ctx, "recent", store.NodeTerminated, "idle"); err != nil {
		t.Fatal(err)
	}
	names := func(since time.Time) []string {
		ns, err := h.St.RecentNodes(h.Ctx, since)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, n := range ns {
			out = append(out, n.Name)
		}
		return out
	}
	if got, want := names(h.Clock.Now().Add(-time.Minute)), []string{"live", "provisioning", "recent"}; !slices.Equal(got, want) {
		t.Errorf("ended in the last minute: %q, want %q", got, want)
	}
	if got, want := names(h.Clock.Now().Add(-time.Hour)), []string{"live", "old", "provisioning", "recent"}; !slices.Equal(got, want) {
		t.Errorf("ended in the last hour: %q, want %q", got, want)
	}
}

func testReportFencing(t *testing.T, h *Harness) {
	h.Apply(PoolCPU + "---" + JobYAML("train", 1, 0))
	h.Node("n1", true)
	tk := h.Task("train", "task-0")
	h.Assign(1, store.Assignment{TaskID: tk.ID, Node: "n1"})

	if h.report(tk, "n2", 1, store.OutcomeSucceeded, 0, "") {
		t.Error("report from another node accepted")
	}
	if h.report(tk, "n1", 2, store.OutcomeSucceeded, 0, "") {
		t.Error("report of another attempt accepted")
	}
	if ok, err := h.St.Report(h.Ctx, tk.ID+1000, "n1", 1, store.OutcomeSucceeded, 0, ""); ok || err != nil {
		t.Errorf("report of an unknown task: %v, %v; want false, nil", ok, err)
	}
	if _, err := h.St.Report(h.Ctx, tk.ID, "n1", 1, "exploded", 0, ""); err == nil {
		t.Error("unknown outcome accepted")
	}
	if got := h.Task("train", "task-0"); got.State != store.TaskRunning || got.Attempts[0].Outcome != "" {
		t.Fatalf("ignored reports changed the task: %+v", got)
	}
	if !h.report(tk, "n1", 1, store.OutcomeSucceeded, 0, "done") {
		t.Fatal("the right report was not accepted")
	}
	if h.report(tk, "n1", 1, store.OutcomeFailed, 1, "") {
		t.Error("a second report of the same attempt was accepted")
	}
	if got := h.Task("train", "task-0"); got.State != store.TaskSucceeded || got.Message != "done" {
		t.Errorf("task after a duplicate report: %+v", got)
	}
}

// testReportBatch checks group commit: each report of a batch is fenced on
// its own (a duplicate within the batch too), jobs settle once, and a bad
// report refuses the whole batch.
func testReportBatch(t *testing.T, h *Harness) {
	h.Apply(PoolCPU + "---" + JobYAML("batch", 3, 1))
	h.Node("n1", true)
	tasks := h.job("batch").Tasks
	for _, tk := range tasks {
		h.Assign(1, store.Assignment{TaskID: tk.ID, Node: "n1"})
	}
	report := func(tk store.Task, outcome string) store.Report {
		return store.Report{TaskID: tk.ID, Node: "n1", Attempt: 1, Outcome: outcome}
	}
	if _, err := h.St.ReportBatch(h.Ctx, []store.Report{report(tasks[0], store.OutcomeSucceeded), report(tasks[1], "exploded")}); err == nil {
		t.Fatal("batch with an unknown outcome accepted")
	}
	if got := h.Task("batch", "task-0"); got.State != store.TaskRunning {
		t.Fatalf("refused batch changed a task: %+v", got)
	}
	oks, err := h.St.ReportBatch(h.Ctx, []store.Report{
		report(tasks[0], store.OutcomeSucceeded),
		report(tasks[0], store.OutcomeSucceeded),                                       // duplicate
		{TaskID: tasks[1].ID, Node: "n2", Attempt: 1, Outcome: store.OutcomeSucceeded}, // wrong node
		report(tasks[1], store.OutcomeFailed),                                          // retried
		report(tasks[2], store.OutcomeSucceeded),
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := []bool{true, false, false, true, true}; !slices.Equal(oks, want) {
		t.Errorf("accepted %v, want %v", oks, want)
	}
	if got := h.Task("batch", "task-1"); got.State != store.TaskPending || got.Attempt != 2 || got.Failures != 1 {
		t.Errorf("failed task: %+v", got)
	}
	h.Assign(1, store.Assignment{TaskID: tasks[1].ID, Node: "n1"})
	oks, err = h.St.ReportBatch(h.Ctx, []store.Report{
		{TaskID: tasks[1].ID, Node: "n1", Attempt: 2, Outcome: store.OutcomeSucceeded},
		{TaskID: tasks[1].ID, Node: "n1", Attempt: 2, Outcome: store.OutcomeFailed},
	})
	if err != nil || !slices.Equal(oks, []bool{true, false}) {
		t.Errorf("second batch: %v, %v", oks, err)
	}
	if j := h.job("batch"); j.State != store.JobSucceeded {
		t.Errorf("job %s, want succeeded", j.State)
	}
	if got := h.events("job/"); !slices.Equal(got, []string{"Submitted job/batch", "Succeeded job/batch"}) {
		t.Errorf("events %q", got)
	}
	if oks, err := h.St.ReportBatch(h.Ctx, nil); err != nil || len(oks) != 0 {
		t.Errorf("empty batch: %v, %v", oks, err)
	}
}

func testFailedRetried(t *testing.T, h *Harness) {
	h.Apply(PoolCPU + "---" + JobYAML("flaky", 1, 2))
	h.Node("n1", true)
	for attempt := 1; attempt <= 3; attempt++ {
		tk := h.Task("flaky", "task-0")
		if tk.State != store.TaskPending || tk.Attempt != attempt || tk.Failures != attempt-1 {
			t.Fatalf("before attempt %d: %+v", attempt, tk)
		}
		h.Assign(1, store.Assignment{TaskID: tk.ID, Node: "n1"})
		h.Clock.Advance(time.Second)
		if !h.report(tk, "n1", attempt, store.OutcomeFailed, 3, "boom") {
			t.Fatalf("attempt %d: report not accepted", attempt)
		}
	}
	j := h.job("flaky")
	tk := j.Tasks[0]
	if j.State != store.JobFailed || !j.FinishedAt.Equal(h.Clock.Now()) {
		t.Errorf("job %s finished %s, want failed at %s", j.State, j.FinishedAt, h.Clock.Now())
	}
	if tk.State != store.TaskFailed || tk.Failures != 3 || tk.Attempt != 3 || tk.ExitCode != 3 || tk.Message != "boom" || tk.Evictions != 0 {
		t.Errorf("task: %+v", tk)
	}
	if len(tk.Attempts) != 3 {
		t.Fatalf("attempts: %+v", tk.Attempts)
	}
	for i, a := range tk.Attempts {
		if a.Attempt != i+1 || a.Outcome != store.OutcomeFailed || a.ExitCode != 3 || a.EndedAt.IsZero() {
			t.Errorf("attempt %d: %+v", i+1, a)
		}
	}
	want := []string{"Retrying task/flaky/task-0", "Retrying task/flaky/task-0", "Failed task/flaky/task-0"}
	if got := h.events("task/"); !slices.Equal(got, want) {
		t.Errorf("task events %q, want %q", got, want)
	}
	if got, want := h.events("job/"), []string{"Submitted job/flaky", "Failed job/flaky"}; !slices.Equal(got, want) {
		t.Errorf("job events %q, want %q", got, want)
	}
}

func testPreemptedOutcome(t *testing.T, h *Harness) {
	h.Apply(PoolCPU + "---" + JobYAML("ckpt", 1, 0))
	h.Node("n1", true)
	h.Node("n2", true)
	tk := h.Task("ckpt", "task-0")
	h.Assign(1, store.Assignment{TaskID: tk.ID, Node: "n1"})
	if !h.report(tk, "n1", 1, store.OutcomePreempted, 143, "notice") {
		t.Fatal("report not accepted")
	}
	got := h.Task("ckpt", "task-0")
	if got.State != store.TaskPending || got.Attempt != 2 || got.Evictions != 1 || got.Failures != 0 || got.Node != "" {
		t.Errorf("after preemption: %+v", got)
	}
	if got.Attempts[0].Outcome != store.OutcomePreempted || got.Attempts[0].ExitCode != 143 {
		t.Errorf("attempt 1: %+v", got.Attempts[0])
	}
	// maxRetries is 0, yet the task runs again: evictions use no retries.
	h.Assign(1, store.Assignment{TaskID: tk.ID, Node: "n2"})
	if !h.report(tk, "n2", 2, store.OutcomeSucceeded, 0, "") {
		t.Fatal("attempt 2 report not accepted")
	}
	j := h.job("ckpt")
	if j.State != store.JobSucceeded || j.Evictions != 1 || len(j.Tasks[0].Attempts) != 2 {
		t.Errorf("job: %+v", j)
	}
	want := []string{"Requeued task/ckpt/task-0", "Succeeded task/ckpt/task-0"}
	if got := h.events("task/"); !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
}

func testEndNodeRequeues(t *testing.T, h *Harness) {
	h.Apply(PoolCPU + "---" + JobYAML("train", 3, 0))
	h.Node("n1", true)
	h.Node("n2", true)
	tasks := h.job("train").Tasks
	h.Assign(3, store.Assignment{TaskID: tasks[0].ID, Node: "n1"}, store.Assignment{TaskID: tasks[1].ID, Node: "n1"},
		store.Assignment{TaskID: tasks[2].ID, Node: "n2"})
	noticed := h.Clock.Now()
	if _, err := h.St.SetNotice(h.Ctx, "n1", t0.Add(30*time.Second), "agent"); err != nil {
		t.Fatal(err)
	}
	h.Clock.Advance(time.Hour)
	end := h.Clock.Now()
	if err := h.St.EndNode(h.Ctx, "n1", store.NodePreempted, "SpotEviction"); err != nil {
		t.Fatal(err)
	}
	n := h.getNode("n1")
	if n.State != store.NodePreempted || n.Reason != "SpotEviction" || !n.StateAt.Equal(end) || !n.NoticeDeadline.IsZero() {
		t.Errorf("ended node: %+v", n)
	}
	// When the notice came stays known after the end (spare sizing).
	if !n.NoticeAt.Equal(noticed) {
		t.Errorf("ended node's notice arrived %s, want %s", n.NoticeAt, noticed)
	}
	if n2 := h.getNode("n2"); !n2.NoticeAt.IsZero() {
		t.Errorf("node without a notice has NoticeAt %s", n2.NoticeAt)
	}
	j := h.job("train")
	for _, tk := range j.Tasks[:2] {
		if tk.State != store.TaskPending || tk.Attempt != 2 || tk.Evictions != 1 || tk.Failures != 0 || tk.Node != "" {
			t.Errorf("requeued task: %+v", tk)
		}
		if a := tk.Attempts[0]; a.Outcome != store.NodePreempted || a.ExitCode != -1 || !a.EndedAt.Equal(end) {
			t.Errorf("attempt of %s: %+v", tk.Name, a)
		}
	}
	if tk := j.Tasks[2]; tk.State != store.TaskRunning || tk.Node != "n2" {
		t.Errorf("task on another node: %+v", tk)
	}
	if j.State != store.JobRunning || j.Evictions != 2 {
		t.Errorf("job %s with %d evictions", j.State, j.Evictions)
	}
	runs, _ := h.St.Runs(h.Ctx)
	for _, r := range runs {
		want := map[string]time.Time{"n1": end}[r.Node]
		if !r.End.Equal(want) {
			t.Errorf("run of %s ends %s, want %s", r.Node, r.End, want)
		}
	}
	if h.report(tasks[0], "n1", 1, store.OutcomeSucceeded, 0, "") {
		t.Error("late report from the evicted node accepted")
	}
	wantEvents := []string{"Launched node/n1", "Ready node/n1", "Notice node/n1", "Evicted node/n1"}
	if got := h.events("node/n1"); !slices.Equal(got, wantEvents) {
		t.Errorf("node events %q, want %q", got, wantEvents)
	}
	if got := h.events("task/"); !slices.Equal(got, []string{"Requeued task/train/task-0", "Requeued task/train/task-1"}) {
		t.Errorf("task events %q", got)
	}

	// Ending an ended node is a no-op; a live state is not an end.
	if err := h.St.EndNode(h.Ctx, "n1", store.NodeLost, "late"); err != nil {
		t.Errorf("second EndNode: %v", err)
	}
	if n := h.getNode("n1"); n.State != store.NodePreempted || len(h.events("node/n1")) != 4 {
		t.Errorf("second EndNode changed the node: %+v", n)
	}
	if err := h.St.EndNode(h.Ctx, "n2", store.NodeReady, ""); err == nil {
		t.Error("EndNode to ready accepted")
	}
	if err := h.St.EndNode(h.Ctx, "missing", store.NodeLost, ""); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("EndNode of a missing node: %v", err)
	}
	if _, err := h.St.Heartbeat(h.Ctx, "n1", true); !errors.Is(err, store.ErrConflict) {
		t.Errorf("heartbeat of an ended node: %v, want ErrConflict", err)
	}
	if _, err := h.St.SetNotice(h.Ctx, "n1", end, "agent"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("notice of an ended node: %v, want ErrConflict", err)
	}
}

func testJobSettles(t *testing.T, h *Harness) {
	h.Apply(PoolCPU + "---" + JobYAML("good", 2, 0) + "---" + JobYAML("mixed", 2, 0))
	h.Node("n1", true)
	var plan []store.Assignment
	for _, name := range []string{"good", "mixed"} {
		for _, tk := range h.job(name).Tasks {
			plan = append(plan, store.Assignment{TaskID: tk.ID, Node: "n1"})
		}
	}
	h.Assign(4, plan...)
	h.report(h.Task("good", "task-0"), "n1", 1, store.OutcomeSucceeded, 0, "")
	h.report(h.Task("mixed", "task-0"), "n1", 1, store.OutcomeFailed, 2, "")
	for _, name := range []string{"good", "mixed"} {
		if j := h.job(name); j.State != store.JobRunning || !j.FinishedAt.IsZero() {
			t.Errorf("job %s with a task running: %s", name, j.State)
		}
	}
	h.Clock.Advance(time.Minute)
	h.report(h.Task("good", "task-1"), "n1", 1, store.OutcomeSucceeded, 0, "")
	h.report(h.Task("mixed", "task-1"), "n1", 1, store.OutcomeSucceeded, 0, "")
	jobs, err := h.St.ListJobs(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]struct {
		state  string
		counts map[string]int
	}{
		"good":  {store.JobSucceeded, map[string]int{"succeeded": 2}},
		"mixed": {store.JobFailed, map[string]int{"succeeded": 1, "failed": 1}},
	}
	for _, j := range jobs {
		w := want[j.Spec.Metadata.Name]
		if j.State != w.state || !j.FinishedAt.Equal(h.Clock.Now()) || fmt.Sprint(j.Counts) != fmt.Sprint(w.counts) {
			t.Errorf("job %s: state %s, finished %s, counts %v; want %s, %v", j.Spec.Metadata.Name, j.State, j.FinishedAt, j.Counts, w.state, w.counts)
		}
	}
	es, _ := h.St.ListEvents(h.Ctx, store.EventFilter{Object: "job/mixed"})
	if last := es[len(es)-1]; last.Kind != "Failed" || last.Reason != "AllTasksDone" || last.Message != "1 failed" {
		t.Errorf("last job event: %+v", last)
	}
	if got := h.events("job/good"); !slices.Equal(got, []string{"Submitted job/good", "Succeeded job/good"}) {
		t.Errorf("events %q", got)
	}
}

func testHeartbeatAndNotice(t *testing.T, h *Harness) {
	h.Apply(PoolCPU)
	h.Node("n1", false)
	n := h.getNode("n1")
	if n.State != store.NodeProvisioning || n.Incarnation != 1 || !n.CreatedAt.Equal(t0) || !n.HeartbeatAt.IsZero() {
		t.Errorf("new node: %+v", n)
	}
	h.Clock.Advance(time.Second)
	if n, err := h.St.Heartbeat(h.Ctx, "n1", false); err != nil || n.State != store.NodeProvisioning || !n.HeartbeatAt.Equal(h.Clock.Now()) {
		t.Errorf("heartbeat while starting: %+v, %v", n, err)
	}
	h.Clock.Advance(time.Second)
	for range 2 {
		n, err := h.St.Heartbeat(h.Ctx, "n1", true)
		if err != nil || n.State != store.NodeReady || !n.StateAt.Equal(t0.Add(2*time.Second)) {
			t.Errorf("ready heartbeat: %+v, %v", n, err)
		}
	}
	if got := h.getNode("n1"); got.State != store.NodeReady || !got.HeartbeatAt.Equal(h.Clock.Now()) {
		t.Errorf("stored node: %+v", got)
	}
	if _, err := h.St.Heartbeat(h.Ctx, "missing", true); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("heartbeat of a missing node: %v", err)
	}

	deadline := h.Clock.Now().Add(30 * time.Second)
	if changed, err := h.St.SetNotice(h.Ctx, "n1", deadline, "provider"); !changed || err != nil {
		t.Errorf("first notice: %v, %v", changed, err)
	}
	if n := h.getNode("n1"); n.State != store.NodeReady || !n.NoticeDeadline.Equal(deadline) {
		t.Errorf("after a provider's notice: %+v", n)
	}
	if changed, err := h.St.SetNotice(h.Ctx, "n1", deadline.Add(time.Hour), "agent"); changed || err != nil {
		t.Errorf("second notice: %v, %v", changed, err)
	}
	if n := h.getNode("n1"); n.State != store.NodeDraining || !n.NoticeDeadline.Equal(deadline) {
		t.Errorf("after the agent read the notice: %+v", n)
	}
	h.St.SetNotice(h.Ctx, "n1", deadline, "agent")
	want := []string{"Launched node/n1", "Ready node/n1", "Notice node/n1", "Draining node/n1"}
	if got := h.events("node/"); !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	if _, err := h.St.SetNotice(h.Ctx, "missing", deadline, "agent"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("notice of a missing node: %v", err)
	}
}

// testAtRisk: a rebalance recommendation marks a node at risk once, with
// an event, and leaves its state and work alone; a notice still drains it.
func testAtRisk(t *testing.T, h *Harness) {
	h.Apply(PoolCPU)
	h.Node("n1", true)
	at := h.Clock.Now().Add(-time.Second)
	if changed, err := h.St.SetAtRisk(h.Ctx, "n1", at, "agent (aws)"); !changed || err != nil {
		t.Fatalf("first warning: %v, %v", changed, err)
	}
	if n := h.getNode("n1"); n.State != store.NodeReady || !n.AtRisk.Equal(at) || !n.NoticeDeadline.IsZero() {
		t.Errorf("after the warning: %+v", n)
	}
	if changed, err := h.St.SetAtRisk(h.Ctx, "n1", at.Add(time.Minute), "agent (aws)"); changed || err != nil {
		t.Errorf("second warning: %v, %v", changed, err)
	}
	if n := h.getNode("n1"); !n.AtRisk.Equal(at) {
		t.Errorf("a later warning moved AtRisk to %v", n.AtRisk)
	}
	if _, err := h.St.SetNotice(h.Ctx, "n1", h.Clock.Now().Add(2*time.Minute), "agent"); err != nil {
		t.Fatal(err)
	}
	if n := h.getNode("n1"); n.State != store.NodeDraining || !n.AtRisk.Equal(at) {
		t.Errorf("after the notice: %+v", n)
	}
	want := []string{"Launched node/n1", "Ready node/n1", "AtRisk node/n1", "Notice node/n1"}
	if got := h.events("node/"); !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	if _, err := h.St.SetAtRisk(h.Ctx, "missing", at, "agent"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("warning of a missing node: %v", err)
	}
	if err := h.St.EndNode(h.Ctx, "n1", store.NodePreempted, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.St.SetAtRisk(h.Ctx, "n1", at, "agent"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("warning of an ended node: %v", err)
	}
}

func testListEvents(t *testing.T, h *Harness) {
	add := []struct{ kind, object string }{
		{"Launched", "node/a_b"},
		{"Launched", "node/axb"},
		{"Notice", "node/a%c"},
		{"Launched", "node/abc"},
		{"Requeued", "task/j1/x"},
		{"Launched", "NODE/abc"},
		{"Requeued", "task/j10/x"},
	}
	for _, e := range add {
		if err := h.St.AddEvent(h.Ctx, e.kind, e.object, "Test", "msg"); err != nil {
			t.Fatal(err)
		}
		h.Clock.Advance(time.Second)
	}
	all, err := h.St.ListEvents(h.Ctx, store.EventFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(add) {
		t.Fatalf("%d events, want %d", len(all), len(add))
	}
	for i, e := range all {
		if e.Kind != add[i].kind || e.Object != add[i].object || !e.Time.Equal(t0.Add(time.Duration(i)*time.Second)) ||
			e.Reason != "Test" || e.Message != "msg" || (i > 0 && e.ID <= all[i-1].ID) {
			t.Errorf("event %d: %+v", i, e)
		}
	}
	objects := func(f store.EventFilter) []string {
		es, err := h.St.ListEvents(h.Ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, e := range es {
			out = append(out, e.Object)
		}
		return out
	}
	for _, tc := range []struct {
		name string
		f    store.EventFilter
		want []string
	}{
		{"kind", store.EventFilter{Kind: "Launched"}, []string{"node/a_b", "node/axb", "node/abc", "NODE/abc"}},
		{"prefix", store.EventFilter{Object: "node/"}, []string{"node/a_b", "node/axb", "node/a%c", "node/abc"}},
		{"underscore is literal", store.EventFilter{Object: "node/a_"}, []string{"node/a_b"}},
		{"percent is literal", store.EventFilter{Object: "node/a%"}, []string{"node/a%c"}},
		{"case matters", store.EventFilter{Object: "NODE/"}, []string{"NODE/abc"}},
		{"task of one job", store.EventFilter{Object: "task/j1/"}, []string{"task/j1/x"}},
		{"after", store.EventFilter{AfterID: all[4].ID}, []string{"NODE/abc", "task/j10/x"}},
		{"newest first limited, oldest first returned", store.EventFilter{Limit: 2}, []string{"NODE/abc", "task/j10/x"}},
		{"limit with kind", store.EventFilter{Kind: "Launched", Limit: 2}, []string{"node/abc", "NODE/abc"}},
		{"limit above count", store.EventFilter{Object: "task/", Limit: 10}, []string{"task/j1/x", "task/j10/x"}},
		{"after and limit", store.EventFilter{AfterID: all[5].ID, Limit: 5}, []string{"task/j10/x"}},
		{"nothing", store.EventFilter{Kind: "Nope"}, nil},
	} {
		if got := objects(tc.f); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// testListEventsOf: the events of one object, with its job's tasks or its
// service's replicas, and none of a namesake's, however many newer events
// other objects have.
func testListEventsOf(t *testing.T, h *Harness) {
	for _, o := range []string{
		"job/j", "task/j/a", "job/j1", "task/j1/a", "task/j-x/a", "node/j",
		"service/s", "replica/s-1", "replica/s-12", "replica/s-x-1", "replica/sx-1", "replica/s-", "service/s-x",
		"pool/p", "pool/p2",
	} {
		if err := h.St.AddEvent(h.Ctx, "Test", o, "Test", ""); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 200 {
		if err := h.St.AddEvent(h.Ctx, "Test", fmt.Sprintf("node/busy-%d", i), "Test", ""); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		of   string
		want []string
	}{
		{"job/j", []string{"job/j", "task/j/a"}},
		{"job/j1", []string{"job/j1", "task/j1/a"}},
		{"service/s", []string{"service/s", "replica/s-1", "replica/s-12"}},
		{"service/s-x", []string{"replica/s-x-1", "service/s-x"}},
		{"pool/p", []string{"pool/p"}},
		{"node/none", nil},
	} {
		es, err := h.St.ListEvents(h.Ctx, store.EventFilter{Of: tc.of, Limit: 50})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range es {
			got = append(got, e.Object)
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("Of %s: %q, want %q", tc.of, got, tc.want)
		}
	}
}

func testRuns(t *testing.T, h *Harness) {
	h.Apply(PoolCPU)
	h.Node("n1", true)
	h.Clock.Advance(30 * time.Minute)
	h.Node("n2", true)
	h.Clock.Advance(30 * time.Minute)
	if err := h.St.EndNode(h.Ctx, "n1", store.NodeTerminated, "idle"); err != nil {
		t.Fatal(err)
	}
	if err := h.St.EndNode(h.Ctx, "n2", store.NodeDeallocated, "SpotEviction"); err != nil {
		t.Fatal(err)
	}
	if err := h.St.RestartNode(h.Ctx, "n1"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("restart of a terminated node: %v, want ErrConflict", err)
	}
	h.Clock.Advance(time.Hour)
	if err := h.St.RestartNode(h.Ctx, "n2"); err != nil {
		t.Fatal(err)
	}
	n := h.getNode("n2")
	if n.State != store.NodeProvisioning || n.Incarnation != 2 || !n.HeartbeatAt.IsZero() || !n.StateAt.Equal(h.Clock.Now()) {
		t.Errorf("restarted node: %+v", n)
	}
	runs, err := h.St.Runs(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []store.Run{
		{Node: "n1", Pool: "cpu", Priority: "spot", Start: t0, End: t0.Add(time.Hour), PricePerHour: 0.1, OnDemandPerHour: 0.4},
		{Node: "n2", Pool: "cpu", Priority: "spot", Start: t0.Add(30 * time.Minute), End: t0.Add(time.Hour), PricePerHour: 0.1, OnDemandPerHour: 0.4},
		{Node: "n2", Pool: "cpu", Priority: "spot", Start: t0.Add(2 * time.Hour), PricePerHour: 0.1, OnDemandPerHour: 0.4},
	}
	if !slices.Equal(runs, want) {
		t.Errorf("runs\n%+v\nwant\n%+v", runs, want)
	}

	// DeleteNode forgets only a node that never started, with its run.
	h.Node("refused", false)
	h.Node("started", true)
	for _, name := range []string{"refused", "started"} {
		if err := h.St.DeleteNode(h.Ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.St.GetNode(h.Ctx, "refused"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deleted node: %v", err)
	}
	h.getNode("started")
	runs, _ = h.St.Runs(h.Ctx)
	var nodes []string
	for _, r := range runs {
		nodes = append(nodes, r.Node)
	}
	if want := []string{"n1", "n2", "n2", "started"}; !slices.Equal(nodes, want) {
		t.Errorf("runs of %q, want %q", nodes, want)
	}
}

func testDeleteJob(t *testing.T, h *Harness) {
	h.Apply(PoolCPU + "---" + JobYAML("gone", 2, 0))
	h.Node("n1", true)
	old := h.Task("gone", "task-0")
	h.Assign(1, store.Assignment{TaskID: old.ID, Node: "n1"})
	if err := h.St.DeleteJob(h.Ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.St.GetJob(h.Ctx, "gone"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetJob after delete: %v", err)
	}
	if _, err := h.St.GetTask(h.Ctx, "gone", "task-0"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetTask after delete: %v", err)
	}
	for name, list := range map[string]func(context.Context) ([]store.Task, error){
		"pending": h.St.PendingTasks, "running": h.St.RunningTasks,
		"on n1": func(ctx context.Context) ([]store.Task, error) { return h.St.NodeTasks(ctx, "n1") },
	} {
		if ts, err := list(h.Ctx); err != nil || len(ts) != 0 {
			t.Errorf("%s tasks after delete: %+v, %v", name, ts, err)
		}
	}
	if ns, _ := h.St.ListNodes(h.Ctx); ns[0].Tasks != 0 {
		t.Errorf("node still counts %d tasks", ns[0].Tasks)
	}
	if h.report(old, "n1", 1, store.OutcomeSucceeded, 0, "") {
		t.Error("report of a deleted task accepted")
	}
	if err := h.St.DeleteJob(h.Ctx, "gone"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
	if got := h.events("job/"); !slices.Equal(got, []string{"Submitted job/gone", "Deleted job/gone"}) {
		t.Errorf("events %q", got)
	}
	// The name is free again, for a new job with fresh tasks.
	if res := h.Apply(JobYAML("gone", 2, 0)); res[0].Action != "created" {
		t.Errorf("apply after delete: %+v", res)
	}
	for _, tk := range h.job("gone").Tasks {
		if tk.State != store.TaskPending || tk.Attempt != 1 || len(tk.Attempts) != 0 || tk.ID == old.ID {
			t.Errorf("task of the new job: %+v", tk)
		}
	}
}

func testDeletePool(t *testing.T, h *Harness) {
	h.Apply(PoolCPU)
	if err := h.St.DeletePool(h.Ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("delete missing pool: %v", err)
	}
	if err := h.St.DeletePool(h.Ctx, "cpu"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.St.GetPool(h.Ctx, "cpu"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetPool after delete: %v", err)
	}
	if got := h.events("pool/"); !slices.Equal(got, []string{"Created pool/cpu", "Deleted pool/cpu"}) {
		t.Errorf("events %q", got)
	}
}

// testDurable checks that what was accepted survives a restart of the
// control plane.
func testDurable(t *testing.T, h *Harness) {
	h.Apply(PoolCPU + "---" + JobYAML("train", 2, 0))
	h.Node("n1", true)
	tk := h.Task("train", "task-1")
	h.Assign(1, store.Assignment{TaskID: tk.ID, Node: "n1"})
	before := h.job("train")
	events, _ := h.St.ListEvents(h.Ctx, store.EventFilter{})
	h.Reopen()
	after := h.job("train")
	if after.UID != before.UID || after.State != before.State || len(after.Tasks) != 2 || after.Tasks[1].State != store.TaskRunning ||
		after.Tasks[1].Node != "n1" || len(after.Tasks[1].Attempts) != 1 || !after.SubmittedAt.Equal(before.SubmittedAt) {
		t.Errorf("job after reopen:\n%+v\nbefore:\n%+v", after, before)
	}
	if n := h.getNode("n1"); n.State != store.NodeReady {
		t.Errorf("node after reopen: %+v", n)
	}
	if again, _ := h.St.ListEvents(h.Ctx, store.EventFilter{}); !slices.Equal(again, events) {
		t.Errorf("events after reopen: %d, before %d", len(again), len(events))
	}
	// The reopened store carries on where it stopped.
	if !h.report(tk, "n1", 1, store.OutcomeSucceeded, 0, "") {
		t.Error("report after reopen not accepted")
	}
}

// testConcurrentReports has agents report at once while the control plane
// reads: every report lands, and the job settles once.
func testConcurrentReports(t *testing.T, h *Harness) {
	const n = 16
	h.Apply(PoolCPU + "---" + JobYAML("wide", n, 0))
	h.Node("n1", true)
	var plan []store.Assignment
	tasks := h.job("wide").Tasks
	for _, tk := range tasks {
		plan = append(plan, store.Assignment{TaskID: tk.ID, Node: "n1"})
	}
	h.Assign(n, plan...)
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for _, tk := range tasks {
		wg.Go(func() {
			ok, err := h.St.Report(h.Ctx, tk.ID, "n1", 1, store.OutcomeSucceeded, 0, "")
			if err == nil && !ok {
				err = fmt.Errorf("report of %s not accepted", tk.Name)
			}
			errs <- err
		})
		wg.Go(func() {
			_, err := h.St.ListJobs(h.Ctx)
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if j := h.job("wide"); j.State != store.JobSucceeded || j.Counts[store.TaskSucceeded] != n {
		t.Errorf("job: %s %v", j.State, j.Counts)
	}
	if got := h.events("job/"); !slices.Equal(got, []string{"Submitted job/wide", "Succeeded job/wide"}) {
		t.Errorf("events %q", got)
	}
}

// testConcurrentAssign: plans that race for the same tasks on different
// nodes, each in its own transaction at once (as several control planes,
// or a plan beside a report, would), place every task exactly once, with
// one attempt each. On PostgreSQL the losers fail to serialize and are run
// again, and then find the tasks taken.
func testConcurrentAssign(t *testing.T, h *Harness) {
	const tasks, planners = 8, 6
	h.Apply(PoolCPU + "---" + JobYAML("race", tasks, 0))
	for i := range planners {
		h.Node(fmt.Sprintf("n%d", i), true)
	}
	ts := h.job("race").Tasks
	var wg sync.WaitGroup
	applied := make(chan int, planners)
	errs := make(chan error, planners)
	for i := range planners {
		wg.Go(func() {
			var plan []store.Assignment
			for _, tk := range ts {
				plan = append(plan, store.Assignment{TaskID: tk.ID, Node: fmt.Sprintf("n%d", i)})
			}
			n, err := h.St.Assign(h.Ctx, plan)
			applied <- n
			errs <- err
		})
	}
	wg.Wait()
	close(applied)
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	total := 0
	for n := range applied {
		total += n
	}
	if total != tasks {
		t.Errorf("%d assignments applied in all, want %d (each task once)", total, tasks)
	}
	for _, tk := range h.job("race").Tasks {
		if tk.State != store.TaskRunning || tk.Node == "" || len(tk.Attempts) != 1 || tk.Attempts[0].Node != tk.Node {
			t.Errorf("task %s: %s on %q, attempts %+v", tk.Name, tk.State, tk.Node, tk.Attempts)
		}
	}
}
