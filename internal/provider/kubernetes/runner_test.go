package kubernetes

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// plane is a recording Sink and a View over its own pools and nodes: the
// control plane's part, as far as a provider sees it. What the provider
// reports changes the nodes as the control plane would.
type plane struct {
	mu    sync.Mutex
	pools []store.Pool
	nodes map[string]*store.Node
	calls []string
	now   func() time.Time
}

func newPlane(now func() time.Time) *plane { return &plane{nodes: map[string]*store.Node{}, now: now} }

func (p *plane) record(format string, args ...any) {
	p.calls = append(p.calls, fmt.Sprintf(format, args...))
}

func (p *plane) Notice(ctx context.Context, node string, deadline time.Time, source string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("Notice %s %s in %s", node, source, deadline.Sub(p.now()).Round(time.Second))
	if n := p.nodes[node]; n != nil && store.Live(n.State) && (n.NoticeDeadline.IsZero() || deadline.Before(n.NoticeDeadline)) {
		n.NoticeDeadline, n.State = deadline, store.NodeDraining
	}
	return nil
}

func (p *plane) Gone(ctx context.Context, node, state, reason string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("Gone %s %s: %s", node, state, reason)
	if n := p.nodes[node]; n != nil && store.Live(n.State) {
		n.State, n.Reason = state, reason
	}
	return nil
}

func (p *plane) Shortage(ctx context.Context, node, reason string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("Shortage %s: %s", node, reason)
	delete(p.nodes, node)
	return nil
}

func (p *plane) Placed(ctx context.Context, node string, pl control.Placement) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.record("Placed %s on %s (%s, %s, cpu %g gpu %d)", node, pl.Host, pl.InstanceType, pl.Zone, pl.Capacity.CPU, pl.Capacity.GPU)
	if n := p.nodes[node]; n != nil {
		n.Host, n.Zone, n.InstanceType, n.Capacity = pl.Host, pl.Zone, pl.InstanceType, pl.Capacity
	}
	return nil
}

func (p *plane) ListPools(ctx context.Context) ([]store.Pool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]store.Pool(nil), p.pools...), nil
}

func (p *plane) ListNodes(ctx context.Context) ([]store.Node, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []store.Node
	for _, n := range p.nodes {
		out = append(out, *n)
	}
	return out, nil
}

// took returns the calls recorded since the last took.
func (p *plane) took() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.calls
	p.calls = nil
	return c
}

func (p *plane) node(name string) store.Node {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.nodes[name]; n != nil {
		return *n
	}
	return store.Node{}
}

// clock is a settable clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// harness is a provider over a fake clientset, its runner running.
type harness struct {
	t     *testing.T
	cs    *fake.Clientset
	p     *Provider
	plane *plane
	clk   *clock
	pool  spec.Pool
	stop  func()
}

func newHarness(t *testing.T, pool spec.Pool) *harness {
	t.Helper()
	clk := &clock{t: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	cs := fake.NewClientset()
	h := &harness{t: t, cs: cs, clk: clk, pool: pool, plane: newPlane(clk.Now)}
	h.plane.pools = []store.Pool{{Spec: pool}}
	// The API server stamps what it creates; the fake does not.
	var uids atomic.Int64
	cs.PrependReactor("create", "*", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if o, ok := a.(k8stesting.CreateAction).GetObject().(metav1.Object); ok {
			o.SetCreationTimestamp(metav1.Time{Time: clk.Now()})
			o.SetUID(types.UID(fmt.Sprintf("uid-%d", uids.Add(1))))
		}
		return false, nil, nil
	})
	h.start()
	return h
}

func (h *harness) start() {
	cfg := testCfg
	cfg.Interval = 20 * time.Millisecond
	h.p = New(h.cs, cfg, slog.New(slog.NewTextHandler(testLog{h.t}, nil)), h.clk.Now)
	ctx, cancel := context.WithCancel(h.t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.p.Run(ctx, h.plane, h.plane)
	}()
	h.stop = func() { cancel(); <-done }
	h.t.Cleanup(h.stop)
}

