// Package autoscale decides how many replicas a service should run, from
// the load the gateway measures, by the Kubernetes horizontal pod
// autoscaler's rule:
//
//	desired = ceil(current × measured / target)
//
// where measured is the QPS per ready replica, so that desired is the
// total QPS over the target QPS per replica. A ratio within 10 % of 1
// changes nothing, and the result is kept within [min, max].
//
// A recommendation is acted on only once it has held: more replicas once
// every recommendation for UpscaleDelay has been above the current count
// (then the lowest of them, the load that was sustained), fewer once every
// one for DownscaleDelay has been below it (then the highest of them, as
// the HPA's downscale stabilization window does), so that a short spike or
// lull does not make replicas come and go.
//
// Decide is pure: the caller passes the time and stores the State it
// returns, so that a restarted control plane goes on where it was and
// tests need no sleeping.
package autoscale

import (
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

// Tolerance is how far the measured load may be from the target, as a
// fraction of it, before the replica count changes.
const Tolerance = 0.10

// Input is what one decision sees: the service's policy and its load.
type Input struct {
	// Min and Max bound the replica count (after the placement tier has
	// raised the minimum; see spec.ServiceSpec.ReplicaRange).
	Min, Max            int
	TargetQPSPerReplica float64
	UpscaleDelay        time.Duration
	DownscaleDelay      time.Duration

	// Current is the replica count in force: the last decision.
	Current int
	// Ready is how many replicas served the measured load.
	Ready int
	// QPS is the service's total request rate, as the gateway measured it.
	QPS float64
}

// PolicyOf returns an Input with the policy of a defaulted service spec
// filled in; the caller adds Current, Ready and QPS.
func PolicyOf(s *spec.ServiceSpec) Input {
	lo, hi := s.ReplicaRange()
	in := Input{Min: lo, Max: hi, TargetQPSPerReplica: s.Replicas.TargetQPSPerReplica}
	if d := s.Replicas.UpscaleDelay; d != nil {
		in.UpscaleDelay = d.Duration
	}
	if d := s.Replicas.DownscaleDelay; d != nil {
		in.DownscaleDelay = d.Duration
	}
	return in
}

// Decision is the replica count to run, and why, for the event log.
type Decision struct {
	Replicas int
	// Recommended is what the load calls for now, within [min, max],
	// before the delays.
	Recommended int
	// Reason is human text, e.g. "qps 412 / target 100 per replica → 5
	// replicas".
	Reason string
}

// State is what Decide remembers between calls: the window in which the
// recommendation has stayed on one side of the current count. The zero
// State is no window.
type State struct {
	// Since is when the recommendation first went Up (or down) from From;
	// zero when it equals the current count.
	Since time.Time `json:"since,omitzero"`
	From  int       `json:"from,omitempty"`
	Up    bool      `json:"up,omitempty"`
	// Bound is the lowest recommendation seen in the window when Up, the
	// highest when down: the count the window would end in.
	Bound int `json:"bound,omitempty"`
}

// Decide returns the replica count for now and the state to pass to the
// next call.
func Decide(in Input, st State, now time.Time) (Decision, State) {
	lo, hi := in.Min, max(in.Min, in.Max)
	rec, why := recommend(in)
	clamped := min(hi, max(lo, rec))
	switch {
	case clamped > rec:
		why += fmt.Sprintf(", raised to min %d", lo)
	case clamped < rec:
		why += fmt.Sprintf(", limited to max %d", hi)
	}
	rec = clamped
	d := Decision{Replicas: in.Current, Recommended: rec, Reason: why}

	// Out of bounds (the spec changed) or nothing running: no waiting.
	if in.Current <= 0 || in.Current < lo || in.Current > hi {
		d.Replicas = rec
		return d, State{}
	}
	if rec == in.Current {
		return d, State{}
	}

	up := rec > in.Current
	if st.Since.IsZero() || st.From != in.Current || st.Up != up || now.Before(st.Since) {
		st = State{Since: now, From: in.Current, Up: up, Bound: rec}
	}
	delay := in.DownscaleDelay
	if up {
		st.Bound = min(st.Bound, rec)
		delay = in.UpscaleDelay
	} else {
		st.Bound = max(st.Bound, rec)
	}
	held := now.Sub(st.Since)
	dir := "down"
	if up {
		dir = "up"
	}
	if held < delay {
		d.Reason += fmt.Sprintf("; scaling %s from %d once that holds for %s (%s so far)",
			dir, in.Current, short(delay), short(held))
		return d, st
	}
	d.Replicas = st.Bound
	if st.Bound != rec {
		which := "lowest"
		if !up {
			which = "highest"
		}
		d.Reason += fmt.Sprintf("; scaling %s from %d to %d, the %s recommendation of the last %s",
			dir, in.Current, st.Bound, which, short(held))
	}
	return d, State{}
}

// recommend returns the HPA's desired count before clamping, and why.
func recommend(in Input) (int, string) {
	target := in.TargetQPSPerReplica
	if !(target > 0) {
		return in.Current, fmt.Sprintf("no target QPS per replica; stays at %d", in.Current)
	}
	raw := int(math.Ceil(in.QPS / target))
	why := fmt.Sprintf("qps %s / target %s per replica → %d replicas", num(in.QPS), num(target), raw)
	if in.Current <= 0 {
		return raw, why
	}
	if in.Ready <= 0 {
		return in.Current, fmt.Sprintf("qps %s, no ready replica to measure; stays at %d", num(in.QPS), in.Current)
	}
	ratio := in.QPS / float64(in.Ready) / target
	// The epsilon keeps 440 / 4 / 100 = 1.1000000000000001 within 10 %.
	if math.Abs(ratio-1) <= Tolerance+1e-9 {
		return in.Current, fmt.Sprintf("qps %s / %d ready replicas is within %d%% of target %s; stays at %d",
			num(in.QPS), in.Ready, int(Tolerance*100), num(target), in.Current)
	}
	// Replicas still starting carry no load yet: a load above target
	// must not shrink the service because of them, nor one below grow it.
	if ratio > 1 && raw < in.Current || ratio < 1 && raw > in.Current {
		return in.Current, fmt.Sprintf("qps %s / %d ready replicas (of %d) → %d replicas, against the load's direction; stays at %d",
			num(in.QPS), in.Ready, in.Current, raw, in.Current)
	}
	return raw, why
}

// num writes a rate with at most one decimal: 412, 41.3.
func num(v float64) string {
	return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64)
}

// short writes a duration without trailing zero units: 1m, not 1m0s.
func short(d time.Duration) string { return spec.Duration{Duration: d}.String() }
