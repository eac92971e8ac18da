package kubetest_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/kubetest"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"
)

func TestMain(m *testing.M) { kubetest.Main(m) }

// busybox is the test image: a busybox rootfs, imported into c.
func busybox(t *testing.T, c *kubetest.Cluster) string {
	t.Helper()
	dir := t.TempDir()
	if err := kubetest.BuildImage(dir, nil); err != nil {
		t.Fatal(err)
	}
	if err := c.ImportImage("kubetest/busybox:1", dir); err != nil {
		t.Fatal(err)
	}
	return "kubetest/busybox:1"
}

func shPod(name, node, image, script string, grace int64) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeSelector:                  map[string]string{"kubernetes.io/hostname": node},
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: ptr.To(grace),
			Containers: []corev1.Container{{
				Name: "main", Image: image, ImagePullPolicy: corev1.PullNever,
				Command: []string{"sh", "-c", script},
			}},
		},
	}
}

// waitPod waits until cond holds for the pod (or fails the test).
func waitPod(t *testing.T, c *kubetest.Cluster, name string, timeout time.Duration, what string, cond func(*corev1.Pod) bool) *corev1.Pod {
	t.Helper()
	var last *corev1.Pod
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		p, err := c.Client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, nil
		}
		last = p
		return cond(p), nil
	})
	if err != nil {
		t.Fatalf("pod %s: waiting for %s: %v; last seen: phase %s, status %+v", name, what, err, phaseOf(last), statusOf(last))
	}
	return last
}

func phaseOf(p *corev1.Pod) corev1.PodPhase {
	if p == nil {
		return ""
	}
	return p.Status.Phase
}

func statusOf(p *corev1.Pod) any {
	if p == nil {
		return nil
	}
	return p.Status.ContainerStatuses
}

func waitGone(t *testing.T, c *kubetest.Cluster, name string, timeout time.Duration) {
	t.Helper()
	err := wait.PollUntilContextTimeout(context.Background(), 50*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		return apierrors.IsNotFound(err), nil
	})
	if err != nil {
		t.Fatalf("pod %s still there after %s", name, timeout)
	}
}

