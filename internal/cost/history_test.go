package cost

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

func TestHistory(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	hours := func(hs ...float64) []time.Time {
		var ts []time.Time
		for _, h := range hs {
			ts = append(ts, t0.Add(time.Duration(h*float64(time.Hour))))
		}
		return ts
	}
	tests := []struct {
		name     string
		usages   []Usage
		from, to time.Time
		points   int
		want     Timeline
	}{
		{
			name: "empty",
			from: t0, to: t0.Add(2 * time.Hour), points: 3,
			want: Timeline{Times: hours(0, 1, 2), Total: Series{Spent: []float64{0, 0, 0}, OnDemand: []float64{0, 0, 0}}, Pools: []PoolSeries{}},
		},
		{
			name: "a finished node stops adding up",
			usages: []Usage{
				{Node: "n1", Pool: "cpu", Priority: spec.PrioritySpot, Start: t0, End: t0.Add(time.Hour), PricePerHour: 0.01, OnDemandPerHour: 0.04},
			},
			from: t0, to: t0.Add(2 * time.Hour), points: 3,
			want: Timeline{
				Times: hours(0, 1, 2),
				Total: Series{Spent: []float64{0, 0.01, 0.01}, OnDemand: []float64{0, 0.04, 0.04}},
				Pools: []PoolSeries{{Pool: "cpu", Priority: spec.PrioritySpot, Series: Series{Spent: []float64{0, 0.01, 0.01}, OnDemand: []float64{0, 0.04, 0.04}}}},
			},
		},
		{
			name: "a running node counts up to each time",
			usages: []Usage{
				{Node: "n1", Pool: "cpu", Priority: spec.PrioritySpot, Start: t0.Add(30 * time.Minute), PricePerHour: 0.2, OnDemandPerHour: 1},
			},
			from: t0, to: t0.Add(2 * time.Hour), points: 5,
			want: Timeline{
				Times: hours(0, 0.5, 1, 1.5, 2),
				Total: Series{Spent: []float64{0, 0, 0.1, 0.2, 0.3}, OnDemand: []float64{0, 0, 0.5, 1, 1.5}},
				Pools: []PoolSeries{{Pool: "cpu", Priority: spec.PrioritySpot, Series: Series{Spent: []float64{0, 0, 0.1, 0.2, 0.3}, OnDemand: []float64{0, 0, 0.5, 1, 1.5}}}},
			},
		},
		{
			name: "pools sorted, a node started before from counts from its start",
			usages: []Usage{
				{Node: "b1", Pool: "b", Priority: spec.PrioritySpot, Start: t0.Add(-time.Hour), End: t0.Add(30 * time.Minute), PricePerHour: 1, OnDemandPerHour: 2},
				{Node: "a1", Pool: "a", Priority: spec.PriorityOnDemand, Start: t0.Add(time.Hour), PricePerHour: 0.5, OnDemandPerHour: 0.5},
				{Node: "a2", Pool: "a", Priority: spec.PrioritySpot, Start: t0, End: t0.Add(2 * time.Hour), PricePerHour: 0.1, OnDemandPerHour: 0.5},
			},
			from: t0, to: t0.Add(2 * time.Hour), points: 3,
			want: Timeline{
				Times: hours(0, 1, 2),
				Total: Series{Spent: []float64{1, 1.6, 2.2}, OnDemand: []float64{2, 3.5, 4.5}},
				Pools: []PoolSeries{
					{Pool: "a", Priority: spec.PriorityOnDemand, Series: Series{Spent: []float64{0, 0, 0.5}, OnDemand: []float64{0, 0, 0.5}}},
					{Pool: "a", Priority: spec.PrioritySpot, Series: Series{Spent: []float64{0, 0.1, 0.2}, OnDemand: []float64{0, 0.5, 1}}},
					{Pool: "b", Priority: spec.PrioritySpot, Series: Series{Spent: []float64{1, 1.5, 1.5}, OnDemand: []float64{2, 3, 3}}},
				},
			},
		},
		{
			name: "fewer than 2 points means 2",
			usages: []Usage{
				{Node: "n1", Pool: "cpu", Start: t0, PricePerHour: 1, OnDemandPerHour: 4},
			},
			from: t0, to: t0.Add(time.Hour), points: 0,
			want: Timeline{
				Times: hours(0, 1),
				Total: Series{Spent: []float64{0, 1}, OnDemand: []float64{0, 4}},
				Pools: []PoolSeries{{Pool: "cpu", Series: Series{Spent: []float64{0, 1}, OnDemand: []float64{0, 4}}}},
			},
		},
		{
			name: "to before from puts both at to",
			usages: []Usage{
				{Node: "n1", Pool: "cpu", Start: t0.Add(-time.Hour), PricePerHour: 1, OnDemandPerHour: 4},
			},
			from: t0.Add(2 * time.Hour), to: t0, points: 3,
			want: Timeline{
				Times: hours(0, 0, 0),
				Total: Series{Spent: []float64{1, 1, 1}, OnDemand: []float64{4, 4, 4}},
				Pools: []PoolSeries{{Pool: "cpu", Series: Series{Spent: []float64{1, 1, 1}, OnDemand: []float64{4, 4, 4}}}},
			},
		},
		{
			name: "a start after the end, or after to, counts as no time",
			usages: []Usage{
				{Node: "n1", Pool: "cpu", Start: t0.Add(time.Hour), End: t0, PricePerHour: 1, OnDemandPerHour: 2},
				{Node: "n2", Pool: "cpu", Start: t0.Add(3 * time.Hour), PricePerHour: 1, OnDemandPerHour: 2},
			},
			from: t0, to: t0.Add(2 * time.Hour), points: 2,
			want: Timeline{
				Times: hours(0, 2),
				Total: Series{Spent: []float64{0, 0}, OnDemand: []float64{0, 0}},
				Pools: []PoolSeries{{Pool: "cpu", Series: Series{Spent: []float64{0, 0}, OnDemand: []float64{0, 0}}}},
			},
		},
		{
			name: "times are whole nanoseconds, the last one is to",
			from: t0, to: t0.Add(10 * time.Second), points: 4,
			want: Timeline{
				Times: []time.Time{t0, t0.Add(3333333333), t0.Add(6666666666), t0.Add(10 * time.Second)},
				Total: Series{Spent: []float64{0, 0, 0, 0}, OnDemand: []float64{0, 0, 0, 0}},
				Pools: []PoolSeries{},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := History(tt.usages, tt.from, tt.to, tt.points)
			if !timelineNear(got, tt.want) {
				t.Errorf("History() =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

// TestHistoryEndsAtSummary checks, over a churning fleet, that the last
// point is what Summarize says at the same time, per pool and in total,
// and that no series ever goes down.
func TestHistoryEndsAtSummary(t *testing.T) {
	us := fleet(2_000)
	from, to := us[0].Start, us[0].Start.Add(24*time.Hour)
	h := History(us, from, to, 97)
	sum := Summarize(us, to)
	if len(h.Pools) != len(sum.Lines) {
		t.Fatalf("%d pools, Summarize has %d lines", len(h.Pools), len(sum.Lines))
	}
	last := len(h.Times) - 1
	for i, p := range h.Pools {
		l := sum.Lines[i]
		if p.Pool != l.Pool || p.Priority != l.Priority || !near(p.Spent[last], l.Spent) || !near(p.OnDemand[last], l.OnDemand) {
			t.Errorf("pool %d ends at %s/%s %v/%v; Summarize: %+v", i, p.Pool, p.Priority, p.Spent[last], p.OnDemand[last], l)
		}
	}
	if !near(h.Total.Spent[last], sum.Spent) || !near(h.Total.OnDemand[last], sum.OnDemand) {
		t.Errorf("total ends at %v/%v; Summarize: %v/%v", h.Total.Spent[last], h.Total.OnDemand[last], sum.Spent, sum.OnDemand)
	}
	for _, s := range append([]Series{h.Total}, seriesOf(h.Pools)...) {
		if !slices.IsSorted(s.Spent) || !slices.IsSorted(s.OnDemand) {
			t.Errorf("a series goes down: %v %v", s.Spent, s.OnDemand)
		}
	}
}

// TestHistoryJSON pins the shape the console reads: a pool's series sit
// beside its name.
func TestHistoryJSON(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	h := History([]Usage{{Pool: "cpu", Priority: spec.PrioritySpot, Start: t0, PricePerHour: 3600, OnDemandPerHour: 7200}}, t0, t0.Add(time.Second), 2)
	b, err := json.Marshal(h)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"times":["2025-03-01T12:00:00Z","2025-03-01T12:00:01Z"],"total":{"spent":[0,1],"onDemand":[0,2]},` +
		`"pools":[{"pool":"cpu","priority":"spot","spent":[0,1],"onDemand":[0,2]}]}`
	if string(b) != want {
		t.Errorf("JSON:\n%s\nwant\n%s", b, want)
	}
}

func seriesOf(ps []PoolSeries) []Series {
	var out []Series
	for _, p := range ps {
		out = append(out, p.Series)
	}
	return out
}

func timelineNear(a, b Timeline) bool {
	if !slices.EqualFunc(a.Times, b.Times, time.Time.Equal) || !seriesNear(a.Total, b.Total) || len(a.Pools) != len(b.Pools) || (a.Pools == nil) != (b.Pools == nil) {
		return false
	}
	for i := range a.Pools {
		if a.Pools[i].Pool != b.Pools[i].Pool || a.Pools[i].Priority != b.Pools[i].Priority || !seriesNear(a.Pools[i].Series, b.Pools[i].Series) {
			return false
		}
	}
	return true
}

func seriesNear(a, b Series) bool {
	return slices.EqualFunc(a.Spent, b.Spent, near) && slices.EqualFunc(a.OnDemand, b.OnDemand, near)
}

// fleet is a day of n nodes churning through ten pools: a third still
// run, the others ran an hour.
func fleet(n int) []Usage {
	t0 := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	us := make([]Usage, n)
	for i := range us {
		us[i] = Usage{
			Pool:            string(rune('a' + i%10)),
			Priority:        []string{spec.PrioritySpot, spec.PriorityOnDemand}[i%3%2],
			Start:           t0.Add(time.Duration(i) * 40 * time.Second),
			PricePerHour:    0.04 + float64(i%7)/100,
			OnDemandPerHour: 0.192,
		}
		if i%3 != 0 {
			us[i].End = us[i].Start.Add(time.Hour)
		}
	}
	return us
}

// BenchmarkHistory charts a day of a 10,000-node fleet at 120 points.
func BenchmarkHistory(b *testing.B) {
	us := fleet(10_000)
	from := us[0].Start
	to := from.Add(24 * time.Hour)
	b.ReportAllocs()
	for b.Loop() {
		History(us, from, to, 120)
	}
	b.ReportMetric(float64(b.N)*float64(len(us))/b.Elapsed().Seconds(), "usages/s")
}
