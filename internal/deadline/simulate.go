package deadline

import (
	"time"

	"github.com/spotml/spotml/internal/trace"
)

// Market is the spot capacity a simulation sees: whether spot is there
// at an offset into the trace.
type Market struct {
	Trace *trace.Trace
	// Need is how many spot nodes the job needs at once (a gang needs all
	// of them: the Polarization Rule); default 1.
	Need int
	// Lookback is how much of the pool's recent history estimates spot
	// lifetimes; default 48h.
	Lookback time.Duration
}

func (m Market) need() int { return max(m.Need, 1) }

// Available says whether spot is there at offset at.
func (m Market) Available(at time.Duration) bool {
	return m.Trace.CapacityAt(at) >= m.need()
}

// Runs returns the lengths of the spot runs (spans of availability) that
// ended after from and at or before to.
func (m Market) Runs(from, to time.Duration) []time.Duration {
	var runs []time.Duration
	up := m.Trace.Initial >= m.need()
	var since time.Duration
	for _, s := range m.Trace.Steps {
		now := s.Capacity >= m.need()
		if now == up {
			continue
		}
		if up && s.At > from && s.At <= to {
			runs = append(runs, s.At-since)
		}
		if s.At > to {
			break
		}
		up, since = now, s.At
	}
	return runs
}

// Result is one simulated run of a job.
type Result struct {
	Cost          float64 // what it cost
	OnDemandCost  float64 // what on-demand alone would cost
	Finished      time.Duration
	Missed        bool // finished after the deadline
	SpotHours     float64
	OnDemandHours float64
	Changeovers   int
	Preemptions   int
}

// Fraction is the cost as a fraction of on-demand alone.
func (r Result) Fraction() float64 { return r.Cost / r.OnDemandCost }

// Simulate runs job on market from offset start, deciding every step
// (default 30s), with the policy options o.
func Simulate(j Job, m Market, start time.Duration, step time.Duration, o Options) Result {
	if step <= 0 {
		step = 30 * time.Second
	}
	lookback := m.Lookback
	if lookback <= 0 {
		lookback = 48 * time.Hour
	}
	var (
		s     State
		warm  time.Duration // changeover left before progress resumes
		r     = Result{OnDemandCost: OnDemandCost(j)}
		limit = 10 * j.Deadline // a policy that never finishes is cut off
	)
	for s.Done < j.Work && s.Elapsed < limit {
		at := start + s.Elapsed
		s.SpotAvailable = m.Available(at)
		if s.Mode == Spot && !s.SpotAvailable {
			s.Mode, warm = Wait, 0 // preempted; the checkpoint on notice keeps the progress
			r.Preemptions++
		}
		if !o.NoThreshold && !o.Greedy {
			s.SpotLife = meanLife(m.Runs(at-lookback, at))
		}
		next := Decide(j, s, o)
		if next != s.Mode {
			s.Mode = next
			warm = 0
			if next != Wait {
				warm = j.Changeover
				r.Changeovers++
			}
		}
		price := 0.0
		switch s.Mode {
		case Spot:
			price = j.SpotPrice
			r.SpotHours += step.Hours()
		case OnDemand:
			price = j.OnDemandPrice
			r.OnDemandHours += step.Hours()
		}
		s.Spent += price * step.Hours()
		if s.Mode != Wait {
			if warm > 0 {
				warm -= step
			} else {
				s.Done += step
			}
		}
		s.Elapsed += step
	}
	r.Cost, r.Finished = s.Spent, s.Elapsed
	r.Missed = s.Done < j.Work || s.Elapsed > j.Deadline
	return r
}

func meanLife(runs []time.Duration) time.Duration {
	if len(runs) == 0 {
		return 0
	}
	var sum time.Duration
	for _, r := range runs {
		sum += r
	}
	return sum / time.Duration(len(runs))
}

// Sweep is a job simulated from many start offsets.
type Sweep struct {
	Runs []Result
	// MeanFraction and WorstFraction are the cost as a fraction of
	// on-demand alone, over the runs; Met the share of runs that met the
	// deadline.
	MeanFraction, WorstFraction float64
	Met                         float64
}

// Offsets returns n start offsets spread evenly over the part of the
// trace where a run of length span still fits (all at 0 if none does).
func Offsets(t *trace.Trace, span time.Duration, n int) []time.Duration {
	n = max(n, 1)
	room := max(t.Duration-span, 0)
	out := make([]time.Duration, n)
	for i := range out {
		if n > 1 {
			out[i] = room * time.Duration(i) / time.Duration(n-1)
		}
	}
	return out
}

// SimulateSweep runs Simulate from each offset.
func SimulateSweep(j Job, m Market, offsets []time.Duration, step time.Duration, o Options) Sweep {
	var s Sweep
	met := 0
	for _, off := range offsets {
		r := Simulate(j, m, off, step, o)
		s.Runs = append(s.Runs, r)
		f := r.Fraction()
		s.MeanFraction += f
		s.WorstFraction = max(s.WorstFraction, f)
		if !r.Missed {
			met++
		}
	}
	if n := len(s.Runs); n > 0 {
		s.MeanFraction /= float64(n)
		s.Met = float64(met) / float64(n)
	}
	return s
}
