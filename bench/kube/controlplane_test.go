package kube

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/kubetest"
	kubeprov "github.com/spotml/spotml/internal/provider/kubernetes"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
)

// rss is this process's resident set in bytes (0 where /proc cannot be
// read): the heap figure leaves out what the runtime holds but has not
// handed back, which is what an operator sees.
func rss() int64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0
	}
	pages, _ := strconv.ParseInt(f[1], 10, 64)
	return pages * int64(os.Getpagesize())
}

// planeSink is the control plane as the provider's sink, with the time of
// each node's first notice recorded once the plane has stored it.
type planeSink struct {
	*control.Plane
	count *countSink
}

func (s planeSink) Notice(ctx context.Context, node string, deadline time.Time, source string) error {
	// Counted once the plane has stored it.
	err := s.Plane.Notice(ctx, node, deadline, source)
	if err == nil {
		s.count.add("notice", node)
	}
	return err
}
func (s planeSink) Gone(ctx context.Context, node, state, reason string) error {
	s.count.add("gone", node)
	return s.Plane.Gone(ctx, node, state, reason)
}
func (s planeSink) Shortage(ctx context.Context, node, reason string) error {
	s.count.add("shortage", node)
	return s.Plane.Shortage(ctx, node, reason)
}
func (s planeSink) Placed(ctx context.Context, node string, pl control.Placement) error {
	s.count.add("placed", node)
	return s.Plane.Placed(ctx, node, pl)
}

