package kube

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/gateway"
	"github.com/spotml/spotml/internal/kubetest"
	kubeprov "github.com/spotml/spotml/internal/provider/kubernetes"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// fastClient is a clientset on the cluster that is not held to client-go's
// default 5 requests a second, for creating many objects.
func fastClient(b *testing.B, c *kubetest.Cluster) *kubernetes.Clientset {
	cfg := rest.CopyConfig(c.Config)
	cfg.QPS, cfg.Burst = 2000, 4000
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return cs
}

// clusterOptions: nodes registered without a kubelet never renew their
// Lease; a node-monitor grace period of an hour keeps the node lifecycle
// controller (which also lifts the not-ready taint the apiserver puts on
// every new Node) from calling them unreachable during a run.
var clusterOptions = kubetest.Options{NodeMonitorGracePeriod: time.Hour}

func spotNode(name string) kubetest.NodeOptions {
	return kubetest.NodeOptions{Name: name, Labels: map[string]string{
		"karpenter.sh/capacity-type": "spot", "node.kubernetes.io/instance-type": "g5.xlarge", "topology.kubernetes.io/zone": "us-east-1a"}}
}

func pool(name string, min, max int) spec.Pool {
	p := spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: name},
		Spec: spec.PoolSpec{Provider: spec.ProviderKubernetes, Priority: spec.PrioritySpot, Min: min, Max: max,
			Capacity:   &spec.Resources{CPU: 1, Memory: 1 << 30},
			Kubernetes: &spec.KubernetesPool{Flavor: spec.FlavorKarpenter, Image: "train:bench", Notice: spec.Duration{Duration: 30 * time.Second}}}}
	p.Default()
	return p
}

// timed is the kubernetes provider with the times of what it reports and
// launches recorded.
type timed struct {
	*kubeprov.Provider
	mu       sync.Mutex
	notice   map[string]time.Time // node → first Notice
	gone     map[string]time.Time // node → first Gone
	launched map[string]time.Time // node → Launch returned
}

func (p *timed) Launch(ctx context.Context, req control.LaunchRequest) (control.Launched, error) {
	l, err := p.Provider.Launch(ctx, req)
	if err == nil {
		p.mark(p.launched, req.Node.Name)
	}
	return l, err
}

func (p *timed) Run(ctx context.Context, sink control.Sink, view control.View) error {
	return p.Provider.Run(ctx, recSink{Sink: sink, p: p}, view)
}

func (p *timed) mark(m map[string]time.Time, node string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := m[node]; !ok {
		m[node] = time.Now()
	}
}

func (p *timed) at(m map[string]time.Time, node string) (time.Time, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	t, ok := m[node]
	return t, ok
}

type recSink struct {
	control.Sink
	p *timed
}

func (s recSink) Notice(ctx context.Context, node string, deadline time.Time, source string) error {
	s.p.mark(s.p.notice, node)
	return s.Sink.Notice(ctx, node, deadline, source)
}

func (s recSink) Gone(ctx context.Context, node, state, reason string) error {
	s.p.mark(s.p.gone, node)
	return s.Sink.Gone(ctx, node, state, reason)
}

// routes is a real gateway whose route updates are watched: which nodes
// it sends new requests to (a replica not draining), and since when.
type routes struct {
	*gateway.Gateway
	mu      sync.Mutex
	serving map[string]bool // node → routed to, as of the last update
	off     map[string]time.Time
}

