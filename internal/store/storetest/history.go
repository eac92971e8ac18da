package storetest

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/store"
)

// costNow is what the cost report says now: the per-day totals of pruned
// runs and the runs still kept.
func (h *Harness) costNow() (cost.Summary, cost.Timeline) {
	h.T.Helper()
	days, err := h.St.CostDays(h.Ctx)
	if err != nil {
		h.T.Fatal(err)
	}
	runs, err := h.St.Runs(h.Ctx)
	if err != nil {
		h.T.Fatal(err)
	}
	var us []cost.Usage
	for _, r := range runs {
		us = append(us, cost.Usage{Node: r.Node, Pool: r.Pool, Priority: r.Priority, Start: r.Start, End: r.End,
			PricePerHour: r.PricePerHour, OnDemandPerHour: r.OnDemandPerHour})
	}
	now := h.Clock.Now()
	return cost.SummarizeDays(days, us, now), cost.HistoryDays(days, us, t0, now, 50)
}

func same(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(a)) }

// testPrune: old ended nodes, their runs, attempts, replicas and events go
// in batches; live nodes, deallocated ones (a pool may restart them) and
// recent history stay; the cost report and the end of the cost chart are
// the same before and after.
func testPrune(t *testing.T, h *Harness) {
	h.Apply(PoolCPU + "---" + JobYAML("j", 4, 0))
	if _, err := h.St.Apply(h.Ctx, nil, nil, store.ServiceDoc{Name: "m", Spec: []byte(`{}`), RolloutKey: "k", Initial: 1}); err != nil {
		t.Fatal(err)
	}
	// Three old nodes that each ran a task and a replica and ended, over
	// two days; a deallocated one; a live one.
	for i, name := range []string{"old-a", "old-b", "old-c", "dealloc", "live"} {
		h.Node(name, true)
		tk := h.Task("j", []string{"task-0", "task-1", "task-2", "task-3", "task-3"}[i])
		if i < 4 {
			h.Assign(1, store.Assignment{TaskID: tk.ID, Node: name})
			ids, err := h.St.CreateReplicas(h.Ctx, []store.Replica{{Service: "m", Version: 1, Spec: []byte(`{}`), Pool: "cpu", Priority: "spot"}})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := h.St.AssignReplicas(h.Ctx, []store.ReplicaAssignment{{ID: ids[0], Node: name}}); err != nil {
				t.Fatal(err)
			}
		}
		h.Clock.Advance(17 * time.Hour) // runs cross midnights
		if i < 4 {
			state := map[int]string{0: store.NodePreempted, 1: store.NodeLost, 2: store.NodeTerminated, 3: store.NodeDeallocated}[i]
			if err := h.St.EndNode(h.Ctx, name, state, "test"); err != nil {
				t.Fatal(err)
			}
		}
	}
	h.Clock.Advance(time.Hour)
	cutoff := h.Clock.Now().Add(-24 * time.Hour) // old-a, old-b, old-c ended before it; dealloc after
	h.Clock.Advance(3 * time.Hour)
	sumBefore, histBefore := h.costNow()
	nodesBefore, _ := h.St.ListNodes(h.Ctx)
	eventsBefore, _ := h.St.ListEvents(h.Ctx, store.EventFilter{})

	var total store.PruneStats
	batches := 0
	for {
		st, err := h.St.Prune(h.Ctx, cutoff, 2)
		if err != nil {
			t.Fatal(err)
		}
		if st.Nodes > 2 || st.Runs > 2 || st.Attempts > 2 || st.Replicas > 2 || st.Events > 2 {
			t.Fatalf("a batch of 2 removed %+v", st)
		}
		if st.Total() == 0 {
			break
		}
		batches++
		total.Nodes += st.Nodes
		total.Runs += st.Runs
		total.Attempts += st.Attempts
		total.Replicas += st.Replicas
		total.Events += st.Events
	}
	if total.Nodes != 3 || total.Runs != 3 || total.Attempts != 3 || total.Replicas != 3 || batches < 2 {
		t.Errorf("pruned %+v in %d batches, want 3 nodes, runs, attempts and replicas", total, batches)
	}
	nodes, _ := h.St.ListNodes(h.Ctx)
	if len(nodes) != 2 || nodes[0].Name != "dealloc" || nodes[1].Name != "live" {
		t.Errorf("nodes left: %+v (of %d)", nodes, len(nodesBefore))
	}
	events, _ := h.St.ListEvents(h.Ctx, store.EventFilter{})
	if len(events) != len(eventsBefore)-total.Events || total.Events == 0 {
		t.Errorf("events: %d before, %d after, %d pruned", len(eventsBefore), len(events), total.Events)
	}
	for _, e := range events {
		if e.Time.Before(cutoff) {
			t.Errorf("event older than the retention kept: %+v", e)
		}
	}
	if reps, _ := h.St.ListReplicas(h.Ctx, ""); len(reps) != 0 {
		t.Errorf("live replicas changed: %+v", reps)
	}
	if a := h.Task("j", "task-3"); a.State != store.TaskPending || a.Attempt != 2 {
		t.Errorf("task of the deallocated node: %+v", a)
	}

	sumAfter, histAfter := h.costNow()
	if len(sumAfter.Lines) != len(sumBefore.Lines) || !same(sumAfter.Spent, sumBefore.Spent) || !same(sumAfter.OnDemand, sumBefore.OnDemand) ||
		!same(sumAfter.NodeSeconds, sumBefore.NodeSeconds) || sumBefore.NodeSeconds == 0 {
		t.Errorf("cost before pruning %+v, after %+v", sumBefore, sumAfter)
	}
	last := len(histBefore.Times) - 1
	if !same(histAfter.Total.Spent[last], histBefore.Total.Spent[last]) || !same(histAfter.Total.Spent[last], sumBefore.Spent) ||
		!same(histAfter.Total.OnDemand[last], histBefore.Total.OnDemand[last]) {
		t.Errorf("cost chart ends at %g/%g after pruning, %g/%g before", histAfter.Total.Spent[last], histAfter.Total.OnDemand[last],
			histBefore.Total.Spent[last], histBefore.Total.OnDemand[last])
	}
	for j := range histAfter.Times {
		if histAfter.Total.Spent[j] < 0 || (j > 0 && histAfter.Total.Spent[j] < histAfter.Total.Spent[j-1]) {
			t.Fatalf("cost chart after pruning is not cumulative at %d: %v", j, histAfter.Total.Spent)
		}
	}

	// Pruned totals survive a restart, and pruning again removes nothing.
	h.Reopen()
	if again, _ := h.costNow(); !same(again.Spent, sumBefore.Spent) {
		t.Errorf("cost after reopening: %g, want %g", again.Spent, sumBefore.Spent)
	}
	if st, err := h.St.Prune(h.Ctx, cutoff, 2); err != nil || st.Total() != 0 {
		t.Errorf("second prune: %+v, %v", st, err)
	}
	if _, err := h.St.Prune(h.Ctx, cutoff, 0); err == nil {
		t.Error("Prune with batch 0: no error")
	}
}

