package sched

import (
	"cmp"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/spotml/spotml/internal/spec"
)

var update = flag.Bool("update", false, "rewrite testdata golden files")

const gi = spec.Bytes(1 << 30)

func cpu(c float64) spec.Resources { return spec.Resources{CPU: c} }

func mkNode(name string, free spec.Resources) Node {
	return Node{Name: name, Pool: "p", Priority: spec.PrioritySpot, Free: free}
}

func mkTask(id int64, req spec.Resources) Task {
	return Task{ID: id, Order: id, Req: req}
}

func TestSchedule(t *testing.T) {
	tests := []struct {
		name     string
		snap     Snapshot
		want     []Assignment
		unplaced int
	}{
		{
			name: "empty",
		},
		{
			name: "no tasks",
			snap: Snapshot{Nodes: []Node{mkNode("a", cpu(4))}},
		},
		{
			name:     "no nodes",
			snap:     Snapshot{Pending: []Task{mkTask(1, cpu(1)), mkTask(2, cpu(1))}},
			unplaced: 2,
		},
		{
			name: "fifo by order, not by input position",
			snap: Snapshot{
				Nodes: []Node{mkNode("a", cpu(2))},
				Pending: []Task{
					{ID: 1, Order: 30, Req: cpu(1)},
					{ID: 2, Order: 10, Req: cpu(1)},
					{ID: 3, Order: 20, Req: cpu(1)},
				},
			},
			want:     []Assignment{{2, "a"}, {3, "a"}},
			unplaced: 1,
		},
		{
			name: "equal order goes by id",
			snap: Snapshot{
				Nodes: []Node{mkNode("a", cpu(1))},
				Pending: []Task{
					{ID: 9, Order: 5, Req: cpu(1)},
					{ID: 4, Order: 5, Req: cpu(1)},
				},
			},
			want:     []Assignment{{4, "a"}},
			unplaced: 1,
		},
		{
			name: "cpu must cover the request",
			snap: Snapshot{
				Nodes:   []Node{mkNode("a", cpu(1.5))},
				Pending: []Task{mkTask(1, cpu(2)), mkTask(2, cpu(1.5)), mkTask(3, cpu(0.5))},
			},
			want:     []Assignment{{2, "a"}},
			unplaced: 2,
		},
		{
			name: "tasks with one spread key never share a node",
			snap: Snapshot{
				Nodes: []Node{mkNode("a", cpu(4)), {Name: "b", Pool: "p", Priority: spec.PrioritySpot, Free: cpu(4), Spread: []string{"svc"}}},
				Pending: []Task{
					{ID: 1, Order: 1, Req: cpu(1), Spread: "svc"},
					{ID: 2, Order: 2, Req: cpu(1), Spread: "svc"},
					{ID: 3, Order: 3, Req: cpu(1), Spread: "other"},
					{ID: 4, Order: 4, Req: cpu(1)},
				},
			},
			// b already runs one of svc; a takes the first, none is left
			// for the second; other keys and plain tasks still spread.
			want:     []Assignment{{1, "a"}, {3, "b"}, {4, "a"}},
			unplaced: 1,
		},
		{
			name: "a spread key prefers the zone with fewest of it",
			snap: Snapshot{
				Nodes: []Node{
					{Name: "a", Pool: "p", Priority: spec.PrioritySpot, Zone: "1", Free: cpu(4), Spread: []string{"svc"}},
					{Name: "b", Pool: "p", Priority: spec.PrioritySpot, Zone: "1", Free: cpu(4)},
					{Name: "c", Pool: "p", Priority: spec.PrioritySpot, Zone: "2", Free: cpu(2), Running: 3},
					{Name: "d", Pool: "p", Priority: spec.PrioritySpot, Zone: "2", Free: cpu(4)},
				},
				Pending: []Task{
					{ID: 1, Order: 1, Req: cpu(1), Spread: "svc"},
					{ID: 2, Order: 2, Req: cpu(1), Spread: "svc"},
					{ID: 3, Order: 3, Req: cpu(1), Spread: "svc"},
				},
			},
			// Zone 2 holds none: d (fewer running than c). Then each zone
			// holds one: b, the emptiest left. Then c, zone 2's last.
			want:     []Assignment{{1, "d"}, {2, "b"}, {3, "c"}},
			unplaced: 0,
		},
		{
			name: "memory must cover the request",
			snap: Snapshot{
				Nodes: []Node{mkNode("a", spec.Resources{CPU: 8, Memory: 4 * gi})},
				Pending: []Task{
					mkTask(1, spec.Resources{CPU: 1, Memory: 3 * gi}),
					mkTask(2, spec.Resources{CPU: 1, Memory: 2 * gi}),
					mkTask(3, spec.Resources{CPU: 1, Memory: 1 * gi}),
				},
			},
			want:     []Assignment{{1, "a"}, {3, "a"}},
			unplaced: 1,
		},
		{
			name: "gpu must cover the request",
			snap: Snapshot{
				Nodes: []Node{
					mkNode("cpu-only", spec.Resources{CPU: 16, Memory: 64 * gi}),
					mkNode("gpu", spec.Resources{CPU: 4, Memory: 16 * gi, GPU: 1}),
				},
				Pending: []Task{
					mkTask(1, spec.Resources{CPU: 1, GPU: 1}),
					mkTask(2, spec.Resources{CPU: 1, GPU: 1}),
					mkTask(3, spec.Resources{CPU: 1}),
				},
			},
			want:     []Assignment{{1, "gpu"}, {3, "cpu-only"}},
			unplaced: 1,
		},
		{
			name: "fractional cpu adds up exactly",
			snap: Snapshot{
				Nodes: []Node{mkNode("a", cpu(1))},
				Pending: func() []Task {
					var ts []Task
					for i := range 11 {
						ts = append(ts, mkTask(int64(i+1), cpu(0.1)))
					}
					return ts
				}(),
			},
			want: func() []Assignment {
				var as []Assignment
				for i := range 10 {
					as = append(as, Assignment{int64(i + 1), "a"})
				}
				return as
			}(),
			unplaced: 1,
		},
		{
			name: "pool selection",
			snap: Snapshot{
				Nodes: []Node{
					{Name: "a1", Pool: "a", Priority: spec.PrioritySpot, Free: cpu(8)},
					{Name: "b1", Pool: "b", Priority: spec.PrioritySpot, Free: cpu(1)},
				},
				Pending: []Task{
					{ID: 1, Order: 1, Pool: "b", Req: cpu(1)},
					{ID: 2, Order: 2, Pool: "b", Req: cpu(1)},
					{ID: 3, Order: 3, Pool: "c", Req: cpu(1)},
					{ID: 4, Order: 4, Pool: "a", Req: cpu(1)},
				},
			},
			want:     []Assignment{{1, "b1"}, {4, "a1"}},
			unplaced: 2,
		},
		{
			name: "priority selection",
			snap: Snapshot{
				Nodes: []Node{
					{Name: "spot1", Pool: "s", Priority: spec.PrioritySpot, Free: cpu(8)},
					{Name: "od1", Pool: "d", Priority: spec.PriorityOnDemand, Free: cpu(1)},
				},
				Pending: []Task{
					{ID: 1, Order: 1, Priority: spec.PriorityOnDemand, Req: cpu(1)},
					{ID: 2, Order: 2, Priority: spec.PriorityOnDemand, Req: cpu(1)},
					{ID: 3, Order: 3, Priority: spec.PrioritySpot, Req: cpu(1)},
					{ID: 4, Order: 4, Pool: "s", Priority: spec.PriorityOnDemand, Req: cpu(1)},
				},
			},
			want:     []Assignment{{1, "od1"}, {3, "spot1"}},
			unplaced: 2,
		},
		{
			name: "a task naming nothing goes to any pool",
			snap: Snapshot{
				Nodes: []Node{
					{Name: "x", Pool: "a", Priority: spec.PrioritySpot, Free: cpu(1)},
					{Name: "y", Pool: "b", Priority: spec.PriorityOnDemand, Free: cpu(1)},
				},
				Pending: []Task{mkTask(1, cpu(1)), mkTask(2, cpu(1)), mkTask(3, cpu(1))},
			},
			want:     []Assignment{{1, "x"}, {2, "y"}},
			unplaced: 1,
		},
		{
			name: "spread over nodes by running tasks",
			snap: Snapshot{
				Nodes: []Node{
					{Name: "a", Pool: "p", Free: cpu(8), Running: 2},
					{Name: "b", Pool: "p", Free: cpu(8), Running: 0},
					{Name: "c", Pool: "p", Free: cpu(8), Running: 1},
				},
				Pending: []Task{mkTask(1, cpu(1)), mkTask(2, cpu(1)), mkTask(3, cpu(1)), mkTask(4, cpu(1))},
			},
			// b has none; then b and c have one each and c more CPU free;
			// then b; then all have two and a the most CPU free.
			want: []Assignment{{1, "b"}, {2, "c"}, {3, "b"}, {4, "a"}},
		},
		{
			name: "spread ties go to most free cpu, then name",
			snap: Snapshot{
				Nodes: []Node{
					mkNode("c", cpu(2)),
					mkNode("b", cpu(4)),
					mkNode("a", cpu(2)),
				},
				Pending: []Task{mkTask(1, cpu(1)), mkTask(2, cpu(1)), mkTask(3, cpu(1))},
			},
			want: []Assignment{{1, "b"}, {2, "a"}, {3, "c"}},
		},
		{
			name: "backfill: a big task does not block smaller later ones",
			snap: Snapshot{
				Nodes:   []Node{mkNode("a", cpu(4)), mkNode("b", cpu(4))},
				Pending: []Task{mkTask(1, cpu(8)), mkTask(2, cpu(2)), mkTask(3, cpu(4))},
			},
			want:     []Assignment{{2, "a"}, {3, "b"}},
			unplaced: 1,
		},
		{
			name: "an earlier task gets first pick",
			snap: Snapshot{
				Nodes: []Node{mkNode("a", cpu(4))},
				Pending: []Task{
					mkTask(1, cpu(1)), // takes 1 of 4
					mkTask(2, cpu(3)), // takes the other 3, though 3 and 4 would fill it too
					mkTask(3, cpu(2)),
					mkTask(4, cpu(1)),
				},
			},
			want:     []Assignment{{1, "a"}, {2, "a"}},
			unplaced: 2,
		},
		{
			name: "a fitting node behind one that does not",
			snap: Snapshot{
				Nodes: []Node{
					// a comes first in spread order but lacks memory.
					{Name: "a", Pool: "p", Free: spec.Resources{CPU: 8, Memory: 1 * gi}},
					{Name: "b", Pool: "p", Free: spec.Resources{CPU: 2, Memory: 8 * gi}, Running: 3},
				},
				Pending: []Task{mkTask(1, spec.Resources{CPU: 1, Memory: 4 * gi})},
			},
			want: []Assignment{{1, "b"}},
		},
		{
			name: "nothing fits",
			snap: Snapshot{
				Nodes:   []Node{mkNode("a", spec.Resources{CPU: 2, Memory: gi}), mkNode("b", cpu(1))},
				Pending: []Task{mkTask(1, cpu(4)), mkTask(2, spec.Resources{CPU: 1, Memory: 2 * gi}), mkTask(3, spec.Resources{GPU: 1})},
			},
			unplaced: 3,
		},
		{
			name: "full nodes take no cpu, but a task asking for none still runs",
			snap: Snapshot{
				Nodes: []Node{
					mkNode("full", cpu(0)),
					{Name: "busy", Pool: "p", Free: cpu(1), Running: 5},
				},
				Pending: []Task{mkTask(1, cpu(1)), mkTask(2, cpu(1)), mkTask(3, spec.Resources{})},
			},
			want:     []Assignment{{1, "busy"}, {3, "full"}},
			unplaced: 1,
		},
		{
			name: "overcommitted node takes nothing",
			snap: Snapshot{
				Nodes:   []Node{mkNode("a", spec.Resources{CPU: -1, Memory: -gi})},
				Pending: []Task{mkTask(1, cpu(0.5))},
			},
			unplaced: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Schedule(tt.snap)
			if !slices.Equal(got.Assignments, tt.want) || got.Unplaced != tt.unplaced {
				t.Errorf("Schedule() = %v, unplaced %d; want %v, unplaced %d",
					got.Assignments, got.Unplaced, tt.want, tt.unplaced)
			}
			if len(got.Assignments)+got.Unplaced != len(tt.snap.Pending) {
				t.Errorf("%d assigned + %d unplaced != %d pending",
					len(got.Assignments), got.Unplaced, len(tt.snap.Pending))
			}
		})
	}
}

