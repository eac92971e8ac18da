package placement

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/spotml/spotml/internal/spec"
)

// pools is the usual snapshot: two spot pools, the first over two zones,
// and one on-demand pool.
func pools() []Pool {
	return []Pool{
		{Name: "spot-a", Priority: spec.PrioritySpot, Zones: []string{"1", "2"}, Available: true},
		{Name: "spot-b", Priority: spec.PrioritySpot, Zones: []string{"3"}, Available: true},
		{Name: "od-a", Priority: spec.PriorityOnDemand, Zones: []string{"1"}, Available: true},
	}
}

func tier(t string) spec.Placement { return spec.PlacementSpec{Tier: t}.Resolve(1) }

// sim applies plans to a snapshot the way the control plane would.
type sim struct {
	t    *testing.T
	in   Input
	next int
}

func newSim(t *testing.T, in Input) *sim {
	if in.Version == 0 {
		in.Version = 1
	}
	if in.Pools == nil {
		in.Pools = pools()
	}
	return &sim{t: t, in: in, next: len(in.Replicas)}
}

// step decides and applies the plan: stopped replicas go, created ones
// come in pending.
func (s *sim) step() Plan {
	s.t.Helper()
	pl := Decide(s.in)
	for _, st := range pl.Stop {
		i := slices.IndexFunc(s.in.Replicas, func(r Replica) bool { return r.ID == st.ID })
		if i < 0 {
			s.t.Fatalf("plan stops %s, which does not exist", st.ID)
		}
		if s.in.Replicas[i].Noticed || s.in.Replicas[i].State == Draining {
			s.t.Errorf("plan stops %s, which is noticed or draining", st.ID)
		}
		s.in.Replicas = slices.Delete(s.in.Replicas, i, i+1)
	}
	for _, c := range pl.Create {
		s.next++
		s.in.Replicas = append(s.in.Replicas, Replica{ID: fmt.Sprintf("r%02d", s.next), Version: c.Version,
			Pool: c.Pool, Priority: c.Priority, State: Pending, StandIn: c.StandIn})
	}
	return pl
}

// ready marks every pending or starting replica ready, or only those ids.
func (s *sim) ready(ids ...string) {
	for i := range s.in.Replicas {
		r := &s.in.Replicas[i]
		if (r.State == Pending || r.State == Starting) && (len(ids) == 0 || slices.Contains(ids, r.ID)) {
			r.State = Ready
		}
	}
}

// converge steps until a plan does nothing, marking new replicas ready
// after each step.
func (s *sim) converge() {
	s.t.Helper()
	for range 50 {
		pl := s.step()
		s.ready()
		if len(pl.Create) == 0 && len(pl.Stop) == 0 {
			return
		}
	}
	s.t.Fatalf("no steady state after 50 steps: %s", s.summary())
}

func (s *sim) setPool(name string, available bool) {
	for i := range s.in.Pools {
		if s.in.Pools[i].Name == name {
			s.in.Pools[i].Available = available
		}
	}
}

// summary counts live replicas by pool, "+" marking stand-ins and "v"
// versions other than the current: "od-a=1 spot-a=2 spot-b=1".
func (s *sim) summary() string { return summarize(s.in.Version, s.in.Replicas) }

