// Package e2e runs the kubernetes provider against a real kube-apiserver,
// scheduler and controller-manager (internal/kubetest), with played nodes
// running the agent pods' containers: the real agent in each, registering
// with a real control plane.
package e2e

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/kubetest"
	kubeprov "github.com/spotml/spotml/internal/provider/kubernetes"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// spotmlBinary is the spotml executable the images carry: $SPOTML_BIN, or
// one built now.
func spotmlBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("SPOTML_BIN"); b != "" {
		return b
	}
	out := filepath.Join(t.TempDir(), "spotml")
	cmd := exec.Command("go", "build", "-o", out, "github.com/spotml/spotml/cmd/spotml")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build spotml: %v\n%s", err, b)
	}
	return out
}

// withLibs maps the binary into an image at path, with the shared
// libraries it loads (spotml links ONNX Runtime's loader with cgo).
func withLibs(t *testing.T, bin, path string) map[string]string {
	t.Helper()
	files := map[string]string{path: bin}
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return files // static
	}
	for _, m := range regexp.MustCompile(`(?m)(/\S+)\s+\(0x`).FindAllStringSubmatch(string(out), -1) {
		files[m[1]] = m[1]
	}
	return files
}

func libsOnly(files map[string]string) map[string]string {
	delete(files, "/usr/local/bin/spotml")
	return files
}

// plane is a control plane as spotml server runs it, with only the
// kubernetes provider, listening on loopback in the test's namespace
// (which the played nodes' pods share).
type plane struct {
	st     *sqlstore.Store
	url    string
	cancel func()
	done   chan struct{}
}

func startPlane(t *testing.T, dir string, client *kubetest.Cluster, ln net.Listener) *plane {
	t.Helper()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	st, err := sqlite.Open(t.Context(), filepath.Join(dir, "spotml.db"), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	blobs, err := blob.NewStore("file://" + filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	prov := kubeprov.New(client.Client, kubeprov.Config{ServerURL: url, SpotmlImage: "spotml:e2e", PullPolicy: corev1.PullNever,
		Interval: 200 * time.Millisecond}, log, time.Now)
	cp := control.New(st, map[string]control.Provider{kubeprov.Name: prov}, log, time.Now,
		control.Options{Interval: 200 * time.Millisecond, Retention: -1})
	srv := &http.Server{Handler: server.New(server.Config{Store: st, Blobs: blobs, Plane: cp, JoinToken: "join", Token: "admin",
		HeartbeatInterval: 200 * time.Millisecond, Log: log, Now: time.Now})}
	ctx, cancel := context.WithCancel(context.Background())
	p := &plane{st: st, url: url, done: make(chan struct{})}
	go srv.Serve(ln)
	go func() {
		defer close(p.done)
		cp.Run(ctx)
	}()
	p.cancel = func() {
		cancel()
		<-p.done
		srv.Close()
		st.Close()
	}
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			p.cancel()
		}
	})
	return p
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Logf("%s", b); return len(b), nil }

func waitNode(t *testing.T, st *sqlstore.Store, what string, timeout time.Duration, ok func([]store.Node) bool) []store.Node {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		nodes, err := st.ListNodes(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if ok(nodes) {
			return nodes
		}
		if time.Now().After(deadline) {
			for _, n := range nodes {
				t.Logf("node %s: %s host=%s reason=%q notice=%v", n.Name, n.State, n.Host, n.Reason, n.NoticeDeadline)
			}
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func live(nodes []store.Node, state string) []store.Node {
	var out []store.Node
	for _, n := range nodes {
		if n.State == state {
			out = append(out, n)
		}
	}
	return out
}

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
	bin := spotmlBinary(t)
	for name, files := range map[string]map[string]string{
		"spotml:e2e": withLibs(t, bin, "/usr/local/bin/spotml"),
		"train:e2e":  libsOnly(withLibs(t, bin, "/usr/local/bin/spotml")), // the pool's image: a shell and libc, no spotml
	} {
		dir := t.TempDir()
		if err := kubetest.BuildImage(dir, files); err != nil {
			t.Fatal(err)
		}
		if err := c.ImportImage(name, dir); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.CreateNamespace(ctx, "spotml"); err != nil {
		t.Fatal(err)
	}
	for _, n := range []kubetest.NodeOptions{
		{Name: "spot-a", Labels: map[string]string{"karpenter.sh/capacity-type": "spot", "node.kubernetes.io/instance-type": "g4dn.xlarge", "topology.kubernetes.io/zone": "us-east-1a"}},
		{Name: "spot-b", Labels: map[string]string{"karpenter.sh/capacity-type": "spot", "node.kubernetes.io/instance-type": "g4dn.xlarge", "topology.kubernetes.io/zone": "us-east-1b"}},
		{Name: "od-a", Labels: map[string]string{"karpenter.sh/capacity-type": "on-demand", "node.kubernetes.io/instance-type": "m5.xlarge", "topology.kubernetes.io/zone": "us-east-1a"}},
	} {
		n.Capacity = corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("16Gi"), corev1.ResourcePods: resource.MustParse("110")}
		// kubetest's registration may lose a race with the node
		// controllers' first write (a conflict): register again.
		for try := 1; ; try++ {
			_, err := c.AddNode(n)
			if err == nil {
				break
			}
			if try == 3 {
				t.Fatal(err)
			}
			t.Logf("register %s again: %v", n.Name, err)
			c.Client.CoreV1().Nodes().Delete(ctx, n.Name, metav1.DeleteOptions{})
			time.Sleep(time.Second)
		}
	}

	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	p := startPlane(t, dir, c, ln)
	pool := spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: "gpu"},
		Spec: spec.PoolSpec{Provider: spec.ProviderKubernetes, Priority: spec.PrioritySpot, Min: 1, Max: 2,
			Capacity:   &spec.Resources{CPU: 1, Memory: 1 << 30},
			Kubernetes: &spec.KubernetesPool{Flavor: spec.FlavorKarpenter, Image: "train:e2e", Notice: spec.Duration{Duration: 20 * time.Second}}}}
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
	p = startPlane(t, dir, c, ln2)
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
