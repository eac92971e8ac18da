// Package kubernetes is the provider that runs spotml nodes as agent pods
// on a cluster's spot and on-demand node pools. One spotml node is one
// agent pod, alone on its cluster node (pod anti-affinity), requesting the
// pool's capacity; the cluster's autoscaler (Karpenter, cluster-autoscaler,
// the AKS/GKE/ACK autoscalers) makes the machines. Evictions are read from
// the cluster's own signals (taints, cordons, DisruptionTarget, deletion
// timestamps) through shared informers and reported through the control
// plane's sink; spotml never calls a cloud API here.
package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// Name is the provider name pools use.
const Name = spec.ProviderKubernetes

// Config says how to reach the cluster's agents and what to run in them.
type Config struct {
	// ServerURL is the control plane as agents in pods reach it (a
	// Service's address in the cluster, or an address routed to a
	// control plane outside it).
	ServerURL string
	// SpotmlImage is an image holding the spotml binary at SpotmlPath;
	// its init container copies the binary into the pool's image.
	SpotmlImage string
	SpotmlPath  string // default /usr/local/bin/spotml
	// PullPolicy of both images; default IfNotPresent.
	PullPolicy corev1.PullPolicy
	// AgentArgs are extra flags passed to every agent (e.g. heartbeat).
	AgentArgs []string
	// AgentEnv is added to every agent container's environment: the
	// blob store's credentials and endpoint where the cluster has no
	// workload identity (IRSA, Azure or GKE Workload Identity) to give
	// them, e.g. AWS_ACCESS_KEY_ID from a Secret through valueFrom.
	// The node's tasks, which run in the same container, see it too.
	AgentEnv []corev1.EnvVar
	// AgentEnvFrom is added to every agent container's envFrom (a
	// Secret's keys as variables; --kube-agent-env-secret).
	AgentEnvFrom []corev1.EnvFromSource
	// MetadataURL is the instance metadata service as pods reach it, for
	// pools that set instanceMetadata; default http://169.254.169.254.
	MetadataURL string
	// Interval is how often the runner goes over every node even when the
	// informers report nothing (unschedulable timeouts); default 1s. It
	// reads the informers' caches, never the API.
	Interval time.Duration
	// Resync is the informers' resync period; default 10m.
	Resync time.Duration
	// OnPass, when set, is told how long each pass over the nodes took
	// and how many live nodes of kubernetes pools it went over (for
	// benchmarks and metrics).
	OnPass func(took time.Duration, nodes int)
}

func (c Config) spotmlPath() string {
	if c.SpotmlPath == "" {
		return "/usr/local/bin/spotml"
	}
	return c.SpotmlPath
}

func (c Config) metadataURL() string {
	if c.MetadataURL == "" {
		return "http://169.254.169.254"
	}
	return c.MetadataURL
}

// Provider is the Kubernetes provider.
type Provider struct {
	client kubernetes.Interface
	cfg    Config
	log    *slog.Logger
	now    func() time.Time

	wake chan struct{} // informer events: run a pass soon

	mu        sync.Mutex
	firstSeen map[string]time.Time   // host/signal → when the runner first saw it
	deleted   map[types.UID]struct{} // pods the runner deleted for a signal
}

var (
	_ control.Provider = (*Provider)(nil)
	_ control.Runner   = (*Provider)(nil)
)

