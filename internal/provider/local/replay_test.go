package local

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/trace"
)

// countingSink counts the notices the market gives.
type countingSink struct {
	control.Sink
	notices int
}

func (c *countingSink) Notice(ctx context.Context, node string, deadline time.Time, source string) error {
	c.notices++
	return c.Sink.Notice(ctx, node, deadline, source)
}

func tracedPool(path string, max int) spec.Pool {
	p := pool("spot-t", spec.PrioritySpot, "")
	p.Spec.Max = max
	p.Spec.Local.Notice = spec.Duration{Duration: time.Second}
	p.Spec.Local.Market = &spec.Market{Trace: path, Speedup: 1}
	return p
}

// fill keeps a pool at what the trace allows, as the control plane would
// if nodes launched at once: ready nodes without a notice up to capacity.
func (h *harness) fill(pool string, capacity int, seq *int) {
	h.t.Helper()
	nodes, err := h.st.ListNodes(h.ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	for n := len(unnoticed(pool, nodes)); n < capacity; n++ {
		*seq++
		name := fmt.Sprintf("%s-%d", pool, *seq)
		if err := h.st.CreateNode(h.ctx, store.Node{Name: name, Pool: pool, Priority: spec.PrioritySpot, InstanceType: "local-2"}); err != nil {
			h.t.Fatal(err)
		}
		if _, err := h.st.Heartbeat(h.ctx, name, true); err != nil {
			h.t.Fatal(err)
		}
	}
}

// TestTraceReplayExact replays every public trace on a pool that runs as
// many nodes as the trace allows (at most max): the market evicts exactly
// the nodes the trace takes (the counts of traces/README.md, computed
// there from the files by other code): each 1→0 step of a one-node file,
// every instance of each drop of an N-node file or count log, and every
// remove of an event log, in bulk where the trace takes several at once.
func TestTraceReplayExact(t *testing.T) {
	for _, tt := range []struct {
		file string
		max  int
		want int
	}{
		{"cant-be-late/preemption_1-node_aws-04-22-2023_us-west-2b_v100_1.json", 1, 44},
		{"cant-be-late/preemption_1-node_aws-04-22-2023_us-east-1c_v100_1.json", 1, 41},
		{"cant-be-late/preemption_1-node_aws-04-19-2023_us-east-1c_intel_64.json", 1, 128},
		{"cant-be-late/preemption_1-node_gcp-04-30-2023_us-east1-b_c3-88.json", 1, 3},
		{"cant-be-late/availability_1-node_aws-02-15-2023_us-east-1a_v100_1.json", 1, 253},
		{"cant-be-late/availability_1-node_aws-02-15-2023_us-west-2b_v100_1.json", 1, 94},
		{"cant-be-late/availability_1-node_aws-10-26-2022_us-west-2a_v100_8.json", 1, 269},
		{"cant-be-late/preemption_4-node_aws-08-03-2023_us-east-2a_v100_1.json", 4, 75},
		{"cant-be-late/availability_16-node_aws-08-27-2023_us-east-2b_v100_1.json", 16, 910},
		{"bamboo/p3-trace.csv", 32, 167},
		{"bamboo/g4dn-trace.csv", 24, 74},
		{"bamboo/v100x1-east1c.txt", 80, 518},
		{"bamboo/a100x1-east1b.txt", 64, 154},
	} {
		t.Run(filepath.Base(tt.file), func(t *testing.T) {
			t.Parallel()
			path := filepath.Join("..", "..", "..", "traces", tt.file)
			tr, err := trace.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			p := tracedPool(path, tt.max)
			h := newHarness(t, p)
			sink := &countingSink{Sink: h.plane}
			tick := func() {
				t.Helper()
				if err := h.l.tick(h.ctx, sink, h.plane, 0); err != nil {
					t.Fatal(err)
				}
			}
			seq := 0
			h.fill("spot-t", min(tr.CapacityAt(0), tt.max), &seq)
			tick()
			at := time.Duration(0)
			for i, s := range tr.Steps {
				if i > 0 && s.At == tr.Steps[i-1].At {
					continue // an instant's steps apply in one tick
				}
				h.clk.Advance(s.At - at)
				at = s.At
				tick() // the trace's evictions: notices
				h.clk.Advance(1100 * time.Millisecond)
				at += 1100 * time.Millisecond
				tick() // the notices run out
				h.fill("spot-t", min(tr.CapacityAt(at), tt.max), &seq)
			}
			if sink.notices != tt.want {
				t.Errorf("the market gave %d notices, want %d", sink.notices, tt.want)
			}
			nodes, err := h.st.ListNodes(h.ctx)
			if err != nil {
				t.Fatal(err)
			}
			preempted := 0
			for _, n := range nodes {
				if n.State == store.NodePreempted {
					preempted++
				}
			}
			if preempted != tt.want {
				t.Errorf("%d nodes preempted, want %d", preempted, tt.want)
			}
		})
	}
}

// TestTraceRefusesLaunches: while the trace has no capacity (or the live
// nodes hold all of it) a spot launch is refused for lack of capacity; the
// replay follows the clock at the pool's speedup from its start offset.
func TestTraceRefusesLaunches(t *testing.T) {
	path := filepath.Join(t.TempDir(), "trace.json")
	writeFile(t, path, `{"metadata": {"gap_seconds": 60}, "data": [0, 0, 1, 1, 2, 2, 0]}`)
	p := tracedPool(path, 4)
	p.Spec.Local.Market.Speedup = 60                                 // a minute of the trace a second
	p.Spec.Local.Market.Start = spec.Duration{Duration: time.Minute} // from its second tick
	h := newHarness(t, p)
	// launch records a node as the control plane does before Launch, and
	// asks the market whether it has room for it.
	launch := func(name string) string {
		t.Helper()
		if err := h.st.CreateNode(h.ctx, store.Node{Name: name, Pool: "spot-t", Priority: spec.PrioritySpot, InstanceType: "local-2"}); err != nil {
			t.Fatal(err)
		}
		why, err := h.l.traceRefuses(h.ctx, p, name)
		if err != nil {
			t.Fatal(err)
		}
		return why
	}
	if why := launch("a"); !strings.Contains(why, "capacity 0 at 1m0s") {
		t.Fatalf("launch at minute 1 of the trace: refused for %q, want for capacity 0", why)
	}
	h.st.DeleteNode(h.ctx, "a")
	h.clk.Advance(time.Second) // minute 2: capacity 1
	if why := launch("b"); why != "" {
		t.Fatalf("launch at minute 2 refused: %s", why)
	}
	if _, err := h.st.Heartbeat(h.ctx, "b", true); err != nil {
		t.Fatal(err)
	}
	if why := launch("c"); !strings.Contains(why, "capacity 1 at 2m0s and 1 nodes hold it") {
		t.Fatalf("second launch at minute 2: refused for %q, want b to hold the capacity", why)
	}
}

func writeFile(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}
