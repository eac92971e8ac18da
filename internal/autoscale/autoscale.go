// Package autoscale decides how many replicas a service should run, from
// what the gateways measure, on up to three signals, each a target of the
// service's spec:
//
//   - QPS per replica, by the Kubernetes horizontal pod autoscaler's rule
//     desired = ceil(current × measured / target), measured being the QPS
//     per ready replica, so that desired is the total QPS over the target;
//   - requests in flight per replica (concurrency), as Knative's KPA:
//     desired = ceil(average concurrency / target), the average taken over
//     StableWindow; and a panic mode for bursts: when the concurrency over
//     the short PanicWindow reaches PanicThreshold times the target per
//     ready replica, replicas are added at once, without UpscaleDelay, and
//     none is removed until StableWindow has passed without another burst;
//   - p99 latency: while the p99 the gateways saw over the last minute is
//     above the target, one more replica per step (up to doubling, by how
//     far above); below half of it, one fewer, if the other signals agree;
//     in between, no change.
//
// The largest recommendation wins. A ratio within 10 % of 1 changes
// nothing, and the result is kept within [min, max]. With no gateway
// report (Measured false) nothing changes.
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
	"strings"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

// Tolerance is how far the measured load may be from the target, as a
// fraction of it, before the replica count changes.
const Tolerance = 0.10

// The concurrency windows (Knative's KPA defaults): the gateways average
// requests in flight over both, and the control plane passes both here.
const (
	StableWindow = 60 * time.Second
	PanicWindow  = 6 * time.Second
	// PanicThreshold is the panic window's concurrency per ready replica,
	// as a multiple of the target, from which bursts are met at once.
	PanicThreshold = 2.0
)

// LatencyWindow is how far back the gateways' p99 looks. After a change of
// the replica count the latency signal adds no replica until a whole
// window has passed: until then its p99 still holds requests served
// before the change.
const LatencyWindow = time.Minute

// Input is what one decision sees: the service's policy and its load.
type Input struct {
	// Min and Max bound the replica count (after the placement tier has
	// raised the minimum; see spec.ServiceSpec.ReplicaRange).
	Min, Max int
	// The targets; a zero one is not a signal.
	TargetQPSPerReplica      float64
	TargetInFlightPerReplica float64
	TargetLatencyP99         time.Duration
	UpscaleDelay             time.Duration
	DownscaleDelay           time.Duration

	// Current is the replica count in force: the last decision.
	Current int
	// Ready is how many replicas served the measured load.
	Ready int
	// Measured says some gateway reported the service's traffic lately;
	// without it the figures below are unknown, not zero.
	Measured bool
	// QPS is the service's total request rate, as the gateways measured it.
	QPS float64
	// InFlight is the requests outstanding at once, averaged over
	// StableWindow, summed over gateways; InFlightPanic the same over
	// PanicWindow.
	InFlight, InFlightPanic float64
	// P99 is the latency the gateways' clients saw over the last minute,
	// of Requests requests.
	P99      time.Duration
	Requests int64
}

