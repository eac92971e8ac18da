package storetest

import (
	"testing"
	"time"

	"github.com/spotml/spotml/internal/store"
)

// testFirstProgress: an attempt keeps the time of its first progress
// report (the end of its changeover), not of later ones; a resumed attempt
// gets its own; a report of an attempt that is no longer the task's
// current one sets nothing.
func testFirstProgress(t *testing.T, h *Harness) {
	h.Apply(PoolCPU + "---" + JobYAML("fp", 1, 0))
	h.Node("n1", true)
	h.Node("n2", true)
	tk := h.Task("fp", "task-0")
	h.Assign(1, store.Assignment{TaskID: tk.ID, Node: "n1"})
	progress := func(node string, attempt int, f float64) {
		t.Helper()
		if err := h.St.SetProgress(h.Ctx, node, []store.Progress{{TaskID: tk.ID, Attempt: attempt, Fraction: f}}); err != nil {
			t.Fatal(err)
		}
	}
	attempts := func() []store.Attempt {
		t.Helper()
		return h.Task("fp", "task-0").Attempts
	}
	if a := attempts(); len(a) != 1 || !a[0].FirstProgressAt.IsZero() {
		t.Fatalf("before any report: %+v, want one attempt without first progress", a)
	}
	h.Clock.Advance(90 * time.Second)
	first := h.Clock.Now()
	progress("n1", 1, 0.1)
	h.Clock.Advance(time.Minute)
	progress("n1", 1, 0.4)
	if a := attempts(); !a[0].FirstProgressAt.Equal(first) {
		t.Errorf("first progress of attempt 1: %s, want %s (its first report, not its last)", a[0].FirstProgressAt, first)
	}
	if !h.report(tk, "n1", 1, store.OutcomePreempted, 143, "notice") {
		t.Fatal("report not accepted")
	}
	progress("n1", 1, 0.5) // late: the attempt has ended
	h.Clock.Advance(time.Minute)
	h.Assign(1, store.Assignment{TaskID: tk.ID, Node: "n2"})
	h.Clock.Advance(3 * time.Minute) // restoring its checkpoint
	resumed := h.Clock.Now()
	progress("n2", 2, 0.4)
	h.Clock.Advance(time.Minute)
	progress("n2", 2, 0.6)
	a := attempts()
	if len(a) != 2 || !a[0].FirstProgressAt.Equal(first) || !a[1].FirstProgressAt.Equal(resumed) {
		t.Fatalf("attempts %+v: want first progress at %s and %s", a, first, resumed)
	}
	if got := a[1].FirstProgressAt.Sub(a[1].StartedAt); got != 3*time.Minute {
		t.Errorf("attempt 2 started %s before its first progress, want 3m (the restore)", got)
	}
	// It is kept across a reopen.
	h.Reopen()
	if a := attempts(); !a[1].FirstProgressAt.Equal(resumed) {
		t.Errorf("after reopening: %+v", a[1])
	}
}