// BenchmarkScaleControlPlane is BenchmarkScale with the whole control
// plane: 1,000 cluster nodes and 10,000 spotml agent pods (ten per node,
// bound directly, no kubelets), known to a real SQLite store as 10,000
// ready nodes of one pool (created through the store as a launch records
// them: CreateNode with the pod's provider ID and host, then the agent's
// first ready heartbeat). The real kubernetes provider runs with the real
// control.Plane as its sink and view (its view is the store's live nodes,
// read every pass), and the plane's reconcile pass (Plane.Reconcile, the
// pass runLeader runs every Interval) is called every 500 ms beside it.
// Reported: the process's heap and RSS before and after the informers
// sync, the CPU of that sync, the plane's pass and the provider's pass at
// this scale (p50/p99), the CPU per minute of both running with nothing
// happening, and a Karpenter taint on one node to its ten nodes' notices
// stored.
//
//	SPOTML_KUBE_BIN=… go test ./bench/kube -run '^$' -bench ScaleControlPlane -benchtime 1x -timeout 20m -v
func BenchmarkScaleControlPlane(b *testing.B) {
	const nNodes, perNode = 1000, 10
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
	p := pool("big", 0, nNodes*perNode)
	// No work runs on the fleet: a day's idle timeout keeps the plane from
	// scaling the idle nodes down during the run.
	p.Spec.IdleTimeout = spec.Duration{Duration: 24 * time.Hour}
	if _, err := st.Apply(ctx, []spec.Pool{p}, nil); err != nil {
		b.Fatal(err)
	}
	capacity, err := control.NodeCapacity(p)
	if err != nil {
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

	// Each pod and its store node as a launch leaves them: the pod
	// created, the node recorded under the pod's provider ID with the host
	// it is bound to (so the provider has no placement to report), then
	// ready from its agent's first heartbeat.
	began = time.Now()
	parallel(b, nNodes*perNode, 32, func(i int) error {
		name, host := fmt.Sprintf("big-%05d", i), fmt.Sprintf("node-%04d", i/perNode)
		pod := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "spotml", Labels: map[string]string{
				kubeprov.LabelManagedBy: kubeprov.ManagedBy, kubeprov.LabelComponent: kubeprov.ComponentAgent,
				kubeprov.LabelPool: "big", kubeprov.LabelNode: name, kubeprov.LabelPriority: spec.PrioritySpot},
				Annotations: map[string]string{kubeprov.AnnotationDoNotDisrupt: "true"}},
			Spec: corev1.PodSpec{NodeName: host, RestartPolicy: corev1.RestartPolicyNever,
				Containers: []corev1.Container{{Name: "agent", Image: "train:bench", Command: []string{"/opt/spotml/spotml", "agent"},
					Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("1Gi")}}}}},
		}
		created, err := cs.CoreV1().Pods("spotml").Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		if err := st.CreateNode(ctx, store.Node{Name: name, Pool: "big", Priority: spec.PrioritySpot, Zone: "us-east-1a",
			InstanceType: "g5.xlarge", Capacity: capacity, Host: host,
			ProviderID: created.Namespace + "/" + created.Name + "/" + string(created.UID)}); err != nil {
			return err
		}
		_, err = st.Heartbeat(ctx, name, true)
		return err
	})
	b.Logf("%d pods created and their nodes stored and ready in %s", nNodes*perNode, time.Since(began).Round(time.Millisecond))
	live, err := st.LiveNodes(ctx)
	if err != nil {
		b.Fatal(err)
	}
	ready := 0
	for _, n := range live {
		if n.State == store.NodeReady {
			ready++
		}
	}
	if ready != nNodes*perNode {
		b.Fatalf("%d of %d stored nodes ready", ready, nNodes*perNode)
	}

	var passMu sync.Mutex
	var passes []time.Duration
	sawFirst := false
	synced := make(chan struct{})
	log := slog.New(slog.DiscardHandler)
	prov := kubeprov.New(cs, kubeprov.Config{ServerURL: "http://192.0.2.1:1", SpotmlImage: "spotml:bench", Interval: time.Second,
		OnPass: func(took time.Duration, nodes int) {
			if nodes < nNodes*perNode {
				return
			}
			passMu.Lock()
			defer passMu.Unlock()
			if !sawFirst {
				// The first full pass waits for the informers to sync.
				sawFirst = true
				close(synced)
				return
			}
			passes = append(passes, took)
		}}, log, time.Now)
	cp := control.New(st, map[string]control.Provider{kubeprov.Name: prov}, log, time.Now,
		control.Options{Interval: 500 * time.Millisecond, ProvisionTimeout: time.Hour, NodeTimeout: time.Hour, Retention: -1})
	sink := planeSink{Plane: cp, count: &countSink{calls: map[string]int{}, notice: map[string]time.Time{}}}

	// reconcile runs the plane's pass every 500 ms (its Interval, as
	// runLeader does) until stop is closed, recording each pass's time.
	var recMu sync.Mutex
	var recs []time.Duration
	reconcile := func(stop <-chan struct{}) {
		t := time.NewTicker(500 * time.Millisecond)
		defer t.Stop()
		for {
			t0 := time.Now()
			if err := cp.Reconcile(ctx); err != nil {
				b.Errorf("reconcile: %v", err)
			}
			recMu.Lock()
			recs = append(recs, time.Since(t0))
			recMu.Unlock()
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}

	for range b.N {
		// The plane's first pass over the stored fleet, before the
		// provider starts: the store's side alone.
		t0 := time.Now()
		if err := cp.Reconcile(ctx); err != nil {
			b.Fatal(err)
		}
		firstReconcile := time.Since(t0)

		heap0, rss0, cpu0, t0 := heap(), rss(), cpuTime(), time.Now()
		runCtx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); prov.Run(runCtx, sink, cp) }()
		select {
		case <-synced:
		case <-time.After(10 * time.Minute):
			b.Fatal("the provider made no full pass in 10 minutes")
		}
		syncTook, syncCPU := time.Since(t0), cpuTime()-cpu0
		heap1, rss1 := heap(), rss()

		// Idle: the plane's passes every 500 ms and the provider's every
		// second (reading the store's live nodes), nothing happening.
		stopRec := make(chan struct{})
		recDone := make(chan struct{})
		cpu1 := cpuTime()
		go func() { defer close(recDone); reconcile(stopRec) }()
		time.Sleep(20 * time.Second)
		idleCPU := cpuTime() - cpu1

		// Reaction at scale, the plane's passes still running: a
		// Karpenter taint on one node; each of its ten nodes' notices is
		// stored by the plane before the provider's Notice returns.
		t1 := time.Now()
		if err := c.Taint(ctx, "node-0500", "karpenter.sh/disrupted", "", corev1.TaintEffectNoSchedule); err != nil {
			b.Fatal(err)
		}
		var first, last time.Time
		deadline := time.Now().Add(60 * time.Second)
		for {
			sink.count.mu.Lock()
			n := 0
			for i := 5000; i < 5000+perNode; i++ {
				if t, ok := sink.count.notice[fmt.Sprintf("big-%05d", i)]; ok {
					n++
					if first.IsZero() || t.Before(first) {
						first = t
					}
					if t.After(last) {
						last = t
					}
				}
			}
			sink.count.mu.Unlock()
			if n == perNode {
				break
			}
			if time.Now().After(deadline) {
				b.Fatalf("%d of the tainted node's %d agents noticed in 60s", n, perNode)
			}
			time.Sleep(2 * time.Millisecond)
		}
		close(stopRec)
		<-recDone
		stop()
		<-done
		noticed := 0
		ns, err := st.LiveNodes(ctx)
		if err != nil {
			b.Fatal(err)
		}
		for _, n := range ns {
			if !n.NoticeDeadline.IsZero() {
				noticed++
			}
		}
		if noticed != perNode {
			b.Errorf("%d stored nodes have a notice, want the tainted node's %d", noticed, perNode)
		}

		passMu.Lock()
		ps := slices.Clone(passes)
		passMu.Unlock()
		recMu.Lock()
		rs := slices.Clone(recs)
		recMu.Unlock()
		b.ReportMetric(float64(heap0)/(1<<20), "MB-heap-before")
		b.ReportMetric(float64(heap1)/(1<<20), "MB-heap-synced")
		b.ReportMetric(float64(rss0)/(1<<20), "MB-rss-before")
		b.ReportMetric(float64(rss1)/(1<<20), "MB-rss-synced")
		b.ReportMetric(syncTook.Seconds(), "s-to-first-full-pass")
		b.ReportMetric(syncCPU.Seconds(), "s-cpu-list-sync")
		b.ReportMetric(idleCPU.Seconds()*3, "s-cpu-per-idle-min")
		b.ReportMetric(float64(firstReconcile.Microseconds())/1000, "ms-reconcile-first")
		b.ReportMetric(float64(percentile(rs, 0.5).Microseconds())/1000, "ms-reconcile-p50")
		b.ReportMetric(float64(percentile(rs, 0.99).Microseconds())/1000, "ms-reconcile-p99")
		b.ReportMetric(float64(percentile(ps, 0.5).Microseconds())/1000, "ms-provider-pass-p50")
		b.ReportMetric(float64(percentile(ps, 0.99).Microseconds())/1000, "ms-provider-pass-p99")
		b.ReportMetric(float64(first.Sub(t1).Microseconds())/1000, "ms-taint-to-first-notice")
		b.ReportMetric(float64(last.Sub(t1).Microseconds())/1000, "ms-taint-to-last-notice")
		b.Logf("sink calls: %v; provider passes: %d; reconcile passes: %d; apiserver RSS: %v", sink.count.calls, len(ps), len(rs), c.RSS())
	}
}
