package cloudtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// Fallback is the scenario "a capacity error becomes a capacity shortage,
// and prod and strict services fall back to on-demand", run against one
// provider's fake cloud.
type Fallback struct {
	Plane *Plane
	// Spot and OnDemand are the provider's pools (named as they like; the
	// scenario sets their sizes and capacity).
	Spot, OnDemand spec.Pool
	// SetSpot makes the fake cloud refuse Spot VMs of the spot pool's
	// instance type for lack of capacity (false), or grant them again.
	SetSpot func(available bool)
	// Refusal is the cloud's error code for the refusal, which the spot
	// pool's LaunchFailed event must name.
	Refusal string
	// SpotVMs counts the spot pool's VMs in the fake cloud that run.
	SpotVMs func() int
	// Dump logs the fake cloud's state and the VMs' boot logs on a
	// timeout.
	Dump func()
}

const services = `apiVersion: spotml/v1
kind: Service
metadata: {name: web}
spec:
  model: {uri: models/echo/model.txt}
  runtime: {type: command, command: [sh, -c, 'exec python3 -m http.server "$PORT" --bind 127.0.0.1']}
  resources: {cpu: 1, memory: 64Mi}
  replicas: {min: 2, max: 2}
  placement: {tier: prod, standInAfter: 10m, pools: [SPOT, OD]}
  readiness: {period: 200ms}
---
apiVersion: spotml/v1
kind: Service
metadata: {name: api}
spec:
  model: {uri: models/echo/model.txt}
  runtime: {type: command, command: [sh, -c, 'exec python3 -m http.server "$PORT" --bind 127.0.0.1']}
  resources: {cpu: 1, memory: 64Mi}
  replicas: {min: 2, max: 2}
  placement: {tier: strict, standInAfter: 10m, pools: [SPOT, OD]}
  readiness: {period: 200ms}
`

// Run applies a prod service (web: two spot replicas) and a strict one
// (api: an on-demand base and one spot replica) while the cloud refuses
// Spot capacity. Every spot launch is refused with the cloud's code: the
// pool backs off (a LaunchFailed/NoCapacity event naming the code, never
// a provider error), no Spot VM runs, and each spot slot gets an
// on-demand stand-in that becomes ready on an on-demand VM. Then capacity
// comes back: the spot replicas are made on Spot VMs, the stand-ins stop
// once they are ready, and the on-demand VMs the stand-ins needed are
// removed, leaving the strict base's. standInAfter is 10 minutes, so
// every stand-in here is the shortage's, not a slow boot's.
func (f Fallback) Run(t *testing.T) {
	t.Helper()
	NeedTools(t, "python3")
	p := f.Plane
	ctx := p.Ctx
	model := filepath.Join(p.Dir, "blobs", "models", "echo", "model.txt")
	if err := os.MkdirAll(filepath.Dir(model), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(model, []byte("echo\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	spot, od := f.Spot, f.OnDemand
	spot.Spec.Priority, od.Spec.Priority = spec.PrioritySpot, spec.PriorityOnDemand
	spot.Spec.Min, spot.Spec.Max, od.Spec.Min, od.Spec.Max = 0, 2, 0, 2
	spot.Spec.IdleTimeout, od.Spec.IdleTimeout = spec.Duration{Duration: time.Second}, spec.Duration{Duration: time.Second}
	spot.Spec.Capacity = &spec.Resources{CPU: 2, Memory: 1 << 30}
	od.Spec.Capacity = &spec.Resources{CPU: 2, Memory: 1 << 30}
	var pools []spec.Pool
	for _, pl := range []spec.Pool{spot, od} {
		pl.Default()
		if err := pl.Validate(); err != nil {
			t.Fatal(err)
		}
		pools = append(pools, pl)
	}
	docs, err := spec.Parse([]byte(strings.NewReplacer("SPOT", spot.Metadata.Name, "OD", od.Metadata.Name).Replace(services)))
	if err != nil {
		t.Fatal(err)
	}
	var svcs []store.ServiceDoc
	for _, d := range docs {
		doc, err := control.ServiceDoc(*d.Service)
		if err != nil {
			t.Fatal(err)
		}
		svcs = append(svcs, doc)
	}

	f.SetSpot(false)
	if _, err := p.Store.Apply(ctx, pools, nil, svcs...); err != nil {
		t.Fatal(err)
	}
	replicas := func(svc string) []store.Replica {
		rs, err := p.Store.ListReplicas(ctx, svc)
		if err != nil {
			t.Fatal(err)
		}
		return rs
	}
	dump := func() {
		for _, svc := range []string{"web", "api"} {
			for _, r := range replicas(svc) {
				t.Logf("replica %s: %s on %s (%s, pool %s, stand-in %v) %s", r.Name, r.State, r.Node, r.Priority, r.Pool, r.StandIn, r.Reason)
			}
		}
		if f.Dump != nil {
			f.Dump()
		}
	}
	// ready counts a service's ready replicas by kind: on spot, on-demand
	// stand-ins, and on-demand replicas that are no stand-ins; standIns
	// counts its stand-ins in any state but stopping.
	type counts struct{ spot, standIn, base, standIns int }
	ready := func(svc string) counts {
		var c counts
		for _, r := range replicas(svc) {
			if r.State == store.ReplicaStopping {
				continue
			}
			if r.StandIn {
				c.standIns++
			}
			switch {
			case r.State != store.ReplicaReady:
			case r.Pool == spot.Metadata.Name:
				c.spot++
			case r.Pool == od.Metadata.Name && r.StandIn:
				c.standIn++
			case r.Pool == od.Metadata.Name:
				c.base++
			}
		}
		return c
	}
	shortage := func() bool {
		evs, err := p.Store.ListEvents(ctx, store.EventFilter{Object: "pool/" + spot.Metadata.Name, Kind: "LaunchFailed"})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, e := range evs {
			if e.Reason != "NoCapacity" {
				t.Fatalf("spot pool's launch failed as %s, want NoCapacity: %s", e.Reason, e.Message)
			}
			found = found || strings.Contains(e.Message, f.Refusal)
		}
		return found
	}

	p.Wait("the spot pool's launches refused as a capacity shortage naming "+f.Refusal, 120*time.Second, shortage, dump)
	p.Wait("prod: two on-demand stand-ins ready; strict: its on-demand base and a stand-in ready", 180*time.Second, func() bool {
		return ready("web") == counts{standIn: 2, standIns: 2} && ready("api") == counts{standIn: 1, base: 1, standIns: 1}
	}, dump)
	if n := f.SpotVMs(); n != 0 {
		t.Errorf("%d Spot VMs run while the cloud refuses Spot capacity", n)
	}
	if n := len(p.LiveNodes(od.Metadata.Name)); n != 2 {
		t.Errorf("%d on-demand nodes for two stand-ins and a base, want 2 (a node takes one replica of each service)", n)
	}

	// Spot capacity is back: the next launch after the pool's backoff
	// gets Spot VMs, the spot replicas become ready there and the
	// stand-ins go.
	f.SetSpot(true)
	p.Wait("prod back on two spot replicas, strict on its base and one spot replica, no stand-in left", 180*time.Second, func() bool {
		return ready("web") == counts{spot: 2} && ready("api") == counts{spot: 1, base: 1}
	}, dump)
	if n := f.SpotVMs(); n != 2 {
		t.Errorf("%d Spot VMs run, want 2", n)
	}
	p.Wait("the stand-ins' idle on-demand node removed, the strict base's kept", 60*time.Second, func() bool {
		return len(p.LiveNodes(od.Metadata.Name)) == 1
	}, dump)
}
