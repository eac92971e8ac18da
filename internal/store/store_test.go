package store_test

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
)

// opener opens a store over one database that belongs to the test; called
// again after Close it reopens the same database, so that durability can be
// checked. Every backend of the store passes testStore.
type opener func(now func() time.Time) (*store.Store, error)

// testStore is the conformance suite. newDB returns an opener over a fresh,
// empty database.
func testStore(t *testing.T, newDB func(t *testing.T) opener) {
	tests := []struct {
		name string
		fn   func(t *testing.T, h *harness)
	}{
		{"MigrateTwice", testMigrateTwice},
		{"BootstrapSecret", testBootstrapSecret},
		{"NodeCredentials", testNodeCredentials},
		{"NodeWork", testNodeWork},
		{"APITokens", testAPITokens},
		{"ApplyPools", testApplyPools},
		{"ApplyJobImmutable", testApplyJobImmutable},
		{"ApplyAllOrNothing", testApplyAllOrNothing},
		{"Assign", testAssign},
		{"ReportFencing", testReportFencing},
		{"ReportBatch", testReportBatch},
		{"FailedRetriedThenFailed", testFailedRetried},
		{"PreemptedOutcomeRequeues", testPreemptedOutcome},
		{"EndNodeRequeues", testEndNodeRequeues},
		{"JobSettles", testJobSettles},
		{"HeartbeatAndNotice", testHeartbeatAndNotice},
		{"ListEventsFilters", testListEvents},
		{"ListEventsOf", testListEventsOf},
		{"Runs", testRuns},
		{"RecentNodes", testRecentNodes},
		{"DeleteJobCascades", testDeleteJob},
		{"DeletePool", testDeletePool},
		{"Durable", testDurable},
		{"ConcurrentReports", testConcurrentReports},
		{"GatewayStats", testGatewayStats},
		{"ServiceSamples", testServiceSamples},
		{"ServiceSamplesRetention", testServiceSamplesRetention},
		{"Prune", testPrune},
		{"LiveNodes", testLiveNodes},
		{"HeartbeatInMemory", testHeartbeatInMemory},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newHarness(t, newDB(t)))
		})
	}
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

type harness struct {
	t     *testing.T
	ctx   context.Context
	st    *store.Store
	clock *clock.Fake
	open  opener
}

func newHarness(t *testing.T, open opener) *harness {
	h := &harness{t: t, ctx: t.Context(), clock: clock.NewFake(t0), open: open}
	h.st = h.mustOpen()
	t.Cleanup(func() { h.st.Close() })
	return h
}

func (h *harness) mustOpen() *store.Store {
	h.t.Helper()
	st, err := h.open(h.clock.Now)
	if err != nil {
		h.t.Fatalf("open store: %v", err)
	}
	return st
}

// reopen closes the store and opens the same database again, as a
// restarted control plane does.
func (h *harness) reopen() {
	h.t.Helper()
	if err := h.st.Close(); err != nil {
		h.t.Fatalf("close: %v", err)
	}
	h.st = h.mustOpen()
}