// launch records a node in the plane and launches it.
func (h *harness) launch(name string) store.Node {
	h.t.Helper()
	c, _ := capacity(h.pool)
	n := store.Node{Name: name, Pool: h.pool.Metadata.Name, Priority: h.pool.Spec.Priority, State: store.NodeProvisioning,
		Capacity: c, StateAt: h.clk.Now()}
	h.plane.mu.Lock()
	h.plane.nodes[name] = &n
	h.plane.mu.Unlock()
	got, err := h.p.Launch(h.t.Context(), control.LaunchRequest{Pool: h.pool, Node: n, Credential: "cred-" + name})
	if err != nil {
		h.t.Fatal(err)
	}
	h.plane.mu.Lock()
	h.plane.nodes[name].ProviderID = got.ProviderID
	h.plane.mu.Unlock()
	return n
}

func (h *harness) ns() string { return h.pool.Spec.Kubernetes.Namespace }

func (h *harness) pod(name string) *corev1.Pod {
	h.t.Helper()
	pod, err := h.cs.CoreV1().Pods(h.ns()).Get(h.t.Context(), name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	return pod
}

func (h *harness) updatePod(name string, edit func(*corev1.Pod)) {
	h.t.Helper()
	pod := h.pod(name)
	edit(pod)
	if _, err := h.cs.CoreV1().Pods(h.ns()).Update(h.t.Context(), pod, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

// addHost adds a cluster node as Karpenter makes a spot one.
func (h *harness) addHost(name string) {
	h.t.Helper()
	_, err := h.cs.CoreV1().Nodes().Create(h.t.Context(), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{
		"karpenter.sh/capacity-type": "spot", labelInstanceType: "g5.xlarge", labelZone: "us-east-1a", labelHostname: name}}},
		metav1.CreateOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) updateHost(name string, edit func(*corev1.Node)) {
	h.t.Helper()
	n, err := h.cs.CoreV1().Nodes().Get(h.t.Context(), name, metav1.GetOptions{})
	if err != nil {
		h.t.Fatal(err)
	}
	edit(n)
	if _, err := h.cs.CoreV1().Nodes().Update(h.t.Context(), n, metav1.UpdateOptions{}); err != nil {
		h.t.Fatal(err)
	}
}

// bind plays the scheduler and kubelet: the pod is bound to host and
// running.
func (h *harness) bind(name, host string) {
	h.updatePod(name, func(p *corev1.Pod) {
		p.Spec.NodeName = host
		p.Status.Phase = corev1.PodRunning
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
	})
}

// expect waits for calls starting with each of want, in order, and fails
// on calls that match none.
func (h *harness) expect(want ...string) {
	h.t.Helper()
	var got []string
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		got = append(got, h.plane.took()...)
		if matches(got, want) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	h.t.Fatalf("calls:\n  %s\nwant, in order:\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
}

func matches(got, want []string) bool {
	i := 0
	for _, g := range got {
		if i < len(want) && strings.HasPrefix(g, want[i]) {
			i++
		}
	}
	return i == len(want)
}

// quiet checks that nothing is reported for a while.
func (h *harness) quiet() {
	h.t.Helper()
	time.Sleep(150 * time.Millisecond)
	if c := h.plane.took(); len(c) > 0 {
		h.t.Fatalf("unexpected calls: %q", c)
	}
}

func karpenterPool(t *testing.T) spec.Pool {
	return testPool(t, "gpu", spec.FlavorKarpenter, spec.PrioritySpot, func(p *spec.Pool) {
		p.Spec.Capacity.GPU = 1
	})
}

// TestPlacedWhenBound: a pod bound to a cluster node is Placed with that
// node's name, instance type, zone, and what the pod requests; once.
func TestPlacedWhenBound(t *testing.T) {
	h := newHarness(t, karpenterPool(t))
	h.launch("gpu-a")
	if _, err := h.cs.CoreV1().Secrets(h.ns()).Get(t.Context(), "gpu-a-credential", metav1.GetOptions{}); err != nil {
		t.Fatalf("the node's credential Secret: %v", err)
	}
	h.quiet() // pending, not yet unschedulable: nothing to say
	h.addHost("ip-10-0-0-1")
	h.bind("gpu-a", "ip-10-0-0-1")
	h.expect("Placed gpu-a on ip-10-0-0-1 (g5.xlarge, us-east-1a, cpu 1.5 gpu 1)")
	h.quiet()
}

// TestSignalsNotice: each of the platform's signals is the node's notice,
// with deadline min(platform notice, pod grace); signals on the cluster
// node and DisruptionTarget make spotml delete the pod with the time left
// (the agent hears SIGTERM and drains on the first signal); the pod then
// gone is the node preempted, never failed.
func TestSignalsNotice(t *testing.T) {
	taint := func(key string) func(*corev1.Node) {
		return func(n *corev1.Node) {
			n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: key, Effect: corev1.TaintEffectNoSchedule})
		}
	}
	for _, tc := range []struct {
		name   string
		host   func(*corev1.Node)
		pod    func(*corev1.Pod, time.Time)
		source string
		in     string // the deadline from now
		tell   bool   // spotml deletes the pod (the agent hears SIGTERM)
	}{
		{name: "karpenter", host: taint("karpenter.sh/disrupted"), source: "karpenter.sh/disrupted taint", in: "2m0s", tell: true},
		{name: "nth-spot-itn", host: taint("aws-node-termination-handler/spot-itn"), source: "aws-node-termination-handler/spot-itn taint", in: "2m0s", tell: true},
		{name: "nth-rebalance", host: taint("aws-node-termination-handler/rebalance-recommendation"), source: "aws-node-termination-handler/rebalance-recommendation taint", in: "2m0s", tell: true},
		{name: "nth-maintenance", host: taint("aws-node-termination-handler/scheduled-maintenance"), source: "aws-node-termination-handler/scheduled-maintenance taint", in: "2m0s", tell: true},
		{name: "nth-asg", host: taint("aws-node-termination-handler/asg-lifecycle-termination"), source: "aws-node-termination-handler/asg-lifecycle-termination taint", in: "2m0s", tell: true},
		{name: "aks-drain", host: taint("remediator.kubernetes.azure.com/unschedulable"), source: "remediator.kubernetes.azure.com/unschedulable taint", in: "2m0s", tell: true},
		{name: "cordon", host: func(n *corev1.Node) { n.Spec.Unschedulable = true }, source: "node cordoned", in: "2m0s", tell: true},
		{name: "node-deleting", host: func(n *corev1.Node) {
			n.DeletionTimestamp = &metav1.Time{Time: time.Date(2026, 11, 29, 11, 59, 30, 0, time.UTC)}
			n.Finalizers = []string{"karpenter.sh/termination"}
		}, source: "node deletionTimestamp", in: "1m30s", tell: true},
		{name: "disruption-target", pod: func(p *corev1.Pod, now time.Time) {
			p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue,
				Reason: "EvictionByEvictionAPI", LastTransitionTime: metav1.Time{Time: now}})
		}, source: "DisruptionTarget: EvictionByEvictionAPI", in: "2m0s", tell: true},
		{name: "terminated-by-kubelet", pod: func(p *corev1.Pod, now time.Time) {
			p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue,
				Reason: "TerminationByKubelet", LastTransitionTime: metav1.Time{Time: now.Add(-10 * time.Second)}})
		}, source: "DisruptionTarget: TerminationByKubelet", in: "1m50s", tell: true},
		{name: "pod-deleting", pod: func(p *corev1.Pod, now time.Time) {
			p.DeletionTimestamp = &metav1.Time{Time: now.Add(45 * time.Second)}
			p.Finalizers = []string{"test/hold"} // the fake deletes at once otherwise
		}, source: "pod deletionTimestamp", in: "45s"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, karpenterPool(t))
			h.launch("gpu-a")
			h.addHost("ip-1")
			h.bind("gpu-a", "ip-1")
			h.expect("Placed gpu-a on ip-1")
			if tc.host != nil {
				h.updateHost("ip-1", tc.host)
			}
			if tc.pod != nil {
				h.updatePod("gpu-a", func(p *corev1.Pod) { tc.pod(p, h.clk.Now()) })
			}
			h.expect("Notice gpu-a " + tc.source + " in " + tc.in)
			if tc.tell {
				// The fake API deletes at once; a cluster would give the
				// pod the time left.
				waitFor(t, "the pod deleted", func() bool {
					_, err := h.cs.CoreV1().Pods(h.ns()).Get(t.Context(), "gpu-a", metav1.GetOptions{})
					return apierrors.IsNotFound(err)
				})
				h.clk.Add(lostAfter)
				h.expect("Gone gpu-a preempted")
				if n := h.plane.node("gpu-a"); n.State != store.NodePreempted {
					t.Fatalf("node %s, want preempted", n.State)
				}
				return
			}
			if err := h.cs.CoreV1().Pods(h.ns()).Delete(t.Context(), "gpu-a", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			h.clk.Add(lostAfter) // past the cache's grace
			h.expect("Gone gpu-a preempted")
		})
	}
}