func TestScheduleDoesNotModifyInput(t *testing.T) {
	s := randomSnapshot(rand.New(rand.NewPCG(1, 2)), 20, 200)
	before := cloneSnapshot(s)
	Schedule(s)
	if !reflect.DeepEqual(s, before) {
		t.Fatal("Schedule modified its input")
	}
}

// TestScheduleMatchesReference checks the heap-based scheduler against a
// plain scan of every node for every task, on random snapshots.
func TestScheduleMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for i := range 300 {
		s := randomSnapshot(rng, 1+rng.IntN(40), rng.IntN(400))
		got, want := Schedule(s), reference(s)
		if !slices.Equal(got.Assignments, want.Assignments) || got.Unplaced != want.Unplaced {
			t.Fatalf("case %d: Schedule differs from reference\n got %v unplaced %d\nwant %v unplaced %d",
				i, got.Assignments, got.Unplaced, want.Assignments, want.Unplaced)
		}
	}
}

// TestScheduleGolden runs each testdata/*.json snapshot and compares the
// plan with its .golden file; -update rewrites them.
func TestScheduleGolden(t *testing.T) {
	files, err := filepath.Glob(filepath.Join("testdata", "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no testdata/*.json")
	}
	for _, in := range files {
		t.Run(filepath.Base(in), func(t *testing.T) {
			data, err := os.ReadFile(in)
			if err != nil {
				t.Fatal(err)
			}
			var s Snapshot
			dec := json.NewDecoder(strings.NewReader(string(data)))
			dec.DisallowUnknownFields()
			if err := dec.Decode(&s); err != nil {
				t.Fatalf("decode %s: %v", in, err)
			}
			got, err := json.MarshalIndent(Schedule(s), "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			golden := strings.TrimSuffix(in, ".json") + ".golden"
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to create it)", err)
			}
			if string(got) != string(want) {
				t.Errorf("plan differs from %s:\n got %s\nwant %s", golden, got, want)
			}
		})
	}
}

