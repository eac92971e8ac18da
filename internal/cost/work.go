package cost

import "time"

// Stint is one stretch of paid node time spent on one piece of work (a
// task's attempt on a node): from the node's launch when it was launched
// for the work, else from the attempt's start, to the attempt's end.
type Stint struct {
	Priority string // spot or ondemand
	// Start and End bound the paid time; a zero End means it still runs.
	Start, End time.Time
	// Changeover is the part of it spent starting (launch, boot, start)
	// before the work ran.
	Changeover time.Duration
	// Share is the part of the node's price the work carries (a task
	// asking for half a node pays half); 0 means all of it.
	Share           float64
	PricePerHour    float64
	OnDemandPerHour float64
}

// Work explains what a job or service cost: its spot and on-demand hours
// and what each cost, its changeovers and what they cost, beside the same
// work on on-demand alone.
type Work struct {
	SpotHours       float64 `json:"spotHours"`
	SpotCost        float64 `json:"spotCost"`
	OnDemandHours   float64 `json:"onDemandHours"`
	OnDemandCost    float64 `json:"onDemandCost"`
	Changeovers     int     `json:"changeovers"`     // starts after the first
	ChangeoverHours float64 `json:"changeoverHours"` // of the hours above, spent starting
	ChangeoverCost  float64 `json:"changeoverCost"`
	Spent           float64 `json:"spent"`
	// AllOnDemand is the same work on on-demand alone: the hours that ran
	// it and one start, at the on-demand price.
	AllOnDemand float64 `json:"allOnDemand"`
}

// Explain sums stints, counting one that still runs up to now.
func Explain(stints []Stint, now time.Time) Work {
	var w Work
	first := true
	for _, s := range stints {
		end := s.End
		if end.IsZero() {
			end = now
		}
		share := s.Share
		if share <= 0 {
			share = 1
		}
		hours := max(end.Sub(s.Start).Hours(), 0) * share
		start := min(max(s.Changeover.Hours(), 0)*share, hours)
		spent := hours * s.PricePerHour
		if s.Priority == "spot" {
			w.SpotHours += hours
			w.SpotCost += spent
		} else {
			w.OnDemandHours += hours
			w.OnDemandCost += spent
		}
		if !first {
			w.Changeovers++
			w.ChangeoverHours += start
			w.ChangeoverCost += start * s.PricePerHour
		}
		w.Spent += spent
		w.AllOnDemand += (hours - start) * s.OnDemandPerHour
		if first {
			w.AllOnDemand += start * s.OnDemandPerHour // the one start on-demand pays too
			first = false
		}
	}
	return w
}