func (r *routes) Update(rs []gateway.Route) {
	r.Gateway.Update(rs)
	now := time.Now()
	on := map[string]bool{}
	for _, rt := range rs {
		for _, rep := range rt.Replicas {
			if !rep.Draining {
				on[rep.Node] = true
			}
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for n := range r.serving {
		if !on[n] {
			if _, ok := r.off[n]; !ok {
				r.off[n] = now
			}
		}
	}
	r.serving = on
}

// routedOff says when the gateway stopped sending new requests to node,
// and routed whether it sends them now.
func (r *routes) state(node string) (off time.Time, routed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.off[node], r.serving[node]
}

func percentile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

// BenchmarkReaction: from a platform signal written to the apiserver to
// spotml's reaction, per signal: the node's Notice (Gone for a Node
// deleted), the replacement's agent pod created, and a gateway fed from
// the store (as `spotml up` and `spotml gateway` run it, polling SQLite
// every 200 ms) no longer sending new requests to the replica on the node. The whole control
// plane runs (SQLite store, the real kubernetes provider with its
// informers, a pool of min 1): a Notice kicks a pass that launches the
// replacement at once. Nodes are registered without kubelets (their agent
// pods are bound and stay Pending): what is measured is spotml's path from
// the API to its decisions, not a pod's start. The benchmark plays the
// agent's part in the store: it marks the victim's node ready and its
// service replica ready at a loopback address.
//
//	go test ./bench/kube -run '^$' -bench Reaction -benchtime 20x
func BenchmarkReaction(b *testing.B) {
	c := kubetest.Start(b, clusterOptions)
	ctx := context.Background()
	cs := fastClient(b, c)
	if err := c.CreateNamespace(ctx, "spotml"); err != nil {
		b.Fatal(err)
	}
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "spotml.db"), time.Now)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	log := slog.New(slog.DiscardHandler)
	prov := &timed{Provider: kubeprov.New(cs, kubeprov.Config{ServerURL: "http://192.0.2.1:1", SpotmlImage: "spotml:bench",
		Interval: time.Second}, log, time.Now),
		notice: map[string]time.Time{}, gone: map[string]time.Time{}, launched: map[string]time.Time{}}
	cp := control.New(st, map[string]control.Provider{kubeprov.Name: prov}, log, time.Now,
		control.Options{Interval: 500 * time.Millisecond, ProvisionTimeout: time.Hour, NodeTimeout: time.Hour, Retention: -1})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); cp.Run(runCtx) }()
	defer func() { stop(); <-done }()

	nodes := 0
	fresh := func() {
		nodes++
		if err := c.RegisterNode(ctx, spotNode(fmt.Sprintf("spot-%d", nodes))); err != nil {
			b.Fatal(err)
		}
	}
	fresh()
	fresh()
	if _, err := st.Apply(ctx, []spec.Pool{pool("spot", 1, 100)}, nil); err != nil {
		b.Fatal(err)
	}
	// A dev service of one replica on the pool: each victim's node holds
	// it, and the gateway routes to it.
	docs, err := spec.Parse([]byte(`apiVersion: spotml/v1
kind: Service
metadata: {name: m}
spec:
  model: {uri: models/m.onnx}
  resources: {cpu: 0.5}
  replicas: {min: 1, max: 1}
  placement: {tier: dev}
`))
	if err != nil {
		b.Fatal(err)
	}
	doc, err := control.ServiceDoc(*docs[0].Service)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := st.Apply(ctx, nil, nil, doc); err != nil {
		b.Fatal(err)
	}
	gw := &routes{Gateway: gateway.New(gateway.Config{Now: time.Now}), off: map[string]time.Time{}}
	feedCtx, stopFeed := context.WithCancel(ctx)
	fed := make(chan struct{})
	go func() {
		defer close(fed)
		control.FeedGateway(feedCtx, st, gw, log, time.Now, control.FeedOptions{ID: "bench"})
	}()
	defer func() { stopFeed(); <-fed }()
	// serve plays the victim's agent: its node ready, the replica placed
	// there ready, until the gateway routes to it.
	serve := func(n store.Node) {
		if _, err := st.Heartbeat(ctx, n.Name, true); err != nil {
			b.Fatal(err)
		}
		cp.Kick()
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, routed := gw.state(n.Name); routed {
				return
			}
			reps, err := st.ListReplicas(ctx, "m")
			if err != nil {
				b.Fatal(err)
			}
			for _, r := range reps {
				if r.Node == n.Name && r.State == store.ReplicaStarting {
					if err := st.ReportReplicas(ctx, n.Name, []store.ReplicaStatus{{ID: r.ID, Ready: true, Addr: "127.0.0.1:1"}}); err != nil {
						b.Fatal(err)
					}
				}
			}
			if time.Now().After(deadline) {
				b.Fatalf("the gateway does not route to a replica on %s within 30s: %+v", n.Name, reps)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	// placed waits for the pool's one live node without a notice to be
	// bound, and returns it.
	placed := func() store.Node {
		deadline := time.Now().Add(60 * time.Second)
		for {
			ns, err := st.ListNodes(ctx)
			if err != nil {
				b.Fatal(err)
			}
			for _, n := range ns {
				if store.Live(n.State) && n.NoticeDeadline.IsZero() && n.Host != "" {
					return n
				}
			}
			if time.Now().After(deadline) {
				pods, _ := cs.CoreV1().Pods("spotml").List(ctx, metav1.ListOptions{})
				for _, p := range pods.Items {
					b.Logf("pod %s on %q: %s %+v", p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.Conditions)
				}
				b.Fatalf("no node placed within 60s: %+v", ns)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	signals := []struct {
		name  string
		apply func(n store.Node) error
		gone  bool // reported as Gone, not Notice
	}{
		{"karpenter-taint", func(n store.Node) error {
			return c.Taint(ctx, n.Host, "karpenter.sh/disrupted", "", corev1.TaintEffectNoSchedule)
		}, false},
		{"cordon", func(n store.Node) error { return c.Cordon(ctx, n.Host) }, false},
		{"disruption-target", func(n store.Node) error {
			return c.SetDisruptionTarget(ctx, "spotml", n.Name, "TerminationByKubelet")
		}, false},
		{"eviction-api", func(n store.Node) error { return c.EvictPod(ctx, "spotml", n.Name) }, false},
		{"node-deleted", func(n store.Node) error { return c.DeleteNode(ctx, n.Host) }, true},
	}
	for _, s := range signals {
		b.Run(s.name, func(b *testing.B) {
			var toReport, toReplacement, toRouteOff []time.Duration
			for range b.N {
				victim := placed()
				serve(victim)
				fresh() // a node for the replacement
				t0 := time.Now()
				if err := s.apply(victim); err != nil {
					b.Fatal(err)
				}
				m := prov.notice
				if s.gone {
					m = prov.gone
				}
				var reported, launched, off time.Time
				deadline := time.Now().Add(30 * time.Second)
				for reported.IsZero() || launched.IsZero() || off.IsZero() {
					off, _ = gw.state(victim.Name)
					if t, ok := prov.at(m, victim.Name); ok {
						reported = t
					}
					// The replacement: the first node launched after the
					// signal.
					prov.mu.Lock()
					for _, t := range prov.launched {
						if t.After(t0) && (launched.IsZero() || t.Before(launched)) {
							launched = t
						}
					}
					prov.mu.Unlock()
					if time.Now().After(deadline) {
						b.Fatalf("%s: no reaction within 30s (reported %v, replacement %v, routed off %v)", s.name, reported, launched, off)
					}
					time.Sleep(2 * time.Millisecond)
				}
				toReport = append(toReport, reported.Sub(t0))
				toReplacement = append(toReplacement, launched.Sub(t0))
				toRouteOff = append(toRouteOff, off.Sub(t0))
				// The platform finishes the job: the victim's pod goes (the
				// kubelet's part, which no kubelet plays here) and its node
				// takes no more pods. (Deleting the node would orphan a
				// replacement the scheduler put there after the victim's
				// pod went.)
				cs.CoreV1().Pods("spotml").Delete(ctx, victim.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)})
				if err := c.Cordon(ctx, victim.Host); err != nil && !apierrors.IsNotFound(err) {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(percentile(toReport, 0.5).Microseconds())/1000, "ms-notice-p50")
			b.ReportMetric(float64(percentile(toReport, 0.99).Microseconds())/1000, "ms-notice-p99")
			b.ReportMetric(float64(percentile(toReplacement, 0.5).Microseconds())/1000, "ms-replacement-p50")
			b.ReportMetric(float64(percentile(toReplacement, 0.99).Microseconds())/1000, "ms-replacement-p99")
			b.ReportMetric(float64(percentile(toRouteOff, 0.5).Microseconds())/1000, "ms-routed-off-p50")
			b.ReportMetric(float64(percentile(toRouteOff, 0.99).Microseconds())/1000, "ms-routed-off-p99")
		})
	}
}

// staticView is the control plane's view of a pool and its nodes, fixed:
// the scale benchmark measures the provider, not the store.
type staticView struct {
	pools []store.Pool
	nodes []store.Node
}

func (v *staticView) ListPools(context.Context) ([]store.Pool, error) { return v.pools, nil }
func (v *staticView) ListNodes(context.Context) ([]store.Node, error) { return v.nodes, nil }

// countSink counts what the provider reports and when it first noticed
// each node.
type countSink struct {
	mu     sync.Mutex
	calls  map[string]int
	notice map[string]time.Time
}

func (s *countSink) add(kind, node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls[kind]++
	if kind == "notice" {
		if _, ok := s.notice[node]; !ok {
			s.notice[node] = time.Now()
		}
	}
}
func (s *countSink) Notice(_ context.Context, node string, _ time.Time, _ string) error {
	s.add("notice", node)
	return nil
}
func (s *countSink) Gone(_ context.Context, node, _, _ string) error { s.add("gone", node); return nil }
func (s *countSink) Shortage(_ context.Context, node, _ string) error {
	s.add("shortage", node)
	return nil
}
func (s *countSink) Placed(_ context.Context, node string, _ control.Placement) error {
	s.add("placed", node)
	return nil
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func heap() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// BenchmarkScale: 1,000 cluster nodes and 10,000 spotml agent pods (ten
// per node, bound directly, no kubelets) in the apiserver, owned by 10,000
// live spotml nodes of one pool. Measured on the kubernetes provider
// alone (a fixed view of the pool and nodes, a counting sink): the heap
// its informers hold, the CPU of its first list and sync, a pass over all
// nodes once synced (p50/p99), its CPU per minute while idle, and the
// reaction to a Karpenter taint on one node (its ten nodes noticed).
//
//	go test ./bench/kube -run '^$' -bench 'Scale$' -benchtime 1x -timeout 30m
func BenchmarkScale(b *testing.B) {
	const nNodes, perNode = 1000, 10
	c := kubetest.Start(b, clusterOptions)
	ctx := context.Background()
	cs := fastClient(b, c)
	if err := c.CreateNamespace(ctx, "spotml"); err != nil {
		b.Fatal(err)
	}
	began := time.Now()
	parallel(b, nNodes, 32, func(i int) error {
		o := spotNode(fmt.Sprintf("node-%04d", i))
		o.Capacity = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("64"), corev1.ResourceMemory: resource.MustParse("256Gi"),
			corev1.ResourcePods: resource.MustParse("110")}
		return c.RegisterNode(ctx, o)
	})
	b.Logf("%d nodes registered in %s", nNodes, time.Since(began).Round(time.Millisecond))

	p := pool("big", 0, nNodes*perNode)
	view := &staticView{pools: []store.Pool{{Spec: p}}}
	pods := make([]*corev1.Pod, nNodes*perNode)
	began = time.Now()
	parallel(b, len(pods), 32, func(i int) error {
		name := fmt.Sprintf("big-%05d", i)
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "spotml", Labels: map[string]string{
				kubeprov.LabelManagedBy: kubeprov.ManagedBy, kubeprov.LabelComponent: kubeprov.ComponentAgent,
				kubeprov.LabelPool: "big", kubeprov.LabelNode: name, kubeprov.LabelPriority: spec.PrioritySpot},
				Annotations: map[string]string{kubeprov.AnnotationDoNotDisrupt: "true"}},
			Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node-%04d", i/perNode), RestartPolicy: corev1.RestartPolicyNever,
				Containers: []corev1.Container{{Name: "agent", Image: "train:bench", Command: []string{"/opt/spotml/spotml", "agent"},
					Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("1Gi")}}}}},
		}
		created, err := cs.CoreV1().Pods("spotml").Create(ctx, pod, metav1.CreateOptions{})
		pods[i] = created
		return err
	})
	b.Logf("%d pods created in %s", len(pods), time.Since(began).Round(time.Millisecond))
	now := time.Now()
	for i, pod := range pods {
		view.nodes = append(view.nodes, store.Node{Name: pod.Name, Pool: "big", State: store.NodeReady, StateAt: now,
			ProviderID: pod.Namespace + "/" + pod.Name + "/" + string(pod.UID), Host: fmt.Sprintf("node-%04d", i/perNode),
			InstanceType: "g5.xlarge", Zone: "us-east-1a"})
	}

	var passMu sync.Mutex
	var passes []time.Duration
	sawFirst := false
	synced := make(chan struct{})
	sink := &countSink{calls: map[string]int{}, notice: map[string]time.Time{}}
	prov := kubeprov.New(cs, kubeprov.Config{ServerURL: "http://192.0.2.1:1", SpotmlImage: "spotml:bench", Interval: time.Second,
		OnPass: func(took time.Duration, nodes int) {
			if nodes < len(view.nodes) {
				return
			}
			passMu.Lock()
			defer passMu.Unlock()
			if !sawFirst {
				// The first full pass waits for the namespace's informers
				// to sync: it is the time to first pass, not a pass.
				sawFirst = true
				close(synced)
				return
			}
			passes = append(passes, took)
		}}, slog.New(slog.DiscardHandler), time.Now)

	for range b.N {
		heap0, cpu0, t0 := heap(), cpuTime(), time.Now()
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); prov.Run(runCtx, sink, view) }()
		select {
		case <-synced:
		case <-time.After(10 * time.Minute):
			b.Fatal("the provider made no full pass in 10 minutes")
		}
		syncTook, syncCPU := time.Since(t0), cpuTime()-cpu0
		heap1 := heap()
		// Idle: passes every second over the informers' caches.
		cpu1 := cpuTime()
		time.Sleep(20 * time.Second)
		idleCPU := cpuTime() - cpu1

		// Reaction at scale: a Karpenter taint on one node.
		t1 := time.Now()
		if err := c.Taint(ctx, "node-0500", "karpenter.sh/disrupted", "", corev1.TaintEffectNoSchedule); err != nil {
			b.Fatal(err)
		}
		var first, last time.Time
		deadline := time.Now().Add(60 * time.Second)
		for {
			sink.mu.Lock()
			n := 0
			for i := 5000; i < 5000+perNode; i++ {
				if t, ok := sink.notice[fmt.Sprintf("big-%05d", i)]; ok {
					n++
					if first.IsZero() || t.Before(first) {
						first = t
					}
					if t.After(last) {
						last = t
					}
				}
			}
			sink.mu.Unlock()
			if n == perNode {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d of the tainted node's %d agents noticed in 60s", n, perNode)
			}
			time.Sleep(2 * time.Millisecond)
		}
		stop()
		<-done

		passMu.Lock()
		ps := slices.Clone(passes)
		passMu.Unlock()
		b.ReportMetric(float64(heap1-heap0)/(1<<20), "MB-heap-informers")
		b.ReportMetric(syncTook.Seconds(), "s-to-first-full-pass")
		b.ReportMetric(syncCPU.Seconds(), "s-cpu-list-sync")
		b.ReportMetric(idleCPU.Seconds()*3, "s-cpu-per-idle-min")
		b.ReportMetric(float64(percentile(ps, 0.5).Microseconds())/1000, "ms-pass-p50")
		b.ReportMetric(float64(percentile(ps, 0.99).Microseconds())/1000, "ms-pass-p99")
		b.ReportMetric(float64(first.Sub(t1).Microseconds())/1000, "ms-taint-to-first-notice")
		b.ReportMetric(float64(last.Sub(t1).Microseconds())/1000, "ms-taint-to-last-notice")
		b.Logf("sink calls: %v; passes: %d; apiserver RSS: %v", sink.calls, len(ps), c.RSS())
	}
}

// parallel runs do(0..n-1) on workers goroutines, failing on the first
// error.
func parallel(b *testing.B, n, workers int, do func(int) error) {
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := do(i); err != nil {
					select {
					case errs <- err:
					default:
					}
				}
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
}