// reference is the obvious O(tasks × nodes) scheduler the fast one must
// agree with.
func reference(s Snapshot) Plan {
	tasks := slices.Clone(s.Pending)
	slices.SortStableFunc(tasks, func(a, b Task) int {
		return cmp.Or(cmp.Compare(a.Order, b.Order), cmp.Compare(a.ID, b.ID))
	})
	type ref struct {
		Node
		milli int64
	}
	nodes := make([]ref, len(s.Nodes))
	for i, n := range s.Nodes {
		nodes[i] = ref{n, int64(math.Round(n.Free.CPU * 1000))}
	}
	var p Plan
	for _, t := range tasks {
		milli := max(int64(math.Round(t.Req.CPU*1000)), 0)
		best := -1
		for i, n := range nodes {
			if t.Pool != "" && t.Pool != n.Pool || t.Priority != "" && t.Priority != n.Priority {
				continue
			}
			if n.milli < milli || n.Free.Memory < max(t.Req.Memory, 0) || n.Free.GPU < max(t.Req.GPU, 0) {
				continue
			}
			if best < 0 {
				best = i
				continue
			}
			b := nodes[best]
			if c := cmp.Or(cmp.Compare(n.Running, b.Running), cmp.Compare(b.milli, n.milli), strings.Compare(n.Name, b.Name)); c < 0 {
				best = i
			}
		}
		if best < 0 {
			p.Unplaced++
			continue
		}
		n := &nodes[best]
		n.milli -= milli
		n.Free.Memory -= max(t.Req.Memory, 0)
		n.Free.GPU -= max(t.Req.GPU, 0)
		n.Running++
		p.Assignments = append(p.Assignments, Assignment{t.ID, n.Name})
	}
	return p
}

