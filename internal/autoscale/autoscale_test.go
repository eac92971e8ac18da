package autoscale

import (
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

var t0 = time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)

// step is one tick of a timeline: the load measured at second At, and the
// replica count the decision must give. Current is the previous step's
// decision, as a control loop would apply it; Ready is Current unless set.
type step struct {
	At     int // seconds since t0
	QPS    float64
	Ready  int // -1: as many as Current
	Want   int
	Reason string // a substring of the reason; empty: not checked

	InFlight, Panic float64       // stable and panic window concurrency
	P99             time.Duration // with 100 requests behind it, unless Idle
	Idle            bool          // no request in the last minute
	NoReport        bool          // no gateway reported
	Signal          string        // the winning signal; empty: not checked
}

func TestDecideTimeline(t *testing.T) {
	policy := Input{Min: 2, Max: 10, TargetQPSPerReplica: 100,
		UpscaleDelay: 10 * time.Second, DownscaleDelay: 60 * time.Second}
	tests := []struct {
		name   string
		policy Input // only the policy fields
		start  int   // Current before the first step
		steps  []step
	}{
		{
			name: "start from nothing at once", policy: policy, start: 0,
			steps: []step{
				{At: 0, QPS: 0, Ready: 0, Want: 2, Reason: "raised to min 2"},
				{At: 0, QPS: 0, Ready: 0, Want: 2},
			},
		},
		{
			name: "start from nothing under load", policy: policy, start: 0,
			steps: []step{{At: 0, QPS: 412, Ready: 0, Want: 5, Reason: "qps 412 / target 100 per replica → 5 replicas"}},
		},
		{
			name: "within tolerance nothing changes", policy: policy, start: 4,
			steps: []step{
				{At: 0, QPS: 440, Ready: -1, Want: 4, Reason: "within 10% of target 100; stays at 4"},
				{At: 30, QPS: 360, Ready: -1, Want: 4},
				{At: 90, QPS: 360, Ready: -1, Want: 4},
			},
		},
		{
			name: "scale up after the delay, to the sustained load", policy: policy, start: 2,
			steps: []step{
				{At: 0, QPS: 600, Ready: -1, Want: 2, Reason: "→ 6 replicas; scaling up from 2 once that holds for 10s (0s so far)"},
				{At: 5, QPS: 500, Ready: -1, Want: 2, Reason: "(5s so far)"},
				{At: 9, QPS: 900, Ready: -1, Want: 2},
				{At: 10, QPS: 900, Ready: -1, Want: 5, Reason: "scaling up from 2 to 5, the lowest recommendation of the last 10s"},
				// New replicas start: the load per ready replica looks high
				// but the starting ones are not counted against it.
				{At: 11, QPS: 900, Ready: 2, Want: 5},
				{At: 21, QPS: 900, Ready: 5, Want: 9},
			},
		},
		{
			name: "a spike shorter than the delay does nothing", policy: policy, start: 3,
			steps: []step{
				{At: 0, QPS: 800, Ready: -1, Want: 3},
				{At: 6, QPS: 300, Ready: -1, Want: 3},
				{At: 8, QPS: 800, Ready: -1, Want: 3, Reason: "(0s so far)"},
				{At: 17, QPS: 800, Ready: -1, Want: 3},
				{At: 18, QPS: 800, Ready: -1, Want: 8},
			},
		},
		{
			name: "scale down after the delay, to the highest recommendation", policy: policy, start: 8,
			steps: []step{
				{At: 0, QPS: 200, Ready: -1, Want: 8, Reason: "scaling down from 8 once that holds for 1m (0s so far)"},
				{At: 20, QPS: 500, Ready: -1, Want: 8},
				{At: 40, QPS: 300, Ready: -1, Want: 8},
				{At: 60, QPS: 200, Ready: -1, Want: 5, Reason: "scaling down from 8 to 5, the highest recommendation of the last 1m"},
				{At: 61, QPS: 200, Ready: -1, Want: 5},
				{At: 121, QPS: 200, Ready: -1, Want: 2},
			},
		},
		{
			name: "a lull shorter than the delay does nothing", policy: policy, start: 6,
			steps: []step{
				{At: 0, QPS: 100, Ready: -1, Want: 6},
				{At: 50, QPS: 600, Ready: -1, Want: 6, Reason: "stays at 6"},
				{At: 55, QPS: 100, Ready: -1, Want: 6},
				{At: 114, QPS: 100, Ready: -1, Want: 6},
				{At: 115, QPS: 100, Ready: -1, Want: 2, Reason: "raised to min 2"},
			},
		},
		{
			name: "limited to max", policy: policy, start: 9,
			steps: []step{
				{At: 0, QPS: 5000, Ready: -1, Want: 9, Reason: "→ 50 replicas, limited to max 10"},
				{At: 10, QPS: 5000, Ready: -1, Want: 10},
				{At: 20, QPS: 5000, Ready: -1, Want: 10},
			},
		},
		{
			name: "no delays act at once", policy: Input{Min: 1, Max: 5, TargetQPSPerReplica: 10}, start: 1,
			steps: []step{
				{At: 0, QPS: 35, Ready: -1, Want: 4},
				{At: 1, QPS: 5, Ready: -1, Want: 1},
			},
		},
		{
			name: "out of bounds is corrected at once", policy: policy, start: 12,
			steps: []step{{At: 0, QPS: 1200, Ready: -1, Want: 10}},
		},
		{
			name: "no ready replica holds the count", policy: policy, start: 3,
			steps: []step{{At: 0, QPS: 50, Ready: 0, Want: 3, Reason: "no ready replica"}},
		},
		{
			name: "extra ready replicas do not grow a light load", policy: policy, start: 3,
			steps: []step{{At: 0, QPS: 350, Ready: 5, Want: 3, Reason: "against the load's direction"}},
		},
		{
			name: "no target holds the count", policy: Input{Min: 1, Max: 5}, start: 3,
			steps: []step{{At: 0, QPS: 350, Ready: -1, Want: 3}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { timeline(t, tt.policy, tt.start, tt.steps) })
	}
}

// timeline runs steps through Decide as a control loop would, from start
// replicas and the zero State.
func timeline(t *testing.T, policy Input, start int, steps []step) {
	t.Helper()
	current := start
	var st State
	for i, s := range steps {
		ready := s.Ready
		if ready < 0 {
			ready = current
		}
		in := policy
		in.Current, in.Ready, in.QPS = current, ready, s.QPS
		in.Measured, in.InFlight, in.InFlightPanic, in.P99 = !s.NoReport, s.InFlight, s.Panic, s.P99
		if !s.Idle {
			in.Requests = 100
		}
		d, next := Decide(in, st, t0.Add(time.Duration(s.At)*time.Second))
		if d.Replicas != s.Want {
			t.Fatalf("step %d (t=%ds, current %d, %+v): %d replicas, want %d (%s)",
				i, s.At, current, s, d.Replicas, s.Want, d.Reason)
		}
		if !strings.Contains(d.Reason, s.Reason) {
			t.Errorf("step %d: reason %q does not contain %q", i, d.Reason, s.Reason)
		}
		if s.Signal != "" && d.Signal != s.Signal {
			t.Errorf("step %d: signal %q, want %q (%s)", i, d.Signal, s.Signal, d.Reason)
		}
		current, st = d.Replicas, next
	}
}

func TestDecideReason(t *testing.T) {
	in := Input{Min: 1, Max: 10, TargetQPSPerReplica: 100, Current: 2, Ready: 2, Measured: true, QPS: 412}
	d, _ := Decide(in, State{}, t0)
	if want := "qps 412 / target 100 per replica → 5 replicas"; d.Reason != want || d.Replicas != 5 {
		t.Errorf("Decide = %d, %q; want 5, %q", d.Replicas, d.Reason, want)
	}
}

// TestDecideStateReset: a window kept for another current count, or from
// the future, starts over.
func TestDecideStateReset(t *testing.T) {
	p := Input{Min: 1, Max: 10, TargetQPSPerReplica: 100, UpscaleDelay: 10 * time.Second, Current: 2, Ready: 2, Measured: true, QPS: 600}
	for _, st := range []State{
		{Since: t0.Add(-time.Minute), From: 3, Up: true, Bound: 6},  // other count
		{Since: t0.Add(-time.Minute), From: 2, Up: false, Bound: 1}, // other direction
		{Since: t0.Add(time.Minute), From: 2, Up: true, Bound: 6},   // clock went back
		{Since: time.Time{}, From: 0, Up: false, Bound: 0},          // none
		{Since: t0.Add(-time.Second), From: 2, Up: true, Bound: 9},  // too recent
	} {
		d, next := Decide(p, st, t0)
		if d.Replicas != 2 {
			t.Errorf("from %+v: %d replicas at once, want 2 until the delay passes", st, d.Replicas)
		}
		if next.From != 2 || !next.Up || next.Bound != 6 {
			t.Errorf("from %+v: next state %+v, want a window up from 2 bound 6", st, next)
		}
	}
}

func TestPolicyOf(t *testing.T) {
	docs, err := spec.Parse([]byte(`
apiVersion: spotml/v1
kind: Service
metadata: {name: s}
spec:
  model: {uri: m.onnx}
  replicas: {min: 1, max: 6, targetQPSPerReplica: 200, upscaleDelay: 0s}
  placement: {tier: prod}
`))
	if err != nil {
		t.Fatal(err)
	}
	got := PolicyOf(&docs[0].Service.Spec)
	want := Input{Min: 2, Max: 6, TargetQPSPerReplica: 200, DownscaleDelay: 60 * time.Second}
	if got != want {
		t.Errorf("PolicyOf = %+v, want %+v", got, want)
	}
}

// TestDecideSignals: each signal alone, together (the largest wins), the
// panic window, bounds, cooldowns and missing reports.
func TestDecideSignals(t *testing.T) {
	const ms = time.Millisecond
	delays := Input{UpscaleDelay: 10 * time.Second, DownscaleDelay: 60 * time.Second}
	with := func(in Input) Input {
		in.UpscaleDelay, in.DownscaleDelay = delays.UpscaleDelay, delays.DownscaleDelay
		return in
	}
	inflight := with(Input{Min: 1, Max: 8, TargetInFlightPerReplica: 1})
	latency := with(Input{Min: 1, Max: 8, TargetLatencyP99: 200 * ms})
	all := with(Input{Min: 1, Max: 8, TargetQPSPerReplica: 100, TargetInFlightPerReplica: 1, TargetLatencyP99: 200 * ms})
	tests := []struct {
		name   string
		policy Input
		start  int
		steps  []step
	}{
		{
			name: "in-flight alone scales up after the delay", policy: inflight, start: 1,
			steps: []step{
				{At: 0, InFlight: 3.9, Panic: 1.5, Ready: -1, Want: 1, Signal: "in-flight",
					Reason: "in-flight 3.9 / target 1 per replica → 4 replicas; scaling up from 1 once that holds for 10s"},
				{At: 10, InFlight: 3.9, Panic: 1.5, Ready: -1, Want: 4, Reason: "in-flight 3.9 / target 1 per replica → 4 replicas"},
			},
		},
		{
			name: "in-flight within tolerance, and down after the delay", policy: inflight, start: 4,
			steps: []step{
				{At: 0, InFlight: 4.3, Panic: 4.3, Ready: -1, Want: 4, Reason: "within 10% of target 1; stays at 4"},
				{At: 1, InFlight: 1.2, Panic: 1, Ready: -1, Want: 4, Reason: "scaling down from 4 once that holds for 1m"},
				{At: 61, InFlight: 1.2, Panic: 1, Ready: -1, Want: 2},
			},
		},
		{
			name: "in-flight asks more than qps: heavy requests at a low rate", policy: all, start: 1,
			steps: []step{
				{At: 0, QPS: 20, InFlight: 3.6, Panic: 1.9, P99: 150 * ms, Ready: -1, Want: 1, Signal: "in-flight",
					Reason: "in-flight 3.6 / target 1 per replica → 4 replicas (largest of qps → 1, in-flight → 4, p99 → 1)"},
				{At: 10, QPS: 20, InFlight: 3.6, Panic: 1.9, P99: 150 * ms, Ready: -1, Want: 4, Signal: "in-flight"},
			},
		},
		{
			name: "qps asks more than in-flight: light requests at a high rate", policy: all, start: 2,
			steps: []step{
				{At: 0, QPS: 580, InFlight: 0.8, Panic: 0.8, P99: 20 * ms, Ready: -1, Want: 2, Signal: "qps",
					Reason: "qps 580 / target 100 per replica → 6 replicas (largest of qps → 6, in-flight → 1, p99 → 1)"},
				{At: 10, QPS: 580, InFlight: 0.8, Panic: 0.8, P99: 20 * ms, Ready: -1, Want: 6, Signal: "qps"},
			},
		},
		{
			name: "panic: a burst is met at once, and nothing goes until a stable window passes", policy: inflight, start: 2,
			steps: []step{
				{At: 0, InFlight: 1.5, Panic: 7, Ready: -1, Want: 7, Signal: "in-flight",
					Reason: "in-flight 7 over 6s / 2 ready replicas is at least 2× target 1 → 7 replicas; over 1m: in-flight 1.5 / target 1 per replica → 2 replicas; panic: scaling up from 2 at once"},
				// The new replicas start; the burst is over.
				{At: 5, InFlight: 2, Panic: 1, Ready: 2, Want: 7, Reason: "no scale-down until 1m without a burst"},
				{At: 30, InFlight: 1, Panic: 1, Ready: -1, Want: 7, Reason: "panic since"},
				{At: 59, InFlight: 1, Panic: 1, Ready: -1, Want: 7},
				// Out of panic: the ordinary downscale delay applies.
				{At: 60, InFlight: 1, Panic: 1, Ready: -1, Want: 7, Reason: "scaling down from 7 once that holds for 1m"},
				{At: 120, InFlight: 1, Panic: 1, Ready: -1, Want: 1},
			},
		},
		{
			name: "panic: a second burst extends it, and the count never drops in it", policy: inflight, start: 2,
			steps: []step{
				{At: 0, InFlight: 1, Panic: 5, Ready: -1, Want: 5},
				{At: 40, InFlight: 1, Panic: 11, Ready: 5, Want: 8, Reason: "→ 11 replicas, limited to max 8; over 1m: in-flight 1 / target 1 per replica → 1 replicas; panic: scaling up from 5 at once"},
				{At: 50, InFlight: 1, Panic: 1, Ready: -1, Want: 8},
				{At: 99, InFlight: 1, Panic: 1, Ready: -1, Want: 8, Reason: "panic since 12:00:40"},
				{At: 100, InFlight: 1, Panic: 1, Ready: -1, Want: 8, Reason: "scaling down from 8 once"},
			},
		},
		{
			name: "just under the panic threshold waits for the delay", policy: inflight, start: 2,
			steps: []step{
				{At: 0, InFlight: 3.9, Panic: 3.9, Ready: -1, Want: 2, Reason: "scaling up from 2 once that holds for 10s"},
				{At: 10, InFlight: 3.9, Panic: 3.9, Ready: -1, Want: 4},
			},
		},
		{
			name: "latency alone: up while p99 stays above, then a window's cooldown", policy: latency, start: 2,
			steps: []step{
				{At: 0, P99: 300 * ms, Ready: -1, Want: 2, Signal: "p99", Reason: "p99 300ms above target 200ms → 3 replicas; scaling up from 2 once"},
				{At: 5, P99: 150 * ms, Ready: -1, Want: 2, Reason: "p99 150ms within target 200ms; stays at 2"},
				{At: 6, P99: 900 * ms, Ready: -1, Want: 2, Reason: "p99 900ms above target 200ms → 4 replicas"},
				{At: 16, P99: 900 * ms, Ready: -1, Want: 4},
				// The last minute still holds the slow requests.
				{At: 30, P99: 900 * ms, Ready: -1, Want: 4, Reason: "holds requests from before the change at 12:00:16; stays at 4"},
				{At: 75, P99: 900 * ms, Ready: -1, Want: 4},
				{At: 76, P99: 900 * ms, Ready: -1, Want: 4, Reason: "→ 8 replicas; scaling up from 4 once"},
				{At: 86, P99: 900 * ms, Ready: -1, Want: 8},
			},
		},
		{
			name: "latency: replicas still starting count as coming capacity", policy: latency, start: 4,
			steps: []step{{At: 0, P99: 260 * ms, Ready: 3, Want: 4, Reason: "1 replicas of 4 still starting; stays at 4"}},
		},
		{
			name: "latency: down one step when comfortably below, or idle", policy: latency, start: 3,
			steps: []step{
				{At: 0, P99: 90 * ms, Ready: -1, Want: 3, Reason: "p99 90ms below half of target 200ms → 2 replicas; scaling down from 3 once"},
				{At: 60, P99: 90 * ms, Ready: -1, Want: 2},
				{At: 61, Idle: true, Ready: -1, Want: 2, Reason: "no request in the last minute, target 200ms → 1 replicas"},
				{At: 121, Idle: true, Ready: -1, Want: 1},
			},
		},
		{
			name: "latency between half and target holds a scale-down the others want", policy: all, start: 4,
			steps: []step{
				{At: 0, QPS: 50, InFlight: 0.5, Panic: 0.5, P99: 150 * ms, Ready: -1, Want: 4, Signal: "p99",
					Reason: "p99 150ms within target 200ms; stays at 4 (largest of qps → 1, in-flight → 1, p99 → 4)"},
				{At: 120, QPS: 50, InFlight: 0.5, Panic: 0.5, P99: 150 * ms, Ready: -1, Want: 4},
				// p99 comfortably below: one step down, as the others agree.
				{At: 121, QPS: 50, InFlight: 0.5, Panic: 0.5, P99: 60 * ms, Ready: -1, Want: 4, Reason: "scaling down from 4 once"},
				{At: 181, QPS: 50, InFlight: 0.5, Panic: 0.5, P99: 60 * ms, Ready: -1, Want: 3},
			},
		},
		{
			name: "no gateway report keeps the count", policy: all, start: 3,
			steps: []step{
				{At: 0, NoReport: true, Ready: -1, Want: 3, Reason: "no gateway reported the service's traffic; stays at 3"},
				{At: 600, NoReport: true, Ready: -1, Want: 3},
				// A report of no traffic is a measurement: the count goes down.
				{At: 601, Idle: true, Ready: -1, Want: 3, Reason: "scaling down from 3 once"},
				{At: 661, Idle: true, Ready: -1, Want: 2},
			},
		},
		{
			name: "no report with nothing running starts at min", policy: all, start: 0,
			steps: []step{{At: 0, NoReport: true, Ready: 0, Want: 1, Reason: "raised to min 1"}},
		},
		{
			name: "bounds hold for every signal", policy: with(Input{Min: 2, Max: 3, TargetInFlightPerReplica: 1, TargetLatencyP99: 200 * ms}), start: 2,
			steps: []step{
				{At: 0, InFlight: 9, Panic: 9, P99: 2 * time.Second, Ready: -1, Want: 3, Reason: "limited to max 3; panic"},
				{At: 100, InFlight: 0.1, Panic: 0.1, Idle: true, Ready: -1, Want: 3},
				{At: 160, InFlight: 0.1, Panic: 0.1, Idle: true, Ready: -1, Want: 2, Reason: "(largest of in-flight → 1, p99 → 2)"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { timeline(t, tt.policy, tt.start, tt.steps) })
	}
}

// TestPolicyOfTargets: the concurrency and latency targets come through,
// and QPS gets no default beside them.
func TestPolicyOfTargets(t *testing.T) {
	docs, err := spec.Parse([]byte(`
apiVersion: spotml/v1
kind: Service
metadata: {name: s}
spec:
  model: {uri: m.onnx}
  replicas: {min: 1, max: 6, targetInFlightPerReplica: 1.5, targetLatencyP99: 250ms}
  placement: {tier: dev}
`))
	if err != nil {
		t.Fatal(err)
	}
	got := PolicyOf(&docs[0].Service.Spec)
	want := Input{Min: 1, Max: 6, TargetInFlightPerReplica: 1.5, TargetLatencyP99: 250 * time.Millisecond,
		UpscaleDelay: 10 * time.Second, DownscaleDelay: 60 * time.Second}
	if got != want {
		t.Errorf("PolicyOf = %+v, want %+v", got, want)
	}
}

// TestDecidePanicWithinMax: a panic remembered from before max was
// lowered keeps the count within the new max.
func TestDecidePanicWithinMax(t *testing.T) {
	in := Input{Min: 1, Max: 5, TargetInFlightPerReplica: 1, Current: 5, Ready: 5, Measured: true, InFlight: 1, InFlightPanic: 1}
	d, next := Decide(in, State{Panic: t0.Add(-10 * time.Second), PanicBound: 8}, t0)
	if d.Replicas != 5 || !d.Panic || next.PanicBound != 5 {
		t.Errorf("Decide = %d replicas (panic %v), next %+v; want 5, still panicking, bound 5", d.Replicas, d.Panic, next)
	}
}
