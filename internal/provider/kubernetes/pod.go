package kubernetes

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// Labels and annotations on what spotml makes in a cluster, so that
// `kubectl get pods -l app.kubernetes.io/managed-by=spotml` shows its work.
const (
	LabelManagedBy = "app.kubernetes.io/managed-by"
	ManagedBy      = "spotml"
	LabelComponent = "app.kubernetes.io/component"
	ComponentAgent = "agent"
	LabelPool      = "spotml.dev/pool"
	LabelNode      = "spotml.dev/node"
	LabelPriority  = "spotml.dev/priority"

	// AnnotationDoNotDisrupt keeps Karpenter's voluntary disruption
	// (consolidation, drift, expiry) away from a node running spotml's
	// work; spot interruptions still come, as notices. spotml scales its
	// own nodes down when they are idle, and Karpenter removes the empty
	// machine after.
	AnnotationDoNotDisrupt = "karpenter.sh/do-not-disrupt"

	labelInstanceType = "node.kubernetes.io/instance-type"
	labelZone         = "topology.kubernetes.io/zone"
	labelHostname     = "kubernetes.io/hostname"
)

// Paths inside an agent pod.
const (
	binDir        = "/opt/spotml" // emptyDir: the spotml binary and the credential copy
	workDir       = "/var/lib/spotml"
	secretDir     = "/var/run/secrets/spotml"
	credentialKey = "credential"
	agentName     = "agent"
	initName      = "spotml-init"
)

// objects is what one spotml node is in the cluster.
type objects struct {
	pod    *corev1.Pod
	secret *corev1.Secret
}

// podSpecInput is what a node's pod is made from.
type podSpecInput struct {
	pool       spec.Pool
	node       store.Node
	credential string
	owner      *metav1.OwnerReference // the pool's object
	cfg        Config
}

// poolLabels are the labels every object of a pool carries.
func poolLabels(pool string) map[string]string {
	return map[string]string{LabelManagedBy: ManagedBy, LabelPool: pool}
}

// agentSelector selects every spotml agent pod, of any pool.
var agentSelector = &metav1.LabelSelector{MatchLabels: map[string]string{LabelManagedBy: ManagedBy, LabelComponent: ComponentAgent}}

