package control_test

import (
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/store"
)

// heavyService is a dev service sized by QPS and by requests in flight,
// acting at once on either.
const heavyService = `apiVersion: spotml/v1
kind: Pool
metadata: {name: spot}
spec: {provider: local, priority: spot, instanceType: local-small, max: 6}
---
apiVersion: spotml/v1
kind: Service
metadata: {name: heavy}
spec:
  model: {uri: models/m.onnx}
  resources: {cpu: 0.5}
  replicas: {min: 1, max: 4, targetQPSPerReplica: 100, targetInFlightPerReplica: 1, upscaleDelay: 0s, downscaleDelay: 0s}
  placement: {tier: dev}
`

// TestAutoscaleOnInFlight: the gateways' report of requests in flight
// scales a service that QPS alone would leave alone, the Scaled event says
// why, and a service no gateway reports on keeps its count.
func TestAutoscaleOnInFlight(t *testing.T) {
	p := newPlane(t)
	p.apply(heavyService)
	p.serve()
	if got := p.service("heavy").Desired; got != 1 {
		t.Fatalf("desired %d before any load, want 1", got)
	}

	// 8 requests/s of 450 ms each: 3.6 in flight, against 100 QPS a replica.
	if err := p.st.PutGatewayStats(p.ctx, "g1", map[string]store.GatewayStat{
		"heavy": {QPS: 5, InFlight: 2.4, InFlightPanic: 1.5, InFlightMax: 3, P99: 0.45, Requests: 300}}); err != nil {
		t.Fatal(err)
	}
	if err := p.st.PutGatewayStats(p.ctx, "g2", map[string]store.GatewayStat{
		"heavy": {QPS: 3, InFlight: 1.2, InFlightPanic: 0.4, InFlightMax: 2, P99: 0.44, Requests: 180}}); err != nil {
		t.Fatal(err)
	}
	p.reconcile()
	if got := p.service("heavy").Desired; got != 4 {
		t.Fatalf("desired %d with 3.6 in flight against 1 a replica, want 4", got)
	}
	es := p.events(store.EventFilter{Kind: "Scaled"})
	want := "1 → 4 replicas: in-flight 3.6 / target 1 per replica → 4 replicas (largest of qps → 1, in-flight → 4)"
	if len(es) != 1 || es[0].Message != want {
		t.Fatalf("Scaled events %+v, want one: %q", es, want)
	}

	// The gateways stop reporting: no figure is not a zero figure.
	p.clock.Advance(control.QPSMaxAge + time.Second)
	p.reconcile()
	if got := p.service("heavy").Desired; got != 4 {
		t.Errorf("desired %d with no gateway report, want 4 kept", got)
	}
	if es := p.events(store.EventFilter{Kind: "Scaled"}); len(es) != 1 {
		t.Errorf("Scaled events after the reports went stale: %+v, want only the first", es)
	}

	// A report of an idle service lets it go down.
	if err := p.st.PutGatewayStats(p.ctx, "g1", map[string]store.GatewayStat{"heavy": {}}); err != nil {
		t.Fatal(err)
	}
	p.reconcile()
	if got := p.service("heavy").Desired; got != 1 {
		t.Errorf("desired %d with an idle report, want 1", got)
	}
	if es := p.events(store.EventFilter{Kind: "Scaled"}); len(es) != 2 || !strings.Contains(es[1].Message, "4 → 1 replicas: ") {
		t.Errorf("Scaled events %+v, want a second, 4 → 1", es)
	}
}

func (p *plane) service(name string) store.Service {
	p.t.Helper()
	s, err := p.st.GetService(p.ctx, name, control.QPSMaxAge)
	if err != nil {
		p.t.Fatal(err)
	}
	return s
}
