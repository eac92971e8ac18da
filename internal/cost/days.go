package cost

import (
	"time"
)

// DayTotal is one pool's node time and cost on one UTC day, summed from
// node runs that are no longer kept one by one (the store prunes ended runs
// older than its retention and keeps these instead). First and Last bound
// the node time inside the day, so that the cost chart spreads the total
// over the part of the day the nodes ran.
type DayTotal struct {
	Pool, Priority string
	Day            time.Time // midnight UTC
	First, Last    time.Time // earliest start and latest end within the day
	NodeSeconds    float64
	Spent          float64 // USD
	OnDemand       float64 // USD the same node-seconds would cost on demand
}

// ByDay splits an ended usage at UTC midnights into what it cost on each
// day, priced as Summarize prices it. A usage that has not ended, or ran
// for no time, gives none.
func ByDay(u Usage) []DayTotal {
	if u.End.IsZero() || !u.End.After(u.Start) {
		return nil
	}
	var out []DayTotal
	for start := u.Start.UTC(); start.Before(u.End); {
		day := time.Date(start.Year(), start.Month(), start.Day(), 0, 0, 0, 0, time.UTC)
		end := day.AddDate(0, 0, 1)
		if u.End.Before(end) {
			end = u.End.UTC()
		}
		secs := end.Sub(start).Seconds()
		out = append(out, DayTotal{Pool: u.Pool, Priority: u.Priority, Day: day, First: start, Last: end, NodeSeconds: secs,
			Spent: secs * u.PricePerHour / 3600, OnDemand: secs * u.OnDemandPerHour / 3600})
		start = end
	}
	return out
}

// SummarizeDays is Summarize over day totals as well as usages: the totals
// of runs the store has pruned count as the runs did.
func SummarizeDays(days []DayTotal, usages []Usage, now time.Time) Summary {
	s := Summarize(usages, now)
	if len(days) == 0 {
		return s
	}
	lines := map[[2]string]Line{}
	for _, l := range s.Lines {
		lines[[2]string{l.Pool, l.Priority}] = l
	}
	for _, d := range days {
		k := [2]string{d.Pool, d.Priority}
		l := lines[k]
		l.Pool, l.Priority = d.Pool, d.Priority
		l.NodeSeconds += d.NodeSeconds
		l.Spent += d.Spent
		l.OnDemand += d.OnDemand
		lines[k] = l
	}
	out := make([]Line, 0, len(lines))
	for _, l := range lines {
		out = append(out, l)
	}
	return total(out)
}

// HistoryDays is History over day totals as well as usages. A day's total
// grows evenly from its First to its Last time, so the chart keeps its
// totals, and its shape to the day, after the runs themselves are pruned.
func HistoryDays(days []DayTotal, usages []Usage, from, to time.Time, points int) Timeline {
	return history(days, usages, from, to, points)
}

// addDay adds a day total to a pool's series at times.
func addDay(s *Series, times []time.Time, d DayTotal) {
	span := d.Last.Sub(d.First)
	for j, t := range times {
		f := 1.0
		switch {
		case !t.After(d.First):
			continue
		case t.Before(d.Last) && span > 0:
			f = float64(t.Sub(d.First)) / float64(span)
		}
		s.Spent[j] += f * d.Spent
		s.OnDemand[j] += f * d.OnDemand
	}
}
