package cost

import (
	"cmp"
	"slices"
	"time"
)

// Timeline is cumulative cost over time, for the console's chart: what
// was spent and what the same node-time would have cost on demand, at each
// of Times. History makes one.
type Timeline struct {
	Times []time.Time  `json:"times"`
	Total Series       `json:"total"`
	Pools []PoolSeries `json:"pools"` // sorted by pool, then priority, as Summary.Lines
}

// Series is cumulative USD at each of a Timeline's times.
type Series struct {
	Spent    []float64 `json:"spent"`
	OnDemand []float64 `json:"onDemand"`
}

// PoolSeries is one pool's share of a Timeline.
type PoolSeries struct {
	Pool     string `json:"pool"`
	Priority string `json:"priority"`
	Series
}

// History prices usages cumulatively at points evenly spaced times from
// from to to, both included (at least 2; a to before from puts both at
// to). At each time a node counts for the part of its run before that
// time, a still running one up to it, so the last point is Summarize(usages,
// to) whenever no run ends after to, per pool and in total.
func History(usages []Usage, from, to time.Time, points int) Timeline {
	return history(nil, usages, from, to, points)
}

// history is HistoryDays; History is it without days.
func history(days []DayTotal, usages []Usage, from, to time.Time, points int) Timeline {
	points = max(points, 2)
	if to.Before(from) {
		from = to
	}
	times := make([]time.Time, points)
	// Integer steps, exact whatever the span: d·i/n spelt so as not to
	// overflow, and the last time is to itself.
	n := time.Duration(points - 1)
	d := to.Sub(from)
	step, rem := d/n, d%n
	for i := range times {
		times[i] = from.Add(step*time.Duration(i) + rem*time.Duration(i)/n)
	}
	times[points-1] = to

	h := Timeline{Times: times, Total: newSeries(points), Pools: []PoolSeries{}}
	index := make(map[[2]string]int)
	pool := func(p, priority string) *Series {
		k := [2]string{p, priority}
		i, ok := index[k]
		if !ok {
			i = len(h.Pools)
			index[k] = i
			h.Pools = append(h.Pools, PoolSeries{Pool: p, Priority: priority, Series: newSeries(points)})
		}
		return &h.Pools[i].Series
	}
	for _, u := range usages {
		s := pool(u.Pool, u.Priority)
		// Nothing is spent at times up to the start.
		first, _ := slices.BinarySearchFunc(times, u.Start, func(t, start time.Time) int {
			if t.After(start) {
				return 1
			}
			return -1
		})
		for j := first; j < points; j++ {
			t := times[j]
			end := u.End
			if end.IsZero() || end.After(t) {
				end = t
			}
			// As in Summarize: the same seconds and the same products, so
			// that the last point equals it exactly.
			secs := max(end.Sub(u.Start).Seconds(), 0)
			s.Spent[j] += secs * u.PricePerHour / 3600
			s.OnDemand[j] += secs * u.OnDemandPerHour / 3600
		}
	}
	for _, d := range days {
		addDay(pool(d.Pool, d.Priority), times, d)
	}
	slices.SortFunc(h.Pools, func(a, b PoolSeries) int {
		return cmp.Or(cmp.Compare(a.Pool, b.Pool), cmp.Compare(a.Priority, b.Priority))
	})
	// Totals from the sorted pools, as Summarize's.
	for _, p := range h.Pools {
		for j := range points {
			h.Total.Spent[j] += p.Spent[j]
			h.Total.OnDemand[j] += p.OnDemand[j]
		}
	}
	return h
}

func newSeries(points int) Series {
	return Series{Spent: make([]float64, points), OnDemand: make([]float64, points)}
}
