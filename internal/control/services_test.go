package control_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/gateway"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// prodService is a spot pool and a prod-tier service m on it.
const prodService = `apiVersion: spotml/v1
kind: Pool
metadata: {name: spot}
spec: {provider: local, priority: spot, instanceType: local-small, min: 0, max: 4}
---
apiVersion: spotml/v1
kind: Service
metadata: {name: m}
spec:
  model: {uri: models/m.onnx}
  resources: {cpu: 0.5}
  placement: {tier: prod}
`

// TestServiceLifecycle drives one prod service through the control plane
// over a real store: replicas are created, placed one per node, become
// routes once ready (with the service's API keys), a notice marks its
// replica draining and starts a replacement at once, and a dead node ends
// its replicas.
func TestServiceLifecycle(t *testing.T) {
	p := newPlane(t)
	keys := filepath.Join(t.TempDir(), "keys")
	if err := os.WriteFile(keys, []byte("# callers\nk-file-1\n\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p.apply(prodService + `  auth: {keysFile: ` + keys + `, keys: [k-inline]}
  limits: {maxRequestBytes: 1Mi, maxInFlight: 7}
`)
	p.reconcile() // replicas created; nodes launched (one per replica)
	reps := p.replicas()
	if len(reps) != 2 {
		t.Fatalf("prod tier: want 2 replicas, have %d", len(reps))
	}
	nodes := p.nodes()
	if len(nodes) != 2 {
		t.Fatalf("want a node per replica, have %d nodes", len(nodes))
	}
	for _, n := range nodes {
		if _, err := p.st.Heartbeat(p.ctx, n.Name, true); err != nil {
			t.Fatal(err)
		}
	}
	p.reconcile()
	placed := map[string]bool{}
	for _, r := range p.replicas() {
		if r.State != store.ReplicaStarting || r.Node == "" {
			t.Fatalf("replica %s: state %s on %q, want starting on a node", r.Name, r.State, r.Node)
		}
		if placed[r.Node] {
			t.Fatalf("two replicas on node %s", r.Node)
		}
		placed[r.Node] = true
		if err := p.st.ReportReplicas(p.ctx, r.Node, []store.ReplicaStatus{{ID: r.ID, Ready: true, Addr: "127.0.0.1:1" + r.Node[len(r.Node)-1:]}}); err != nil {
			t.Fatal(err)
		}
	}
	routes := p.routes()
	if len(routes) != 1 || len(routes[0].Replicas) != 2 {
		t.Fatalf("routes = %+v, want 1 service with 2 replicas", routes)
	}
	if got := routes[0].Keys; !slices.Contains(got, "k-inline") || !slices.Contains(got, "k-file-1") || len(got) != 2 {
		t.Errorf("keys = %q, want the inline key and the file's", got)
	}
	if rt := routes[0]; rt.MaxRequestBytes != 1<<20 || rt.MaxInFlight != 7 {
		t.Errorf("route limits = %d bytes, %d in flight; want spec.limits' 1Mi and 7", rt.MaxRequestBytes, rt.MaxInFlight)
	}

	// A notice: the replica drains, a replacement is created at once.
	victim := p.replicas()[0]
	if _, err := p.st.SetNotice(p.ctx, victim.Node, now.Add(30*time.Second), "provider"); err != nil {
		t.Fatal(err)
	}
	for _, r := range p.routes()[0].Replicas {
		if r.Draining != (r.ID == victim.Name) {
			t.Errorf("replica %s draining = %v", r.ID, r.Draining)
		}
	}
	p.reconcile()
	if reps := p.replicas(); len(reps) != 3 {
		t.Fatalf("after the notice: %d replicas, want the 2 and a replacement", len(reps))
	}
	// The node dies: its replica ends.
	if err := p.st.EndNode(p.ctx, victim.Node, store.NodePreempted, "evicted"); err != nil {
		t.Fatal(err)
	}
	for _, r := range p.replicas() {
		if r.ID == victim.ID {
			t.Errorf("replica %s of the dead node is still live (%s)", r.Name, r.State)
		}
	}
}

func (p *plane) replicas() []store.Replica {
	p.t.Helper()
	rs, err := p.st.ListReplicas(p.ctx, "")
	if err != nil {
		p.t.Fatal(err)
	}
	return rs
}

func (p *plane) routes() []gateway.Route {
	p.t.Helper()
	rs, err := control.Routes(p.ctx, p.st, control.ReadKeyFile)
	if err != nil {
		p.t.Fatal(err)
	}
	return rs
}

// A spot replacement whose node is slow to boot gets an on-demand stand-in
// once it has not been ready for standInAfter; the stand-in stops when the
// spot replica is ready.
func TestSlowSpotReplacementGetsStandIn(t *testing.T) {
	p := newPlaneWith(t, control.Options{NodeTimeout: time.Hour}) // the test beats no heart while the clock jumps
	p.apply(`apiVersion: spotml/v1
kind: Pool
metadata: {name: spot}
spec: {provider: local, priority: spot, instanceType: local-small, min: 0, max: 4}
---
apiVersion: spotml/v1
kind: Pool
metadata: {name: od}
spec: {provider: local, priority: ondemand, instanceType: local-small, min: 0, max: 2}
---
apiVersion: spotml/v1
kind: Service
metadata: {name: m}
spec:
  model: {uri: models/m.onnx}
  resources: {cpu: 0.5}
  placement: {tier: prod, standInAfter: 20s}
`)
	// ready brings up every node and marks every placed replica ready.
	ready := func() {
		for range 2 {
			for _, n := range p.nodes() {
				if _, err := p.st.Heartbeat(p.ctx, n.Name, true); err != nil {
					t.Fatal(err)
				}
			}
			p.reconcile()
		}
		for _, r := range p.replicas() {
			if r.Node != "" {
				if err := p.st.ReportReplicas(p.ctx, r.Node, []store.ReplicaStatus{{ID: r.ID, Ready: true, Addr: "127.0.0.1:1"}}); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	p.reconcile()
	ready()
	standIns := func() (n int) {
		for _, r := range p.replicas() {
			if r.StandIn && r.State != store.ReplicaStopping {
				n++
			}
		}
		return n
	}

	victim := p.replicas()[0]
	if _, err := p.st.SetNotice(p.ctx, victim.Node, p.clock.Now().Add(2*time.Minute), "provider"); err != nil {
		t.Fatal(err)
	}
	p.reconcile() // the replacement: its node launched, not booted
	p.clock.Advance(19 * time.Second)
	p.reconcile()
	if n := standIns(); n != 0 {
		t.Fatalf("%d stand-ins before standInAfter", n)
	}
	p.clock.Advance(2 * time.Second)
	p.reconcile()
	if n := standIns(); n != 1 {
		t.Fatalf("%d stand-ins 21s after the replacement was created, want 1; replicas %+v", n, p.replicas())
	}
	ready() // the spot node boots at last (and the stand-in's too)
	p.reconcile()
	if n := standIns(); n != 0 {
		var states []string
		for _, r := range p.replicas() {
			states = append(states, r.Name+":"+r.Priority+":"+r.State)
		}
		t.Errorf("%d stand-ins not stopping once the spot replacement is ready; replicas %v", n, states)
	}
}

// spec.limits.maxRequestBytes reaches the builtin runtime, so that a body
// the gateway lets through is not refused by the replica's own limit.
func TestReplicaSpecCarriesBodyLimit(t *testing.T) {
	var svc spec.Service
	svc.Spec.Model.URI = "models/m.onnx"
	svc.Spec.Limits.MaxRequestBytes = 64 << 20
	svc.Default()
	if got := control.ReplicaSpec(svc).MaxRequestBytes; got != 64<<20 {
		t.Errorf("ReplicaSpec.MaxRequestBytes = %d, want 64Mi", got)
	}
}

// TestEvictedReplicaIsNotAFailure: the agent of a noticed node stops its
// replicas itself before the deadline, and says they exited. That is the
// eviction, not a failure: it must not count toward the crash backoff that
// holds back a service's new replicas. A replica that exits on a node
// without a notice before it was ever ready still counts (a crash loop);
// one that served and then died (killed) does not.
func TestEvictedReplicaIsNotAFailure(t *testing.T) {
	p := newPlane(t)
	p.apply(prodService)
	p.reconcile()
	for _, n := range p.nodes() {
		if _, err := p.st.Heartbeat(p.ctx, n.Name, true); err != nil {
			t.Fatal(err)
		}
	}
	p.reconcile()
	reps := p.replicas()
	if len(reps) != 2 || reps[0].Node == "" || reps[1].Node == "" {
		t.Fatalf("want 2 placed replicas, have %+v", reps)
	}
	evicted, crashed := reps[0], reps[1]
	if _, err := p.st.SetNotice(p.ctx, evicted.Node, now.Add(30*time.Second), "provider"); err != nil {
		t.Fatal(err)
	}
	exit := func(r store.Replica) {
		t.Helper()
		if err := p.st.ReportReplicas(p.ctx, r.Node, []store.ReplicaStatus{{ID: r.ID, Exited: true, Message: "model server stopped"}}); err != nil {
			t.Fatal(err)
		}
	}
	exit(evicted)
	failures, err := p.st.RecentReplicaFailures(p.ctx, now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if f := failures["m"]; f.Count != 0 {
		t.Fatalf("a replica stopped for its node's eviction notice counted as %d failures", f.Count)
	}
	exit(crashed)
	if failures, err = p.st.RecentReplicaFailures(p.ctx, now.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if f := failures["m"]; f.Count != 1 {
		t.Fatalf("a replica that exited before it was ever ready: %d failures, want 1", f.Count)
	}

	// A replica that became ready and was then killed: not a crash loop.
	p.clock.Advance(time.Minute) // past the backoff of the first failure
	p.reconcile()
	for _, n := range p.nodes() {
		if n.State == store.NodeProvisioning {
			if _, err := p.st.Heartbeat(p.ctx, n.Name, true); err != nil {
				t.Fatal(err)
			}
		}
	}
	p.reconcile()
	var served store.Replica
	for _, r := range p.replicas() {
		if r.Node != "" && r.ID != evicted.ID && r.ID != crashed.ID {
			served = r
		}
	}
	if served.ID == 0 {
		t.Fatalf("no replacement placed: %+v", p.replicas())
	}
	if err := p.st.ReportReplicas(p.ctx, served.Node, []store.ReplicaStatus{{ID: served.ID, Ready: true, Addr: "127.0.0.1:1"}}); err != nil {
		t.Fatal(err)
	}
	exit(served)
	if failures, err = p.st.RecentReplicaFailures(p.ctx, now.Add(-time.Hour)); err != nil {
		t.Fatal(err)
	}
	if f := failures["m"]; f.Count != 1 {
		t.Fatalf("a replica that served and was then killed counted: %d failures, want still 1", f.Count)
	}
}

// A prod service gets a spare spot replica once its spot pools have been
// preempted lately (placement.Spares), says why in an event, and drops
// it once the preemptions are older than control.SpareWindow.
func TestPreemptionsBringSpares(t *testing.T) {
	p := newPlaneWith(t, control.Options{NodeTimeout: 24 * time.Hour, Retention: -1})
	p.apply(`apiVersion: spotml/v1
kind: Pool
metadata: {name: spot-a}
spec: {provider: local, priority: spot, instanceType: local-small, min: 0, max: 4}
---
apiVersion: spotml/v1
kind: Pool
metadata: {name: spot-b}
spec: {provider: local, priority: spot, instanceType: local-small, min: 0, max: 4}
---
apiVersion: spotml/v1
kind: Service
metadata: {name: m}
spec:
  model: {uri: models/m.onnx}
  resources: {cpu: 0.5}
  placement: {tier: prod}
`)
	ready, live := p.settleReplicas, p.liveReplicas
	p.reconcile()
	ready()
	if n := live(); n != 2 {
		t.Fatalf("%d replicas before any preemption, want 2 and no spare", n)
	}

	victim := p.replicas()[0]
	if err := p.st.EndNode(p.ctx, victim.Node, store.NodePreempted, "evicted"); err != nil {
		t.Fatal(err)
	}
	p.clock.Advance(11 * time.Second) // past the history's refresh
	p.reconcile()
	ready()
	if n := live(); n != 3 {
		t.Fatalf("%d replicas after a preemption, want 2 and a spare", n)
	}
	evs, err := p.st.ListEvents(p.ctx, store.EventFilter{Of: "service/m"})
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(evs, func(e store.Event) bool { return e.Kind == "Spares" })
	if i < 0 || !strings.Contains(evs[i].Message, "1 spare spot replica: the worst wave") {
		t.Fatalf("no Spares event naming its reason in %+v", evs)
	}

	p.clock.Advance(control.SpareWindow)
	p.reconcile()
	ready()
	if n := live(); n != 2 {
		t.Errorf("%d replicas once the preemption is %s old, want 2", n, control.SpareWindow)
	}
}

// A preemption announced longer ahead than a replacement takes, to a node
// that had been up a while, is ridden out by the replacement launched at
// the notice: it brings no spare. One whose notice is shorter does.
func TestAnnouncedPreemptionsBringNoSpares(t *testing.T) {
	p := newPlaneWith(t, control.Options{NodeTimeout: 24 * time.Hour, Retention: -1})
	p.apply(prodService)
	settle, live := p.settleReplicas, p.liveReplicas
	// preempt gives a ready replica's node a notice, waits it out and
	// ends the node.
	preempt := func(notice time.Duration) {
		t.Helper()
		var victim store.Replica
		for _, r := range p.replicas() {
			if r.State == store.ReplicaReady {
				victim = r
			}
		}
		if victim.Node == "" {
			t.Fatalf("no ready replica to preempt: %+v", p.replicas())
		}
		if _, err := p.st.SetNotice(p.ctx, victim.Node, p.clock.Now().Add(notice), "provider"); err != nil {
			t.Fatal(err)
		}
		p.reconcile() // the replacement, at the notice
		settle()
		p.clock.Advance(notice)
		if err := p.st.EndNode(p.ctx, victim.Node, store.NodePreempted, "evicted"); err != nil {
			t.Fatal(err)
		}
		p.clock.Advance(11 * time.Second) // past the history's refresh
		p.reconcile()
		settle()
	}
	p.reconcile()
	settle()
	p.clock.Advance(10 * time.Minute) // the nodes have been up a while

	// Replicas here are ready the instant they are created, so the
	// replacement time is the stand-in delay, 30 s: a 2-minute notice
	// covers it.
	preempt(2 * time.Minute)
	if n := live(); n != 2 {
		t.Fatalf("%d replicas after a preemption announced 2 min ahead, want 2 and no spare", n)
	}
	evs, err := p.st.ListEvents(p.ctx, store.EventFilter{Of: "service/m"})
	if err != nil {
		t.Fatal(err)
	}
	if i := slices.IndexFunc(evs, func(e store.Event) bool { return e.Kind == "Spares" }); i >= 0 {
		t.Fatalf("a Spares event for a preemption the notice covered: %+v", evs[i])
	}

	p.clock.Advance(10 * time.Minute)
	preempt(5 * time.Second)
	if n := live(); n != 3 {
		t.Fatalf("%d replicas after a preemption announced 5 s ahead, want 2 and a spare", n)
	}
}

// settleReplicas plays the agents: every live node ready, every placed
// replica ready, with passes between.
func (p *plane) settleReplicas() {
	p.t.Helper()
	for range 2 {
		for _, n := range p.nodes() {
			if store.Live(n.State) {
				if _, err := p.st.Heartbeat(p.ctx, n.Name, true); err != nil {
					p.t.Fatal(err)
				}
			}
		}
		p.reconcile()
	}
	for _, r := range p.replicas() {
		if r.Node != "" && r.State == store.ReplicaStarting {
			if err := p.st.ReportReplicas(p.ctx, r.Node, []store.ReplicaStatus{{ID: r.ID, Ready: true, Addr: "127.0.0.1:1"}}); err != nil {
				p.t.Fatal(err)
			}
		}
	}
	p.reconcile()
}

// liveReplicas counts the replicas not being stopped.
func (p *plane) liveReplicas() (n int) {
	for _, r := range p.replicas() {
		if r.State != store.ReplicaStopping {
			n++
		}
	}
	return n
}
