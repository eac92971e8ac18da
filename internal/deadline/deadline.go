// Package deadline decides, over a deadline-bound job's life, when its
// work runs on spot, when on on-demand, and when it waits for spot, so
// that it finishes by the deadline at the lowest cost it can and never
// above what on-demand alone would cost.
//
// The policy is Uniform Progress from Can't Be Late (Wu et al., NSDI'24,
// §5.2) with the guards that paper and its weak spot call for:
//   - Deadline guard: when the time left is only what the remaining work
//     and one changeover need (plus a margin), run on-demand to the end.
//   - Uniform progress: without spot, run on-demand only once behind the
//     straight line from 0 to the work at the deadline (by more than a
//     tenth of the slack: waiting a little for spot is cheap, and starting
//     on-demand at the first minute without spot locks the job there);
//     ahead, wait. A job on on-demand stays there until spot pays.
//   - No way back: from on-demand, spot only while the time left holds
//     the remaining work, the margin and two changeovers (there and back).
//   - Lifetime threshold (§5.4): take spot only when its expected
//     lifetime o, from the pool's recent spot runs, repays the changeover:
//     o > k·d/(k−1) from waiting, o > 2k·d/(k−1) from on-demand (k the
//     on-demand/spot price ratio, d the changeover).
//   - Budget guard: start a spot stint only if, were it to make no
//     progress at all, finishing on on-demand would still cost no more
//     than on-demand alone plus a small allowance (1 % by default): the
//     job never costs more than that. (With no allowance at all the first
//     stint could never be risked: its changeover is paid at spot price on
//     top of on-demand's own. Every hour of progress on spot then adds
//     k−1 hours of spot price to the room for the next.)
//
// All of it is pure: state in, decision out. The simulator (Simulate) and
// the control plane use the same Decide.
package deadline

import (
	"fmt"
	"time"
)

// Mode is where the job's work runs.
type Mode int

const (
	Wait Mode = iota
	Spot
	OnDemand
)

func (m Mode) String() string {
	return [...]string{"wait", "spot", "ondemand"}[m]
}

// Job is what the policy plans for.
type Job struct {
	Work     time.Duration // compute the job needs
	Deadline time.Duration // from the job's start
	// Changeover is what a start on new capacity costs before progress
	// resumes (launch, start, restore), measured from the pool.
	Changeover    time.Duration
	SpotPrice     float64 // per hour
	OnDemandPrice float64 // per hour
}

// Validate says what is wrong with a job's numbers.
func (j Job) Validate() error {
	switch {
	case j.Work <= 0:
		return fmt.Errorf("work must be positive, got %s", j.Work)
	case j.Deadline < j.Work+j.Changeover:
		return fmt.Errorf("deadline %s leaves no room for %s of work and a %s start", j.Deadline, j.Work, j.Changeover)
	case !(j.SpotPrice > 0) || !(j.OnDemandPrice > j.SpotPrice):
		return fmt.Errorf("prices: want 0 < spot (%g) < on-demand (%g)", j.SpotPrice, j.OnDemandPrice)
	}
	return nil
}

// State is the job as it stands.
type State struct {
	Elapsed time.Duration // since the job started
	Done    time.Duration // progress
	Mode    Mode          // where it runs now
	// Spent is what the job has cost so far.
	Spent float64
	// SpotAvailable says whether spot capacity is there now.
	SpotAvailable bool
	// SpotLife is the expected lifetime of a spot node started now, from
	// the pool's recent runs; 0 when there is no history (spot is then
	// taken on trust, and the budget guard alone bounds the cost).
	SpotLife time.Duration
}

// Options tune Decide. The zero value is the full policy.
type Options struct {
	// Margin is added to the deadline guard; default one changeover.
	Margin time.Duration
	// NoThreshold and NoBudget turn the guards off (for comparison:
	// with both off Decide is plain Uniform Progress).
	NoThreshold, NoBudget bool
	// Greedy takes spot whenever it is there and waits otherwise, until
	// the deadline guard forces on-demand.
	Greedy bool
	// Allowance is how far above on-demand alone the budget guard lets
	// the worst case go, as a fraction of it; default 0.01.
	Allowance float64
	// Lag is how far behind the uniform-progress line the job may fall,
	// waiting for spot, before it runs on on-demand, as a fraction of its
	// slack (deadline − work); default 0.1. Plain Uniform Progress is 0.
	Lag float64
}

// Decide says where the job's work should run now.
func Decide(j Job, s State, o Options) Mode {
	d := j.Changeover
	margin := o.Margin
	if margin == 0 {
		margin = d
	}
	remaining := j.Work - s.Done
	left := j.Deadline - s.Elapsed
	// Deadline guard: on-demand to the end once the slack is gone. A job
	// already on on-demand pays no changeover to stay there.
	need := remaining + margin
	if s.Mode != OnDemand {
		need += d
	}
	if left <= need {
		return OnDemand
	}
	if s.Mode == Spot && s.SpotAvailable {
		return Spot // a running stint is already paid for
	}
	// From on-demand, a spot stint must leave room for its own start and
	// for the start back on on-demand should it end at once; else the
	// guard above would send it straight back (a changeover storm).
	room := s.Mode != OnDemand || left > remaining+margin+2*d
	if s.SpotAvailable && room && takeSpot(j, s, o) {
		return Spot
	}
	if o.Greedy {
		return Wait
	}
	if s.Mode == OnDemand {
		// Stay: stopping when ahead and starting again when behind
		// would pay a changeover each time round.
		return OnDemand
	}
	// Uniform progress: behind the line, run; ahead of it, wait for spot.
	lag := o.Lag
	if lag == 0 && !(o.NoThreshold && o.NoBudget) {
		lag = 0.1
	}
	line := float64(j.Work)*float64(s.Elapsed)/float64(j.Deadline) - lag*float64(j.Deadline-j.Work)
	behind := float64(s.Done) < line
	if behind {
		return OnDemand
	}
	return Wait
}

// takeSpot says whether starting (or going back to) spot pays.
func takeSpot(j Job, s State, o Options) bool {
	if o.Greedy {
		return true
	}
	k := j.OnDemandPrice / j.SpotPrice
	d := j.Changeover.Hours()
	if !o.NoThreshold && s.SpotLife > 0 {
		need := k * d / (k - 1)
		if s.Mode == OnDemand {
			need *= 2
		}
		if s.SpotLife.Hours() <= need {
			return false
		}
	}
	if !o.NoBudget {
		// Were the stint to make no progress, finishing on on-demand
		// must still cost no more than on-demand alone.
		remaining := (j.Work - s.Done).Hours()
		allowance := o.Allowance
		if allowance == 0 {
			allowance = 0.01
		}
		worst := s.Spent + j.SpotPrice*d + j.OnDemandPrice*(remaining+d)
		if worst > OnDemandCost(j)*(1+allowance) {
			return false
		}
	}
	return true
}

// OnDemandCost is what the job costs on on-demand alone: one start and
// the work.
func OnDemandCost(j Job) float64 {
	return j.OnDemandPrice * (j.Work + j.Changeover).Hours()
}
