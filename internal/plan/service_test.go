package plan

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/trace"
)

// minutes is a one-node Can't Be Late trace with one tick a minute.
func minutes(t *testing.T, data ...int) *trace.Trace {
	t.Helper()
	var b strings.Builder
	for i, v := range data {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprint(&b, v)
	}
	tr, err := trace.Parse([]byte(`{"metadata": {"gap_seconds": 60}, "data": [` + b.String() + `]}`))
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func repeat(v, n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func pools(traces ...*trace.Trace) []Pool {
	var out []Pool
	for i, tr := range traces {
		out = append(out, Pool{Name: "spot-" + string(rune('a'+i)), Priority: spec.PrioritySpot, Zones: []string{fmt.Sprint(i)}, Max: 10,
			Trace: tr, Speedup: 1, Notice: 30 * time.Second, Boot: time.Minute, IdleTimeout: time.Minute,
			PricePerHour: 0.2, OnDemandPerHour: 1})
	}
	return append(out, Pool{Name: "od", Priority: spec.PriorityOnDemand, Max: 10, Boot: time.Minute, IdleTimeout: time.Minute,
		PricePerHour: 1, OnDemandPerHour: 1})
}

func service(tier string) Service {
	pl := spec.PlacementSpec{Tier: tier}.Resolve(2)
	return Service{Name: "s", Placement: pl, Replicas: 2, Load: 5 * time.Second}
}

func near(a, b, tol float64) bool { return math.Abs(a-b) <= tol }

// TestSimulateTable: the tiers on markets whose answer is known.
func TestSimulateTable(t *testing.T) {
	day := 24 * 60
	for _, tc := range []struct {
		name   string
		traces [][]int
		tier   string
		// want: availability and cost ÷ all on-demand, within tol.
		avail, frac, tol float64
	}{
		// Spot never fails: every tier serves all the time; dev and prod
		// pay spot for their two replicas (0.2×), strict one on-demand
		// and one spot (0.6×).
		{"stable dev", [][]int{repeat(2, day), repeat(2, day)}, spec.TierDev, 1, 0.2, 0.001},
		// dev does not spread, but on one-node pools the first pool
		// refuses its second replica's node, and placement puts it in the
		// second, as the control plane's would.
		{"one-node dev", [][]int{repeat(1, day), repeat(1, day)}, spec.TierDev, 1, 0.2, 0.001},
		{"stable prod", [][]int{repeat(1, day), repeat(1, day)}, spec.TierProd, 1, 0.2, 0.001},
		{"stable strict", [][]int{repeat(1, day), repeat(1, day)}, spec.TierStrict, 1, 0.6, 0.001},
		// No spot at all: dev never serves (and pays nothing); prod and
		// strict serve on on-demand stand-ins at the on-demand price.
		{"no spot dev", [][]int{repeat(0, day), repeat(0, day)}, spec.TierDev, 0, 0, 0.001},
		{"no spot prod", [][]int{repeat(0, day), repeat(0, day)}, spec.TierProd, 1, 1, 0.01},
		{"no spot strict", [][]int{repeat(0, day), repeat(0, day)}, spec.TierStrict, 1, 1, 0.01},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var trs []*trace.Trace
			for _, d := range tc.traces {
				trs = append(trs, minutes(t, d...))
			}
			r := Simulate(service(tc.tier), pools(trs...), 0, Options{Duration: 23 * time.Hour})
			t.Logf("%s: %+v", tc.name, Run{Availability: r.Availability, Fraction: r.Fraction, Notices: r.Notices, Launches: r.Launches, StandIns: r.StandIns})
			if !near(r.Availability, tc.avail, tc.tol) || !near(r.Fraction, tc.frac, tc.tol) {
				t.Errorf("availability %.4f, cost %.4f× on demand; want %.4f, %.4f (±%g)", r.Availability, r.Fraction, tc.avail, tc.frac, tc.tol)
			}
		})
	}
}