// PolicyOf returns an Input with the policy of a defaulted service spec
// filled in; the caller adds Current, Ready and the measurements.
func PolicyOf(s *spec.ServiceSpec) Input {
	lo, hi := s.ReplicaRange()
	r := s.Replicas
	in := Input{Min: lo, Max: hi, TargetQPSPerReplica: r.TargetQPSPerReplica, TargetInFlightPerReplica: r.TargetInFlightPerReplica}
	if d := r.TargetLatencyP99; d != nil {
		in.TargetLatencyP99 = d.Duration
	}
	if d := r.UpscaleDelay; d != nil {
		in.UpscaleDelay = d.Duration
	}
	if d := r.DownscaleDelay; d != nil {
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
	// Signal names the signal whose recommendation won: "qps",
	// "in-flight", "p99"; empty when none had one.
	Signal string
	// Panic says the burst mode is on.
	Panic bool
	// Reason is human text, e.g. "in-flight 3.9 / target 1 per replica
	// → 4 replicas (largest of qps → 1, in-flight → 4)".
	Reason string
}

// State is what Decide remembers between calls. The zero State is no
// window, no panic, no change seen.
type State struct {
	// Since is when the recommendation first went Up (or down) from From;
	// zero when it equals the current count.
	Since time.Time `json:"since,omitzero"`
	From  int       `json:"from,omitempty"`
	Up    bool      `json:"up,omitempty"`
	// Bound is the lowest recommendation seen in the window when Up, the
	// highest when down: the count the window would end in.
	Bound int `json:"bound,omitempty"`
	// Panic is when the last burst passed the panic threshold; zero when
	// not panicking. PanicBound is the most replicas asked for since: a
	// panic never lowers the count.
	Panic      time.Time `json:"panic,omitzero"`
	PanicBound int       `json:"panicBound,omitempty"`
	// Changed is when Decide last changed the replica count.
	Changed time.Time `json:"changed,omitzero"`
}

// Decide returns the replica count for now and the state to pass to the
// next call.
func Decide(in Input, st State, now time.Time) (Decision, State) {
	lo, hi := in.Min, max(in.Min, in.Max)
	if now.Before(st.Changed) {
		st.Changed = time.Time{} // the clock went back
	}
	rec, sig, why := recommend(in, st, now)
	clamped := min(hi, max(lo, rec))
	switch {
	case clamped > rec:
		why += fmt.Sprintf(", raised to min %d", lo)
	case clamped < rec:
		why += fmt.Sprintf(", limited to max %d", hi)
	}
	rec = clamped
	d := Decision{Replicas: in.Current, Recommended: rec, Signal: sig, Reason: why}
	changed := func(d Decision, next State) (Decision, State) {
		if d.Replicas != in.Current {
			next.Changed = now
		} else {
			next.Changed = st.Changed
		}
		return d, next
	}

	// Out of bounds (the spec changed) or nothing running: no waiting.
	if in.Current <= 0 || in.Current < lo || in.Current > hi {
		d.Replicas = rec
		return changed(d, State{})
	}

	// Panic mode: a burst is met at once and nothing is removed until
	// the stable window has passed without another one.
	if burst, prec, pwhy := panicking(in); burst || !st.Panic.IsZero() && now.Sub(st.Panic) < StableWindow && !now.Before(st.Panic) {
		next := State{Panic: st.Panic, PanicBound: max(st.PanicBound, in.Current)}
		if burst {
			next.Panic = now
			if prec > hi {
				prec, pwhy = hi, pwhy+fmt.Sprintf(", limited to max %d", hi)
			}
			if prec > rec {
				// The burst decides; the stable figures stay in the
				// reason, to show what the other signals said.
				rec, d.Signal, d.Reason = prec, "in-flight", pwhy+"; over "+short(StableWindow)+": "+d.Reason
			}
		}
		// Within max, should the spec have lowered it since.
		next.PanicBound = min(hi, max(next.PanicBound, rec))
		d.Replicas, d.Recommended, d.Panic = next.PanicBound, next.PanicBound, true
		switch {
		case burst && next.PanicBound > in.Current:
			d.Reason += fmt.Sprintf("; panic: scaling up from %d at once", in.Current)
		case burst:
			d.Reason += "; panic: holding"
		default:
			d.Reason += fmt.Sprintf("; panic since %s: no scale-down until %s without a burst",
				st.Panic.UTC().Format("15:04:05"), short(StableWindow))
		}
		return changed(d, next)
	}

	if rec == in.Current {
		return changed(d, State{})
	}
	up := rec > in.Current
	if st.Since.IsZero() || st.From != in.Current || st.Up != up || now.Before(st.Since) {
		st = State{Since: now, From: in.Current, Up: up, Bound: rec, Changed: st.Changed}
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
	return changed(d, State{})
}

// vote is one signal's recommendation.
type vote struct {
	signal string
	n      int
	why    string
}

// recommend returns the largest recommendation of the signals set, before
// clamping, which signal gave it, and why.
func recommend(in Input, st State, now time.Time) (int, string, string) {
	if !in.Measured && in.Current > 0 {
		return in.Current, "", fmt.Sprintf("no gateway reported the service's traffic; stays at %d", in.Current)
	}
	var votes []vote
	if t := in.TargetQPSPerReplica; t > 0 {
		votes = append(votes, proportional(in, "qps", in.QPS, t))
	}
	if t := in.TargetInFlightPerReplica; t > 0 {
		votes = append(votes, proportional(in, "in-flight", in.InFlight, t))
	}
	if in.TargetLatencyP99 > 0 {
		votes = append(votes, latency(in, st, now))
	}
	if len(votes) == 0 {
		return in.Current, "", fmt.Sprintf("no target set; stays at %d", in.Current)
	}
	best := votes[0]
	for _, v := range votes[1:] {
		if v.n > best.n {
			best = v
		}
	}
	why := best.why
	if len(votes) > 1 {
		all := make([]string, len(votes))
		for i, v := range votes {
			all[i] = fmt.Sprintf("%s → %d", v.signal, v.n)
		}
		why += " (largest of " + strings.Join(all, ", ") + ")"
	}
	return best.n, best.signal, why
}

// proportional is the HPA's rule for a load that replicas share: the QPS
// or the requests in flight, in total, against a target per replica.
func proportional(in Input, signal string, total, target float64) vote {
	raw := int(math.Ceil(total / target))
	v := vote{signal: signal, n: raw,
		why: fmt.Sprintf("%s %s / target %s per replica → %d replicas", signal, num(total), num(target), raw)}
	if in.Current <= 0 {
		return v
	}
	v.n = in.Current
	if in.Ready <= 0 {
		v.why = fmt.Sprintf("%s %s, no ready replica to measure; stays at %d", signal, num(total), in.Current)
		return v
	}
	ratio := total / float64(in.Ready) / target
	// The epsilon keeps 440 / 4 / 100 = 1.1000000000000001 within 10 %.
	if math.Abs(ratio-1) <= Tolerance+1e-9 {
		v.why = fmt.Sprintf("%s %s / %d ready replicas is within %d%% of target %s; stays at %d",
			signal, num(total), in.Ready, int(Tolerance*100), num(target), in.Current)
		return v
	}
	// Replicas still starting carry no load yet: a load above target
	// must not shrink the service because of them, nor one below grow it.
	if ratio > 1 && raw < in.Current || ratio < 1 && raw > in.Current {
		v.why = fmt.Sprintf("%s %s / %d ready replicas (of %d) → %d replicas, against the load's direction; stays at %d",
			signal, num(total), in.Ready, in.Current, raw, in.Current)
		return v
	}
	v.n = raw
	return v
}

// panicking says whether the panic window's concurrency has reached the
// panic threshold, and what it calls for.
func panicking(in Input) (bool, int, string) {
	t := in.TargetInFlightPerReplica
	if !(t > 0) || !in.Measured || in.Ready <= 0 || in.InFlightPanic/float64(in.Ready) < PanicThreshold*t {
		return false, 0, ""
	}
	n := int(math.Ceil(in.InFlightPanic / t))
	return true, n, fmt.Sprintf("in-flight %s over %s / %d ready replicas is at least %g× target %s → %d replicas",
		num(in.InFlightPanic), short(PanicWindow), in.Ready, PanicThreshold, num(t), n)
}

// latency steps the count by the gateways' p99: up while above the
// target (by as much as p99 is over it, at most doubling), down by one
// when below half of it, else no change.
func latency(in Input, st State, now time.Time) vote {
	target, p99 := in.TargetLatencyP99, in.P99
	v := vote{signal: "p99", n: in.Current}
	switch {
	case in.Current <= 0:
		v.n = 0 // the others, or min, decide the start
		v.why = "p99: nothing running"
	case in.Requests == 0:
		v.n = in.Current - 1
		v.why = fmt.Sprintf("p99: no request in the last minute, target %s → %d replicas", short(target), v.n)
	case in.Ready <= 0:
		v.why = fmt.Sprintf("p99 %s, no ready replica to measure; stays at %d", ms(p99), in.Current)
	case float64(p99) > float64(target)*(1+Tolerance):
		ratio := min(float64(p99)/float64(target), 2)
		raw := max(int(math.Ceil(float64(in.Ready)*ratio)), in.Ready+1)
		switch {
		case raw <= in.Current:
			v.why = fmt.Sprintf("p99 %s above target %s, %d replicas of %d still starting; stays at %d",
				ms(p99), ms(target), in.Current-in.Ready, in.Current, in.Current)
		case !st.Changed.IsZero() && now.Sub(st.Changed) < LatencyWindow:
			v.why = fmt.Sprintf("p99 %s above target %s, but the last minute's p99 holds requests from before the change at %s; stays at %d",
				ms(p99), ms(target), st.Changed.UTC().Format("15:04:05"), in.Current)
		default:
			v.n = raw
			v.why = fmt.Sprintf("p99 %s above target %s → %d replicas", ms(p99), ms(target), raw)
		}
	case p99 < target/2:
		v.n = in.Current - 1
		v.why = fmt.Sprintf("p99 %s below half of target %s → %d replicas", ms(p99), ms(target), v.n)
	default:
		v.why = fmt.Sprintf("p99 %s within target %s; stays at %d", ms(p99), ms(target), in.Current)
	}
	return v
}

// num writes a rate with at most one decimal: 412, 41.3.
func num(v float64) string {
	return strconv.FormatFloat(math.Round(v*10)/10, 'f', -1, 64)
}

// ms writes a latency in milliseconds with at most one decimal: 212ms.
func ms(d time.Duration) string { return num(float64(d)/float64(time.Millisecond)) + "ms" }

// short writes a duration without trailing zero units: 1m, not 1m0s.
func short(d time.Duration) string { return spec.Duration{Duration: d}.String() }