// TestFirstSignalWins: a later signal with a later deadline does not
// move the notice; the pod of a signalled cluster node is deleted with
// the time left as its grace period.
func TestFirstSignalWins(t *testing.T) {
	h := newHarness(t, karpenterPool(t))
	var mu sync.Mutex
	var graces []int64
	h.cs.PrependReactor("delete", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if g := a.(k8stesting.DeleteActionImpl).DeleteOptions.GracePeriodSeconds; g != nil {
			mu.Lock()
			graces = append(graces, *g)
			mu.Unlock()
		}
		return false, nil, nil
	})
	h.launch("gpu-a")
	h.addHost("ip-1")
	// Hold the pod in deletion as a kubelet would while the agent drains.
	h.updatePod("gpu-a", func(p *corev1.Pod) { p.Finalizers = []string{"test/hold"} })
	h.bind("gpu-a", "ip-1")
	h.expect("Placed gpu-a")
	h.updatePod("gpu-a", func(p *corev1.Pod) {
		p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue,
			Reason: "DeletionByTaintManager", LastTransitionTime: metav1.Time{Time: h.clk.Now().Add(-30 * time.Second)}})
	})
	h.expect("Notice gpu-a DisruptionTarget: DeletionByTaintManager in 1m30s")
	h.clk.Add(5 * time.Second)
	h.updateHost("ip-1", func(n *corev1.Node) { n.Spec.Unschedulable = true })
	// The cordon's deadline (2m) is later: no new notice; the pod is
	// deleted with what is left of the first.
	time.Sleep(200 * time.Millisecond)
	for _, c := range h.plane.took() {
		if strings.HasPrefix(c, "Notice") {
			t.Fatalf("a later signal reported again: %s", c)
		}
	}
	waitFor(t, "the cordoned node's pod deleted", func() bool {
		pod, err := h.cs.CoreV1().Pods(h.ns()).Get(t.Context(), "gpu-a", metav1.GetOptions{})
		return apierrors.IsNotFound(err) || err == nil && pod.DeletionTimestamp != nil
	})
	mu.Lock()
	defer mu.Unlock()
	// Deleted once, on the first signal, with its 90s left; the later
	// cordon deletes nothing again.
	if len(graces) != 1 || graces[0] != 90 {
		t.Errorf("pod deleted with grace periods %v, want once with the 90s left of the first notice", graces)
	}
}