// TestSimulateOutage: one of two spot pools loses its capacity for an
// hour. dev (not spread: both replicas in spot-a) is down until its
// replacements boot elsewhere; prod (spread, spares sized from what it
// saw) loses at most a boot's worth; strict keeps its on-demand replica.
func TestSimulateOutage(t *testing.T) {
	a2 := append(append(repeat(2, 120), repeat(0, 60)...), repeat(2, 300)...)
	b := repeat(2, 480)
	for _, tier := range Tiers {
		r := Simulate(service(tier), pools(minutes(t, a2...), minutes(t, b...)), 0, Options{Duration: 7 * time.Hour})
		t.Logf("%s: availability %.4f, none ready %s, cost %.3f×, %d notices, %d launches, %d stand-ins, headroom p99 %.2f",
			tier, r.Availability, r.NoneReady, r.Fraction, r.Notices, r.Launches, r.StandIns, r.HeadroomP99)
		if r.Notices == 0 {
			t.Errorf("%s: no notices, want the outage's", tier)
		}
		if tier == spec.TierStrict && r.NoneReady > 0 {
			t.Errorf("strict: %s with no ready replica; its on-demand replica should serve throughout", r.NoneReady)
		}
		if r.Availability > 1 || r.Availability < 0.9 {
			t.Errorf("%s: availability %.4f, want most of the time", tier, r.Availability)
		}
	}
}

// TestSimulateQPS: with a load, requests answered follow the ready
// replicas' capacity, and the headroom is capacity ÷ load.
func TestSimulateQPS(t *testing.T) {
	svc := service(spec.TierDev)
	svc.QPS, svc.PerReplicaQPS = 50, 50 // two replicas: headroom 2
	r := Simulate(svc, pools(minutes(t, repeat(2, 600)...), minutes(t, repeat(2, 600)...)), 0, Options{Duration: 5 * time.Hour})
	if !near(r.Answered, 1, 1e-9) || !near(r.HeadroomP99, 2, 1e-9) {
		t.Errorf("answered %.4f, headroom %.2f; want 1 and 2", r.Answered, r.HeadroomP99)
	}
}

// TestServicesOnRealTraces plans a prod service on two of the public
// traces, over offsets, and checks the report is whole and sane.
func TestServicesOnRealTraces(t *testing.T) {
	dir := filepath.Join("..", "..", "traces", "cant-be-late")
	names := []string{"availability_1-node_aws-02-15-2023_us-east-1a_v100_1.json", "availability_1-node_aws-02-15-2023_us-west-2b_v100_1.json"}
	load := func(name string) (*trace.Trace, error) { return trace.Load(filepath.Join(dir, name)) }
	if _, err := os.Stat(filepath.Join(dir, names[0])); err != nil {
		t.Skip("traces/ not here:", err)
	}
	var sv spec.Service
	sv.Metadata.Name = "fmnist"
	sv.Spec.Replicas.Min = 2
	sv.Spec.Placement.Tier = spec.TierProd
	start := time.Duration(-1)
	rep, err := Services(Request{Service: sv, Traces: names, InstanceType: "m5.large", Start: start, Offsets: 8, Duration: 12 * time.Hour,
		Boot: 90 * time.Second, Load: 5 * time.Second, QPS: 40}, load)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Tiers) != 3 || len(rep.Pools) != 3 {
		t.Fatalf("%d tiers, %d pools: want 3 and 3 (2 spot, 1 on-demand)", len(rep.Tiers), len(rep.Pools))
	}
	for _, tp := range rep.Tiers {
		t.Logf("%s (spec %v): run %s, mean availability %.4f, worst %.4f, mean %.2f×, worst %.2f×, met %.2f, headroom %.2f",
			tp.Tier, tp.Spec, tp.Run, tp.MeanAvailability, tp.WorstAvailability, tp.MeanFraction, tp.WorstFraction, tp.MetTarget, tp.Run.HeadroomP99)
		if len(tp.Sweep) != 8 || len(tp.Run.Timeline) < 2 {
			t.Errorf("%s: %d offsets, %d timeline points", tp.Tier, len(tp.Sweep), len(tp.Run.Timeline))
		}
		if tp.WorstAvailability > tp.MeanAvailability || tp.MeanFraction > tp.WorstFraction || tp.MeanFraction <= 0 {
			t.Errorf("%s: worst/mean out of order: %+v", tp.Tier, tp)
		}
	}
	if !rep.Tiers[1].Spec {
		t.Errorf("prod is the spec's tier, but not marked so")
	}
	if _, err := Services(Request{Service: sv, Traces: names}, load); err == nil || !strings.Contains(err.Error(), "instanceType") {
		t.Errorf("no pools and no instance type: %v, want an error naming instanceType", err)
	}
	if _, err := Services(Request{Service: sv, Traces: append(names, names[0]), InstanceType: "m5.large", Start: -1}, load); err != nil {
		t.Errorf("three traces make three pools: %v", err)
	}
}
