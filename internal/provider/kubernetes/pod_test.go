package kubernetes

import (
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/component-helpers/scheduling/corev1/nodeaffinity"
	"k8s.io/klog/v2"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// testPool is a defaulted, valid kubernetes pool.
func testPool(t *testing.T, name, flavor, priority string, edit func(*spec.Pool)) spec.Pool {
	t.Helper()
	p := spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: name},
		Spec: spec.PoolSpec{Provider: spec.ProviderKubernetes, Priority: priority, Max: 4,
			Capacity:   &spec.Resources{CPU: 1.5, Memory: 2 << 30},
			Kubernetes: &spec.KubernetesPool{Flavor: flavor, Image: "train:1"}}}
	if flavor == spec.FlavorCustom {
		p.Spec.Kubernetes.NodeSelector = map[string]string{"pool": "mine"}
	}
	if edit != nil {
		edit(&p)
	}
	p.Default()
	if err := p.Validate(); err != nil {
		t.Fatalf("test pool invalid: %v", err)
	}
	return p
}

func testNode(pool spec.Pool) store.Node {
	c, _ := capacity(pool)
	return store.Node{Name: pool.Metadata.Name + "-ab12", Pool: pool.Metadata.Name, Priority: pool.Spec.Priority,
		State: store.NodeProvisioning, Capacity: c, InstanceType: pool.Spec.InstanceType}
}

func capacity(p spec.Pool) (spec.Resources, bool) {
	if p.Spec.Capacity == nil {
		return spec.Resources{}, false
	}
	return *p.Spec.Capacity, true
}

var testCfg = Config{ServerURL: "http://spotml.spotml.svc:8080", SpotmlImage: "spotml:test"}

// clusterNode is a cluster node as each platform labels and taints it.
type clusterNode struct {
	name   string
	labels map[string]string
	taints []corev1.Taint
}

// platformNodes are spot and on-demand nodes as each platform makes them.
var platformNodes = map[string]struct{ spot, onDemand []clusterNode }{
	spec.FlavorKarpenter: {
		spot:     []clusterNode{{name: "karpenter-spot", labels: map[string]string{"karpenter.sh/capacity-type": "spot"}}},
		onDemand: []clusterNode{{name: "karpenter-od", labels: map[string]string{"karpenter.sh/capacity-type": "on-demand"}}},
	},
	spec.FlavorEKS: {
		spot:     []clusterNode{{name: "eks-spot", labels: map[string]string{"eks.amazonaws.com/capacityType": "SPOT"}}},
		onDemand: []clusterNode{{name: "eks-od", labels: map[string]string{"eks.amazonaws.com/capacityType": "ON_DEMAND"}}},
	},
	spec.FlavorAKS: {
		spot: []clusterNode{{name: "aks-spot", labels: map[string]string{"kubernetes.azure.com/scalesetpriority": "spot"},
			taints: []corev1.Taint{{Key: "kubernetes.azure.com/scalesetpriority", Value: "spot", Effect: corev1.TaintEffectNoSchedule}}}},
		onDemand: []clusterNode{{name: "aks-regular", labels: map[string]string{"kubernetes.azure.com/agentpool": "system"}}},
	},
	spec.FlavorGKE: {
		spot: []clusterNode{
			{name: "gke-spot", labels: map[string]string{"cloud.google.com/gke-spot": "true"}},
			{name: "gke-preemptible", labels: map[string]string{"cloud.google.com/gke-preemptible": "true"},
				taints: []corev1.Taint{{Key: "cloud.google.com/gke-preemptible", Value: "true", Effect: corev1.TaintEffectNoSchedule}}},
		},
		onDemand: []clusterNode{{name: "gke-standard", labels: map[string]string{"cloud.google.com/gke-nodepool": "default"}}},
	},
	spec.FlavorACK: {
		spot: []clusterNode{
			{name: "ack-spot-limit", labels: map[string]string{"node.alibabacloud.com/spot-strategy": "SpotWithPriceLimit"}},
			{name: "ack-spot-go", labels: map[string]string{"node.alibabacloud.com/spot-strategy": "SpotAsPriceGo"}},
		},
		onDemand: []clusterNode{{name: "ack-payg", labels: map[string]string{"node.alibabacloud.com/spot-strategy": "NoSpot",
			"node.alibabacloud.com/instance-charge-type": "PostPaid"}}},
	},
}