// New returns a provider over client.
func New(client kubernetes.Interface, cfg Config, log *slog.Logger, now func() time.Time) *Provider {
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Resync <= 0 {
		cfg.Resync = 10 * time.Minute
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return &Provider{client: client, cfg: cfg, log: log.With("provider", Name), now: now,
		wake: make(chan struct{}, 1), firstSeen: map[string]time.Time{}, deleted: map[types.UID]struct{}{}}
}

// RESTConfig finds the cluster as kubectl does: kubeconfig (the path
// given, else $KUBECONFIG, else ~/.kube/config) and its context (the one
// given, else the current one), or the in-cluster config of a pod.
func RESTConfig(kubeconfig, context string) (*rest.Config, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if kubeconfig != "" {
		rules.ExplicitPath = kubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes config (--kubeconfig %q, --kube-context %q): %w", kubeconfig, context, err)
	}
	return cfg, nil
}

// Launch creates a node's agent pod and its credential Secret. It
// returns once they are created; the pod is scheduled (Placed) or left
// unschedulable (Shortage) later, as the runner sees.
func (p *Provider) Launch(ctx context.Context, req control.LaunchRequest) (control.Launched, error) {
	pool := req.Pool
	ks := pool.Spec.Kubernetes
	if ks == nil {
		return control.Launched{}, fmt.Errorf("pool %s: spec.kubernetes is missing", pool.Metadata.Name)
	}
	if p.cfg.SpotmlImage == "" || p.cfg.ServerURL == "" {
		return control.Launched{}, errors.New("the kubernetes provider needs --kube-spotml-image and --kube-agent-server-url")
	}
	owner, err := p.ensurePoolObject(ctx, pool)
	if err != nil {
		return control.Launched{}, err
	}
	objs, err := buildObjects(podSpecInput{pool: pool, node: req.Node, credential: req.Credential, owner: owner, cfg: p.cfg})
	if err != nil {
		return control.Launched{}, err
	}
	pods := p.client.CoreV1().Pods(ks.Namespace)
	pod, err := pods.Create(ctx, objs.pod, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// A launch retried after a crash between create and return.
		pod, err = pods.Get(ctx, objs.pod.Name, metav1.GetOptions{})
		if err == nil && pod.Labels[LabelNode] != req.Node.Name {
			err = fmt.Errorf("pod %s/%s exists and is not node %s's", ks.Namespace, pod.Name, req.Node.Name)
		}
	}
	if err != nil {
		if apierrors.IsForbidden(err) && strings.Contains(err.Error(), "exceeded quota") {
			return control.Launched{}, fmt.Errorf("%w: namespace %s: %v", control.ErrNoCapacity, ks.Namespace, err)
		}
		return control.Launched{}, fmt.Errorf("create pod %s/%s: %w", ks.Namespace, objs.pod.Name, err)
	}
	// The Secret goes with its pod: deleting the pod (by anyone) deletes
	// the credential too.
	objs.secret.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}}
	secrets := p.client.CoreV1().Secrets(ks.Namespace)
	_, err = secrets.Create(ctx, objs.secret, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		_, err = secrets.Update(ctx, objs.secret, metav1.UpdateOptions{})
	}
	if err != nil {
		p.deletePod(context.WithoutCancel(ctx), pod.Namespace, pod.Name, pod.UID, nil)
		return control.Launched{}, fmt.Errorf("create secret %s/%s: %w", ks.Namespace, objs.secret.Name, err)
	}
	p.log.Info("node launched", "node", req.Node.Name, "pod", pod.Namespace+"/"+pod.Name)
	return control.Launched{ProviderID: providerID(pod)}, nil
}

// ensurePoolObject returns the owner reference of a pool's ConfigMap,
// making it first. The ConfigMap owns the pool's pods and budget, so that
// deleting it (which the runner does when the pool is deleted, or a user
// with kubectl) lets the cluster's garbage collector remove them all,
// even while no control plane runs. A ConfigMap, because it needs no
// custom resource definition and no cluster-wide permission.
func (p *Provider) ensurePoolObject(ctx context.Context, pool spec.Pool) (*metav1.OwnerReference, error) {
	ns := pool.Spec.Kubernetes.Namespace
	name := poolObjectName(pool.Metadata.Name)
	cms := p.client.CoreV1().ConfigMaps(ns)
	cm, err := cms.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cm, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: poolLabels(pool.Metadata.Name)},
			Data:       map[string]string{"pool": pool.Metadata.Name, "priority": pool.Spec.Priority, "flavor": pool.Spec.Kubernetes.Flavor},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			cm, err = cms.Get(ctx, name, metav1.GetOptions{})
		}
	}
	if err != nil {
		return nil, fmt.Errorf("pool %s: configmap %s/%s: %w", pool.Metadata.Name, ns, name, err)
	}
	if cm.DeletionTimestamp != nil {
		// Pods owned by it now would be collected with it.
		return nil, fmt.Errorf("pool %s: configmap %s/%s of an earlier pool of this name is still being deleted; retrying", pool.Metadata.Name, ns, name)
	}
	return &metav1.OwnerReference{APIVersion: "v1", Kind: "ConfigMap", Name: cm.Name, UID: cm.UID}, nil
}

// Stop deletes a node's pod (the agent gets SIGTERM and the pod's grace
// period) and its Secret. A pod already gone is stopped.
func (p *Provider) Stop(ctx context.Context, n store.Node) error {
	if n.ProviderID == "" {
		return nil // Launch never returned: it removed what it made
	}
	ns, name, uid, err := parseProviderID(n.ProviderID)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	if err := p.deletePod(ctx, ns, name, types.UID(uid), nil); err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	err = p.client.CoreV1().Secrets(ns).Delete(ctx, secretName(name), metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("node %s: delete secret: %w", n.Name, err)
	}
	return nil
}

// deletePod deletes one pod, only if it still has uid (when given); grace
// nil means the pod's own grace period.
func (p *Provider) deletePod(ctx context.Context, ns, name string, uid types.UID, grace *int64) error {
	opts := metav1.DeleteOptions{GracePeriodSeconds: grace}
	if uid != "" {
		opts.Preconditions = &metav1.Preconditions{UID: &uid}
	}
	err := p.client.CoreV1().Pods(ns).Delete(ctx, name, opts)
	if err == nil || apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
		return nil // gone, or a different pod by now
	}
	return fmt.Errorf("delete pod %s/%s: %w", ns, name, err)
}