// randomSnapshot makes a small, crowded cluster: few pools, few shapes,
// so that ties, full nodes, pool and priority filters and backfill all
// come up often.
func randomSnapshot(rng *rand.Rand, nodes, tasks int) Snapshot {
	pools := []string{"a", "b", "c"}
	prios := []string{spec.PrioritySpot, spec.PriorityOnDemand}
	var s Snapshot
	for i := range nodes {
		s.Nodes = append(s.Nodes, Node{
			Name:     fmt.Sprintf("n%02d", i),
			Pool:     pools[rng.IntN(len(pools))],
			Priority: prios[rng.IntN(len(prios))],
			Zone:     "z1",
			Free: spec.Resources{
				CPU:    float64(rng.IntN(9)) / 2,
				Memory: spec.Bytes(rng.IntN(9)) * gi,
				GPU:    []int{0, 0, 1, 2}[rng.IntN(4)],
			},
			Running: rng.IntN(3),
		})
	}
	for range tasks {
		t := Task{
			ID:    int64(rng.IntN(1000)),
			Order: int64(rng.IntN(tasks/2 + 1)),
			Req: spec.Resources{
				CPU:    []float64{0, 0.1, 0.25, 0.5, 1, 2, 4}[rng.IntN(7)],
				Memory: spec.Bytes(rng.IntN(4)) * gi / 2,
				GPU:    rng.IntN(5) / 4,
			},
		}
		if rng.IntN(3) == 0 {
			t.Pool = pools[rng.IntN(len(pools))]
		}
		if rng.IntN(3) == 0 {
			t.Priority = prios[rng.IntN(len(prios))]
		}
		s.Pending = append(s.Pending, t)
	}
	return s
}

