package control_test

import (
	"context"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/autoscale"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/gateway"
	"github.com/spotml/spotml/internal/store"
)

// twoTiers has a spot and an on-demand pool and a strict service of three
// replicas: one on demand, two on spot.
const twoTiers = `apiVersion: spotml/v1
kind: Pool
metadata: {name: spot}
spec: {provider: local, priority: spot, instanceType: local-small, max: 4}
---
apiVersion: spotml/v1
kind: Pool
metadata: {name: od}
spec: {provider: local, priority: ondemand, instanceType: local-small, max: 2}
---
apiVersion: spotml/v1
kind: Service
metadata: {name: m}
spec:
  model: {uri: models/m.onnx}
  resources: {cpu: 0.5}
  replicas: {min: 3, max: 5}
  placement: {tier: strict}
`

// serve has nodes join, the service's replicas placed and every placed
// replica report ready.
func (p *plane) serve() {
	p.t.Helper()
	p.reconcile()
	p.heartbeat()
	p.reconcile()
	for _, r := range p.replicas() {
		if r.State != store.ReplicaStarting {
			continue
		}
		if err := p.st.ReportReplicas(p.ctx, r.Node, []store.ReplicaStatus{{ID: r.ID, Ready: true, Addr: "127.0.0.1:1"}}); err != nil {
			p.t.Fatal(err)
		}
	}
}

// TestSample records samples of a service over a real store: the
// gateways' traffic combined, the ready replicas by priority, the
// autoscaler's desired count; a replica on a noticed node is not ready.
func TestSample(t *testing.T) {
	p := newPlane(t)
	p.apply(twoTiers)
	p.serve()
	if err := p.st.PutGatewayStats(p.ctx, "g1", map[string]store.GatewayStat{"m": {QPS: 4, P50: 0.010, P99: 0.200, Requests: 240, Errors: 2, InFlight: 1.25, InFlightMax: 3}}); err != nil {
		t.Fatal(err)
	}
	if err := p.st.PutGatewayStats(p.ctx, "g2", map[string]store.GatewayStat{"m": {QPS: 1, P50: 0.030, P99: 0.040, Requests: 60, InFlight: 0.5, InFlightMax: 1}}); err != nil {
		t.Fatal(err)
	}
	if err := p.p.Sample(p.ctx); err != nil {
		t.Fatal(err)
	}

	// A notice on a spot replica's node; the gateways go quiet.
	var victim store.Replica
	for _, r := range p.replicas() {
		if r.Priority == "spot" {
			victim = r
		}
	}
	if _, err := p.st.SetNotice(p.ctx, victim.Node, now.Add(time.Minute), "provider"); err != nil {
		t.Fatal(err)
	}
	p.clock.Advance(control.QPSMaxAge + time.Second)
	if err := p.p.Sample(p.ctx); err != nil {
		t.Fatal(err)
	}

	got, err := p.st.ServiceSamples(p.ctx, "m", time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	want := []store.ServiceSample{
		{Time: now, QPS: 5, P50: 0.030, P99: 0.200, Requests: 300, Errors: 2, Ready: 3, Desired: 3, Spot: 2, OnDemand: 1, InFlight: 1.75, InFlightMax: 4},
		{Time: now.Add(control.QPSMaxAge + time.Second), Ready: 2, Desired: 3, Spot: 1, OnDemand: 1},
	}
	if !slices.Equal(got, want) {
		t.Errorf("samples =\n%+v\nwant\n%+v", got, want)
	}
}

// TestRunSamples checks that Run records samples on its own beat and
// returns, its sampler with it, when its context ends.
func TestRunSamples(t *testing.T) {
	p := newPlaneWith(t, control.Options{SampleEvery: 5 * time.Millisecond})
	p.apply(twoTiers)
	ctx, cancel := context.WithCancel(p.ctx)
	done := make(chan error, 1)
	go func() { done <- p.p.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := p.st.ServiceSamples(p.ctx, "m", time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		if len(got) > 0 {
			if got[0].Desired != 3 {
				t.Errorf("sample %+v: want desired 3", got[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Run recorded no sample in 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run: %v", err)
	}
}

// fakeRouter is a gateway that measured fixed figures.
type fakeRouter struct {
	qps      map[string]float64
	inflight map[time.Duration]map[string]gateway.InFlight // by window
	stats    []gateway.ServiceStats
}

func (r *fakeRouter) Update([]gateway.Route)               {}
func (r *fakeRouter) QPS(time.Duration) map[string]float64 { return r.qps }
func (r *fakeRouter) Stats() []gateway.ServiceStats        { return r.stats }
func (r *fakeRouter) InFlight(w time.Duration) map[string]gateway.InFlight {
	return r.inflight[w]
}

// TestFeedGatewayReportsStats checks that the feed stores the gateway's
// QPS beside its latencies (in seconds), counts and requests in flight
// over the autoscaler's two windows.
func TestFeedGatewayReportsStats(t *testing.T) {
	p := newPlane(t)
	p.apply(twoTiers)
	gw := &fakeRouter{
		qps: map[string]float64{"m": 2.5},
		inflight: map[time.Duration]map[string]gateway.InFlight{
			autoscale.StableWindow: {"m": {Avg: 1.5, Max: 4}},
			autoscale.PanicWindow:  {"m": {Avg: 3, Max: 3}},
		},
		stats: []gateway.ServiceStats{{Service: "m", Requests: 150, Errors: 1, P50: 12 * time.Millisecond, P99: 250 * time.Millisecond}},
	}
	ctx, cancel := context.WithCancel(p.ctx)
	done := make(chan error, 1)
	go func() {
		done <- control.FeedGateway(ctx, p.st, gw, slog.New(slog.DiscardHandler), p.clock.Now, control.FeedOptions{ID: "g", Interval: time.Millisecond})
	}()
	want := store.GatewayStat{QPS: 2.5, P50: 0.012, P99: 0.25, Requests: 150, Errors: 1,
		InFlight: 1.5, InFlightPanic: 3, InFlightMax: 4, Gateways: 1}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := p.st.ServiceTraffic(p.ctx, control.QPSMaxAge)
		if err != nil {
			t.Fatal(err)
		}
		if got["m"] == want {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ServiceTraffic = %+v, want m: %+v", got, want)
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("FeedGateway: %v", err)
	}
}
