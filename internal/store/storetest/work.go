package storetest

import (
	"testing"

	"github.com/spotml/spotml/internal/store"
)

// testNodeWork: what a heartbeat answers (NodeWork) is kept in memory
// between writes, and every kind of write that changes a node's tasks or
// replicas shows in the next answer. Each step asks twice, so the second
// answer comes from memory.
func testNodeWork(t *testing.T, h *Harness) {
	h.Apply(PoolCPU + "---" + JobYAML("work", 3, 0))
	h.Node("n1", true)
	h.Node("n2", true)
	check := func(step string, tasks, replicas, live int) {
		t.Helper()
		checkOn(t, h, "n1", step, tasks, replicas, live)
	}
	check("idle", 0, 0, 0)
	checkOn(t, h, "n2", "idle", 0, 0, 0)
	ts := h.job("work").Tasks
	// Assign and report change the work of their own nodes only.
	h.Assign(1, store.Assignment{TaskID: ts[2].ID, Node: "n2"})
	checkOn(t, h, "n2", "assigned on n2", 1, 0, 0)
	check("assigned on n2", 0, 0, 0)
	h.Assign(2, store.Assignment{TaskID: ts[0].ID, Node: "n1"}, store.Assignment{TaskID: ts[1].ID, Node: "n1"})
	check("assigned", 2, 0, 0)
	if err := h.St.SetProgress(h.Ctx, "n1", []store.Progress{{TaskID: ts[0].ID, Attempt: 1, Fraction: 0.5}}); err != nil {
		t.Fatal(err)
	}
	if w, _ := h.St.NodeWork(h.Ctx, "n1"); w.Tasks[0].Progress == nil || *w.Tasks[0].Progress != 0.5 {
		t.Errorf("NodeWork after SetProgress: progress %v, want 0.5", w.Tasks[0].Progress)
	}
	checkOn(t, h, "n2", "assigned on n1", 1, 0, 0)
	h.report(h.Task("work", "task-2"), "n2", 1, store.OutcomeSucceeded, 0, "")
	checkOn(t, h, "n2", "reported on n2", 0, 0, 0)
	check("reported on n2", 2, 0, 0)
	h.report(h.Task("work", "task-0"), "n1", 1, store.OutcomeSucceeded, 0, "")
	check("reported", 1, 0, 0)
	if err := h.St.DeleteJob(h.Ctx, "work"); err != nil {
		t.Fatal(err)
	}
	check("job deleted", 0, 0, 0)
	testNodeWorkReplicas(t, h, check)
}

func checkOn(t *testing.T, h *Harness, node, step string, tasks, replicas, live int) {
	t.Helper()
	for range 2 {
		w, err := h.St.NodeWork(h.Ctx, node)
		if err != nil {
			t.Fatal(err)
		}
		if len(w.Tasks) != tasks || len(w.Replicas) != replicas || w.LiveReplicas != live {
			t.Fatalf("%s: NodeWork of %s has %d tasks, %d replicas, %d live; want %d, %d, %d",
				step, node, len(w.Tasks), len(w.Replicas), w.LiveReplicas, tasks, replicas, live)
		}
	}
}

func testNodeWorkReplicas(t *testing.T, h *Harness, check func(step string, tasks, replicas, live int)) {

	h.services("web")
	ids, err := h.St.CreateReplicas(h.Ctx, []store.Replica{{Service: "web", Version: 1, Spec: []byte(`{}`), Pool: "cpu", Priority: "spot"}})
	if err != nil {
		t.Fatal(err)
	}
	check("replica pending", 0, 0, 0)
	if n, err := h.St.AssignReplicas(h.Ctx, []store.ReplicaAssignment{{ID: ids[0], Node: "n1"}}); err != nil || n != 1 {
		t.Fatalf("AssignReplicas = %d, %v", n, err)
	}
	check("replica placed", 0, 1, 1)
	if err := h.St.StopReplicas(h.Ctx, []store.ReplicaStop{{ID: ids[0], Reason: "test"}}); err != nil {
		t.Fatal(err)
	}
	check("replica stopping", 0, 0, 1)
	if err := h.St.ReportReplicas(h.Ctx, "n1", nil); err != nil { // the agent no longer runs it
		t.Fatal(err)
	}
	check("replica stopped", 0, 0, 0)

	h.Apply(JobYAML("again", 1, 0))
	h.Assign(1, store.Assignment{TaskID: h.job("again").Tasks[0].ID, Node: "n1"})
	check("assigned again", 1, 0, 0)
	if err := h.St.EndNode(h.Ctx, "n1", store.NodePreempted, "test"); err != nil {
		t.Fatal(err)
	}
	check("node ended", 0, 0, 0)
}
