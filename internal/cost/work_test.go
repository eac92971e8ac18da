package cost

import (
	"math"
	"testing"
	"time"
)

func TestExplain(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	h := func(n float64) time.Time { return t0.Add(time.Duration(n * float64(time.Hour))) }
	stints := []Stint{
		// 2h on spot, the first 0.5h starting.
		{Priority: "spot", Start: h(0), End: h(2), Changeover: 30 * time.Minute, PricePerHour: 1, OnDemandPerHour: 4},
		// preempted; 1h on on-demand, 0.25h of it starting.
		{Priority: "ondemand", Start: h(3), End: h(4), Changeover: 15 * time.Minute, PricePerHour: 4, OnDemandPerHour: 4},
		// back on spot, half a node, still running at 6h.
		{Priority: "spot", Start: h(4), Changeover: time.Hour, Share: 0.5, PricePerHour: 1, OnDemandPerHour: 4},
	}
	w := Explain(stints, h(6))
	want := Work{
		SpotHours: 2 + 1, SpotCost: 2 + 1,
		OnDemandHours: 1, OnDemandCost: 4,
		Changeovers: 2, ChangeoverHours: 0.25 + 0.5, ChangeoverCost: 0.25*4 + 0.5*1,
		Spent: 2 + 4 + 1,
		// work hours 1.5 + 0.75 + 0.5, plus the first start, at 4.
		AllOnDemand: (1.5+0.75+0.5)*4 + 0.5*4,
	}
	if !nearWork(w, want) {
		t.Errorf("Explain =\n%+v\nwant\n%+v", w, want)
	}
	if z := Explain(nil, h(1)); z != (Work{}) {
		t.Errorf("no stints: %+v", z)
	}
}

func nearWork(a, b Work) bool {
	eq := func(x, y float64) bool { return math.Abs(x-y) < 1e-9 }
	return eq(a.SpotHours, b.SpotHours) && eq(a.SpotCost, b.SpotCost) && eq(a.OnDemandHours, b.OnDemandHours) &&
		eq(a.OnDemandCost, b.OnDemandCost) && a.Changeovers == b.Changeovers && eq(a.ChangeoverHours, b.ChangeoverHours) &&
		eq(a.ChangeoverCost, b.ChangeoverCost) && eq(a.Spent, b.Spent) && eq(a.AllOnDemand, b.AllOnDemand)
}
