package cost

import (
	"math"
	"slices"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

func TestLookup(t *testing.T) {
	tests := []struct {
		name   string
		typ    string
		want   Instance
		wantOK bool
	}{
		{
			name:   "local",
			typ:    "local-small",
			want:   Instance{Type: "local-small", CPU: 2, Memory: 4 << 30, SpotPerHour: 0.01, OnDemandPerHour: 0.04},
			wantOK: true,
		},
		{
			name:   "azure gpu",
			typ:    "Standard_NC4as_T4_v3",
			want:   Instance{Type: "Standard_NC4as_T4_v3", CPU: 4, Memory: 28 << 30, GPU: 1, SpotPerHour: 0.158, OnDemandPerHour: 0.526},
			wantOK: true,
		},
		{
			name:   "case does not matter",
			typ:    "standard_d2s_V3",
			want:   Instance{Type: "Standard_D2s_v3", CPU: 2, Memory: 8 << 30, SpotPerHour: 0.019, OnDemandPerHour: 0.096},
			wantOK: true,
		},
		{name: "unknown", typ: "m9.enormous"},
		{name: "empty", typ: ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := Lookup(tt.typ)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("Lookup(%q) = %+v, %v; want %+v, %v", tt.typ, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

// TestTable checks every entry of the default table for the mistakes a
// hand-typed table invites.
func TestTable(t *testing.T) {
	types := Types()
	if !slices.IsSorted(types) {
		t.Errorf("Types() not sorted: %v", types)
	}
	want := []string{
		"Standard_D2s_v3", "Standard_D4s_v3", "Standard_D8s_v3", "Standard_NC6s_v3", "Standard_NC4as_T4_v3",
		"m5.large", "m5.xlarge", "c5.2xlarge", "g4dn.xlarge", "p3.2xlarge",
		"n1-standard-2", "n1-standard-4", "n2-standard-8", "n1-standard-4-t4",
		"local-small",
	}
	for _, w := range want {
		if !slices.Contains(types, w) {
			t.Errorf("Types() lacks %s", w)
		}
	}
	seen := map[string]bool{}
	for _, typ := range types {
		if seen[typ] {
			t.Errorf("%s listed twice", typ)
		}
		seen[typ] = true
		in, ok := Lookup(typ)
		switch {
		case !ok:
			t.Errorf("Lookup(%q) failed for a listed type", typ)
		case in.CPU <= 0 || in.Memory < spec.Bytes(1<<30):
			t.Errorf("%s: implausible shape %v CPU, %d bytes", typ, in.CPU, in.Memory)
		case in.SpotPerHour <= 0 || in.OnDemandPerHour <= in.SpotPerHour:
			t.Errorf("%s: spot %v must be above 0 and below on-demand %v", typ, in.SpotPerHour, in.OnDemandPerHour)
		}
	}
}

func TestSummarize(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	now := t0.Add(2 * time.Hour)
	tests := []struct {
		name   string
		usages []Usage
		want   Summary
	}{
		{
			name: "empty",
			want: Summary{},
		},
		{
			name: "one finished spot node",
			usages: []Usage{
				{Node: "n1", Pool: "cpu", Priority: spec.PrioritySpot, Start: t0, End: t0.Add(time.Hour), PricePerHour: 0.01, OnDemandPerHour: 0.04},
			},
			want: Summary{
				Lines:       []Line{{Pool: "cpu", Priority: spec.PrioritySpot, NodeSeconds: 3600, Spent: 0.01, OnDemand: 0.04}},
				NodeSeconds: 3600, Spent: 0.01, OnDemand: 0.04, Saving: 0.03, SavingPercent: 75,
			},
		},
		{
			name: "a running node counts up to now",
			usages: []Usage{
				{Node: "n1", Pool: "cpu", Priority: spec.PrioritySpot, Start: t0.Add(30 * time.Minute), PricePerHour: 0.2, OnDemandPerHour: 1},
			},
			want: Summary{
				Lines:       []Line{{Pool: "cpu", Priority: spec.PrioritySpot, NodeSeconds: 5400, Spent: 0.3, OnDemand: 1.5}},
				NodeSeconds: 5400, Spent: 0.3, OnDemand: 1.5, Saving: 1.2, SavingPercent: 80,
			},
		},
		{
			name: "lines per pool, sorted",
			usages: []Usage{
				{Node: "s1", Pool: "spot", Priority: spec.PrioritySpot, Start: t0, End: t0.Add(time.Hour), PricePerHour: 0.01, OnDemandPerHour: 0.04},
				{Node: "d1", Pool: "dedicated", Priority: spec.PriorityOnDemand, Start: t0, End: t0.Add(time.Hour), PricePerHour: 0.04, OnDemandPerHour: 0.04},
				{Node: "s2", Pool: "spot", Priority: spec.PrioritySpot, Start: t0.Add(time.Hour), PricePerHour: 0.01, OnDemandPerHour: 0.04},
			},
			want: Summary{
				Lines: []Line{
					{Pool: "dedicated", Priority: spec.PriorityOnDemand, NodeSeconds: 3600, Spent: 0.04, OnDemand: 0.04},
					{Pool: "spot", Priority: spec.PrioritySpot, NodeSeconds: 7200, Spent: 0.02, OnDemand: 0.08},
				},
				NodeSeconds: 10800, Spent: 0.06, OnDemand: 0.12, Saving: 0.06, SavingPercent: 50,
			},
		},
		{
			name: "no on-demand price means no percentage",
			usages: []Usage{
				{Node: "n1", Pool: "free", Start: t0, End: t0.Add(time.Hour)},
			},
			want: Summary{
				Lines:       []Line{{Pool: "free", NodeSeconds: 3600}},
				NodeSeconds: 3600,
			},
		},
		{
			name: "a start after the end counts as no time",
			usages: []Usage{
				{Node: "n1", Pool: "cpu", Start: now.Add(time.Minute), PricePerHour: 1, OnDemandPerHour: 2},
			},
			want: Summary{Lines: []Line{{Pool: "cpu"}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := Summarize(tt.usages, now)
			if !summaryNear(got, tt.want) {
				t.Errorf("Summarize() =\n%+v\nwant\n%+v", got, tt.want)
			}
		})
	}
}

func TestSummarizeIgnoresUsageOrder(t *testing.T) {
	t0 := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	us := []Usage{
		{Pool: "b", Priority: spec.PrioritySpot, Start: t0, End: t0.Add(37 * time.Second), PricePerHour: 0.3, OnDemandPerHour: 0.9},
		{Pool: "a", Priority: spec.PriorityOnDemand, Start: t0, End: t0.Add(11 * time.Minute), PricePerHour: 0.7, OnDemandPerHour: 0.7},
		{Pool: "c", Priority: spec.PrioritySpot, Start: t0, PricePerHour: 0.1, OnDemandPerHour: 0.5},
	}
	now := t0.Add(3 * time.Hour)
	want := Summarize(us, now)
	slices.Reverse(us)
	if got := Summarize(us, now); !slices.Equal(got.Lines, want.Lines) || got.Spent != want.Spent || got.OnDemand != want.OnDemand {
		t.Errorf("order changed the summary:\n%+v\n%+v", got, want)
	}
}

func summaryNear(a, b Summary) bool {
	if len(a.Lines) != len(b.Lines) {
		return false
	}
	for i := range a.Lines {
		x, y := a.Lines[i], b.Lines[i]
		if x.Pool != y.Pool || x.Priority != y.Priority ||
			!near(x.NodeSeconds, y.NodeSeconds) || !near(x.Spent, y.Spent) || !near(x.OnDemand, y.OnDemand) {
			return false
		}
	}
	return near(a.NodeSeconds, b.NodeSeconds) && near(a.Spent, b.Spent) && near(a.OnDemand, b.OnDemand) &&
		near(a.Saving, b.Saving) && near(a.SavingPercent, b.SavingPercent)
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*max(1, math.Abs(a), math.Abs(b)) }

// BenchmarkSummarize sums a day of a 1,000-node fleet churning through
// ten pools: 10,000 usages.
func BenchmarkSummarize(b *testing.B) {
	t0 := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	us := make([]Usage, 10_000)
	for i := range us {
		us[i] = Usage{
			Pool:            string(rune('a' + i%10)),
			Priority:        spec.PrioritySpot,
			Start:           t0.Add(time.Duration(i) * time.Second),
			PricePerHour:    0.04,
			OnDemandPerHour: 0.192,
		}
		if i%3 != 0 {
			us[i].End = us[i].Start.Add(time.Hour)
		}
	}
	now := t0.Add(24 * time.Hour)
	b.ReportAllocs()
	for b.Loop() {
		Summarize(us, now)
	}
	b.ReportMetric(float64(b.N)*float64(len(us))/b.Elapsed().Seconds(), "usages/s")
}