func summarize(version int, rs []Replica) string {
	counts := map[string]int{}
	for _, r := range rs {
		if r.Noticed || r.State == Draining {
			continue
		}
		k := r.Pool
		if r.StandIn {
			k += "+"
		}
		if r.Version != version {
			k += fmt.Sprintf("v%d", r.Version)
		}
		counts[k]++
	}
	var parts []string
	for k, n := range counts {
		parts = append(parts, fmt.Sprintf("%s=%d", k, n))
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

func createSummary(cs []Create) string {
	var rs []Replica
	for _, c := range cs {
		rs = append(rs, Replica{Pool: c.Pool, StandIn: c.StandIn, Version: c.Version})
	}
	if len(cs) == 0 {
		return ""
	}
	return summarize(cs[0].Version, rs)
}

func stopIDs(ss []Stop) string {
	var ids []string
	for _, s := range ss {
		ids = append(ids, s.ID)
	}
	return strings.Join(ids, " ")
}

func TestTiers(t *testing.T) {
	strict30 := spec.PlacementSpec{Tier: spec.TierStrict, BaseOnDemand: new(2), OnDemandPercentAboveBase: new(30)}.Resolve(1)
	tests := []struct {
		name      string
		placement spec.Placement
		n         int
		want      string
	}{
		// dev: all spot, packed into the preferred pool.
		{"dev", tier(spec.TierDev), 1, "spot-a=1"},
		{"dev", tier(spec.TierDev), 2, "spot-a=2"},
		{"dev", tier(spec.TierDev), 4, "spot-a=4"},
		{"dev", tier(spec.TierDev), 10, "spot-a=10"},
		// prod: at least 2, all spot, spread.
		{"prod", tier(spec.TierProd), 1, "spot-a=1 spot-b=1"},
		{"prod", tier(spec.TierProd), 2, "spot-a=1 spot-b=1"},
		{"prod", tier(spec.TierProd), 4, "spot-a=2 spot-b=2"},
		{"prod", tier(spec.TierProd), 10, "spot-a=5 spot-b=5"},
		// strict: one on demand, the rest spot, spread.
		{"strict", tier(spec.TierStrict), 1, "od-a=1 spot-a=1"},
		{"strict", tier(spec.TierStrict), 2, "od-a=1 spot-a=1"},
		{"strict", tier(spec.TierStrict), 4, "od-a=1 spot-a=2 spot-b=1"},
		{"strict", tier(spec.TierStrict), 10, "od-a=1 spot-a=5 spot-b=4"},
		// strict, base 2 and 30 % above: 2 + ceil(30 % of the rest).
		{"strict 2+30%", strict30, 2, "od-a=2"},
		{"strict 2+30%", strict30, 4, "od-a=3 spot-a=1"},
		{"strict 2+30%", strict30, 10, "od-a=5 spot-a=3 spot-b=2"},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/%d", tt.name, tt.n), func(t *testing.T) {
			s := newSim(t, Input{Desired: tt.n, Placement: tt.placement, MaxSurge: 1})
			pl := s.step()
			if got := createSummary(pl.Create); got != tt.want {
				t.Errorf("first plan creates %s, want %s", got, tt.want)
			}
			if len(pl.Stop) > 0 || len(pl.Blocked) > 0 {
				t.Errorf("first plan stops %v, blocked %v", pl.Stop, pl.Blocked)
			}
			s.ready()
			s.converge()
			if got := s.summary(); got != tt.want {
				t.Errorf("steady state %s, want %s", got, tt.want)
			}
		})
	}
}

// Spreading outranks avoiding the evicting pool: with one replica per
// pool, the replacement goes back to the pool the noticed one leaves, or
// both would end up in one pool.
func TestNoticeReplacementKeepsTheSpread(t *testing.T) {
	pl := Decide(Input{Desired: 2, Version: 1, Placement: tier(spec.TierProd), MaxSurge: 1, Pools: pools(), Replicas: []Replica{
		{ID: "r1", Version: 1, Pool: "spot-a", Priority: spec.PrioritySpot, State: Ready, Noticed: true},
		{ID: "r2", Version: 1, Pool: "spot-b", Priority: spec.PrioritySpot, State: Ready},
	}})
	if len(pl.Create) != 1 || pl.Create[0].Pool != "spot-a" {
		t.Errorf("plan %+v, want one replica created in spot-a", pl)
	}
}

func TestNoticeIsReplacedAtOnce(t *testing.T) {
	s := newSim(t, Input{Desired: 3, Placement: tier(spec.TierProd), MaxSurge: 1, Replicas: []Replica{
		{ID: "r1", Version: 1, Pool: "spot-a", Priority: spec.PrioritySpot, State: Ready, Noticed: true},
		{ID: "r2", Version: 1, Pool: "spot-a", Priority: spec.PrioritySpot, State: Ready},
		{ID: "r3", Version: 1, Pool: "spot-b", Priority: spec.PrioritySpot, State: Ready},
	}})
	pl := s.step()
	// spot-a is evicting, so the replacement goes to spot-b, though it
	// has as many live replicas.
	want := Plan{Create: []Create{{Pool: "spot-b", Priority: spec.PrioritySpot, Version: 1,
		Reason: "replaces r1, which got an eviction notice"}}}
	if !reflect.DeepEqual(pl, want) {
		t.Errorf("plan %+v\nwant %+v", pl, want)
	}
	// The noticed replica is not stopped: its node's death ends it.
	s.ready()
	s.converge()
	if got := s.summary(); got != "spot-a=1 spot-b=2" {
		t.Errorf("steady state %s", got)
	}
}

