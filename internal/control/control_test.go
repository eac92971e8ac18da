package control_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/clock"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// fakeProvider stands in for machines: it records what it is asked to do
// and refuses launches with err while that is set.
type fakeProvider struct {
	mu       sync.Mutex
	launched []string
	stopped  []string
	err      error
}

var _ control.Provider = (*fakeProvider)(nil)

func (p *fakeProvider) Launch(_ context.Context, req control.LaunchRequest) (control.Launched, error) {
	n := req.Node
	p.mu.Lock()
	defer p.mu.Unlock()
	p.launched = append(p.launched, n.Name)
	if p.err != nil {
		return control.Launched{}, p.err
	}
	return control.Launched{ProviderID: "/nodes/" + n.Name}, nil
}

func (p *fakeProvider) Stop(_ context.Context, n store.Node) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = append(p.stopped, n.Name)
	return nil
}

func (p *fakeProvider) refuse(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.err = err
}

func (p *fakeProvider) launches() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.launched)
}

func (p *fakeProvider) stops() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.stopped)
}

// plane is a control plane over a real store, a fake clock and a fake
// provider.
type plane struct {
	t     *testing.T
	ctx   context.Context
	st    *sqlstore.Store
	clock *clock.Fake
	prov  *fakeProvider
	p     *control.Plane
}

func newPlane(t *testing.T) *plane { return newPlaneWith(t, control.Options{}) }

func newPlaneWith(t *testing.T, opt control.Options) *plane {
	prov := &fakeProvider{}
	p := newPlaneOn(t, map[string]control.Provider{spec.ProviderLocal: prov}, opt)
	p.prov = prov
	return p
}

// newPlaneOn is a plane over a fresh SQLite store on a fake clock, with
// the providers given.
func newPlaneOn(t *testing.T, providers map[string]control.Provider, opt control.Options) *plane {
	clock := clock.NewFake(now)
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "spotml.db"), clock.Now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	p := control.New(st, providers, log, clock.Now, opt)
	return &plane{t: t, ctx: t.Context(), st: st, clock: clock, p: p}
}

func (p *plane) apply(yaml string) {
	p.t.Helper()
	docs, err := spec.Parse([]byte(yaml))
	if err != nil {
		p.t.Fatal(err)
	}
	var pools []spec.Pool
	var jobs []spec.Job
	var svcs []store.ServiceDoc
	for _, d := range docs {
		if d.Pool != nil {
			pools = append(pools, *d.Pool)
		}
		if d.Job != nil {
			jobs = append(jobs, *d.Job)
		}
		if d.Service != nil {
			doc, err := control.ServiceDoc(*d.Service)
			if err != nil {
				p.t.Fatal(err)
			}
			svcs = append(svcs, doc)
		}
	}
	if _, err := p.st.Apply(p.ctx, pools, jobs, svcs...); err != nil {
		p.t.Fatal(err)
	}
}

func (p *plane) reconcile() {
	p.t.Helper()
	if err := p.p.Reconcile(p.ctx); err != nil {
		p.t.Fatalf("reconcile: %v", err)
	}
}

func (p *plane) nodes() []store.Node {
	p.t.Helper()
	ns, err := p.st.ListNodes(p.ctx)
	if err != nil {
		p.t.Fatal(err)
	}
	return ns
}

// heartbeat has the agent of every live node report ready.
func (p *plane) heartbeat() {
	p.t.Helper()
	for _, n := range p.nodes() {
		if store.Live(n.State) {
			if _, err := p.st.Heartbeat(p.ctx, n.Name, true); err != nil {
				p.t.Fatal(err)
			}
		}
	}
}

func (p *plane) events(f store.EventFilter) []store.Event {
	p.t.Helper()
	es, err := p.st.ListEvents(p.ctx, f)
	if err != nil {
		p.t.Fatal(err)
	}
	return es
}

func (p *plane) job(name string) store.Job {
	p.t.Helper()
	j, err := p.st.GetJob(p.ctx, name)
	if err != nil {
		p.t.Fatal(err)
	}
	return j
}

// cpuPool has local-small nodes: 2 cpu, 4Gi.
const cpuPool = `
apiVersion: spotml/v1
kind: Pool
metadata: {name: cpu}
spec: {provider: local, priority: spot, instanceType: local-small, zones: [z1, z2], max: 5}
`