// buildObjects makes a node's agent pod and its credential Secret. The
// pod runs the pool's image; an init container copies the spotml binary
// (the entrypoint-injection pattern of Argo and Tekton) and the
// credential into an emptyDir, where the agent reads the credential and
// deletes it, so that the node's tasks, which share the container, never
// find it. The Secret is mounted in the init container only.
func buildObjects(in podSpecInput) (objects, error) {
	ks := in.pool.Spec.Kubernetes
	if ks == nil {
		return objects{}, fmt.Errorf("pool %s: spec.kubernetes is missing", in.pool.Metadata.Name)
	}
	flavor, ok := Lookup(ks.Flavor)
	if !ok {
		return objects{}, fmt.Errorf("pool %s: spec.kubernetes.flavor %q is not a flavor", in.pool.Metadata.Name, ks.Flavor)
	}
	prio := in.pool.Spec.Priority
	name := in.node.Name
	labels := poolLabels(in.pool.Metadata.Name)
	labels[LabelComponent] = ComponentAgent
	labels[LabelNode] = name
	labels[LabelPriority] = prio

	notice := ks.Notice.Duration
	if notice <= 0 {
		notice = flavor.Notice
	}
	grace := int64(math.Ceil(notice.Seconds()))

	res, err := resources(in.node.Capacity, ks.GPUResource)
	if err != nil {
		return objects{}, fmt.Errorf("pool %s: spec.capacity: %w", in.pool.Metadata.Name, err)
	}

	nodeSelector := maps.Clone(ks.NodeSelector)
	if nodeSelector == nil {
		nodeSelector = map[string]string{}
	}
	if in.node.InstanceType != "" {
		if _, set := nodeSelector[labelInstanceType]; !set {
			nodeSelector[labelInstanceType] = in.node.InstanceType
		}
	}
	if in.node.Zone != "" {
		nodeSelector[labelZone] = in.node.Zone
	}
	if len(nodeSelector) == 0 {
		nodeSelector = nil
	}

	affinity := &corev1.Affinity{
		// One spotml node per cluster node: the agent pod owns its
		// machine's capacity, as a VM's agent would.
		PodAntiAffinity: &corev1.PodAntiAffinity{
			RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
				LabelSelector:     agentSelector,
				TopologyKey:       labelHostname,
				NamespaceSelector: &metav1.LabelSelector{}, // agents of every namespace
			}},
		},
	}
	if terms := flavor.Terms(prio); len(terms) > 0 {
		ns := &corev1.NodeSelector{}
		for _, reqs := range terms {
			ns.NodeSelectorTerms = append(ns.NodeSelectorTerms, corev1.NodeSelectorTerm{MatchExpressions: slices.Clone(reqs)})
		}
		affinity.NodeAffinity = &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: ns}
	}

	tolerations := slices.Clone(flavor.Tolerations(prio))
	for _, t := range ks.Tolerations {
		tolerations = append(tolerations, corev1.Toleration{
			Key: t.Key, Operator: corev1.TolerationOperator(t.Operator), Value: t.Value, Effect: corev1.TaintEffect(t.Effect),
		})
	}

	args := []string{"agent",
		"--server", in.cfg.ServerURL,
		"--node", name,
		"--workdir", workDir,
		"--credential-file", binDir + "/" + credentialKey,
		// SIGTERM is an eviction notice: the agent drains within the
		// pod's grace period.
		"--termination-notice", notice.String(),
		"--advertise-host", "$(SPOTML_POD_IP)",
	}
	if ks.InstanceMetadata && flavor.MetadataFormat != "" {
		args = append(args, "--metadata-url", in.cfg.metadataURL(), "--metadata-format", flavor.MetadataFormat)
	}
	args = append(args, in.cfg.AgentArgs...)

	pull := in.cfg.PullPolicy
	if pull == "" {
		pull = corev1.PullIfNotPresent
	}
	automount := ks.ServiceAccount != ""
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Namespace:   ks.Namespace,
			Labels:      labels,
			Annotations: map[string]string{AnnotationDoNotDisrupt: "true"},
		},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: &grace,
			ServiceAccountName:            ks.ServiceAccount,
			AutomountServiceAccountToken:  &automount,
			NodeSelector:                  nodeSelector,
			Affinity:                      affinity,
			Tolerations:                   tolerations,
			InitContainers: []corev1.Container{{
				Name:            initName,
				Image:           in.cfg.SpotmlImage,
				ImagePullPolicy: pull,
				Command:         []string{in.cfg.spotmlPath(), "agent-init", "--to", binDir, "--credential-file", secretDir + "/" + credentialKey},
				VolumeMounts: []corev1.VolumeMount{
					{Name: "spotml-bin", MountPath: binDir},
					{Name: "credential", MountPath: secretDir, ReadOnly: true},
				},
			}},
			Containers: []corev1.Container{{
				Name:            agentName,
				Image:           ks.Image,
				ImagePullPolicy: pull,
				Command:         []string{binDir + "/spotml"},
				Args:            args,
				Env: append([]corev1.EnvVar{{
					Name:      "SPOTML_POD_IP",
					ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}},
				}}, in.cfg.AgentEnv...),
				EnvFrom:   in.cfg.AgentEnvFrom,
				Resources: res,
				VolumeMounts: []corev1.VolumeMount{
					{Name: "spotml-bin", MountPath: binDir},
					{Name: "work", MountPath: workDir},
				},
			}},
			Volumes: []corev1.Volume{
				{Name: "spotml-bin", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "work", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "credential", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
					SecretName: secretName(name), DefaultMode: ptr(int32(0o400)),
				}}},
			},
		},
	}
	if in.owner != nil {
		pod.OwnerReferences = []metav1.OwnerReference{*in.owner}
	}
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      secretName(name),
			Namespace: ks.Namespace,
			Labels:    map[string]string{LabelManagedBy: ManagedBy, LabelPool: in.pool.Metadata.Name, LabelNode: name},
		},
		Type:       corev1.SecretTypeOpaque,
		StringData: map[string]string{credentialKey: in.credential},
	}
	return objects{pod: pod, secret: secret}, nil
}