func TestStrictAllSpotEvicted(t *testing.T) {
	replicas := func() []Replica {
		return []Replica{
			{ID: "r1", Version: 1, Pool: "od-a", Priority: spec.PriorityOnDemand, State: Ready},
			{ID: "r2", Version: 1, Pool: "spot-a", Priority: spec.PrioritySpot, State: Ready, Noticed: true},
			{ID: "r3", Version: 1, Pool: "spot-a", Priority: spec.PrioritySpot, State: Ready, Noticed: true},
			{ID: "r4", Version: 1, Pool: "spot-b", Priority: spec.PrioritySpot, State: Ready, Noticed: true},
		}
	}
	t.Run("spot elsewhere", func(t *testing.T) {
		s := newSim(t, Input{Desired: 4, Placement: tier(spec.TierStrict), MaxSurge: 1, Replicas: replicas()})
		pl := s.step()
		if got := createSummary(pl.Create); got != "spot-a=2 spot-b=1" {
			t.Errorf("creates %s", got)
		}
		if len(pl.Stop) != 0 {
			t.Errorf("stops %v; the on-demand base must stay", pl.Stop)
		}
		for i, c := range pl.Create {
			if !strings.HasPrefix(c.Reason, "replaces r") {
				t.Errorf("create %d: reason %q does not name the noticed replica", i, c.Reason)
			}
		}
	})
	t.Run("spot short", func(t *testing.T) {
		s := newSim(t, Input{Desired: 4, Placement: tier(spec.TierStrict), MaxSurge: 1, Replicas: replicas()})
		s.setPool("spot-a", false)
		s.setPool("spot-b", false)
		pl := s.step()
		if got := createSummary(pl.Create); got != "od-a+=3" {
			t.Errorf("creates %s, want 3 stand-ins", got)
		}
		if len(pl.Stop) != 0 {
			t.Errorf("stops %v", pl.Stop)
		}
		// The nodes die; the base and the stand-ins serve.
		s.in.Replicas = slices.DeleteFunc(s.in.Replicas, func(r Replica) bool { return r.Noticed })
		s.ready()
		s.converge()
		if got := s.summary(); got != "od-a+=3 od-a=1" {
			t.Errorf("steady state %s", got)
		}
	})
	t.Run("spot short, no fallback", func(t *testing.T) {
		no := false
		p := spec.PlacementSpec{Tier: spec.TierStrict, FallbackToOnDemand: &no}.Resolve(1)
		s := newSim(t, Input{Desired: 4, Placement: p, MaxSurge: 1, Replicas: replicas()})
		s.setPool("spot-a", false)
		s.setPool("spot-b", false)
		pl := s.step()
		if len(pl.Create) != 0 || len(pl.Stop) != 0 {
			t.Errorf("plan %+v, want nothing", pl)
		}
		if want := []string{"3 spot replicas wanted, but no spot pool has capacity and fallbackToOnDemand is off"}; !reflect.DeepEqual(pl.Blocked, want) {
			t.Errorf("blocked %q, want %q", pl.Blocked, want)
		}
	})
}

