package kubetest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

// NodeOptions describe a played node.
type NodeOptions struct {
	// Name of the Node object (required).
	Name string
	// Labels are added to kubernetes.io/hostname, kubernetes.io/os and
	// kubernetes.io/arch, e.g. karpenter.sh/capacity-type: spot,
	// node.kubernetes.io/instance-type, topology.kubernetes.io/zone.
	Labels      map[string]string
	Annotations map[string]string
	// Taints the node registers with (e.g. AKS's
	// kubernetes.azure.com/scalesetpriority=spot:NoSchedule).
	Taints []corev1.Taint
	// Unschedulable registers the node cordoned.
	Unschedulable bool
	// ProviderID is spec.providerID (e.g. aws:///us-east-1a/i-0abc).
	ProviderID string
	// Capacity defaults to cpu 4, memory 16Gi, pods 110,
	// ephemeral-storage 100Gi. Extended resources such as nvidia.com/gpu
	// go here too.
	Capacity corev1.ResourceList
	// Allocatable defaults to Capacity.
	Allocatable corev1.ResourceList
	// Address is the node's InternalIP and the IP of its pods (which share
	// the test's network namespace, as with hostNetwork). Default: a
	// loopback address of its own, 127.0.1.N.
	Address string
}

// A Node is a played node: a Node registered through the real API whose
// kubelet the harness plays. It renews the node's Lease, runs the pods
// the scheduler binds to it as runc containers, and writes their status
// back, as a kubelet does.
type Node struct {
	Name    string
	Address string

	c      *Cluster
	opts   NodeOptions
	dir    string
	ctx    context.Context // ends when the node is killed or the cluster stops
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	pods map[types.UID]*podRun
}

// AddNode registers a node through the apiserver (Ready, with its
// addresses, capacity and allocatable) and starts playing its kubelet.
func (c *Cluster) AddNode(opts NodeOptions) (*Node, error) {
	if opts.Name == "" {
		return nil, errors.New("kubetest: AddNode: NodeOptions.Name is empty: name the node")
	}
	c.mu.Lock()
	if _, dup := c.nodes[opts.Name]; dup {
		c.mu.Unlock()
		return nil, fmt.Errorf("kubetest: AddNode: node %s is already played: give each node its own Name", opts.Name)
	}
	c.addrs++
	if opts.Address == "" {
		opts.Address = fmt.Sprintf("127.0.1.%d", c.addrs)
	}
	c.mu.Unlock()
	if opts.Capacity == nil {
		opts.Capacity = corev1.ResourceList{
			corev1.ResourceCPU:              resource.MustParse("4"),
			corev1.ResourceMemory:           resource.MustParse("16Gi"),
			corev1.ResourcePods:             resource.MustParse("110"),
			corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
		}
	}
	if opts.Allocatable == nil {
		opts.Allocatable = opts.Capacity
	}
	dir := filepath.Join(c.Dir, "nodes", opts.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &Node{Name: opts.Name, Address: opts.Address, c: c, opts: opts, dir: dir,
		ctx: ctx, cancel: cancel, pods: map[types.UID]*podRun{}}
	if err := n.register(ctx); err != nil {
		cancel()
		return nil, fmt.Errorf("kubetest: register node %s: %w", opts.Name, err)
	}
	c.mu.Lock()
	c.nodes[opts.Name] = n
	c.mu.Unlock()

	n.wg.Add(1)
	go n.heartbeat()
	factory := informers.NewSharedInformerFactoryWithOptions(c.Client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", opts.Name).String()
		}))
	inf := factory.Core().V1().Pods().Informer()
	inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { n.podChanged(obj.(*corev1.Pod)) },
		UpdateFunc: func(_, obj any) { n.podChanged(obj.(*corev1.Pod)) },
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if p, ok := obj.(*corev1.Pod); ok {
				n.podDeleted(p.UID)
			}
		},
	})
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil, fmt.Errorf("kubetest: node %s: pod informer did not sync", opts.Name)
	}
	return n, nil
}

// RegisterNode registers a node through the apiserver (Ready, with its
// addresses, capacity and allocatable, and a Lease) and does not play its
// kubelet: pods bound to it stay Pending and its Lease is never renewed.
// It is for tests of many nodes as API objects (scale), where a played
// kubelet each would cost too much. Start such a cluster with a long
// Options.NodeMonitorGracePeriod: the node lifecycle controller lifts the
// not-ready taint the apiserver gives every new Node, and would otherwise
// call these nodes unreachable once their Lease expires.
func (c *Cluster) RegisterNode(ctx context.Context, opts NodeOptions) error {
	if opts.Name == "" {
		return errors.New("kubetest: RegisterNode: NodeOptions.Name is empty: name the node")
	}
	if opts.Address == "" {
		opts.Address = "192.0.2.1" // TEST-NET-1: nothing dials it
	}
	if opts.Capacity == nil {
		opts.Capacity = corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("4"),
			corev1.ResourceMemory: resource.MustParse("16Gi"),
			corev1.ResourcePods:   resource.MustParse("110"),
		}
	}
	if opts.Allocatable == nil {
		opts.Allocatable = opts.Capacity
	}
	n := &Node{Name: opts.Name, Address: opts.Address, c: c, opts: opts}
	if err := n.register(ctx); err != nil {
		return fmt.Errorf("kubetest: register node %s: %w", opts.Name, err)
	}
	return nil
}