func job(name string, n int) string {
	return fmt.Sprintf(`
apiVersion: spotml/v1
kind: Job
metadata: {name: %s}
spec: {pool: cpu, count: %d, template: {command: [train]}}
`, name, n)
}

func TestReconcileScalesToDemand(t *testing.T) {
	p := newPlane(t)
	p.apply(cpuPool + "---" + job("train", 6))
	p.reconcile()
	if got := p.prov.launches(); len(got) != 3 {
		t.Fatalf("launched %q, want 3 nodes for 6 one-cpu tasks on two-cpu nodes", got)
	}
	zones := map[string]int{}
	for _, n := range p.nodes() {
		zones[n.Zone]++
		if n.State != store.NodeProvisioning || n.Pool != "cpu" || !strings.HasPrefix(n.Name, "cpu-") ||
			n.Capacity.CPU != 2 || n.ProviderID != "/nodes/"+n.Name || n.PricePerHour != 0.01 || n.OnDemandPrice != 0.04 {
			t.Errorf("launched node: %+v", n)
		}
	}
	if zones["z1"] != 2 || zones["z2"] != 1 {
		t.Errorf("zones %v, want the nodes spread over z1 and z2", zones)
	}
	if es := p.events(store.EventFilter{Kind: "Launched"}); len(es) != 3 {
		t.Errorf("%d Launched events", len(es))
	}

	// Level-triggered: another pass launches nothing more.
	p.reconcile()
	if got := p.prov.launches(); len(got) != 3 {
		t.Fatalf("second pass launched more: %q", got)
	}

	p.clock.Advance(time.Second)
	p.heartbeat()
	p.reconcile()
	running, _ := p.st.RunningTasks(p.ctx)
	perNode := map[string]int{}
	for _, tk := range running {
		perNode[tk.Node]++
	}
	if len(running) != 6 || len(perNode) != 3 {
		t.Fatalf("running %d tasks on %v, want 6 on 3 nodes", len(running), perNode)
	}

	// Work done: the nodes go idle and, past idleTimeout, away.
	for _, tk := range running {
		if _, err := p.st.Report(p.ctx, tk.ID, tk.Node, tk.Attempt, store.OutcomeSucceeded, 0, ""); err != nil {
			t.Fatal(err)
		}
	}
	p.reconcile()
	if len(p.prov.stops()) != 0 {
		t.Fatalf("nodes stopped before idleTimeout: %q", p.prov.stops())
	}
	p.clock.Advance(spec.DefaultIdleTimeout)
	p.heartbeat()
	p.reconcile()
	if got := p.prov.stops(); len(got) != 3 {
		t.Errorf("stopped %q, want the 3 idle nodes", got)
	}
	for _, n := range p.nodes() {
		if n.State != store.NodeTerminated || !strings.HasPrefix(n.Reason, "idle for") {
			t.Errorf("idle node: %s %s", n.State, n.Reason)
		}
	}
	if j := p.job("train"); j.State != store.JobSucceeded {
		t.Errorf("job %s", j.State)
	}

	// A big job gets max nodes, no more.
	p.apply(job("big", 20))
	p.reconcile()
	if got := p.prov.launches(); len(got) != 3+5 {
		t.Errorf("launched %d nodes in all, want 3 + max 5", len(got))
	}
}

func TestReconcileNoCapacityBacksOff(t *testing.T) {
	p := newPlane(t)
	p.prov.refuse(control.ErrNoCapacity)
	p.apply(cpuPool + "---" + job("train", 6))
	p.reconcile()
	if got := p.prov.launches(); len(got) != 1 {
		t.Fatalf("launch attempts %q, want 1: a refusal backs the pool off at once", got)
	}
	if ns := p.nodes(); len(ns) != 0 {
		t.Errorf("refused node left behind: %+v", ns)
	}
	if runs, _ := p.st.Runs(p.ctx); len(runs) != 0 {
		t.Errorf("refused node left a billing run: %+v", runs)
	}
	es := p.events(store.EventFilter{Kind: "LaunchFailed"})
	if len(es) != 1 || es[0].Object != "pool/cpu" || es[0].Reason != "NoCapacity" || !strings.Contains(es[0].Message, "retrying in 1s") {
		t.Errorf("LaunchFailed events: %+v", es)
	}

	// Backoff doubles: 1s, then 2s.
	for _, step := range []struct {
		advance  time.Duration
		attempts int
	}{
		{0, 1},
		{999 * time.Millisecond, 1},
		{2 * time.Millisecond, 2}, // past 1s
		{time.Second, 2},
		{time.Second + time.Millisecond, 3}, // past 2s
	} {
		p.clock.Advance(step.advance)
		p.reconcile()
		if got := len(p.prov.launches()); got != step.attempts {
			t.Fatalf("at %s: %d launch attempts, want %d", p.clock.Now().Sub(now), got, step.attempts)
		}
	}
	if es := p.events(store.EventFilter{Kind: "LaunchFailed"}); !strings.Contains(es[len(es)-1].Message, "retrying in 4s") {
		t.Errorf("third refusal: %+v", es[len(es)-1])
	}

	// The market has room again once the backoff has passed.
	p.prov.refuse(nil)
	p.clock.Advance(4 * time.Second)
	p.reconcile()
	if got := len(p.prov.launches()); got != 3+3 {
		t.Errorf("%d launch attempts, want 3 refused and 3 launched", got)
	}
	if ns := p.nodes(); len(ns) != 3 {
		t.Errorf("%d nodes, want 3", len(ns))
	}
}