func TestStandIns(t *testing.T) {
	s := newSim(t, Input{Desired: 2, Placement: tier(spec.TierProd), MaxSurge: 1})
	s.setPool("spot-a", false)
	s.setPool("spot-b", false)

	pl := s.step()
	if got := createSummary(pl.Create); got != "od-a+=2" {
		t.Fatalf("spot short: creates %s, want 2 stand-ins", got)
	}
	if !strings.HasPrefix(pl.Create[0].Reason, "stand-in for a spot replica: no spot pool has capacity") {
		t.Errorf("reason %q", pl.Create[0].Reason)
	}
	s.ready()
	if pl := s.step(); len(pl.Create)+len(pl.Stop) != 0 {
		t.Fatalf("stand-ins ready: plan %+v, want nothing", pl)
	}

	// Spot is back: one spot replica per stand-in; the stand-ins stay.
	s.setPool("spot-b", true)
	pl = s.step()
	if got := createSummary(pl.Create); got != "spot-b=2" {
		t.Fatalf("spot back: creates %s", got)
	}
	if pl.Create[0].Reason != "replaces stand-in r01: spot capacity is back" {
		t.Errorf("reason %q", pl.Create[0].Reason)
	}
	if len(pl.Stop) != 0 {
		t.Fatalf("spot back: stops %v before the spot replicas are ready", pl.Stop)
	}
	if pl := s.step(); len(pl.Create)+len(pl.Stop) != 0 {
		t.Fatalf("spot pending: plan %+v, want nothing", pl)
	}

	// One spot replica ready: one stand-in goes.
	s.ready("r03")
	pl = s.step()
	if len(pl.Create) != 0 || len(pl.Stop) != 1 || !strings.HasPrefix(pl.Stop[0].ID, "r0") ||
		!strings.HasPrefix(pl.Stop[0].Reason, "stand-in no longer needed") {
		t.Fatalf("one spot ready: plan %+v, want one stand-in stopped", pl)
	}
	s.ready()
	pl = s.step()
	if len(pl.Create) != 0 || len(pl.Stop) != 1 {
		t.Fatalf("both spot ready: plan %+v, want the other stand-in stopped", pl)
	}
	if got := s.summary(); got != "spot-b=2" {
		t.Errorf("end state %s", got)
	}
}

// A spot replacement that is slow to start gets an on-demand stand-in
// beside it, which stops once the spot replica is ready; without fallback
// (dev) it does not.
func TestSlowSpotGetsStandIn(t *testing.T) {
	s := newSim(t, Input{Desired: 2, Placement: tier(spec.TierProd), MaxSurge: 1})
	s.converge()
	s.in.Replicas[0].Noticed = true
	if pl := s.step(); createSummary(pl.Create) != "spot-a=1" || pl.Create[0].StandIn {
		t.Fatalf("notice: creates %s, want a spot replacement", createSummary(pl.Create))
	}
	if pl := s.step(); len(pl.Create)+len(pl.Stop) != 0 {
		t.Fatalf("replacement starting: plan %+v, want nothing yet", pl)
	}
	s.in.Replicas[2].Slow = true // r03, the replacement
	pl := s.step()
	if got := createSummary(pl.Create); got != "od-a+=1" || len(pl.Stop) != 0 {
		t.Fatalf("replacement slow: creates %s, stops %v; want one stand-in", got, pl.Stop)
	}
	if want := "stand-in while spot replicas are not ready after 30s"; pl.Create[0].Reason != want {
		t.Errorf("reason %q, want %q", pl.Create[0].Reason, want)
	}
	s.ready("r04")
	if pl := s.step(); len(pl.Create)+len(pl.Stop) != 0 {
		t.Fatalf("stand-in ready, spot still slow: plan %+v, want nothing", pl)
	}
	s.ready("r03")
	pl = s.step()
	if len(pl.Create) != 0 || stopIDs(pl.Stop) != "r04" || !strings.HasPrefix(pl.Stop[0].Reason, "stand-in no longer needed") {
		t.Fatalf("spot ready: plan %+v, want the stand-in stopped", pl)
	}

	dev := newSim(t, Input{Desired: 1, Placement: tier(spec.TierDev)})
	dev.step()
	dev.in.Replicas[0].Slow = true
	if pl := dev.step(); len(pl.Create)+len(pl.Stop) != 0 {
		t.Errorf("dev, slow spot: plan %+v, want nothing (no fallback)", pl)
	}
}

// Spot runs out while a stand-in covers a slow spot replica: the slow
// one is given up, its stand-in now holds that slot, and the other
// slot gets a stand-in of its own.
func TestSlowSpotAndShortSpot(t *testing.T) {
	s := newSim(t, Input{Desired: 2, Placement: tier(spec.TierProd), MaxSurge: 1})
	s.converge()
	s.in.Replicas[0].Noticed = true
	s.step()                     // r03 replaces r01
	s.in.Replicas[2].Slow = true // r03
	s.step()                     // r04: stand-in for r03
	s.ready("r04")
	s.in.Replicas[1].Noticed = true // r02 noticed too, and spot is gone
	s.setPool("spot-a", false)
	s.setPool("spot-b", false)
	pl := s.step()
	if got := createSummary(pl.Create); got != "od-a+=1" || stopIDs(pl.Stop) != "r03" || s.summary() != "od-a+=2" {
		t.Fatalf("creates %s, stops %s, state %s; want r03 given up and one more stand-in (two in all)",
			got, stopIDs(pl.Stop), s.summary())
	}
}