func condition(p *corev1.Pod, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == t {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}

// A pod scheduled onto a played node runs as a real process, reaches
// Running with Ready, and its exit code reaches its status.
func TestPlayedNodeRunsPod(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	img := busybox(t, c)
	ctx := context.Background()
	if _, err := c.AddNode(kubetest.NodeOptions{Name: "spot-1", Labels: map[string]string{"karpenter.sh/capacity-type": "spot"},
		Capacity: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("8"), corev1.ResourceMemory: resource.MustParse("32Gi"),
			corev1.ResourcePods: resource.MustParse("110"), "nvidia.com/gpu": resource.MustParse("1")}}); err != nil {
		t.Fatal(err)
	}
	node, err := c.Client.CoreV1().Nodes().Get(ctx, "spot-1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if q := node.Status.Allocatable["nvidia.com/gpu"]; q.Value() != 1 {
		t.Errorf("allocatable nvidia.com/gpu = %s, want 1", q.String())
	}

	// A GPU request is scheduled against the node's extended resource.
	p := shPod("exit3", "spot-1", img, "echo hello from $(POD_NAME) on $NODE; sleep 1; exit 3", 30)
	p.Spec.Containers[0].Env = []corev1.EnvVar{
		{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
		{Name: "NODE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
	}
	p.Spec.Containers[0].Resources.Limits = corev1.ResourceList{"nvidia.com/gpu": resource.MustParse("1")}
	created := time.Now()
	if _, err := c.Client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running := waitPod(t, c, "exit3", 30*time.Second, "Running and Ready", func(p *corev1.Pod) bool {
		r := condition(p, corev1.PodReady)
		return p.Status.Phase == corev1.PodRunning && r != nil && r.Status == corev1.ConditionTrue
	})
	t.Logf("pod create → Running and Ready on a played node: %s", time.Since(created).Round(time.Millisecond))
	if running.Status.PodIP == "" || running.Status.ContainerStatuses[0].State.Running == nil {
		t.Errorf("running pod's status lacks its IP or running state: %+v", running.Status)
	}
	done := waitPod(t, c, "exit3", 30*time.Second, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	term := done.Status.ContainerStatuses[0].State.Terminated
	if term == nil || term.ExitCode != 3 {
		t.Fatalf("terminated state = %+v, want exit code 3", done.Status.ContainerStatuses[0].State)
	}
	log, err := c.Node("spot-1").ContainerLog("default", "exit3", "main")
	if err != nil || !strings.Contains(log, "hello from exit3 on spot-1") {
		t.Errorf("container log = %q, %v; want the downward API's pod and node names", log, err)
	}

	// A second pod exits 0: Succeeded.
	if _, err := c.Client.CoreV1().Pods("default").Create(ctx, shPod("ok", "spot-1", img, "true", 30), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ok := waitPod(t, c, "ok", 30*time.Second, "Succeeded", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })
	if ok.Status.ContainerStatuses[0].State.Terminated.ExitCode != 0 {
		t.Errorf("exit code %d, want 0", ok.Status.ContainerStatuses[0].State.Terminated.ExitCode)
	}
	t.Logf("RSS: %v", c.RSS())
}

// Volumes reach containers at their mountPaths: an init container writes
// into an emptyDir the main container reads; a Secret is mounted as files
// and read through secretKeyRef; the service account token is mounted
// where client-go's in-cluster config looks for it.
func TestPlayedNodeVolumes(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	img := busybox(t, c)
	ctx := context.Background()
	if _, err := c.AddNode(kubetest.NodeOptions{Name: "n1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Secrets("default").Create(ctx, &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "creds"}, Data: map[string][]byte{"key": []byte("s3cret")},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := shPod("vols", "n1", img, `set -e
test "$(cat /shared/from-init)" = "written by init"
test "$(cat /etc/creds/key)" = "s3cret"
test "$KEY" = "s3cret"
test -s /var/run/secrets/kubernetes.io/serviceaccount/token
test "$(cat /var/run/secrets/kubernetes.io/serviceaccount/namespace)" = default
echo all volumes fine`, 30)
	p.Spec.Volumes = []corev1.Volume{
		{Name: "shared", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "creds", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "creds"}}},
	}
	p.Spec.InitContainers = []corev1.Container{{
		Name: "init", Image: img, ImagePullPolicy: corev1.PullNever,
		Command:      []string{"sh", "-c", "echo 'written by init' > /work/from-init"},
		VolumeMounts: []corev1.VolumeMount{{Name: "shared", MountPath: "/work"}},
	}}
	p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{
		{Name: "shared", MountPath: "/shared"},
		{Name: "creds", MountPath: "/etc/creds", ReadOnly: true},
	}
	p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "KEY", ValueFrom: &corev1.EnvVarSource{
		SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "key"}}}}
	if _, err := c.Client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	done := waitPod(t, c, "vols", 60*time.Second, "an end", func(p *corev1.Pod) bool {
		return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
	})
	log, _ := c.Node("n1").ContainerLog("default", "vols", "main")
	if done.Status.Phase != corev1.PodSucceeded {
		t.Fatalf("pod %s, log:\n%s", done.Status.Phase, log)
	}
	if !strings.Contains(log, "all volumes fine") {
		t.Errorf("log %q", log)
	}
	if s := done.Status.InitContainerStatuses; len(s) != 1 || s[0].State.Terminated == nil || s[0].State.Terminated.ExitCode != 0 {
		t.Errorf("init container status %+v", s)
	}
}

// Deleting a pod delivers SIGTERM to its container within the grace period
// (the container's trap runs), and the played kubelet then removes the pod.
// A container that ignores SIGTERM is SIGKILLed after the grace period.
func TestPlayedNodeDeletion(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	img := busybox(t, c)
	ctx := context.Background()
	if _, err := c.AddNode(kubetest.NodeOptions{Name: "n1"}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	trap := shPod("trap", "n1", img, `trap 'echo got TERM > /out/term; exit 0' TERM; echo started > /out/started; while true; do sleep 0.1; done`, 30)
	deaf := shPod("deaf", "n1", img, `trap '' TERM; echo started > /out/started; while true; do sleep 0.1; done`, 2)
	for i, p := range []*corev1.Pod{trap, deaf} {
		host := fmt.Sprintf("%s/%d", dir, i)
		os.MkdirAll(host, 0o777)
		p.Spec.Volumes = []corev1.Volume{{Name: "out", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: host}}}}
		p.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: "out", MountPath: "/out"}}
		if _, err := c.Client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for i, name := range []string{"trap", "deaf"} {
		waitPod(t, c, name, 30*time.Second, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
		if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
			_, err := os.Stat(fmt.Sprintf("%s/%d/started", dir, i))
			return err == nil, nil
		}); err != nil {
			t.Fatalf("%s never started", name)
		}
	}
	start := time.Now()
	if err := c.Client.CoreV1().Pods("default").Delete(ctx, "trap", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, c, "trap", 20*time.Second)
	if took := time.Since(start); took > 25*time.Second {
		t.Errorf("trap pod took %s to go, past its 30s grace", took)
	}
	if b, err := os.ReadFile(dir + "/0/term"); err != nil || strings.TrimSpace(string(b)) != "got TERM" {
		t.Errorf("the container's SIGTERM trap did not run: %q, %v", b, err)
	}

	start = time.Now()
	if err := c.Client.CoreV1().Pods("default").Delete(ctx, "deaf", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitGone(t, c, "deaf", 20*time.Second)
	if took := time.Since(start); took < 2*time.Second {
		t.Errorf("a container ignoring SIGTERM went in %s, before its 2s grace period", took)
	}
}

// Each platform action reaches the apiserver as the platform's own would,
// and shows on the node and pod as ../shared/kubernetes-here.md's table
// says.
func TestPlatformActions(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	img := busybox(t, c)
	ctx := context.Background()
	for _, n := range []string{"a", "b", "c"} {
		if _, err := c.AddNode(kubetest.NodeOptions{Name: n}); err != nil {
			t.Fatal(err)
		}
	}
	nodeOf := func(name string) *corev1.Node {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	hasTaint := func(n *corev1.Node, key string, effect corev1.TaintEffect) bool {
		for _, tt := range n.Spec.Taints {
			if tt.Key == key && tt.Effect == effect {
				return true
			}
		}
		return false
	}

	if err := c.Taint(ctx, "a", "karpenter.sh/disrupted", "", corev1.TaintEffectNoSchedule); err != nil {
		t.Fatal(err)
	}
	if !hasTaint(nodeOf("a"), "karpenter.sh/disrupted", corev1.TaintEffectNoSchedule) {
		t.Error("Taint: karpenter.sh/disrupted:NoSchedule not on node a")
	}

	if err := c.Cordon(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 20*time.Second, true, func(context.Context) (bool, error) {
		n := nodeOf("b")
		return n.Spec.Unschedulable && hasTaint(n, corev1.TaintNodeUnschedulable, corev1.TaintEffectNoSchedule), nil
	}); err != nil {
		t.Error("Cordon: node b not unschedulable with the node.kubernetes.io/unschedulable taint")
	}

	// EvictPod: DisruptionTarget EvictionByEvictionAPI, SIGTERM, gone.
	if _, err := c.Client.CoreV1().Pods("default").Create(ctx, shPod("evictme", "c", img, "trap 'exit 0' TERM; while true; do sleep 0.1; done", 10), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPod(t, c, "evictme", 30*time.Second, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	if err := c.EvictPod(ctx, "default", "evictme"); err != nil {
		t.Fatal(err)
	}
	evicted := waitPod(t, c, "evictme", 10*time.Second, "DisruptionTarget", func(p *corev1.Pod) bool {
		return condition(p, corev1.DisruptionTarget) != nil
	})
	if dt := condition(evicted, corev1.DisruptionTarget); dt.Reason != "EvictionByEvictionAPI" {
		t.Errorf("DisruptionTarget reason %q, want EvictionByEvictionAPI", dt.Reason)
	}
	waitGone(t, c, "evictme", 15*time.Second)

	// SetDisruptionTarget: the condition as the disrupting component sets it.
	if _, err := c.Client.CoreV1().Pods("default").Create(ctx, shPod("target", "c", img, "sleep 1000", 1), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPod(t, c, "target", 30*time.Second, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	if err := c.SetDisruptionTarget(ctx, "default", "target", "TerminationByKubelet"); err != nil {
		t.Fatal(err)
	}
	p := waitPod(t, c, "target", 10*time.Second, "DisruptionTarget", func(p *corev1.Pod) bool { return condition(p, corev1.DisruptionTarget) != nil })
	if dt := condition(p, corev1.DisruptionTarget); dt.Reason != "TerminationByKubelet" || dt.Status != corev1.ConditionTrue {
		t.Errorf("DisruptionTarget %+v, want True TerminationByKubelet", dt)
	}
	// The played kubelet's later status writes keep it.
	time.Sleep(500 * time.Millisecond)
	if p := waitPod(t, c, "target", time.Second, "Running", func(p *corev1.Pod) bool { return true }); condition(p, corev1.DisruptionTarget) == nil {
		t.Error("DisruptionTarget lost")
	}

	// The out-of-service taint: the taint manager marks the pod
	// DeletionByTaintManager and deletes it.
	if err := c.Taint(ctx, "c", "node.kubernetes.io/out-of-service", "nodeshutdown", corev1.TaintEffectNoExecute); err != nil {
		t.Fatal(err)
	}
	waitGone(t, c, "target", 30*time.Second)

	// KillNode: heartbeats stop; after the node-monitor grace period (20s)
	// the node is Unknown and tainted unreachable.
	if err := c.KillNode("a"); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 60*time.Second, true, func(context.Context) (bool, error) {
		return hasTaint(nodeOf("a"), corev1.TaintNodeUnreachable, corev1.TaintEffectNoExecute), nil
	}); err != nil {
		t.Errorf("KillNode: node a never tainted %s", corev1.TaintNodeUnreachable)
	}

	// DeleteNode: the Node object goes.
	if err := c.DeleteNode(ctx, "b"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Client.CoreV1().Nodes().Get(ctx, "b", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
		t.Errorf("DeleteNode: node b still there (%v)", err)
	}
}

// With RealKubelet a busybox pod runs in a real container (containerd,
// runc, a CNI bridge address) on the real kubelet's node, and its exit
// code reaches its status.
func TestRealKubelet(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{RealKubelet: true})
	img := busybox(t, c)
	ctx := context.Background()
	p := shPod("real", kubetest.RealNodeName, img, "cat /proc/1/cgroup | head -n 3; ip addr 2>/dev/null; sleep 2; exit 7", 5)
	created := time.Now()
	if _, err := c.Client.CoreV1().Pods("default").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	running := waitPod(t, c, "real", 60*time.Second, "Running", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning })
	t.Logf("pod create → Running on the real kubelet: %s", time.Since(created).Round(time.Millisecond))
	if !strings.HasPrefix(running.Status.PodIP, "10.223.0.") {
		t.Errorf("pod IP %q, want one from the CNI bridge's 10.223.0.0/24", running.Status.PodIP)
	}
	if id := running.Status.ContainerStatuses[0].ContainerID; !strings.HasPrefix(id, "containerd://") {
		t.Errorf("container ID %q, want a containerd one", id)
	}
	done := waitPod(t, c, "real", 60*time.Second, "Failed", func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	if term := done.Status.ContainerStatuses[0].State.Terminated; term == nil || term.ExitCode != 7 {
		t.Errorf("terminated %+v, want exit code 7", done.Status.ContainerStatuses[0].State)
	}
	t.Logf("RSS: %v", c.RSS())
}