// fits reports whether the scheduler's own predicates (required node
// affinity, nodeSelector, NoSchedule taints) let pod onto n.
func fits(pod *corev1.Pod, n clusterNode) bool {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name, Labels: n.labels}, Spec: corev1.NodeSpec{Taints: n.taints}}
	if ok, err := nodeaffinity.GetRequiredNodeAffinity(pod).Match(node); err != nil || !ok {
		return false
	}
	for i := range n.taints {
		tolerated := false
		for j := range pod.Spec.Tolerations {
			if pod.Spec.Tolerations[j].ToleratesTaint(klog.Background(), &n.taints[i], false) {
				tolerated = true
			}
		}
		if !tolerated {
			return false
		}
	}
	return true
}

// TestFlavorsPlaceBySpotMarkings: on every platform, a spot pool's pod
// fits only that platform's spot nodes (tolerating the platform's own
// spot taint) and an on-demand pool's pod only its on-demand nodes.
func TestFlavorsPlaceBySpotMarkings(t *testing.T) {
	for flavor, nodes := range platformNodes {
		for _, prio := range []string{spec.PrioritySpot, spec.PriorityOnDemand} {
			t.Run(flavor+"/"+prio, func(t *testing.T) {
				pool := testPool(t, "p", flavor, prio, nil)
				objs, err := buildObjects(podSpecInput{pool: pool, node: testNode(pool), credential: "c", cfg: testCfg})
				if err != nil {
					t.Fatal(err)
				}
				want, other := nodes.spot, nodes.onDemand
				if prio == spec.PriorityOnDemand {
					want, other = other, want
				}
				for _, n := range want {
					if !fits(objs.pod, n) {
						t.Errorf("a %s pod does not fit %s node %s", prio, flavor, n.name)
					}
				}
				for _, n := range other {
					if fits(objs.pod, n) {
						t.Errorf("a %s pod fits %s node %s", prio, flavor, n.name)
					}
				}
			})
		}
	}
}

// TestCustomFlavorUsesNodeSelector: custom adds nothing of its own; the
// pool's nodeSelector and tolerations decide.
func TestCustomFlavorUsesNodeSelector(t *testing.T) {
	pool := testPool(t, "c", spec.FlavorCustom, spec.PrioritySpot, func(p *spec.Pool) {
		p.Spec.Kubernetes.Tolerations = []spec.Toleration{{Key: "spot", Operator: "Exists", Effect: "NoSchedule"}}
	})
	objs, err := buildObjects(podSpecInput{pool: pool, node: testNode(pool), credential: "c", cfg: testCfg})
	if err != nil {
		t.Fatal(err)
	}
	taint := []corev1.Taint{{Key: "spot", Value: "yes", Effect: corev1.TaintEffectNoSchedule}}
	if !fits(objs.pod, clusterNode{name: "mine", labels: map[string]string{"pool": "mine"}, taints: taint}) {
		t.Error("the pod does not fit a node with the pool's label and tolerated taint")
	}
	if fits(objs.pod, clusterNode{name: "other", labels: map[string]string{"pool": "other"}}) {
		t.Error("the pod fits a node without the pool's label")
	}
}

