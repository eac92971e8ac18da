// Package e2e runs the kubernetes provider against a real kube-apiserver,
// scheduler and controller-manager (internal/kubetest), with played nodes
// running the agent pods' containers: the real agent in each, registering
// with a real control plane.
package e2e

import (
	"net"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spotml/spotml/internal/kubetest"
	kubeprov "github.com/spotml/spotml/internal/provider/kubernetes"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// TestProviderOnCluster: a spot pool of min 1 on a cluster with two
// Karpenter spot nodes and one on-demand node. The control plane launches
// an agent pod; the scheduler binds it to a spot node (Placed: host,
// instance type, zone); its agent registers (ready). A Karpenter
// disruption taint on that node is the node's notice; spotml deletes the
// pod, the agent drains on SIGTERM and exits, the node ends preempted and
// a replacement lands on the other spot node. An eviction through the
// Eviction API does the same. The control plane restarted takes up from
// the cluster; the pool deleted, its pods are gone.
func TestProviderOnCluster(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	ctx := t.Context()
	setUp(t, c, nil)
	addNodes(t, c, karpenterNode("spot-a", "spot", "g4dn.xlarge", "us-east-1a"), karpenterNode("spot-b", "spot", "g4dn.xlarge", "us-east-1b"),
		karpenterNode("od-a", "on-demand", "m5.xlarge", "us-east-1a"))

	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	p := startPlane(t, dir, c, ln, planeConfig{})
	pool := kubePool("gpu", spec.PrioritySpot, 2, 20*time.Second)
	pool.Spec.Min = 1
	pool.Default()
	if err := pool.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := p.st.Apply(ctx, []spec.Pool{pool}, nil); err != nil {
		t.Fatal(err)
	}

	// Launched, bound to a spot node, placed, registered.
	nodes := waitNode(t, p.st, "a ready node placed on a spot node", 90*time.Second, func(ns []store.Node) bool {
		r := live(ns, store.NodeReady)
		return len(r) == 1 && r[0].Host != ""
	})
	first := live(nodes, store.NodeReady)[0]
	if first.Host != "spot-a" && first.Host != "spot-b" {
		t.Fatalf("node placed on %s, want a spot node", first.Host)
	}
	if first.InstanceType != "g4dn.xlarge" || first.Zone == "" {
		t.Errorf("placement %s in %q, want g4dn.xlarge and the node's zone", first.InstanceType, first.Zone)
	}
	pod, err := c.Client.CoreV1().Pods("spotml").Get(ctx, first.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if pod.Labels[kubeprov.LabelManagedBy] != "spotml" || pod.Annotations[kubeprov.AnnotationDoNotDisrupt] != "true" {
		t.Errorf("pod labels %v annotations %v", pod.Labels, pod.Annotations)
	}

	// A Karpenter disruption taint: notice, drain, preempted, replaced on
	// the other spot node.
	if err := c.Taint(ctx, first.Host, "karpenter.sh/disrupted", "", corev1.TaintEffectNoSchedule); err != nil {
		t.Fatal(err)
	}
	nodes = waitNode(t, p.st, "the tainted node preempted and a replacement ready", 90*time.Second, func(ns []store.Node) bool {
		var ended, ready bool
		for _, n := range ns {
			ended = ended || n.Name == first.Name && n.State == store.NodePreempted
			ready = ready || n.Name != first.Name && n.State == store.NodeReady && n.Host != ""
		}
		return ended && ready
	})
	var second store.Node
	for _, n := range nodes {
		if n.Name != first.Name && n.State == store.NodeReady {
			second = n
		}
	}
	if second.Host == first.Host {
		t.Errorf("the replacement landed on the disrupted node %s", second.Host)
	}

	// The control plane restarted: it takes up again (the node stays,
	// nothing is relaunched).
	p.cancel()
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	p = startPlane(t, dir, c, ln2, planeConfig{})
	time.Sleep(2 * time.Second)
	waitNode(t, p.st, "the same node ready after the restart", 30*time.Second, func(ns []store.Node) bool {
		r := live(ns, store.NodeReady)
		return len(r) == 1 && r[0].Name == second.Name
	})

	// The Eviction API: DisruptionTarget, then the pod deleted.
	if err := c.EvictPod(ctx, "spotml", second.Name); err != nil {
		t.Fatal(err)
	}
	waitNode(t, p.st, "the evicted node preempted", 90*time.Second, func(ns []store.Node) bool {
		for _, n := range ns {
			if n.Name == second.Name {
				return n.State == store.NodePreempted
			}
		}
		return false
	})

	all, err := p.st.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range all {
		t.Logf("node %s on %s (%s, %s): %s: %s", n.Name, n.Host, n.InstanceType, n.Zone, n.State, n.Reason)
	}

	// The pool deleted: its pods and ConfigMap go.
	if err := p.st.DeletePool(ctx, "gpu"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		pods, err := c.Client.CoreV1().Pods("spotml").List(ctx, metav1.ListOptions{LabelSelector: kubeprov.LabelManagedBy + "=spotml"})
		if err != nil {
			t.Fatal(err)
		}
		cms, err := c.Client.CoreV1().ConfigMaps("spotml").List(ctx, metav1.ListOptions{LabelSelector: kubeprov.LabelManagedBy + "=spotml"})
		if err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) == 0 && len(cms.Items) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the pool's deletion %d pods and %d configmaps remain", len(pods.Items), len(cms.Items))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
