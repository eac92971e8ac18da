package storetest

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// testPendingQueue: EachPending hands the queue over in FIFO order (job
// submitted first, then task index), and once the reader says only tasks
// that ask for no CPU can still be placed, hands over only those;
// PendingDemand sums the queue per pool; RunningLoad and RunningJobs say
// what is running.
func testPendingQueue(t *testing.T, h *Harness) {
	h.Apply(PoolCPU + "---" + JobYAML("a", 3, 0))
	h.Clock.Advance(time.Minute)
	h.Apply(strings.Replace(JobYAML("z", 2, 0), "maxRetries: 0}", "maxRetries: 0, resources: {memory: 1Mi}}", 1))
	h.Clock.Advance(time.Minute)
	h.Apply(JobYAML("b", 2, 0))
	name := map[int64]string{}
	for _, j := range []string{"a", "z", "b"} {
		for _, tk := range h.job(j).Tasks {
			name[tk.ID] = j + tk.Name[len("task-"):]
		}
	}
	read := func(fullAfter int) []string {
		t.Helper()
		var got []string
		calls := 0
		err := h.St.EachPending(h.Ctx, 0, func(ts []store.QueuedTask) bool {
			calls++
			for _, tk := range ts {
				got = append(got, name[tk.ID])
				if tk.Pool != "cpu" || (tk.Req.CPU == 0) != (name[tk.ID][0] == 'z') {
					t.Errorf("task %s: pool %q, request %+v", name[tk.ID], tk.Pool, tk.Req)
				}
			}
			return fullAfter > 0 && calls >= fullAfter
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	if got, want := read(0), []string{"a0", "a1", "a2", "z0", "z1", "b0", "b1"}; !slices.Equal(got, want) {
		t.Errorf("queue %q, want %q", got, want)
	}
	// Full after job a's chunk: only the tasks that ask for no CPU follow.
	if got, want := read(1), []string{"a0", "a1", "a2", "z0", "z1"}; !slices.Equal(got, want) {
		t.Errorf("queue once full %q, want %q", got, want)
	}

	d, err := h.St.PendingDemand(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (spec.Resources{CPU: 5, Memory: 2 << 20}); len(d.Pinned) != 1 || d.Pinned["cpu"] != want || len(d.Loose) != 0 {
		t.Errorf("demand %+v, want cpu: %+v", d, want)
	}

	h.Node("n1", true)
	a0 := h.Task("a", "task-0")
	h.Assign(1, store.Assignment{TaskID: a0.ID, Node: "n1"})
	load, err := h.St.RunningLoad(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(load) != 1 || load[0].ID != a0.ID || load[0].Node != "n1" || load[0].Req != a0.Req {
		t.Errorf("running load %+v", load)
	}
	if got := read(0); slices.Contains(got, "a0") || len(got) != 6 {
		t.Errorf("queue after an assignment %q", got)
	}
	jobs, err := h.St.RunningJobs(h.Ctx)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, j := range jobs {
		names = append(names, j.Spec.Metadata.Name)
	}
	if want := []string{"a", "z", "b"}; !slices.Equal(names, want) {
		t.Errorf("running jobs %q, want %q", names, want)
	}
}