// register creates the Node, its Ready status and its Lease.
func (n *Node) register(ctx context.Context) error {
	labels := map[string]string{
		"kubernetes.io/hostname": n.Name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
	}
	for k, v := range n.opts.Labels {
		labels[k] = v
	}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: n.Name, Labels: labels, Annotations: n.opts.Annotations},
		Spec:       corev1.NodeSpec{Taints: n.opts.Taints, Unschedulable: n.opts.Unschedulable, ProviderID: n.opts.ProviderID},
	}
	created, err := n.c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	now := metav1.Now()
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	status := corev1.NodeStatus{
		Capacity: n.opts.Capacity, Allocatable: n.opts.Allocatable,
		Phase: corev1.NodeRunning,
		Conditions: []corev1.NodeCondition{
			cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
			cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
			cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
			cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "kubelet is posting ready status (played by kubetest)"),
		},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: n.Address},
			{Type: corev1.NodeHostName, Address: n.Name},
		},
		NodeInfo: corev1.NodeSystemInfo{
			KubeletVersion: kubeVersion, OperatingSystem: "linux", Architecture: "amd64",
			ContainerRuntimeVersion: "runc://kubetest", OSImage: "kubetest played node",
		},
	}
	// The node lifecycle controller (and, in a busy cluster, the taint
	// manager and the garbage collector's owner updates) may write the new
	// Node first, several times: retry for longer than client-go's
	// DefaultRetry (five tries within ~0.1s), which lost that race now and
	// then.
	err = retry.RetryOnConflict(wait.Backoff{Steps: 12, Duration: 20 * time.Millisecond, Factor: 1.5, Jitter: 0.2}, func() error {
		cur, err := n.c.Client.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Status = status
		_, err = n.c.Client.CoreV1().Nodes().UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	lease := &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name: n.Name, Namespace: corev1.NamespaceNodeLease,
			// As the kubelet's: the lease goes when its Node goes.
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: created.UID}},
		},
		Spec: coordinationv1.LeaseSpec{
			HolderIdentity: ptr.To(n.Name), LeaseDurationSeconds: ptr.To[int32](40),
			RenewTime: &metav1.MicroTime{Time: time.Now()},
		},
	}
	if _, err := n.c.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease).Create(ctx, lease, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("lease: %w", err)
	}
	return nil
}

// heartbeat renews the node's Lease as the kubelet does (lease duration
// 40s), every 2s rather than every 10s so that a test may shorten the
// node-monitor grace period. Once the Node object is gone the heartbeat
// stops: a node whose object the platform deleted does not re-register.
func (n *Node) heartbeat() {
	defer n.wg.Done()
	leases := n.c.Client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		l, err := leases.Get(n.ctx, n.Name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			if _, err := n.c.Client.CoreV1().Nodes().Get(n.ctx, n.Name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
				return
			}
			continue
		}
		if err != nil {
			continue
		}
		l.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
		leases.Update(n.ctx, l, metav1.UpdateOptions{})
	}
}

// podChanged starts playing a newly bound pod, or starts terminating one
// that got a deletion timestamp.
func (n *Node) podChanged(pod *corev1.Pod) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.ctx.Err() != nil {
		return
	}
	r, ok := n.pods[pod.UID]
	if !ok {
		r = newPodRun(n, pod)
		n.pods[pod.UID] = r
		n.wg.Add(1)
		// The run stays in pods until the pod leaves the API, so that a late
		// event about a pod it finished never starts it again.
		go func() {
			defer n.wg.Done()
			r.run()
		}()
	}
	r.update(pod)
}

// podDeleted kills a pod's containers at once: the pod is gone from the
// API (force-deleted, or its deletion finished).
func (n *Node) podDeleted(uid types.UID) {
	n.mu.Lock()
	r := n.pods[uid]
	delete(n.pods, uid)
	n.mu.Unlock()
	if r != nil {
		r.removed()
	}
}

// kill stops playing the node: no more heartbeats or status writes, and
// every container SIGKILLed.
func (n *Node) kill() {
	n.cancel()
	n.wg.Wait()
}

// ContainerLog returns what a container of a pod on this node wrote to
// stdout and stderr so far (all its runs), the played kubelet's
// `kubectl logs`.
func (n *Node) ContainerLog(namespace, pod, container string) (string, error) {
	n.mu.Lock()
	var dir string
	for _, r := range n.pods {
		if r.namespace == namespace && r.name == pod {
			dir = r.dir
		}
	}
	n.mu.Unlock()
	if dir == "" {
		matches, _ := filepath.Glob(filepath.Join(n.dir, "pods", namespace+"_"+pod+"_*"))
		if len(matches) == 0 {
			return "", fmt.Errorf("kubetest: no pod %s/%s has run on node %s", namespace, pod, n.Name)
		}
		dir = matches[len(matches)-1]
	}
	data, err := os.ReadFile(filepath.Join(dir, container+".log"))
	if err != nil {
		return "", fmt.Errorf("kubetest: no log of container %s in pod %s/%s on node %s", container, namespace, pod, n.Name)
	}
	return string(data), nil
}

// Node returns the played node called name, or nil.
func (c *Cluster) Node(name string) *Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.nodes[name]
}