func TestStuckPendingIsReplaced(t *testing.T) {
	s := newSim(t, Input{Desired: 2, Placement: tier(spec.TierProd), MaxSurge: 1, Replicas: []Replica{
		{ID: "r1", Version: 1, Pool: "spot-a", Priority: spec.PrioritySpot, State: Ready},
		{ID: "r2", Version: 1, Pool: "spot-b", Priority: spec.PrioritySpot, State: Pending},
	}})
	s.setPool("spot-b", false)
	pl := s.step()
	want := Plan{
		Create: []Create{{Pool: "spot-a", Priority: spec.PrioritySpot, Version: 1, Reason: "replaces r2, stuck pending in pool spot-b"}},
		Stop:   []Stop{{ID: "r2", Reason: "pending in pool spot-b, which has no capacity now; replaced"}},
	}
	if !reflect.DeepEqual(pl, want) {
		t.Errorf("plan %+v\nwant %+v", pl, want)
	}
}

// TestRollingUpdate simulates updates step by step: apply the plan, check
// the strategy's bounds, mark the new replicas ready, repeat.
func TestRollingUpdate(t *testing.T) {
	tests := []struct {
		name                     string
		placement                spec.Placement
		n                        int
		maxSurge, maxUnavailable int
		want                     string
		oneAtATime               bool
	}{
		{"prod 1/0", tier(spec.TierProd), 4, 1, 0, "spot-a=2 spot-b=2", true},
		{"strict 1/0", tier(spec.TierStrict), 4, 1, 0, "od-a=1 spot-a=2 spot-b=1", true},
		{"strict 2/1", tier(spec.TierStrict), 4, 2, 1, "od-a=1 spot-a=2 spot-b=1", false},
		{"prod 0/1", tier(spec.TierProd), 3, 0, 1, "spot-a=2 spot-b=1", true},
		{"dev 1/0 single", tier(spec.TierDev), 1, 1, 0, "spot-a=1", true},
		{"dev 0/1 single", tier(spec.TierDev), 1, 0, 1, "spot-a=1", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSim(t, Input{Desired: tt.n, Placement: tt.placement, MaxSurge: tt.maxSurge, MaxUnavailable: tt.maxUnavailable})
			s.converge()
			s.in.Version = 2
			for step := 0; ; step++ {
				if step == 30 {
					t.Fatalf("update not done after 30 steps: %s", s.summary())
				}
				pl := s.step()
				if len(pl.Create) == 0 && len(pl.Stop) == 0 {
					break
				}
				if tt.oneAtATime && (len(pl.Create) > 1 || len(pl.Stop) > 1) {
					t.Errorf("step %d: %d creates and %d stops, want one at a time", step, len(pl.Create), len(pl.Stop))
				}
				ready, live := 0, len(s.in.Replicas)
				for _, r := range s.in.Replicas {
					if r.State == Ready {
						ready++
					}
				}
				floor := max(1, tt.n-tt.maxUnavailable)
				if ready < floor {
					t.Errorf("step %d: %d ready after the plan, want at least %d (%s)", step, ready, floor, s.summary())
				}
				// One extra surge is allowed where MaxSurge 0 would stall.
				if limit := tt.n + max(1, tt.maxSurge); live > limit {
					t.Errorf("step %d: %d live, want at most %d", step, live, limit)
				}
				s.ready()
			}
			if got := s.summary(); got != tt.want {
				t.Errorf("after the update %s, want %s", got, tt.want)
			}
		})
	}
}

