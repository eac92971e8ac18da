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
		t.Run(tt.name, func(t *testing.T) {
			current := tt.start
			var st State
			for i, s := range tt.steps {
				ready := s.Ready
				if ready < 0 {
					ready = current
				}
				in := tt.policy
				in.Current, in.Ready, in.QPS = current, ready, s.QPS
				d, next := Decide(in, st, t0.Add(time.Duration(s.At)*time.Second))
				if d.Replicas != s.Want {
					t.Fatalf("step %d (t=%ds, current %d, qps %g): %d replicas, want %d (%s)",
						i, s.At, current, s.QPS, d.Replicas, s.Want, d.Reason)
				}
				if !strings.Contains(d.Reason, s.Reason) {
					t.Errorf("step %d: reason %q does not contain %q", i, d.Reason, s.Reason)
				}
				current, st = d.Replicas, next
			}
		})
	}
}

func TestDecideReason(t *testing.T) {
	in := Input{Min: 1, Max: 10, TargetQPSPerReplica: 100, Current: 2, Ready: 2, QPS: 412}
	d, _ := Decide(in, State{}, t0)
	if want := "qps 412 / target 100 per replica → 5 replicas"; d.Reason != want || d.Replicas != 5 {
		t.Errorf("Decide = %d, %q; want 5, %q", d.Replicas, d.Reason, want)
	}
}

// TestDecideStateReset: a window kept for another current count, or from
// the future, starts over.
func TestDecideStateReset(t *testing.T) {
	p := Input{Min: 1, Max: 10, TargetQPSPerReplica: 100, UpscaleDelay: 10 * time.Second, Current: 2, Ready: 2, QPS: 600}
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