// TestRestartKeepsNoticeDeadline: a control plane restarted while a
// cluster node carries a disruption taint (which has no time of its own)
// sees the taint afresh; the notice recorded before the restart stands,
// and the agent's pod is deleted with what is left of it, not a new full
// notice.
func TestRestartKeepsNoticeDeadline(t *testing.T) {
	h := newHarness(t, karpenterPool(t))
	var mu sync.Mutex
	var graces []int64
	h.cs.PrependReactor("delete", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if g := a.(k8stesting.DeleteActionImpl).DeleteOptions.GracePeriodSeconds; g != nil {
			mu.Lock()
			graces = append(graces, *g)
			mu.Unlock()
		}
		return false, nil, nil
	})
	h.launch("gpu-a")
	h.addHost("ip-1")
	h.updatePod("gpu-a", func(p *corev1.Pod) { p.Finalizers = []string{"test/hold"} })
	h.bind("gpu-a", "ip-1")
	h.expect("Placed gpu-a")
	// The old control plane recorded the taint's notice (40s left now) and
	// went down before it deleted the pod.
	h.stop()
	h.plane.mu.Lock()
	h.plane.nodes["gpu-a"].NoticeDeadline = h.clk.Now().Add(40 * time.Second)
	h.plane.mu.Unlock()
	h.updateHost("ip-1", func(n *corev1.Node) {
		n.Spec.Taints = append(n.Spec.Taints, corev1.Taint{Key: "karpenter.sh/disrupted", Effect: corev1.TaintEffectNoSchedule})
	})
	h.start()
	waitFor(t, "the tainted node's pod deleted", func() bool {
		pod, err := h.cs.CoreV1().Pods(h.ns()).Get(t.Context(), "gpu-a", metav1.GetOptions{})
		return apierrors.IsNotFound(err) || err == nil && pod.DeletionTimestamp != nil
	})
	for _, c := range h.plane.took() {
		if strings.HasPrefix(c, "Notice") {
			t.Errorf("the taint seen again after the restart reported a later notice: %s", c)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(graces) != 1 || graces[0] != 40 {
		t.Errorf("pod deleted with grace periods %v, want once with the 40s left of the recorded notice", graces)
	}
}

// TestUnschedulableIsShortage: a spot pod the scheduler cannot place for
// longer than unschedulableTimeout is a capacity shortage.
func TestUnschedulableIsShortage(t *testing.T) {
	h := newHarness(t, karpenterPool(t))
	h.launch("gpu-a")
	h.updatePod("gpu-a", func(p *corev1.Pod) {
		p.CreationTimestamp = metav1.Time{Time: h.clk.Now()}
		p.Status.Phase = corev1.PodPending
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
			Reason: corev1.PodReasonUnschedulable, Message: "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector."}}
	})
	h.clk.Add(80 * time.Second)
	h.quiet() // the autoscaler may still bring a node
	h.clk.Add(10 * time.Second)
	h.expect("Shortage gpu-a: pod spotml/gpu-a unschedulable for 1m30s: 0/3 nodes are available")
}