// secretName is the name of a node's credential Secret.
func secretName(node string) string { return node + "-credential" }

// poolObjectName is the name of a pool's ConfigMap, which owns its pods
// and PodDisruptionBudget.
func poolObjectName(pool string) string { return "spotml-pool-" + pool }

// resources requests the node's capacity and limits it to the same, so
// that the pod is Guaranteed (the last the kubelet evicts under pressure)
// and the scheduler gives it a machine that has that much free.
func resources(c spec.Resources, gpuResource string) (corev1.ResourceRequirements, error) {
	rl := corev1.ResourceList{}
	if c.CPU > 0 {
		rl[corev1.ResourceCPU] = *resource.NewMilliQuantity(int64(math.Round(c.CPU*1000)), resource.DecimalSI)
	}
	if c.Memory > 0 {
		rl[corev1.ResourceMemory] = *resource.NewQuantity(int64(c.Memory), resource.BinarySI)
	}
	if c.GPU > 0 {
		if gpuResource == "" {
			gpuResource = spec.DefaultGPUResource
		}
		rl[corev1.ResourceName(gpuResource)] = *resource.NewQuantity(int64(c.GPU), resource.DecimalSI)
	}
	if len(rl) == 0 {
		return corev1.ResourceRequirements{}, fmt.Errorf("requests nothing; set cpu and memory")
	}
	return corev1.ResourceRequirements{Requests: rl, Limits: rl.DeepCopy()}, nil
}

// capacityOf is what a pod requests, as spotml resources.
func capacityOf(pod *corev1.Pod, gpuResource string) spec.Resources {
	var r spec.Resources
	for _, c := range pod.Spec.Containers {
		if q, ok := c.Resources.Requests[corev1.ResourceCPU]; ok {
			r.CPU += float64(q.MilliValue()) / 1000
		}
		if q, ok := c.Resources.Requests[corev1.ResourceMemory]; ok {
			r.Memory += spec.Bytes(q.Value())
		}
		if q, ok := c.Resources.Limits[corev1.ResourceName(gpuResource)]; ok {
			r.GPU += int(q.Value())
		}
	}
	return r
}

// buildPDB keeps all but one of a pool's ready agent pods through
// voluntary evictions (kubectl drain, cluster-autoscaler scale-down, node
// upgrades): they take the pool's nodes one at a time, each arriving as a
// notice that spotml replaces at once. It is a count, not maxUnavailable,
// because agent pods have no scalable controller for the disruption
// controller to read a size from. Spot interruptions are not voluntary
// and no budget holds them.
func buildPDB(pool, namespace string, minAvailable int, owner *metav1.OwnerReference) *policyv1.PodDisruptionBudget {
	sel := &metav1.LabelSelector{MatchLabels: map[string]string{LabelManagedBy: ManagedBy, LabelComponent: ComponentAgent, LabelPool: pool}}
	ma := intstr.FromInt32(int32(minAvailable))
	pdb := &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: poolObjectName(pool), Namespace: namespace, Labels: poolLabels(pool)},
		Spec: policyv1.PodDisruptionBudgetSpec{
			Selector:     sel,
			MinAvailable: &ma,
			// A pod that is not ready serves nothing; draining it must not wait.
			UnhealthyPodEvictionPolicy: ptr(policyv1.AlwaysAllow),
		},
	}
	if owner != nil {
		pdb.OwnerReferences = []metav1.OwnerReference{*owner}
	}
	return pdb
}

func ptr[T any](v T) *T { return &v }

// providerID is a pod's name for the control plane: namespace/name/uid.
// The UID makes Stop delete only the pod that was launched, never a
// later one of the same name.
func providerID(pod *corev1.Pod) string {
	return pod.Namespace + "/" + pod.Name + "/" + string(pod.UID)
}

// parseProviderID splits a provider ID.
func parseProviderID(id string) (namespace, name, uid string, err error) {
	parts := strings.SplitN(id, "/", 3)
	if len(parts) < 2 || parts[0] == "" || parts[1] == "" {
		return "", "", "", fmt.Errorf("provider ID %q is not namespace/name/uid", id)
	}
	if len(parts) == 3 {
		uid = parts[2]
	}
	return parts[0], parts[1], uid, nil
}