// TestAgentPod: what an agent pod is made of — the pool's image running
// the spotml agent copied in by an init container, the pool's capacity
// requested and limited (GPUs under the pool's resource name), the
// credential only in the init container, labels, the do-not-disrupt
// annotation, the notice as grace period, one agent per cluster node.
func TestAgentPod(t *testing.T) {
	pool := testPool(t, "gpu", spec.FlavorAKS, spec.PrioritySpot, func(p *spec.Pool) {
		p.Spec.InstanceType = "Standard_NC6s_v3"
		p.Spec.Capacity = &spec.Resources{CPU: 5.5, Memory: 100 << 30, GPU: 1}
		p.Spec.Kubernetes.GPUResource = "amd.com/gpu"
		p.Spec.Kubernetes.Namespace = "ml"
		p.Spec.Kubernetes.NodeSelector = map[string]string{"agentpool": "gpuspot"}
		p.Spec.Kubernetes.Tolerations = []spec.Toleration{{Key: "sku", Value: "gpu", Effect: "NoSchedule"}}
		p.Spec.Kubernetes.InstanceMetadata = true
	})
	n := testNode(pool)
	n.Zone = "eastus-2"
	objs, err := buildObjects(podSpecInput{pool: pool, node: n, credential: "node-secret", cfg: testCfg,
		owner: &metav1.OwnerReference{APIVersion: "v1", Kind: "ConfigMap", Name: "spotml-pool-gpu", UID: "u1"}})
	if err != nil {
		t.Fatal(err)
	}
	pod, secret := objs.pod, objs.secret
	if pod.Name != n.Name || pod.Namespace != "ml" {
		t.Errorf("pod %s/%s, want ml/%s", pod.Namespace, pod.Name, n.Name)
	}
	for k, v := range map[string]string{LabelManagedBy: "spotml", LabelPool: "gpu", LabelNode: n.Name, LabelComponent: "agent", LabelPriority: "spot"} {
		if pod.Labels[k] != v {
			t.Errorf("label %s = %q, want %q", k, pod.Labels[k], v)
		}
	}
	if pod.Annotations[AnnotationDoNotDisrupt] != "true" {
		t.Error("no karpenter.sh/do-not-disrupt annotation")
	}
	if len(pod.OwnerReferences) != 1 || pod.OwnerReferences[0].Name != "spotml-pool-gpu" {
		t.Errorf("owner references %+v, want the pool's ConfigMap", pod.OwnerReferences)
	}
	if g := pod.Spec.TerminationGracePeriodSeconds; g == nil || *g != 30 {
		t.Errorf("grace period %v, want AKS's 30s notice", g)
	}
	for k, v := range map[string]string{"agentpool": "gpuspot", "node.kubernetes.io/instance-type": "Standard_NC6s_v3", "topology.kubernetes.io/zone": "eastus-2"} {
		if pod.Spec.NodeSelector[k] != v {
			t.Errorf("nodeSelector %s = %q, want %q", k, pod.Spec.NodeSelector[k], v)
		}
	}
	keys := []string{}
	for _, tl := range pod.Spec.Tolerations {
		keys = append(keys, tl.Key)
	}
	if !slices.Equal(keys, []string{"kubernetes.azure.com/scalesetpriority", "sku"}) {
		t.Errorf("tolerations %v, want AKS's spot taint and the pool's", keys)
	}
	anti := pod.Spec.Affinity.PodAntiAffinity.RequiredDuringSchedulingIgnoredDuringExecution
	if len(anti) != 1 || anti[0].TopologyKey != "kubernetes.io/hostname" || anti[0].LabelSelector.MatchLabels[LabelComponent] != "agent" {
		t.Errorf("pod anti-affinity %+v, want one agent per hostname", anti)
	}
	main := pod.Spec.Containers[0]
	if main.Image != "train:1" || main.Command[0] != "/opt/spotml/spotml" || main.Args[0] != "agent" {
		t.Errorf("main container runs %s %v %v, want the pool's image running the copied spotml agent", main.Image, main.Command, main.Args)
	}
	args := strings.Join(main.Args, " ")
	for _, want := range []string{"--server http://spotml.spotml.svc:8080", "--node " + n.Name, "--termination-notice 30s",
		"--credential-file /opt/spotml/credential", "--metadata-format azure", "--metadata-url http://169.254.169.254", "--advertise-host $(SPOTML_POD_IP)"} {
		if !strings.Contains(args, want) {
			t.Errorf("agent args %q lack %q", args, want)
		}
	}
	wantRes := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("5500m"), corev1.ResourceMemory: resource.MustParse("100Gi"), "amd.com/gpu": resource.MustParse("1")}
	for name, q := range wantRes {
		if got := main.Resources.Requests[name]; got.Cmp(q) != 0 {
			t.Errorf("request %s = %s, want %s", name, got.String(), q.String())
		}
		if got := main.Resources.Limits[name]; got.Cmp(q) != 0 {
			t.Errorf("limit %s = %s, want %s", name, got.String(), q.String())
		}
	}
	if c := capacityOf(pod, "amd.com/gpu"); c != *pool.Spec.Capacity {
		t.Errorf("capacityOf = %+v, want the pool's %+v", c, *pool.Spec.Capacity)
	}
	// The credential reaches the init container as a mounted Secret, and
	// never any environment.
	init := pod.Spec.InitContainers[0]
	if init.Image != "spotml:test" || !slices.Contains(init.Command, "agent-init") {
		t.Errorf("init container %s %v, want spotml's image copying itself", init.Image, init.Command)
	}
	mounted := func(c corev1.Container) bool {
		for _, m := range c.VolumeMounts {
			if m.Name == "credential" {
				return true
			}
		}
		return false
	}
	if !mounted(init) || mounted(main) {
		t.Error("the credential Secret must be mounted in the init container only")
	}
	for _, c := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
		for _, e := range c.Env {
			if e.Value == "node-secret" || e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				t.Errorf("container %s has the credential in its environment (%s)", c.Name, e.Name)
			}
		}
	}
	if secret.Name != n.Name+"-credential" || secret.StringData["credential"] != "node-secret" {
		t.Errorf("secret %s %v, want the node's credential", secret.Name, secret.StringData)
	}
	if *pod.Spec.AutomountServiceAccountToken {
		t.Error("a pod without a service account must not get an API token")
	}
}