// TestEndings: how a pod ends says how its node ended.
func TestEndings(t *testing.T) {
	for _, tc := range []struct {
		name string
		edit func(*corev1.Pod)
		want string
	}{
		{"evicted-by-kubelet", func(p *corev1.Pod) {
			p.Status.Phase, p.Status.Reason, p.Status.Message = corev1.PodFailed, "Evicted", "The node was low on resource: memory."
		}, "Gone gpu-a preempted: SpotEviction: pod Evicted"},
		{"disruption-target", func(p *corev1.Pod) {
			p.Status.Phase = corev1.PodFailed
			p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue, Reason: "DeletionByTaintManager"})
		}, "Gone gpu-a preempted: SpotEviction: DisruptionTarget DeletionByTaintManager"},
		{"agent-crashed", func(p *corev1.Pod) {
			p.Status.Phase = corev1.PodFailed
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "agent", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 2, Reason: "Error"}}}}
		}, "Gone gpu-a lost: container agent exited 2 (Error)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, karpenterPool(t))
			h.launch("gpu-a")
			h.addHost("ip-1")
			h.bind("gpu-a", "ip-1")
			h.expect("Placed gpu-a")
			h.updatePod("gpu-a", tc.edit)
			h.expect(tc.want)
			// The ended pod is removed.
			deadline := time.Now().Add(5 * time.Second)
			for {
				_, err := h.cs.CoreV1().Pods(h.ns()).Get(t.Context(), "gpu-a", metav1.GetOptions{})
				if apierrors.IsNotFound(err) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the ended pod was not removed")
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}