// apply parses YAML documents and applies them.
func (h *harness) apply(yaml string) []store.ApplyResult {
	h.t.Helper()
	pools, jobs := parse(h.t, yaml)
	res, err := h.st.Apply(h.ctx, pools, jobs)
	if err != nil {
		h.t.Fatalf("apply: %v", err)
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
func (h *harness) node(name string, ready bool) {
	h.t.Helper()
	n := store.Node{Name: name, Pool: "cpu", Priority: spec.PrioritySpot, InstanceType: "local-small",
		Capacity: spec.Resources{CPU: 2, Memory: 4 << 30}, PricePerHour: 0.1, OnDemandPrice: 0.4}
	if err := h.st.CreateNode(h.ctx, n); err != nil {
		h.t.Fatal(err)
	}
	if err := h.st.SetNodeLaunched(h.ctx, name, ""); err != nil { // the provider launched it
		h.t.Fatal(err)
	}
	if ready {
		if _, err := h.st.Heartbeat(h.ctx, name, true); err != nil {
			h.t.Fatal(err)
		}
	}
}

func (h *harness) job(name string) store.Job {
	h.t.Helper()
	j, err := h.st.GetJob(h.ctx, name)
	if err != nil {
		h.t.Fatal(err)
	}
	return j
}

func (h *harness) task(job, task string) store.Task {
	h.t.Helper()
	for _, t := range h.job(job).Tasks {
		if t.Name == task {
			return t
		}
	}
	h.t.Fatalf("no task %s/%s", job, task)
	return store.Task{}
}

func (h *harness) getNode(name string) store.Node {
	h.t.Helper()
	n, err := h.st.GetNode(h.ctx, name)
	if err != nil {
		h.t.Fatal(err)
	}
	return n
}

func (h *harness) assign(want int, plan ...store.Assignment) {
	h.t.Helper()
	n, err := h.st.Assign(h.ctx, plan)
	if err != nil {
		h.t.Fatal(err)
	}
	if n != want {
		h.t.Fatalf("Assign applied %d of %v, want %d", n, plan, want)
	}
}

func (h *harness) report(t store.Task, node string, attempt int, outcome string, exit int, msg string) bool {
	h.t.Helper()
	ok, err := h.st.Report(h.ctx, t.ID, node, attempt, outcome, exit, msg)
	if err != nil {
		h.t.Fatalf("report %s/%s: %v", t.Job, t.Name, err)
	}
	return ok
}

// events returns "Kind object" of the events whose object starts with
// prefix, oldest first.
func (h *harness) events(prefix string) []string {
	h.t.Helper()
	es, err := h.st.ListEvents(h.ctx, store.EventFilter{Object: prefix})
	if err != nil {
		h.t.Fatal(err)
	}
	var out []string
	for _, e := range es {
		out = append(out, e.Kind+" "+e.Object)
	}
	return out
}

const poolCPU = `
apiVersion: spotml/v1
kind: Pool
metadata: {name: cpu}
spec: {provider: local, priority: spot, instanceType: local-small, max: 3}
`

// jobYAML is a job of n template tasks (task-0, task-1, …) in pool cpu.
func jobYAML(name string, n, maxRetries int) string {
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

func testMigrateTwice(t *testing.T, h *harness) {
	h.apply(poolCPU)
	for range 2 {
		h.reopen()
	}
	ps, err := h.st.ListPools(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 || ps[0].Spec.Metadata.Name != "cpu" {
		t.Fatalf("pools after reopening: %+v", ps)
	}
}

func testApplyPools(t *testing.T, h *harness) {
	if got := h.apply(poolCPU); !slices.Equal(got, []store.ApplyResult{{Kind: "Pool", Name: "cpu", Action: "created"}}) {
		t.Errorf("first apply: %+v", got)
	}
	h.clock.Advance(time.Minute)
	if got := h.apply(poolCPU); got[0].Action != "unchanged" {
		t.Errorf("same spec again: %+v", got)
	}
	p, err := h.st.GetPool(h.ctx, "cpu")
	if err != nil {
		t.Fatal(err)
	}
	if p.Generation != 1 || !p.UpdatedAt.Equal(t0) {
		t.Errorf("unchanged apply touched the pool: generation %d, updated %s", p.Generation, p.UpdatedAt)
	}
	h.clock.Advance(time.Minute)
	if got := h.apply(strings.Replace(poolCPU, "max: 3", "max: 5", 1)); got[0].Action != "configured" {
		t.Errorf("changed spec: %+v", got)
	}
	p, _ = h.st.GetPool(h.ctx, "cpu")
	if p.Generation != 2 || p.Spec.Spec.Max != 5 || !p.CreatedAt.Equal(t0) || !p.UpdatedAt.Equal(t0.Add(2*time.Minute)) {
		t.Errorf("configured pool: generation %d, max %d, created %s, updated %s", p.Generation, p.Spec.Spec.Max, p.CreatedAt, p.UpdatedAt)
	}
	if got, want := h.events("pool/"), []string{"Created pool/cpu", "Updated pool/cpu"}; !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
}

func testApplyJobImmutable(t *testing.T, h *harness) {
	res := h.apply(poolCPU + "---" + jobYAML("train", 2, 1))
	if res[1] != (store.ApplyResult{Kind: "Job", Name: "train", Action: "created"}) {
		t.Errorf("apply: %+v", res)
	}
	before := h.job("train")
	if res := h.apply(jobYAML("train", 2, 1)); res[0].Action != "unchanged" {
		t.Errorf("same job again: %+v", res)
	}
	pools, jobs := parse(t, jobYAML("train", 3, 1))
	_, err := h.st.Apply(h.ctx, pools, jobs)
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

func testApplyAllOrNothing(t *testing.T, h *harness) {
	h.apply(poolCPU + "---" + jobYAML("train", 1, 0))
	pools, jobs := parse(t, strings.Replace(poolCPU, "name: cpu", "name: gpu", 1)+"---"+jobYAML("new", 1, 0)+"---"+jobYAML("train", 5, 0))
	if _, err := h.st.Apply(h.ctx, pools, jobs); !errors.Is(err, store.ErrConflict) {
		t.Fatalf("err %v, want ErrConflict", err)
	}
	if _, err := h.st.GetPool(h.ctx, "gpu"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("pool of the refused apply: err %v, want ErrNotFound", err)
	}
	if _, err := h.st.GetJob(h.ctx, "new"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("job of the refused apply: err %v, want ErrNotFound", err)
	}
	if got := h.events(""); len(got) != 2 {
		t.Errorf("refused apply left events: %q", got)
	}
}

func testAssign(t *testing.T, h *harness) {
	h.apply(poolCPU + "---" + jobYAML("train", 4, 0))
	h.node("prov", false)
	h.node("ready", true)
	h.node("noticed", true)
	h.node("gone", true)
	if _, err := h.st.SetNotice(h.ctx, "noticed", t0.Add(time.Minute), "provider"); err != nil {
		t.Fatal(err)
	}
	if err := h.st.EndNode(h.ctx, "gone", store.NodeTerminated, "test"); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(time.Minute)
	now := h.clock.Now()
	tasks := h.job("train").Tasks
	h.assign(1,
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
	nt, err := h.st.NodeTasks(h.ctx, "ready")
	if err != nil {
		t.Fatal(err)
	}
	if len(nt) != 1 || nt[0].ID != got.ID || !slices.Equal(nt[0].Spec.Command, spec.Command{"train"}) {
		t.Errorf("NodeTasks: %+v", nt)
	}
	pending, _ := h.st.PendingTasks(h.ctx)
	var names []string
	for _, p := range pending {
		names = append(names, p.Name)
	}
	if want := []string{"task-0", "task-2", "task-3"}; !slices.Equal(names, want) {
		t.Errorf("pending %q, want %q", names, want)
	}
	nodes, _ := h.st.ListNodes(h.ctx)
	for _, n := range nodes {
		if want := map[string]int{"ready": 1}[n.Name]; n.Tasks != want {
			t.Errorf("node %s runs %d tasks, want %d", n.Name, n.Tasks, want)
		}
	}
}

// RecentNodes: the live nodes and those that ended since a time.
func testRecentNodes(t *testing.T, h *harness) {
	h.apply(poolCPU)
	h.node("old", true)
	h.node("live", true)
	h.node("provisioning", false)
	if err := h.st.EndNode(h.ctx, "old", store.NodePreempted, "evicted"); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(10 * time.Minute)
	h.node("recent", true)
	if err := h.st.EndNode(h.ctx, "recent", store.NodeTerminated, "idle"); err != nil {
		t.Fatal(err)
	}
	names := func(since time.Time) []string {
		ns, err := h.st.RecentNodes(h.ctx, since)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, n := range ns {
			out = append(out, n.Name)
		}
		return out
	}
	if got, want := names(h.clock.Now().Add(-time.Minute)), []string{"live", "provisioning", "recent"}; !slices.Equal(got, want) {
		t.Errorf("ended in the last minute: %q, want %q", got, want)
	}
	if got, want := names(h.clock.Now().Add(-time.Hour)), []string{"live", "old", "provisioning", "recent"}; !slices.Equal(got, want) {
		t.Errorf("ended in the last hour: %q, want %q", got, want)
	}
}

func testReportFencing(t *testing.T, h *harness) {
	h.apply(poolCPU + "---" + jobYAML("train", 1, 0))
	h.node("n1", true)
	tk := h.task("train", "task-0")
	h.assign(1, store.Assignment{TaskID: tk.ID, Node: "n1"})

	if h.report(tk, "n2", 1, store.OutcomeSucceeded, 0, "") {
		t.Error("report from another node accepted")
	}
	if h.report(tk, "n1", 2, store.OutcomeSucceeded, 0, "") {
		t.Error("report of another attempt accepted")
	}
	if ok, err := h.st.Report(h.ctx, tk.ID+1000, "n1", 1, store.OutcomeSucceeded, 0, ""); ok || err != nil {
		t.Errorf("report of an unknown task: %v, %v; want false, nil", ok, err)
	}
	if _, err := h.st.Report(h.ctx, tk.ID, "n1", 1, "exploded", 0, ""); err == nil {
		t.Error("unknown outcome accepted")
	}
	if got := h.task("train", "task-0"); got.State != store.TaskRunning || got.Attempts[0].Outcome != "" {
		t.Fatalf("ignored reports changed the task: %+v", got)
	}
	if !h.report(tk, "n1", 1, store.OutcomeSucceeded, 0, "done") {
		t.Fatal("the right report was not accepted")
	}
	if h.report(tk, "n1", 1, store.OutcomeFailed, 1, "") {
		t.Error("a second report of the same attempt was accepted")
	}
	if got := h.task("train", "task-0"); got.State != store.TaskSucceeded || got.Message != "done" {
		t.Errorf("task after a duplicate report: %+v", got)
	}
}

// testReportBatch checks group commit: each report of a batch is fenced on
// its own (a duplicate within the batch too), jobs settle once, and a bad
// report refuses the whole batch.
func testReportBatch(t *testing.T, h *harness) {
	h.apply(poolCPU + "---" + jobYAML("batch", 3, 1))
	h.node("n1", true)
	tasks := h.job("batch").Tasks
	for _, tk := range tasks {
		h.assign(1, store.Assignment{TaskID: tk.ID, Node: "n1"})
	}
	report := func(tk store.Task, outcome string) store.Report {
		return store.Report{TaskID: tk.ID, Node: "n1", Attempt: 1, Outcome: outcome}
	}
	if _, err := h.st.ReportBatch(h.ctx, []store.Report{report(tasks[0], store.OutcomeSucceeded), report(tasks[1], "exploded")}); err == nil {
		t.Fatal("batch with an unknown outcome accepted")
	}
	if got := h.task("batch", "task-0"); got.State != store.TaskRunning {
		t.Fatalf("refused batch changed a task: %+v", got)
	}
	oks, err := h.st.ReportBatch(h.ctx, []store.Report{
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
	if got := h.task("batch", "task-1"); got.State != store.TaskPending || got.Attempt != 2 || got.Failures != 1 {
		t.Errorf("failed task: %+v", got)
	}
	h.assign(1, store.Assignment{TaskID: tasks[1].ID, Node: "n1"})
	oks, err = h.st.ReportBatch(h.ctx, []store.Report{
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
	if oks, err := h.st.ReportBatch(h.ctx, nil); err != nil || len(oks) != 0 {
		t.Errorf("empty batch: %v, %v", oks, err)
	}
}

func testFailedRetried(t *testing.T, h *harness) {
	h.apply(poolCPU + "---" + jobYAML("flaky", 1, 2))
	h.node("n1", true)
	for attempt := 1; attempt <= 3; attempt++ {
		tk := h.task("flaky", "task-0")
		if tk.State != store.TaskPending || tk.Attempt != attempt || tk.Failures != attempt-1 {
			t.Fatalf("before attempt %d: %+v", attempt, tk)
		}
		h.assign(1, store.Assignment{TaskID: tk.ID, Node: "n1"})
		h.clock.Advance(time.Second)
		if !h.report(tk, "n1", attempt, store.OutcomeFailed, 3, "boom") {
			t.Fatalf("attempt %d: report not accepted", attempt)
		}
	}
	j := h.job("flaky")
	tk := j.Tasks[0]
	if j.State != store.JobFailed || !j.FinishedAt.Equal(h.clock.Now()) {
		t.Errorf("job %s finished %s, want failed at %s", j.State, j.FinishedAt, h.clock.Now())
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

func testPreemptedOutcome(t *testing.T, h *harness) {
	h.apply(poolCPU + "---" + jobYAML("ckpt", 1, 0))
	h.node("n1", true)
	h.node("n2", true)
	tk := h.task("ckpt", "task-0")
	h.assign(1, store.Assignment{TaskID: tk.ID, Node: "n1"})
	if !h.report(tk, "n1", 1, store.OutcomePreempted, 143, "notice") {
		t.Fatal("report not accepted")
	}
	got := h.task("ckpt", "task-0")
	if got.State != store.TaskPending || got.Attempt != 2 || got.Evictions != 1 || got.Failures != 0 || got.Node != "" {
		t.Errorf("after preemption: %+v", got)
	}
	if got.Attempts[0].Outcome != store.OutcomePreempted || got.Attempts[0].ExitCode != 143 {
		t.Errorf("attempt 1: %+v", got.Attempts[0])
	}
	// maxRetries is 0, yet the task runs again: evictions use no retries.
	h.assign(1, store.Assignment{TaskID: tk.ID, Node: "n2"})
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

func testEndNodeRequeues(t *testing.T, h *harness) {
	h.apply(poolCPU + "---" + jobYAML("train", 3, 0))
	h.node("n1", true)
	h.node("n2", true)
	tasks := h.job("train").Tasks
	h.assign(3, store.Assignment{TaskID: tasks[0].ID, Node: "n1"}, store.Assignment{TaskID: tasks[1].ID, Node: "n1"},
		store.Assignment{TaskID: tasks[2].ID, Node: "n2"})
	if _, err := h.st.SetNotice(h.ctx, "n1", t0.Add(30*time.Second), "agent"); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(time.Hour)
	end := h.clock.Now()
	if err := h.st.EndNode(h.ctx, "n1", store.NodePreempted, "SpotEviction"); err != nil {
		t.Fatal(err)
	}
	n := h.getNode("n1")
	if n.State != store.NodePreempted || n.Reason != "SpotEviction" || !n.StateAt.Equal(end) || !n.NoticeDeadline.IsZero() {
		t.Errorf("ended node: %+v", n)
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
	runs, _ := h.st.Runs(h.ctx)
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
	if err := h.st.EndNode(h.ctx, "n1", store.NodeLost, "late"); err != nil {
		t.Errorf("second EndNode: %v", err)
	}
	if n := h.getNode("n1"); n.State != store.NodePreempted || len(h.events("node/n1")) != 4 {
		t.Errorf("second EndNode changed the node: %+v", n)
	}
	if err := h.st.EndNode(h.ctx, "n2", store.NodeReady, ""); err == nil {
		t.Error("EndNode to ready accepted")
	}
	if err := h.st.EndNode(h.ctx, "missing", store.NodeLost, ""); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("EndNode of a missing node: %v", err)
	}
	if _, err := h.st.Heartbeat(h.ctx, "n1", true); !errors.Is(err, store.ErrConflict) {
		t.Errorf("heartbeat of an ended node: %v, want ErrConflict", err)
	}
	if _, err := h.st.SetNotice(h.ctx, "n1", end, "agent"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("notice of an ended node: %v, want ErrConflict", err)
	}
}

func testJobSettles(t *testing.T, h *harness) {
	h.apply(poolCPU + "---" + jobYAML("good", 2, 0) + "---" + jobYAML("mixed", 2, 0))
	h.node("n1", true)
	var plan []store.Assignment
	for _, name := range []string{"good", "mixed"} {
		for _, tk := range h.job(name).Tasks {
			plan = append(plan, store.Assignment{TaskID: tk.ID, Node: "n1"})
		}
	}
	h.assign(4, plan...)
	h.report(h.task("good", "task-0"), "n1", 1, store.OutcomeSucceeded, 0, "")
	h.report(h.task("mixed", "task-0"), "n1", 1, store.OutcomeFailed, 2, "")
	for _, name := range []string{"good", "mixed"} {
		if j := h.job(name); j.State != store.JobRunning || !j.FinishedAt.IsZero() {
			t.Errorf("job %s with a task running: %s", name, j.State)
		}
	}
	h.clock.Advance(time.Minute)
	h.report(h.task("good", "task-1"), "n1", 1, store.OutcomeSucceeded, 0, "")
	h.report(h.task("mixed", "task-1"), "n1", 1, store.OutcomeSucceeded, 0, "")
	jobs, err := h.st.ListJobs(h.ctx)
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
		if j.State != w.state || !j.FinishedAt.Equal(h.clock.Now()) || fmt.Sprint(j.Counts) != fmt.Sprint(w.counts) {
			t.Errorf("job %s: state %s, finished %s, counts %v; want %s, %v", j.Spec.Metadata.Name, j.State, j.FinishedAt, j.Counts, w.state, w.counts)
		}
	}
	es, _ := h.st.ListEvents(h.ctx, store.EventFilter{Object: "job/mixed"})
	if last := es[len(es)-1]; last.Kind != "Failed" || last.Reason != "AllTasksDone" || last.Message != "1 failed" {
		t.Errorf("last job event: %+v", last)
	}
	if got := h.events("job/good"); !slices.Equal(got, []string{"Submitted job/good", "Succeeded job/good"}) {
		t.Errorf("events %q", got)
	}
}

func testHeartbeatAndNotice(t *testing.T, h *harness) {
	h.apply(poolCPU)
	h.node("n1", false)
	n := h.getNode("n1")
	if n.State != store.NodeProvisioning || n.Incarnation != 1 || !n.CreatedAt.Equal(t0) || !n.HeartbeatAt.IsZero() {
		t.Errorf("new node: %+v", n)
	}
	h.clock.Advance(time.Second)
	if n, err := h.st.Heartbeat(h.ctx, "n1", false); err != nil || n.State != store.NodeProvisioning || !n.HeartbeatAt.Equal(h.clock.Now()) {
		t.Errorf("heartbeat while starting: %+v, %v", n, err)
	}
	h.clock.Advance(time.Second)
	for range 2 {
		n, err := h.st.Heartbeat(h.ctx, "n1", true)
		if err != nil || n.State != store.NodeReady || !n.StateAt.Equal(t0.Add(2*time.Second)) {
			t.Errorf("ready heartbeat: %+v, %v", n, err)
		}
	}
	if got := h.getNode("n1"); got.State != store.NodeReady || !got.HeartbeatAt.Equal(h.clock.Now()) {
		t.Errorf("stored node: %+v", got)
	}
	if _, err := h.st.Heartbeat(h.ctx, "missing", true); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("heartbeat of a missing node: %v", err)
	}

	deadline := h.clock.Now().Add(30 * time.Second)
	if changed, err := h.st.SetNotice(h.ctx, "n1", deadline, "provider"); !changed || err != nil {
		t.Errorf("first notice: %v, %v", changed, err)
	}
	if n := h.getNode("n1"); n.State != store.NodeReady || !n.NoticeDeadline.Equal(deadline) {
		t.Errorf("after a provider's notice: %+v", n)
	}
	if changed, err := h.st.SetNotice(h.ctx, "n1", deadline.Add(time.Hour), "agent"); changed || err != nil {
		t.Errorf("second notice: %v, %v", changed, err)
	}
	if n := h.getNode("n1"); n.State != store.NodeDraining || !n.NoticeDeadline.Equal(deadline) {
		t.Errorf("after the agent read the notice: %+v", n)
	}
	h.st.SetNotice(h.ctx, "n1", deadline, "agent")
	want := []string{"Launched node/n1", "Ready node/n1", "Notice node/n1", "Draining node/n1"}
	if got := h.events("node/"); !slices.Equal(got, want) {
		t.Errorf("events %q, want %q", got, want)
	}
	if _, err := h.st.SetNotice(h.ctx, "missing", deadline, "agent"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("notice of a missing node: %v", err)
	}
}

func testListEvents(t *testing.T, h *harness) {
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
		if err := h.st.AddEvent(h.ctx, e.kind, e.object, "Test", "msg"); err != nil {
			t.Fatal(err)
		}
		h.clock.Advance(time.Second)
	}
	all, err := h.st.ListEvents(h.ctx, store.EventFilter{})
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
		es, err := h.st.ListEvents(h.ctx, f)
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
func testListEventsOf(t *testing.T, h *harness) {
	for _, o := range []string{
		"job/j", "task/j/a", "job/j1", "task/j1/a", "task/j-x/a", "node/j",
		"service/s", "replica/s-1", "replica/s-12", "replica/s-x-1", "replica/sx-1", "replica/s-", "service/s-x",
		"pool/p", "pool/p2",
	} {
		if err := h.st.AddEvent(h.ctx, "Test", o, "Test", ""); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 200 {
		if err := h.st.AddEvent(h.ctx, "Test", fmt.Sprintf("node/busy-%d", i), "Test", ""); err != nil {
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
		es, err := h.st.ListEvents(h.ctx, store.EventFilter{Of: tc.of, Limit: 50})
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

func testRuns(t *testing.T, h *harness) {
	h.apply(poolCPU)
	h.node("n1", true)
	h.clock.Advance(30 * time.Minute)
	h.node("n2", true)
	h.clock.Advance(30 * time.Minute)
	if err := h.st.EndNode(h.ctx, "n1", store.NodeTerminated, "idle"); err != nil {
		t.Fatal(err)
	}
	if err := h.st.EndNode(h.ctx, "n2", store.NodeDeallocated, "SpotEviction"); err != nil {
		t.Fatal(err)
	}
	if err := h.st.RestartNode(h.ctx, "n1"); !errors.Is(err, store.ErrConflict) {
		t.Errorf("restart of a terminated node: %v, want ErrConflict", err)
	}
	h.clock.Advance(time.Hour)
	if err := h.st.RestartNode(h.ctx, "n2"); err != nil {
		t.Fatal(err)
	}
	n := h.getNode("n2")
	if n.State != store.NodeProvisioning || n.Incarnation != 2 || !n.HeartbeatAt.IsZero() || !n.StateAt.Equal(h.clock.Now()) {
		t.Errorf("restarted node: %+v", n)
	}
	runs, err := h.st.Runs(h.ctx)
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
	h.node("refused", false)
	h.node("started", true)
	for _, name := range []string{"refused", "started"} {
		if err := h.st.DeleteNode(h.ctx, name); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.st.GetNode(h.ctx, "refused"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deleted node: %v", err)
	}
	h.getNode("started")
	runs, _ = h.st.Runs(h.ctx)
	var nodes []string
	for _, r := range runs {
		nodes = append(nodes, r.Node)
	}
	if want := []string{"n1", "n2", "n2", "started"}; !slices.Equal(nodes, want) {
		t.Errorf("runs of %q, want %q", nodes, want)
	}
}

func testDeleteJob(t *testing.T, h *harness) {
	h.apply(poolCPU + "---" + jobYAML("gone", 2, 0))
	h.node("n1", true)
	old := h.task("gone", "task-0")
	h.assign(1, store.Assignment{TaskID: old.ID, Node: "n1"})
	if err := h.st.DeleteJob(h.ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.st.GetJob(h.ctx, "gone"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetJob after delete: %v", err)
	}
	if _, err := h.st.GetTask(h.ctx, "gone", "task-0"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetTask after delete: %v", err)
	}
	for name, list := range map[string]func(context.Context) ([]store.Task, error){
		"pending": h.st.PendingTasks, "running": h.st.RunningTasks,
		"on n1": func(ctx context.Context) ([]store.Task, error) { return h.st.NodeTasks(ctx, "n1") },
	} {
		if ts, err := list(h.ctx); err != nil || len(ts) != 0 {
			t.Errorf("%s tasks after delete: %+v, %v", name, ts, err)
		}
	}
	if ns, _ := h.st.ListNodes(h.ctx); ns[0].Tasks != 0 {
		t.Errorf("node still counts %d tasks", ns[0].Tasks)
	}
	if h.report(old, "n1", 1, store.OutcomeSucceeded, 0, "") {
		t.Error("report of a deleted task accepted")
	}
	if err := h.st.DeleteJob(h.ctx, "gone"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
	if got := h.events("job/"); !slices.Equal(got, []string{"Submitted job/gone", "Deleted job/gone"}) {
		t.Errorf("events %q", got)
	}
	// The name is free again, for a new job with fresh tasks.
	if res := h.apply(jobYAML("gone", 2, 0)); res[0].Action != "created" {
		t.Errorf("apply after delete: %+v", res)
	}
	for _, tk := range h.job("gone").Tasks {
		if tk.State != store.TaskPending || tk.Attempt != 1 || len(tk.Attempts) != 0 || tk.ID == old.ID {
			t.Errorf("task of the new job: %+v", tk)
		}
	}
}

func testDeletePool(t *testing.T, h *harness) {
	h.apply(poolCPU)
	if err := h.st.DeletePool(h.ctx, "nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("delete missing pool: %v", err)
	}
	if err := h.st.DeletePool(h.ctx, "cpu"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.st.GetPool(h.ctx, "cpu"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetPool after delete: %v", err)
	}
	if got := h.events("pool/"); !slices.Equal(got, []string{"Created pool/cpu", "Deleted pool/cpu"}) {
		t.Errorf("events %q", got)
	}
}

// testDurable checks that what was accepted survives a restart of the
// control plane.
func testDurable(t *testing.T, h *harness) {
	h.apply(poolCPU + "---" + jobYAML("train", 2, 0))
	h.node("n1", true)
	tk := h.task("train", "task-1")
	h.assign(1, store.Assignment{TaskID: tk.ID, Node: "n1"})
	before := h.job("train")
	events, _ := h.st.ListEvents(h.ctx, store.EventFilter{})
	h.reopen()
	after := h.job("train")
	if after.UID != before.UID || after.State != before.State || len(after.Tasks) != 2 || after.Tasks[1].State != store.TaskRunning ||
		after.Tasks[1].Node != "n1" || len(after.Tasks[1].Attempts) != 1 || !after.SubmittedAt.Equal(before.SubmittedAt) {
		t.Errorf("job after reopen:\n%+v\nbefore:\n%+v", after, before)
	}
	if n := h.getNode("n1"); n.State != store.NodeReady {
		t.Errorf("node after reopen: %+v", n)
	}
	if again, _ := h.st.ListEvents(h.ctx, store.EventFilter{}); !slices.Equal(again, events) {
		t.Errorf("events after reopen: %d, before %d", len(again), len(events))
	}
	// The reopened store carries on where it stopped.
	if !h.report(tk, "n1", 1, store.OutcomeSucceeded, 0, "") {
		t.Error("report after reopen not accepted")
	}
}

// testConcurrentReports has agents report at once while the control plane
// reads: every report lands, and the job settles once.
func testConcurrentReports(t *testing.T, h *harness) {
	const n = 16
	h.apply(poolCPU + "---" + jobYAML("wide", n, 0))
	h.node("n1", true)
	var plan []store.Assignment
	tasks := h.job("wide").Tasks
	for _, tk := range tasks {
		plan = append(plan, store.Assignment{TaskID: tk.ID, Node: "n1"})
	}
	h.assign(n, plan...)
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for _, tk := range tasks {
		wg.Go(func() {
			ok, err := h.st.Report(h.ctx, tk.ID, "n1", 1, store.OutcomeSucceeded, 0, "")
			if err == nil && !ok {
				err = fmt.Errorf("report of %s not accepted", tk.Name)
			}
			errs <- err
		})
		wg.Go(func() {
			_, err := h.st.ListJobs(h.ctx)
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