func TestRollingUpdateNeverStopsLastReady(t *testing.T) {
	// The new version cannot start (no capacity): the old replica stays.
	s := newSim(t, Input{Desired: 1, Placement: tier(spec.TierDev), MaxSurge: 0, MaxUnavailable: 1,
		Version: 2, Replicas: []Replica{
			{ID: "r1", Version: 1, Pool: "spot-a", Priority: spec.PrioritySpot, State: Ready},
			{ID: "r2", Version: 2, Pool: "spot-b", Priority: spec.PrioritySpot, State: Starting},
		}})
	for range 3 {
		if pl := s.step(); len(pl.Stop) != 0 || len(pl.Create) != 0 {
			t.Fatalf("plan %+v, want nothing while the new replica starts", pl)
		}
	}
	s.ready()
	pl := s.step()
	if stopIDs(pl.Stop) != "r1" || len(pl.Create) != 0 {
		t.Errorf("new ready: plan %+v, want r1 stopped", pl)
	}
}

func TestScaleDown(t *testing.T) {
	spot := func(id, pool, state string) Replica {
		return Replica{ID: id, Version: 1, Pool: pool, Priority: spec.PrioritySpot, State: state}
	}
	od := func(id, state string, standIn bool) Replica {
		return Replica{ID: id, Version: 1, Pool: "od-a", Priority: spec.PriorityOnDemand, State: state, StandIn: standIn}
	}
	base50 := spec.PlacementSpec{Tier: spec.TierStrict, OnDemandPercentAboveBase: new(50)}.Resolve(1)
	tests := []struct {
		name      string
		placement spec.Placement
		desired   int
		replicas  []Replica
		stops     string // IDs
		left      string
	}{
		{
			// Not ready first, then stand-ins, then spot from the
			// fullest pool.
			name: "order", placement: tier(spec.TierProd), desired: 2,
			replicas: []Replica{
				spot("r1", "spot-a", Ready), spot("r2", "spot-a", Ready), spot("r3", "spot-b", Starting),
				spot("r4", "spot-b", Ready), od("r5", Ready, true), spot("r6", "spot-a", Pending),
			},
			stops: "r2 r3 r5 r6", left: "spot-a=1 spot-b=1",
		},
		{
			name: "strict keeps its base", placement: tier(spec.TierStrict), desired: 2,
			replicas: []Replica{od("r1", Ready, false), spot("r2", "spot-a", Ready),
				spot("r3", "spot-b", Ready), spot("r4", "spot-a", Ready)},
			stops: "r3 r4", left: "od-a=1 spot-a=1",
		},
		{
			// 5 = 3 on demand + 2 spot; 3 = 2 + 1: one of each goes.
			name: "over the mix on both sides", placement: base50, desired: 3,
			replicas: []Replica{od("r1", Ready, false), od("r2", Ready, false), od("r3", Ready, false),
				spot("r4", "spot-a", Ready), spot("r5", "spot-b", Ready)},
			stops: "r3 r5", left: "od-a=2 spot-a=1",
		},
		{
			// A ready extra is kept while what replaces it starts.
			name: "ready kept while capacity starts", placement: tier(spec.TierStrict), desired: 2,
			replicas: []Replica{od("r1", Starting, false), od("r2", Ready, true), spot("r3", "spot-a", Ready)},
			stops:    "", left: "od-a+=1 od-a=1 spot-a=1",
		},
		{
			name: "to zero", placement: tier(spec.TierProd), desired: 0,
			replicas: []Replica{spot("r1", "spot-a", Ready), spot("r2", "spot-b", Pending),
				{ID: "r3", Version: 1, Pool: "spot-b", Priority: spec.PrioritySpot, State: Ready, Noticed: true},
				{ID: "r4", Version: 1, Pool: "spot-b", Priority: spec.PrioritySpot, State: Draining}},
			stops: "r1 r2", left: "",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSim(t, Input{Desired: tt.desired, Placement: tt.placement, MaxSurge: 1, Replicas: tt.replicas})
			pl := s.step()
			if len(pl.Create) != 0 {
				t.Errorf("creates %+v", pl.Create)
			}
			if got := stopIDs(pl.Stop); got != tt.stops {
				t.Errorf("stops %q, want %q (%+v)", got, tt.stops, pl.Stop)
			}
			if got := s.summary(); got != tt.left {
				t.Errorf("left %q, want %q", got, tt.left)
			}
		})
	}
}

