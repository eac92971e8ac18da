package control_test

import (
	"slices"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/deadline"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/trace"
)

// TestPoolHistory reads a pool's nodes and refused launches as the spot
// capacity it met: its max while the market gave, a dip a tick long for
// an eviction replaced at once, the live nodes while launches were
// refused; a node that idled out is no eviction.
func TestPoolHistory(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	s := func(d float64) time.Time { return t0.Add(time.Duration(d * float64(time.Second))) }
	pool := spec.Pool{Metadata: spec.Metadata{Name: "spot"}, Spec: spec.PoolSpec{Priority: spec.PrioritySpot, Max: 2}}
	nodes := []store.Node{
		{Name: "a", Pool: "spot", State: store.NodePreempted, CreatedAt: s(0), NoticeAt: s(10), StateAt: s(12)},
		{Name: "b", Pool: "spot", State: store.NodeReady, CreatedAt: s(10.2), StateAt: s(11)},   // a's replacement
		{Name: "d", Pool: "spot", State: store.NodeTerminated, CreatedAt: s(5), StateAt: s(20)}, // idled out
		{Name: "c", Pool: "spot", State: store.NodeReady, CreatedAt: s(40), StateAt: s(41)},     // the market back
		{Name: "x", Pool: "other", State: store.NodePreempted, CreatedAt: s(1), StateAt: s(2)},
	}
	refused := []time.Time{s(30), s(31)}
	got := control.PoolHistory(pool, nodes, refused, t0, s(45), time.Second)
	want := make([]int, 45)
	for i := range want {
		want[i] = 2
	}
	want[10] = 1 // a taken, b launched within the tick
	for i := 30; i <= 40; i++ {
		want[i] = 1 // refused from 30s until c's launch at 40s: b alone
	}
	if !slices.Equal(got, want) {
		t.Fatalf("history\n got %v\nwant %v", got, want)
	}

	// As a trace, a one-task job on it is preempted where the pool was.
	b, err := trace.EncodeJSON(time.Second, control.PoolHistory(
		spec.Pool{Metadata: spec.Metadata{Name: "spot"}, Spec: spec.PoolSpec{Priority: spec.PrioritySpot, Max: 1}},
		[]store.Node{
			{Name: "a", Pool: "spot", State: store.NodePreempted, CreatedAt: s(0), StateAt: s(100)},
			{Name: "b", Pool: "spot", State: store.NodeDeallocated, CreatedAt: s(101), NoticeAt: s(200), StateAt: s(230)},
			{Name: "c", Pool: "spot", State: store.NodeReady, CreatedAt: s(230), StateAt: s(231)},
		}, nil, t0, s(600), time.Second))
	if err != nil {
		t.Fatal(err)
	}
	tr, err := trace.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if tr.Duration != 600*time.Second || tr.CapacityAt(50*time.Second) != 1 || tr.CapacityAt(100*time.Second) != 0 ||
		tr.CapacityAt(215*time.Second) != 0 || tr.CapacityAt(300*time.Second) != 1 {
		t.Errorf("trace %+v: want capacity 1, 0 at 100s, 0 from 200s to 230s, then 1", tr)
	}
	j := deadline.Job{Work: 300 * time.Second, Deadline: 590 * time.Second, Changeover: 5 * time.Second, SpotPrice: 1, OnDemandPrice: 3}
	r := deadline.Simulate(j, deadline.Market{Trace: tr}, 0, time.Second, deadline.Options{Greedy: true})
	if r.Preemptions != 2 || r.Missed {
		t.Errorf("a job on the history: %+v, want 2 preemptions and the deadline met", r)
	}
}