func cloneSnapshot(s Snapshot) Snapshot {
	return Snapshot{Pending: slices.Clone(s.Pending), Nodes: slices.Clone(s.Nodes)}
}

// benchSnapshot is the control-plane benchmark's cluster: nodes of 16 CPU
// and a queue of 1-CPU tasks.
func benchSnapshot(nodes, tasks int) Snapshot {
	s := Snapshot{Nodes: make([]Node, nodes), Pending: make([]Task, tasks)}
	for i := range s.Nodes {
		s.Nodes[i] = Node{
			Name:     fmt.Sprintf("node-%04d", i),
			Pool:     "batch",
			Priority: spec.PrioritySpot,
			Zone:     fmt.Sprintf("z%d", i%3),
			Free:     spec.Resources{CPU: 16, Memory: 64 * gi},
		}
	}
	for i := range s.Pending {
		s.Pending[i] = Task{ID: int64(i + 1), Order: int64(i), Req: spec.Resources{CPU: 1, Memory: gi}}
	}
	return s
}

func benchmarkSchedule(b *testing.B, s Snapshot) {
	b.ReportAllocs()
	var p Plan
	for b.Loop() {
		p = Schedule(s)
	}
	b.ReportMetric(float64(b.N)*float64(len(s.Pending))/b.Elapsed().Seconds(), "tasks/s")
	b.ReportMetric(float64(len(p.Assignments)), "placed")
}

// BenchmarkSchedule is the control-plane figure: 1,000 nodes of 16 CPU,
// 100,000 queued 1-CPU tasks (16,000 fit).
func BenchmarkSchedule(b *testing.B) {
	benchmarkSchedule(b, benchSnapshot(1000, 100_000))
}

// BenchmarkScheduleAllFit is the same queue on nodes big enough for all
// of it, so that every task goes through the heap and none is cut short.
func BenchmarkScheduleAllFit(b *testing.B) {
	s := benchSnapshot(1000, 100_000)
	for i := range s.Nodes {
		s.Nodes[i].Free = spec.Resources{CPU: 128, Memory: 512 * gi}
	}
	benchmarkSchedule(b, s)
}

// BenchmarkScheduleSmall is one pool of 50 nodes and 500 tasks, all fit.
func BenchmarkScheduleSmall(b *testing.B) {
	benchmarkSchedule(b, benchSnapshot(50, 500))
}

// BenchmarkScheduleMixed has pools of both priorities, GPU nodes, tasks
// that name a pool or a priority or neither, and more work than fits.
func BenchmarkScheduleMixed(b *testing.B) {
	rng := rand.New(rand.NewPCG(3, 4))
	var s Snapshot
	for i := range 1000 {
		n := Node{Name: fmt.Sprintf("node-%04d", i), Pool: fmt.Sprintf("pool-%d", i%10), Free: spec.Resources{CPU: 16, Memory: 64 * gi}}
		n.Priority = spec.PrioritySpot
		if i%10 >= 7 {
			n.Priority = spec.PriorityOnDemand
		}
		if i%10 == 9 {
			n.Free.GPU = 4
		}
		s.Nodes = append(s.Nodes, n)
	}
	for i := range 100_000 {
		t := Task{ID: int64(i + 1), Order: int64(i), Req: spec.Resources{CPU: float64(1 + rng.IntN(4)), Memory: spec.Bytes(1+rng.IntN(8)) * gi}}
		switch rng.IntN(4) {
		case 0:
			t.Pool = fmt.Sprintf("pool-%d", rng.IntN(10))
		case 1:
			t.Priority = spec.PrioritySpot
		case 2:
			t.Pool, t.Req.GPU = "pool-9", 1
		}
		s.Pending = append(s.Pending, t)
	}
	benchmarkSchedule(b, s)
}