// TestNodeVanished: the cluster node deleted without warning loses the
// spotml node, and its pod is removed at once.
func TestNodeVanished(t *testing.T) {
	h := newHarness(t, karpenterPool(t))
	h.launch("gpu-a")
	h.addHost("ip-1")
	h.bind("gpu-a", "ip-1")
	h.expect("Placed gpu-a")
	if err := h.cs.CoreV1().Nodes().Delete(t.Context(), "ip-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.expect("Gone gpu-a lost: cluster node ip-1 vanished")
}

// TestPodGoneUnannounced: a pod that disappears with no signal seen is a
// lost node (its work requeued without a retry spent).
func TestPodGoneUnannounced(t *testing.T) {
	h := newHarness(t, karpenterPool(t))
	h.launch("gpu-a")
	h.addHost("ip-1")
	h.bind("gpu-a", "ip-1")
	h.expect("Placed gpu-a") // the informers are watching (the fake's watch drops what comes before)
	if err := h.cs.CoreV1().Pods(h.ns()).Delete(t.Context(), "gpu-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.quiet() // the cache may trail the API
	h.clk.Add(lostAfter)
	h.expect("Gone gpu-a lost: agent pod is gone")
}

// TestPoolDeletedRemovesObjects: a pool no longer in the view has its
// ConfigMap deleted with background propagation, the owner of its pods
// and budget; each live pool keeps a budget of all but one ready pod.
func TestPoolDeletedRemovesObjects(t *testing.T) {
	h := newHarness(t, karpenterPool(t))
	h.launch("gpu-a")
	h.launch("gpu-b")
	h.addHost("ip-1")
	h.addHost("ip-2")
	h.bind("gpu-a", "ip-1")
	h.bind("gpu-b", "ip-2")
	h.expect("Placed gpu-a")
	cm, err := h.cs.CoreV1().ConfigMaps(h.ns()).Get(t.Context(), "spotml-pool-gpu", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if owners := h.pod("gpu-a").OwnerReferences; len(owners) != 1 || owners[0].UID != cm.UID || owners[0].Kind != "ConfigMap" {
		t.Fatalf("pod owners %+v, want the pool's ConfigMap", owners)
	}
	waitFor(t, "a budget of 1 of 2 ready pods", func() bool {
		pdb, err := h.cs.PolicyV1().PodDisruptionBudgets(h.ns()).Get(t.Context(), "spotml-pool-gpu", metav1.GetOptions{})
		return err == nil && pdb.Spec.MinAvailable.IntValue() == 1 && pdb.OwnerReferences[0].UID == cm.UID
	})
	h.plane.mu.Lock()
	h.plane.pools = nil
	h.plane.mu.Unlock()
	waitFor(t, "the pool's ConfigMap deleted", func() bool {
		_, err := h.cs.CoreV1().ConfigMaps(h.ns()).Get(t.Context(), "spotml-pool-gpu", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	// The fake has no garbage collector; the nodes of a deleted pool are
	// not the runner's any more (the control plane terminates them), and
	// their pods, owned by nothing live, are collected as orphans.
	h.plane.mu.Lock()
	for _, n := range h.plane.nodes {
		n.State = store.NodeTerminated
	}
	h.plane.mu.Unlock()
	h.clk.Add(time.Hour)
	waitFor(t, "orphaned agent pods removed", func() bool {
		pods, err := h.cs.CoreV1().Pods(h.ns()).List(t.Context(), metav1.ListOptions{})
		return err == nil && len(pods.Items) == 0
	})
}

// TestRestartResyncs: a restarted runner takes up from the cluster and
// the view: nothing reported twice, and a signal that came while it was
// down is reported.
func TestRestartResyncs(t *testing.T) {
	h := newHarness(t, karpenterPool(t))
	h.launch("gpu-a")
	h.addHost("ip-1")
	h.bind("gpu-a", "ip-1")
	h.expect("Placed gpu-a on ip-1")
	h.stop()
	h.updatePod("gpu-a", func(p *corev1.Pod) { p.Finalizers = []string{"test/hold"} })
	h.updateHost("ip-1", func(n *corev1.Node) {
		n.Spec.Taints = []corev1.Taint{{Key: "aws-node-termination-handler/spot-itn", Effect: corev1.TaintEffectNoSchedule}}
	})
	h.start()
	h.expect("Notice gpu-a aws-node-termination-handler/spot-itn taint in 2m0s")
	for _, c := range h.plane.took() {
		if strings.HasPrefix(c, "Placed") {
			t.Errorf("placed again after a restart: %s", c)
		}
	}
	h.stop()
	h.start()
	h.quiet() // the notice is in the view: nothing new
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// testLog writes the provider's log to the test's.
type testLog struct{ t *testing.T }

func (w testLog) Write(b []byte) (int, error) { w.t.Logf("%s", b); return len(b), nil }
