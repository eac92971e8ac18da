package placement

import (
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

func TestSpares(t *testing.T) {
	t0 := time.Date(2026, 11, 30, 0, 0, 0, 0, time.UTC)
	at := func(pool string, s int) Preemption {
		return Preemption{Pool: pool, At: t0.Add(time.Duration(s) * time.Second)}
	}
	// warned: a notice w seconds ahead, to a node up age seconds then.
	warned := func(pool string, s, w, age int) Preemption {
		e := at(pool, s)
		e.Warning, e.Age = time.Duration(w)*time.Second, time.Duration(age)*time.Second
		return e
	}
	two := []string{"a", "b"}
	tests := []struct {
		name   string
		spot   int
		pools  []string
		spread bool
		pre    []Preemption
		want   int
		why    string
	}{
		{"no history, no spares", 2, two, true, nil, 0, "no spot preemptions"},
		{"no spot share", 0, two, true, []Preemption{at("a", 0)}, 0, "no spot replicas"},
		{"preemptions in other pools do not count", 2, two, true, []Preemption{at("c", 0), at("c", 1)}, 0, "no spot preemptions"},
		// One preemption takes one of 2: a spare keeps 2.
		{"single preemptions", 2, two, true, []Preemption{at("a", 0), at("b", 600), at("a", 1200)}, 1, "1 preemptions within"},
		// Pool a lost 4 nodes at once: with 2 pools it holds up to
		// ⌈(2+s)/2⌉ replicas; s=2 is the first that survives.
		{"bulk loss in one of two pools", 2, two, true, []Preemption{at("a", 0), at("a", 0), at("a", 1), at("a", 2)}, 2, "4 preemptions within"},
		// Over three pools the same wave takes one replica of three.
		{"bulk loss in one of three pools", 2, []string{"a", "b", "c"}, true, []Preemption{at("a", 0), at("a", 0), at("a", 1), at("a", 2)}, 1, "would take 1 of 3"},
		// Both pools at once, within one replacement time.
		{"correlated pools", 2, two, true, []Preemption{at("a", 0), at("b", 30)}, 2, "2 preemptions within"},
		// The same two, further apart than a replacement takes, are two
		// waves of one.
		{"uncorrelated pools", 2, two, true, []Preemption{at("a", 0), at("b", 300)}, 1, ""},
		{"not spread: a pool may hold them all", 2, two, false, []Preemption{at("a", 0), at("a", 1)}, 2, "(not spread)"},
		// Replace is 1 min below. Notices of 2 min to nodes up for hours:
		// each replacement was ready before its node went.
		{"notices longer than a replacement", 2, two, true, []Preemption{warned("a", 0, 120, 7200), warned("b", 30, 120, 7200)}, 0, "2 spot preemptions"},
		// A 30 s notice is shorter than the minute a replacement takes.
		{"notices shorter than a replacement", 2, two, true, []Preemption{warned("a", 0, 30, 7200), warned("b", 30, 30, 7200)}, 2, "2 preemptions within"},
		// A long notice, but to a node 20 s old: a replacement taken back
		// before it could be ready. Only that one counts.
		{"a replacement taken back while it booted", 2, two, true, []Preemption{warned("a", 0, 120, 7200), warned("b", 30, 120, 20)}, 1, "1 preemptions within"},
		{"capped at the spot share", 1, []string{"a"}, true, []Preemption{at("a", 0), at("a", 0), at("a", 0)}, 1, "capped at 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, why := Spares(tt.spot, tt.pools, tt.spread, History{Preemptions: tt.pre, Window: time.Hour, Replace: time.Minute})
			if got != tt.want || !strings.Contains(why, tt.why) {
				t.Errorf("Spares = %d (%s), want %d (…%s…)", got, why, tt.want, tt.why)
			}
		})
	}
}

// Spares run beyond the spot share, spread, and get no stand-ins.
func TestDecideSpares(t *testing.T) {
	pools := []Pool{
		{Name: "od", Priority: spec.PriorityOnDemand, Available: true},
		{Name: "spot-a", Priority: spec.PrioritySpot, Available: true},
		{Name: "spot-b", Priority: spec.PrioritySpot, Available: true},
	}
	in := Input{Desired: 2, Version: 1, Placement: tier(spec.TierProd), MaxSurge: 1, Pools: pools, Spare: 1}
	plan := Decide(in)
	if len(plan.Create) != 3 {
		t.Fatalf("created %d replicas, want 2 spot and 1 spare: %+v", len(plan.Create), plan.Create)
	}
	per := map[string]int{}
	for _, c := range plan.Create {
		per[c.Pool]++
		if c.StandIn || c.Priority != spec.PrioritySpot {
			t.Errorf("created %+v, want spot replicas only", c)
		}
	}
	if per["spot-a"] != 2 && per["spot-b"] != 2 || per["spot-a"]+per["spot-b"] != 3 {
		t.Errorf("spread %v, want 2 and 1 over the two spot pools", per)
	}
	if !strings.Contains(plan.Create[0].Reason, "1 spare spot") {
		t.Errorf("reason %q does not name the spare", plan.Create[0].Reason)
	}

	// One of three ready spot replicas noticed: two ready remain, the
	// service has its count, so no stand-in; a spot replacement only.
	in.Replicas = []Replica{
		{ID: "1", Version: 1, Pool: "spot-a", Priority: spec.PrioritySpot, State: Ready, Noticed: true},
		{ID: "2", Version: 1, Pool: "spot-b", Priority: spec.PrioritySpot, State: Ready},
		{ID: "3", Version: 1, Pool: "spot-a", Priority: spec.PrioritySpot, State: Ready},
	}
	plan = Decide(in)
	if len(plan.Create) != 1 || plan.Create[0].StandIn || plan.Create[0].Priority != spec.PrioritySpot || len(plan.Stop) != 0 {
		t.Errorf("after a notice: %+v, want one spot replacement and nothing stopped", plan)
	}

	// No spot capacity at all: stand-ins for the spot share (2), none for
	// the spare.
	in.Replicas = nil
	in.Pools = []Pool{pools[0], {Name: "spot-a", Priority: spec.PrioritySpot}, {Name: "spot-b", Priority: spec.PrioritySpot}}
	plan = Decide(in)
	if len(plan.Create) != 2 {
		t.Fatalf("without spot: %+v, want 2 stand-ins", plan.Create)
	}
	for _, c := range plan.Create {
		if !c.StandIn {
			t.Errorf("without spot: %+v, want a stand-in", c)
		}
	}

	// A spare fewer: a ready spot replica beyond the share and the spare
	// is stopped, never below the count.
	in.Pools = pools
	in.Spare = 0
	in.Replicas = []Replica{
		{ID: "1", Version: 1, Pool: "spot-a", Priority: spec.PrioritySpot, State: Ready},
		{ID: "2", Version: 1, Pool: "spot-b", Priority: spec.PrioritySpot, State: Ready},
		{ID: "3", Version: 1, Pool: "spot-a", Priority: spec.PrioritySpot, State: Ready},
	}
	plan = Decide(in)
	if len(plan.Stop) != 1 || plan.Stop[0].ID != "3" || len(plan.Create) != 0 {
		t.Errorf("spares dropped: %+v, want replica 3 (the second in spot-a) stopped", plan)
	}
}