func TestReconcileRestartRefusedKeepsNode(t *testing.T) {
	p := newPlane(t)
	p.apply(strings.Replace(cpuPool, "max: 5", "min: 1, max: 1, evictionPolicy: deallocate", 1))
	p.reconcile()
	ns := p.nodes()
	if len(ns) != 1 {
		t.Fatalf("nodes %+v, want min 1", ns)
	}
	name := ns[0].Name
	p.heartbeat()
	p.clock.Advance(time.Minute)
	if err := p.st.EndNode(p.ctx, name, store.NodeDeallocated, "SpotEviction"); err != nil {
		t.Fatal(err)
	}

	p.prov.refuse(control.ErrNoCapacity)
	p.clock.Advance(time.Minute)
	p.reconcile()
	if got := p.prov.launches(); !slices.Equal(got, []string{name, name}) {
		t.Fatalf("launches %q, want the node then its restart", got)
	}
	n, err := p.st.GetNode(p.ctx, name)
	if err != nil {
		t.Fatalf("refused restart lost the node: %v", err)
	}
	if n.State != store.NodeDeallocated || n.Incarnation != 2 {
		t.Errorf("node after a refused restart: %+v", n)
	}
	runs, _ := p.st.Runs(p.ctx)
	if len(runs) != 2 || !runs[0].End.Equal(now.Add(time.Minute)) || runs[1].End.IsZero() {
		t.Errorf("billing runs after a refused restart: %+v", runs)
	}

	p.prov.refuse(nil)
	p.clock.Advance(time.Second)
	p.reconcile()
	if n, _ := p.st.GetNode(p.ctx, name); n.State != store.NodeProvisioning || n.Incarnation != 3 {
		t.Errorf("node after restart: %+v", n)
	}
	if got := p.prov.launches(); len(got) != 3 || got[2] != name {
		t.Errorf("launches %q, want the same node restarted", got)
	}
}

func TestReconcileNodeLost(t *testing.T) {
	p := newPlane(t)
	p.apply(strings.Replace(cpuPool, "max: 5", "max: 1", 1) + "---" + job("train", 1))
	p.reconcile()
	p.heartbeat()
	p.reconcile()
	lost := p.nodes()[0].Name
	if tk := p.job("train").Tasks[0]; tk.State != store.TaskRunning || tk.Node != lost {
		t.Fatalf("task not running on %s: %+v", lost, tk)
	}

	// Within NodeTimeout the node lives.
	p.clock.Advance(10 * time.Second)
	p.heartbeat()
	p.reconcile()
	p.clock.Advance(15 * time.Second)
	p.reconcile()
	if n, _ := p.st.GetNode(p.ctx, lost); n.State != store.NodeReady {
		t.Fatalf("node %s at NodeTimeout: %s", lost, n.State)
	}

	p.clock.Advance(time.Second)
	p.reconcile()
	n, _ := p.st.GetNode(p.ctx, lost)
	if n.State != store.NodeLost || n.Reason != "no heartbeat for 16s" {
		t.Errorf("silent node: %s (%s)", n.State, n.Reason)
	}
	if got := p.prov.stops(); !slices.Equal(got, []string{lost}) {
		t.Errorf("stopped %q, want %s", got, lost)
	}
	tk := p.job("train").Tasks[0]
	if tk.State != store.TaskPending || tk.Attempt != 2 || tk.Evictions != 1 || tk.Failures != 0 {
		t.Errorf("task of the lost node: %+v", tk)
	}
	if es := p.events(store.EventFilter{Kind: "Lost"}); len(es) != 1 || es[0].Object != "node/"+lost {
		t.Errorf("Lost events: %+v", es)
	}
	// The same pass replaces it.
	launches := p.prov.launches()
	if len(launches) != 2 || launches[1] == lost {
		t.Fatalf("launches %q, want a replacement", launches)
	}

	// A replacement whose agent never joins is lost after ProvisionTimeout.
	p.clock.Advance(120 * time.Second)
	p.reconcile()
	if n, _ := p.st.GetNode(p.ctx, launches[1]); n.State != store.NodeProvisioning {
		t.Errorf("node at ProvisionTimeout: %s", n.State)
	}
	p.clock.Advance(time.Second)
	p.reconcile()
	if n, _ := p.st.GetNode(p.ctx, launches[1]); n.State != store.NodeLost || !strings.Contains(n.Reason, "did not join") {
		t.Errorf("node past ProvisionTimeout: %s (%s)", n.State, n.Reason)
	}
}

