package cost

import (
	"math"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

// TestDaysKeepTotals: usages folded into day totals (as the store prunes
// them) give the same summary and the same last chart point as the usages
// themselves, and the chart stays cumulative.
func TestDaysKeepTotals(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 20, 0, 0, 0, time.UTC)
	usages := []Usage{
		{Node: "a", Pool: "cpu", Priority: spec.PrioritySpot, Start: t0, End: t0.Add(30 * time.Hour), PricePerHour: 0.013, OnDemandPerHour: 0.04},
		{Node: "b", Pool: "cpu", Priority: spec.PrioritySpot, Start: t0.Add(time.Hour), End: t0.Add(2 * time.Hour), PricePerHour: 0.017, OnDemandPerHour: 0.04},
		{Node: "c", Pool: "gpu", Priority: spec.PriorityOnDemand, Start: t0.Add(3 * time.Hour), End: t0.Add(50 * time.Hour), PricePerHour: 0.9, OnDemandPerHour: 0.9},
		{Node: "d", Pool: "cpu", Priority: spec.PrioritySpot, Start: t0.Add(40 * time.Hour), PricePerHour: 0.013, OnDemandPerHour: 0.04}, // still runs
	}
	now := t0.Add(60 * time.Hour)
	want := Summarize(usages, now)
	wantH := History(usages, t0, now, 30)

	days := map[[3]string]DayTotal{}
	for _, u := range usages[:3] {
		parts := ByDay(u)
		secs := 0.0
		for _, p := range parts {
			if p.First.Before(p.Day) || p.Last.After(p.Day.AddDate(0, 0, 1)) {
				t.Errorf("part %+v outside its day", p)
			}
			secs += p.NodeSeconds
			k := [3]string{p.Pool, p.Priority, p.Day.String()}
			d, ok := days[k]
			if !ok {
				d = p
			} else {
				d.NodeSeconds += p.NodeSeconds
				d.Spent += p.Spent
				d.OnDemand += p.OnDemand
				d.First, d.Last = minTime(d.First, p.First), maxTime(d.Last, p.Last)
			}
			days[k] = d
		}
		if secs != u.End.Sub(u.Start).Seconds() {
			t.Errorf("%s: parts of %g s, ran %g s", u.Node, secs, u.End.Sub(u.Start).Seconds())
		}
	}
	if got := ByDay(usages[3]); got != nil {
		t.Errorf("a running usage split into %+v", got)
	}
	var ds []DayTotal
	for _, d := range days {
		ds = append(ds, d)
	}
	got := SummarizeDays(ds, usages[3:], now)
	if len(got.Lines) != len(want.Lines) {
		t.Fatalf("lines %+v, want %+v", got.Lines, want.Lines)
	}
	for i := range want.Lines {
		g, w := got.Lines[i], want.Lines[i]
		if g.Pool != w.Pool || g.Priority != w.Priority || !sameUSD(g.Spent, w.Spent) || !sameUSD(g.OnDemand, w.OnDemand) || !sameUSD(g.NodeSeconds, w.NodeSeconds) {
			t.Errorf("line %d: %+v, want %+v", i, g, w)
		}
	}
	if !sameUSD(got.Spent, want.Spent) || !sameUSD(got.SavingPercent, want.SavingPercent) {
		t.Errorf("summary %+v, want %+v", got, want)
	}
	h := HistoryDays(ds, usages[3:], t0, now, 30)
	last := len(h.Times) - 1
	if !sameUSD(h.Total.Spent[last], wantH.Total.Spent[last]) || !sameUSD(h.Total.OnDemand[last], wantH.Total.OnDemand[last]) || len(h.Pools) != len(wantH.Pools) {
		t.Errorf("chart ends at %g, want %g", h.Total.Spent[last], wantH.Total.Spent[last])
	}
	for j := 1; j <= last; j++ {
		if h.Total.Spent[j] < h.Total.Spent[j-1] {
			t.Errorf("chart falls at %d: %v", j, h.Total.Spent)
		}
		// Day resolution: never further off than one day's spend.
		if math.Abs(h.Total.Spent[j]-wantH.Total.Spent[j]) > 24*(0.013+0.017+0.9) {
			t.Errorf("chart point %d: %g, runs say %g", j, h.Total.Spent[j], wantH.Total.Spent[j])
		}
	}
}

func sameUSD(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