func TestPoolsRestriction(t *testing.T) {
	t.Run("spread within the listed pools", func(t *testing.T) {
		p := spec.PlacementSpec{Tier: spec.TierStrict, Pools: []string{"spot-b", "od-a"}}.Resolve(1)
		s := newSim(t, Input{Desired: 3, Placement: p, MaxSurge: 1})
		if got := createSummary(s.step().Create); got != "od-a=1 spot-b=2" {
			t.Errorf("creates %s", got)
		}
	})
	t.Run("listed order is the preference", func(t *testing.T) {
		p := spec.PlacementSpec{Tier: spec.TierDev, Pools: []string{"spot-b", "spot-a"}}.Resolve(1)
		s := newSim(t, Input{Desired: 2, Placement: p, MaxSurge: 1})
		if got := createSummary(s.step().Create); got != "spot-b=2" {
			t.Errorf("creates %s", got)
		}
		s.ready()
		s.setPool("spot-b", false)
		s.in.Desired = 3
		if got := createSummary(s.step().Create); got != "spot-a=1" {
			t.Errorf("spot-b full: creates %s", got)
		}
	})
	t.Run("no on-demand pool listed", func(t *testing.T) {
		p := spec.PlacementSpec{Tier: spec.TierStrict, Pools: []string{"spot-a"}}.Resolve(1)
		pl := Decide(Input{Desired: 2, Version: 1, Placement: p, MaxSurge: 1, Pools: pools()})
		if got := createSummary(pl.Create); got != "spot-a=1" {
			t.Errorf("creates %s", got)
		}
		if len(pl.Blocked) != 1 || !strings.Contains(pl.Blocked[0], "no on-demand pool") {
			t.Errorf("blocked %q", pl.Blocked)
		}
	})
}

// TestDeterministic: the order of the input does not change the plan.
func TestDeterministic(t *testing.T) {
	in := Input{Desired: 5, Version: 2, Placement: tier(spec.TierStrict), MaxSurge: 2, MaxUnavailable: 1, Pools: pools()}
	for i := range 8 {
		in.Replicas = append(in.Replicas, Replica{ID: fmt.Sprintf("r%d", i), Version: 1 + i%2,
			Pool: []string{"spot-a", "spot-b"}[i%2], Priority: spec.PrioritySpot, State: Ready, Noticed: i == 3})
	}
	want := Decide(in)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		rng.Shuffle(len(in.Replicas), func(i, j int) { in.Replicas[i], in.Replicas[j] = in.Replicas[j], in.Replicas[i] })
		rng.Shuffle(len(in.Pools), func(i, j int) { in.Pools[i], in.Pools[j] = in.Pools[j], in.Pools[i] })
		if got := Decide(in); !reflect.DeepEqual(got, want) {
			t.Fatalf("plan differs with the input shuffled:\n%+v\nwant\n%+v", got, want)
		}
	}
}

// BenchmarkDecide plans for a large service mid-update.
func BenchmarkDecide(b *testing.B) {
	in := Input{Desired: 200, Version: 2, Placement: tier(spec.TierStrict), MaxSurge: 10, MaxUnavailable: 5}
	for i := range 8 {
		in.Pools = append(in.Pools, Pool{Name: fmt.Sprintf("spot-%d", i), Priority: spec.PrioritySpot, Available: true})
	}
	in.Pools = append(in.Pools, Pool{Name: "od", Priority: spec.PriorityOnDemand, Available: true})
	for i := range 200 {
		in.Replicas = append(in.Replicas, Replica{ID: fmt.Sprintf("r%04d", i), Version: 1 + i%2,
			Pool: fmt.Sprintf("spot-%d", i%8), Priority: spec.PrioritySpot, State: Ready})
	}
	for b.Loop() {
		Decide(in)
	}
}

// A pending replica whose node is on the way is not stuck, even while its
// pool refuses further launches: replacing it would waste that node.
func TestLaunchingPendingIsKept(t *testing.T) {
	s := newSim(t, Input{Desired: 2, Placement: tier(spec.TierProd), MaxSurge: 1, Replicas: []Replica{
		{ID: "r1", Version: 1, Pool: "spot-a", Priority: spec.PrioritySpot, State: Ready},
		{ID: "r2", Version: 1, Pool: "spot-b", Priority: spec.PrioritySpot, State: Pending, Launching: true},
	}})
	s.setPool("spot-b", false)
	if pl := s.step(); len(pl.Create) != 0 || len(pl.Stop) != 0 {
		t.Errorf("plan %+v, want nothing while r2's node is on the way", pl)
	}
}