func TestReconcilePoolDeleted(t *testing.T) {
	p := newPlane(t)
	p.apply(strings.Replace(cpuPool, "max: 5", "min: 2, max: 2", 1))
	p.reconcile()
	p.heartbeat()
	if err := p.st.DeletePool(p.ctx, "cpu"); err != nil {
		t.Fatal(err)
	}
	p.reconcile()
	if got := p.prov.stops(); len(got) != 2 {
		t.Errorf("stopped %q, want both nodes of the deleted pool", got)
	}
	for _, n := range p.nodes() {
		if n.State != store.NodeTerminated || n.Reason != "pool deleted" {
			t.Errorf("node of a deleted pool: %s (%s)", n.State, n.Reason)
		}
	}
}

// TestNilLogger: a plane given no logger logs nothing rather than
// panicking on its first message (here "node lost").
func TestNilLogger(t *testing.T) {
	p := newPlane(t)
	p.p = control.New(p.st, map[string]control.Provider{spec.ProviderLocal: p.prov}, nil, p.clock.Now, control.Options{})
	p.apply(strings.Replace(cpuPool, "max: 5", "max: 1", 1) + "---" + job("train", 1))
	p.reconcile()
	p.heartbeat()
	p.reconcile()
	p.clock.Advance(20 * time.Second)
	p.reconcile()
	// The silent node is lost (a replacement may be listed beside it,
	// in name order).
	lost := false
	for _, n := range p.nodes() {
		lost = lost || n.State == store.NodeLost
	}
	if !lost {
		t.Errorf("silent node: %+v, want it lost", p.nodes())
	}
}

// TestAtRiskSinkReplaces: a provider's early warning (RiskSink.AtRisk)
// launches a replacement and leaves the node at risk its work (PlanPools'
// table has the rest: max, idle nodes at risk).
func TestAtRiskSinkReplaces(t *testing.T) {
	p := newPlane(t)
	p.apply(cpuPool + "---" + job("train", 2))
	p.reconcile()
	p.heartbeat()
	p.reconcile()
	first := p.nodes()[0].Name
	if got := p.prov.launches(); len(got) != 1 || p.job("train").Tasks[0].Node != first {
		t.Fatalf("launches %q; task on %q", got, p.job("train").Tasks[0].Node)
	}
	var sink control.RiskSink = p.p
	for range 2 {
		if err := sink.AtRisk(p.ctx, first, p.clock.Now(), "test"); err != nil {
			t.Fatal(err)
		}
	}
	if err := sink.AtRisk(p.ctx, "missing", p.clock.Now(), "test"); err != nil {
		t.Errorf("warning of a missing node: %v", err)
	}
	p.reconcile()
	if got := p.prov.launches(); len(got) != 2 {
		t.Fatalf("launches %q, want a replacement", got)
	}
	for _, tk := range p.job("train").Tasks {
		if tk.Node != first || tk.State != store.TaskRunning {
			t.Errorf("task moved off the node at risk: %+v", tk)
		}
	}
	if es := p.events(store.EventFilter{Kind: "AtRisk"}); len(es) != 1 || es[0].Object != "node/"+first {
		t.Errorf("AtRisk events %+v", es)
	}
	if got := p.prov.stops(); len(got) != 0 {
		t.Errorf("stopped %q", got)
	}
}