// testLiveNodes: the reconcile pass's read returns live and deallocated
// nodes only, and counts the rows it returned.
func testLiveNodes(t *testing.T, h *Harness) {
	h.Apply(PoolCPU)
	for _, name := range []string{"a", "b", "c", "d"} {
		h.Node(name, true)
	}
	for name, state := range map[string]string{"a": store.NodeLost, "b": store.NodeDeallocated, "c": store.NodeTerminated} {
		if err := h.St.EndNode(h.Ctx, name, state, "test"); err != nil {
			t.Fatal(err)
		}
	}
	before := h.St.Stats().NodeRowsRead
	ns, err := h.St.LiveNodes(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(ns) != 2 || ns[0].Name != "b" || ns[1].Name != "d" {
		t.Errorf("LiveNodes: %+v", ns)
	}
	if got := h.St.Stats().NodeRowsRead - before; got != 2 {
		t.Errorf("NodeRowsRead grew by %d, want 2", got)
	}
}

// testHeartbeatInMemory: a heartbeat keeps its node alive in every read,
// is written to the database by FlushHeartbeats and on Close, and an
// ended node's agent is told at its next heartbeat.
func testHeartbeatInMemory(t *testing.T, h *Harness) {
	h.Apply(PoolCPU)
	h.Node("n1", true)
	h.Clock.Advance(time.Second)
	if n, err := h.St.Heartbeat(h.Ctx, "n1", true); err != nil || !n.HeartbeatAt.Equal(h.Clock.Now()) || n.State != store.NodeReady {
		t.Fatalf("heartbeat: %+v, %v", n, err)
	}
	hb := h.Clock.Now()
	for _, n := range append(must(h.St.ListNodes(h.Ctx)), must(h.St.LiveNodes(h.Ctx))...) {
		if !n.HeartbeatAt.Equal(hb) {
			t.Errorf("listed heartbeat %s, want %s", n.HeartbeatAt, hb)
		}
	}
	h.Reopen() // Close flushes
	if n := h.getNode("n1"); !n.HeartbeatAt.Equal(hb) {
		t.Errorf("heartbeat after a restart: %s, want %s", n.HeartbeatAt, hb)
	}
	h.Clock.Advance(time.Second)
	if _, err := h.St.Heartbeat(h.Ctx, "n1", true); err != nil {
		t.Fatal(err)
	}
	if err := h.St.EndNode(h.Ctx, "n1", store.NodeTerminated, "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.St.Heartbeat(h.Ctx, "n1", true); !errors.Is(err, store.ErrConflict) {
		t.Errorf("heartbeat of an ended node: %v, want a conflict", err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