// TestGPUDefaultResource: a gpu capacity is an nvidia.com/gpu limit unless
// the pool names another resource.
func TestGPUDefaultResource(t *testing.T) {
	pool := testPool(t, "g", spec.FlavorEKS, spec.PrioritySpot, func(p *spec.Pool) { p.Spec.Capacity.GPU = 4 })
	objs, err := buildObjects(podSpecInput{pool: pool, node: testNode(pool), cfg: testCfg})
	if err != nil {
		t.Fatal(err)
	}
	if q := objs.pod.Spec.Containers[0].Resources.Limits["nvidia.com/gpu"]; q.Value() != 4 {
		t.Errorf("nvidia.com/gpu limit %s, want 4", q.String())
	}
	if g := objs.pod.Spec.TerminationGracePeriodSeconds; *g != int64((2 * time.Minute).Seconds()) {
		t.Errorf("grace %d, want EKS's 120s", *g)
	}
}

func TestProviderID(t *testing.T) {
	for _, tc := range []struct{ id, ns, name, uid string }{
		{"spotml/p-1/abc", "spotml", "p-1", "abc"},
		{"spotml/p-1", "spotml", "p-1", ""},
	} {
		ns, name, uid, err := parseProviderID(tc.id)
		if err != nil || ns != tc.ns || name != tc.name || uid != tc.uid {
			t.Errorf("parseProviderID(%q) = %q %q %q %v", tc.id, ns, name, uid, err)
		}
	}
	for _, bad := range []string{"", "/x/y", "justname", "ns/"} {
		if _, _, _, err := parseProviderID(bad); err == nil {
			t.Errorf("parseProviderID(%q) accepted", bad)
		}
	}
}

// TestAgentEnv: the deployment's agent environment (a blob store's
// settings, a Secret's keys) reaches the agent container, after the pod
// IP it advertises, and not the init container.
func TestAgentEnv(t *testing.T) {
	pool := testPool(t, "a", spec.FlavorKarpenter, spec.PrioritySpot, nil)
	cfg := testCfg
	cfg.AgentEnv = []corev1.EnvVar{{Name: "AWS_REGION", Value: "us-east-1"}}
	cfg.AgentEnvFrom = []corev1.EnvFromSource{{SecretRef: &corev1.SecretEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "s3"}}}}
	objs, err := buildObjects(podSpecInput{pool: pool, node: testNode(pool), credential: "c", cfg: cfg})
	if err != nil {
		t.Fatal(err)
	}
	agent := objs.pod.Spec.Containers[0]
	if len(agent.Env) != 2 || agent.Env[0].Name != "SPOTML_POD_IP" || agent.Env[1] != cfg.AgentEnv[0] {
		t.Errorf("agent env %+v, want SPOTML_POD_IP then AWS_REGION", agent.Env)
	}
	if len(agent.EnvFrom) != 1 || agent.EnvFrom[0].SecretRef.Name != "s3" {
		t.Errorf("agent envFrom %+v, want the Secret s3", agent.EnvFrom)
	}
	if init := objs.pod.Spec.InitContainers[0]; len(init.Env) != 0 || len(init.EnvFrom) != 0 {
		t.Errorf("init container has environment %+v %+v", init.Env, init.EnvFrom)
	}
}
