package kubernetes

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	policylisters "k8s.io/client-go/listers/policy/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// NodeTaints are the taints that announce a cluster node's end, with what
// they mean: the first of them (or of the other signals) seen on an agent
// pod's node is that spotml node's notice.
var NodeTaints = map[string]string{
	"karpenter.sh/disrupted":                                 "Karpenter disrupts the node",
	"aws-node-termination-handler/spot-itn":                  "AWS spot interruption (NTH)",
	"aws-node-termination-handler/rebalance-recommendation":  "AWS rebalance recommendation (NTH)",
	"aws-node-termination-handler/scheduled-maintenance":     "AWS scheduled maintenance (NTH)",
	"aws-node-termination-handler/asg-lifecycle-termination": "ASG lifecycle termination (NTH)",
	"remediator.kubernetes.azure.com/unschedulable":          "AKS node auto-drain",
	// Not in the list, but the same announcement from the
	// cluster-autoscaler (AKS, GKE, ACK use it) and from Kubernetes itself.
	"ToBeDeletedByClusterAutoscaler":    "cluster-autoscaler removes the node",
	"node.kubernetes.io/out-of-service": "node out of service",
}

// lostAfter is how long a launched node's pod may be missing from the
// informer's cache before the node counts as lost (the cache trails the
// API by a moment), and how old a pod no live node owns must be before it
// is removed.
const lostAfter = 15 * time.Second

// runner is one Run: its informers and the sink and view it reports to.
type runner struct {
	p           *Provider
	sink        control.Sink
	view        control.View
	nodes       corelisters.NodeLister
	nodesSynced cache.InformerSynced
	handler     cache.ResourceEventHandler
	caches      map[string]*nsCache // by namespace; a namespace once watched stays watched
	factories   []informers.SharedInformerFactory
}

// nsCache is the informers of one namespace's spotml objects.
type nsCache struct {
	pods   corelisters.PodLister
	cms    corelisters.ConfigMapLister
	pdbs   policylisters.PodDisruptionBudgetLister
	synced []cache.InformerSynced
}

// Run watches the cluster's nodes and the spotml objects of every
// namespace a kubernetes pool uses (label-selected), and reports what the
// platform does to the sink, until ctx ends. A restarted control plane
// takes up again from the informers' first list and the view.
func (p *Provider) Run(ctx context.Context, sink control.Sink, view control.View) error {
	r := &runner{p: p, sink: sink, view: view, caches: map[string]*nsCache{},
		handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { p.poke() },
			UpdateFunc: func(any, any) { p.poke() },
			DeleteFunc: func(any) { p.poke() },
		}}
	defer func() {
		for _, f := range r.factories {
			f.Shutdown()
		}
	}()
	nf := informers.NewSharedInformerFactory(p.client, p.cfg.Resync)
	nodeInf := nf.Core().V1().Nodes()
	if _, err := nodeInf.Informer().AddEventHandler(r.handler); err != nil {
		return err
	}
	r.nodes, r.nodesSynced = nodeInf.Lister(), nodeInf.Informer().HasSynced
	r.factories = append(r.factories, nf)
	nf.Start(ctx.Done())

	t := time.NewTicker(p.cfg.Interval)
	defer t.Stop()
	for {
		if r.nodesSynced() {
			if err := r.pass(ctx); err != nil && ctx.Err() == nil {
				p.log.Error("kubernetes pass failed", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-p.wake:
		}
	}
}

func (p *Provider) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// watch returns the informers of a namespace, starting them the first
// time.
func (r *runner) watch(ctx context.Context, ns string) *nsCache {
	if c, ok := r.caches[ns]; ok {
		return c
	}
	f := informers.NewSharedInformerFactoryWithOptions(r.p.client, r.p.cfg.Resync,
		informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = LabelManagedBy + "=" + ManagedBy }))
	c := &nsCache{
		pods: f.Core().V1().Pods().Lister(),
		cms:  f.Core().V1().ConfigMaps().Lister(),
		pdbs: f.Policy().V1().PodDisruptionBudgets().Lister(),
	}
	for _, inf := range []cache.SharedIndexInformer{f.Core().V1().Pods().Informer(), f.Core().V1().ConfigMaps().Informer(), f.Policy().V1().PodDisruptionBudgets().Informer()} {
		inf.AddEventHandler(r.handler)
		c.synced = append(c.synced, inf.HasSynced)
	}
	f.Start(ctx.Done())
	r.factories = append(r.factories, f)
	r.caches[ns] = c
	return c
}

// pass reconciles every live node of a kubernetes pool with its pod, and
// removes what no live node or pool owns. It reads the view once and the
// informers' caches, never the API.
func (r *runner) pass(ctx context.Context) error {
	if on := r.p.cfg.OnPass; on != nil {
		began, nodes := time.Now(), 0
		defer func() { on(time.Since(began), nodes) }()
		return r.passCounting(ctx, &nodes)
	}
	return r.passCounting(ctx, new(int))
}

func (r *runner) passCounting(ctx context.Context, count *int) error {
	pools, err := r.view.ListPools(ctx)
	if err != nil {
		return err
	}
	all, err := r.view.ListNodes(ctx)
	if err != nil {
		return err
	}
	byName := map[string]spec.Pool{}
	for _, pl := range pools {
		if pl.Spec.Spec.Provider == Name && pl.Spec.Spec.Kubernetes != nil {
			byName[pl.Spec.Metadata.Name] = pl.Spec
			r.watch(ctx, pl.Spec.Spec.Kubernetes.Namespace)
		}
	}
	ready := map[string]*nsCache{}
	for ns, c := range r.caches {
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		ok := cache.WaitForCacheSync(sctx.Done(), c.synced...)
		cancel()
		if ok {
			ready[ns] = c
		} else if ctx.Err() == nil {
			r.p.log.Warn("informers of a namespace not synced; check the control plane's permissions there", "namespace", ns)
		}
	}
	now := r.p.now()
	live := map[string]bool{} // namespace/name of live nodes' pods
	var errs []error
	for _, n := range all {
		pool, ok := byName[n.Pool]
		if !ok || !store.Live(n.State) {
			continue
		}
		ns := pool.Spec.Kubernetes.Namespace
		live[ns+"/"+n.Name] = true
		*count++
		c := ready[ns]
		if c == nil {
			continue
		}
		pod, err := c.pods.Pods(ns).Get(n.Name)
		if apierrors.IsNotFound(err) {
			pod, err = nil, nil
		}
		if err == nil {
			err = r.reconcile(ctx, pool, n, pod, now)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("node %s: %w", n.Name, err))
		}
	}
	for ns, c := range ready {
		errs = append(errs, r.collect(ctx, c, ns, byName, live, now)...)
	}
	return errors.Join(errs...)
}

// reconcile brings one live spotml node in line with its pod: the pod
// ended or gone is the node Gone, a pod that cannot be scheduled for too
// long is a Shortage, a pod bound is Placed, and the first disruption
// signal on the pod or its cluster node is the node's Notice.
func (r *runner) reconcile(ctx context.Context, pool spec.Pool, n store.Node, pod *corev1.Pod, now time.Time) error {
	ks := pool.Spec.Kubernetes
	if pod != nil && n.ProviderID != "" {
		if _, _, uid, _ := parseProviderID(n.ProviderID); uid != "" && uid != string(pod.UID) {
			pod = nil // another incarnation's pod of the same name
		}
	}
	if pod == nil {
		if n.ProviderID == "" || now.Sub(n.StateAt) < lostAfter {
			return nil // launching, or the cache has not caught up yet
		}
		state, reason := store.NodeLost, "agent pod is gone"
		if !n.NoticeDeadline.IsZero() {
			state, reason = store.NodePreempted, "agent pod deleted after its eviction notice"
		}
		return r.sink.Gone(ctx, n.Name, state, reason)
	}
	if pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded {
		state, reason := ended(pod, n)
		if err := r.sink.Gone(ctx, n.Name, state, reason); err != nil {
			return err
		}
		if pod.DeletionTimestamp == nil {
			return r.p.deletePod(ctx, pod.Namespace, pod.Name, pod.UID, nil)
		}
		return nil
	}
	if pod.Spec.NodeName == "" {
		if c := condition(pod, corev1.PodScheduled); c != nil && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable &&
			now.Sub(pod.CreationTimestamp.Time) >= ks.UnschedulableTimeout.Duration {
			return r.sink.Shortage(ctx, n.Name, fmt.Sprintf("pod %s/%s unschedulable for %s: %s", pod.Namespace, pod.Name, ks.UnschedulableTimeout, c.Message))
		}
		if pod.DeletionTimestamp != nil { // deleted before it ran: nothing to drain
			return r.sink.Gone(ctx, n.Name, store.NodePreempted, "agent pod deleted before it was scheduled")
		}
		return nil
	}
	host, err := r.nodes.Get(pod.Spec.NodeName)
	if apierrors.IsNotFound(err) {
		// The node cache may trail the pod cache (a node that just
		// joined): only the API's word makes a node gone.
		_, err = r.p.client.CoreV1().Nodes().Get(ctx, pod.Spec.NodeName, metav1.GetOptions{})
		if err == nil {
			return nil // not in the cache yet: next pass
		}
	}
	if apierrors.IsNotFound(err) {
		// The machine vanished without warning: its pod cannot drain.
		if err := r.sink.Gone(ctx, n.Name, store.NodeLost, "cluster node "+pod.Spec.NodeName+" vanished"); err != nil {
			return err
		}
		return r.p.deletePod(ctx, pod.Namespace, pod.Name, pod.UID, ptr(int64(0)))
	}
	if err != nil {
		return err
	}
	if n.Host != host.Name {
		err := r.sink.Placed(ctx, n.Name, control.Placement{
			Host:         host.Name,
			Zone:         host.Labels[labelZone],
			InstanceType: host.Labels[labelInstanceType],
			Capacity:     capacityOf(pod, ks.GPUResource),
		})
		if err != nil {
			return err
		}
	}
	sig, ok := r.p.signal(pod, host, noticeOf(pool, pod), now)
	if !ok {
		return nil
	}
	// Deletion timestamps are whole seconds: a deadline within a second of
	// the one recorded is the same notice.
	if n.NoticeDeadline.IsZero() || sig.deadline.Before(n.NoticeDeadline.Add(-time.Second)) {
		if err := r.sink.Notice(ctx, n.Name, sig.deadline, sig.source); err != nil {
			return err
		}
		r.p.log.Info("eviction notice", "node", n.Name, "host", host.Name, "source", sig.source, "deadline", sig.deadline)
	}
	if sig.tellAgent && pod.DeletionTimestamp == nil {
		// The agent has no other way to hear of its cluster node's
		// signals, nor of a DisruptionTarget before the disrupting
		// component acts: it is told by SIGTERM, with the time left, so
		// that it drains on the first signal.
		if r.p.deleting(pod.UID, false) {
			return nil // asked already; the cache has not caught up
		}
		// The notice recorded may be earlier than the signal's deadline
		// seen now: a restarted control plane sees an old taint (which
		// carries no time) afresh. The agent gets what is left of the
		// recorded one, not a new full notice.
		deadline := sig.deadline
		if !n.NoticeDeadline.IsZero() && n.NoticeDeadline.Before(deadline) {
			deadline = n.NoticeDeadline
		}
		grace := max(int64(math.Ceil(deadline.Sub(now).Seconds())), 1)
		if err := r.p.deletePod(ctx, pod.Namespace, pod.Name, pod.UID, &grace); err != nil {
			return err
		}
		r.p.deleting(pod.UID, true)
	}
	return nil
}

// deleting reports whether the runner deleted a pod for a signal
// already, and records that it did when mark is set.
func (p *Provider) deleting(uid types.UID, mark bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if mark {
		p.deleted[uid] = struct{}{}
	}
	_, ok := p.deleted[uid]
	return ok
}

// noticeOf is how long a node has from its first signal: the platform's
// notice or the pod's grace period, whichever is shorter.
func noticeOf(pool spec.Pool, pod *corev1.Pod) time.Duration {
	d := pool.Spec.Kubernetes.Notice.Duration
	if f, ok := Lookup(pool.Spec.Kubernetes.Flavor); ok && d <= 0 {
		d = f.Notice
	}
	if g := pod.Spec.TerminationGracePeriodSeconds; g != nil {
		if pd := time.Duration(*g) * time.Second; d <= 0 || pd < d {
			d = pd
		}
	}
	return d
}

// signalSeen is a disruption signal and the deadline it sets.
type signalSeen struct {
	deadline time.Time
	source   string
	// tell: the agent hears of this signal only if spotml tells it (by
	// deleting its pod: SIGTERM with the time left), as the pod is not
	// being deleted yet: a signal on the cluster node, or DisruptionTarget,
	// which the disrupting component (the kubelet shutting its node down,
	// the scheduler, the taint manager) sets before it acts.
	tell bool
	// tellAgent is set on the earliest signal when any signal is one to
	// tell.
	tellAgent bool
}

// signal returns the earliest-ending disruption signal on a pod and its
// cluster node.
func (p *Provider) signal(pod *corev1.Pod, host *corev1.Node, notice time.Duration, now time.Time) (signalSeen, bool) {
	var best signalSeen
	found, tell := false, false
	consider := func(s signalSeen) {
		tell = tell || s.tell
		if !found || s.deadline.Before(best.deadline) {
			best, found = s, true
		}
	}
	if t := pod.DeletionTimestamp; t != nil {
		// The API sets it to the deletion's time plus its grace period.
		consider(signalSeen{deadline: t.Time, source: "pod deletionTimestamp"})
	}
	if c := condition(pod, corev1.DisruptionTarget); c != nil && c.Status == corev1.ConditionTrue {
		consider(signalSeen{deadline: c.LastTransitionTime.Add(notice), source: "DisruptionTarget: " + c.Reason, tell: true})
	}
	if t := host.DeletionTimestamp; t != nil {
		consider(signalSeen{deadline: t.Add(notice), source: "node deletionTimestamp", tell: true})
	}
	if host.Spec.Unschedulable {
		consider(signalSeen{deadline: p.seen(host.Name, "cordon", now).Add(notice), source: "node cordoned", tell: true})
	}
	for _, t := range host.Spec.Taints {
		if _, ok := NodeTaints[t.Key]; !ok {
			continue
		}
		at := p.seen(host.Name, t.Key, now)
		if t.TimeAdded != nil && t.TimeAdded.Time.Before(at) {
			at = t.TimeAdded.Time
		}
		consider(signalSeen{deadline: at.Add(notice), source: t.Key + " taint", tell: true})
	}
	best.tellAgent = tell
	return best, found
}

// seen returns when the runner first saw a signal on a cluster node
// (taints other than NoExecute carry no time of their own).
func (p *Provider) seen(host, what string, now time.Time) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	k := host + "\x00" + what
	t, ok := p.firstSeen[k]
	if !ok {
		t = now
		p.firstSeen[k] = t
	}
	return t
}

// ended says how a pod that ran to its end ended the node: through the
// platform (an eviction, the kubelet, a notice seen before) it is
// preempted; an agent that failed or stopped by itself is lost. Either way
// the node's work goes back to the queue with no retry spent.
func ended(pod *corev1.Pod, n store.Node) (state, reason string) {
	if c := condition(pod, corev1.DisruptionTarget); c != nil && c.Status == corev1.ConditionTrue {
		return store.NodePreempted, fmt.Sprintf("SpotEviction: DisruptionTarget %s: %s", c.Reason, c.Message)
	}
	switch pod.Status.Reason {
	case "Evicted", "Preempting", "Shutdown", "NodeShutdown", "Terminated", "NodeLost", "UnexpectedAdmissionError":
		return store.NodePreempted, fmt.Sprintf("SpotEviction: pod %s: %s", pod.Status.Reason, pod.Status.Message)
	}
	if !n.NoticeDeadline.IsZero() {
		return store.NodePreempted, "SpotEviction: agent pod ended after its eviction notice"
	}
	why := "agent pod " + string(pod.Status.Phase)
	for _, cs := range append(pod.Status.InitContainerStatuses, pod.Status.ContainerStatuses...) {
		if t := cs.State.Terminated; t != nil && t.ExitCode != 0 {
			why = fmt.Sprintf("container %s exited %d (%s) %s", cs.Name, t.ExitCode, t.Reason, t.Message)
			break
		}
	}
	return store.NodeLost, why
}

func condition(pod *corev1.Pod, t corev1.PodConditionType) *corev1.PodCondition {
	for i := range pod.Status.Conditions {
		if pod.Status.Conditions[i].Type == t {
			return &pod.Status.Conditions[i]
		}
	}
	return nil
}

// collect removes, in one namespace, the agent pods no live node owns
// (the control plane ended their node while a delete failed, or before a
// restart), the objects of pools that were deleted (their ConfigMap: the
// garbage collector takes its pods and budget), and keeps each pool's
// disruption budget at all-but-one of its ready pods.
func (r *runner) collect(ctx context.Context, c *nsCache, ns string, pools map[string]spec.Pool, live map[string]bool, now time.Time) []error {
	var errs []error
	pods, err := c.pods.Pods(ns).List(labels.SelectorFromSet(labels.Set{LabelComponent: ComponentAgent}))
	if err != nil {
		return []error{err}
	}
	readyByPool := map[string]int{}
	for _, pod := range pods {
		if !live[ns+"/"+pod.Name] && pod.DeletionTimestamp == nil && now.Sub(pod.CreationTimestamp.Time) > lostAfter {
			r.p.log.Info("removing agent pod no live node owns", "pod", ns+"/"+pod.Name)
			if err := r.p.deletePod(ctx, ns, pod.Name, pod.UID, nil); err != nil {
				errs = append(errs, err)
			}
			continue
		}
		if c := condition(pod, corev1.PodReady); c != nil && c.Status == corev1.ConditionTrue && pod.DeletionTimestamp == nil {
			readyByPool[pod.Labels[LabelPool]]++
		}
	}
	cms, err := c.cms.ConfigMaps(ns).List(labels.Everything())
	if err != nil {
		return append(errs, err)
	}
	for _, cm := range cms {
		name := cm.Labels[LabelPool]
		if cm.Name != poolObjectName(name) || cm.DeletionTimestamp != nil {
			continue
		}
		pool, ok := pools[name]
		if !ok || pool.Spec.Kubernetes.Namespace != ns {
			r.p.log.Info("pool deleted: removing its objects", "pool", name, "namespace", ns)
			bg := metav1.DeletePropagationBackground
			err := r.p.client.CoreV1().ConfigMaps(ns).Delete(ctx, cm.Name, metav1.DeleteOptions{
				PropagationPolicy: &bg, Preconditions: &metav1.Preconditions{UID: &cm.UID}})
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
				errs = append(errs, err)
			}
			continue
		}
		owner := &metav1.OwnerReference{APIVersion: "v1", Kind: "ConfigMap", Name: cm.Name, UID: cm.UID}
		if err := r.budget(ctx, c, ns, name, max(readyByPool[name]-1, 0), owner); err != nil {
			errs = append(errs, err)
		}
	}
	return errs
}

// budget makes the pool's PodDisruptionBudget hold minAvailable.
func (r *runner) budget(ctx context.Context, c *nsCache, ns, pool string, minAvailable int, owner *metav1.OwnerReference) error {
	want := buildPDB(pool, ns, minAvailable, owner)
	have, err := c.pdbs.PodDisruptionBudgets(ns).Get(want.Name)
	pdbs := r.p.client.PolicyV1().PodDisruptionBudgets(ns)
	switch {
	case apierrors.IsNotFound(err):
		_, err = pdbs.Create(ctx, want, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return nil // the cache trails; next pass
		}
	case err != nil:
	case have.Spec.MinAvailable == nil || have.Spec.MinAvailable.IntValue() != minAvailable:
		upd := have.DeepCopy()
		upd.Spec.MinAvailable = want.Spec.MinAvailable
		_, err = pdbs.Update(ctx, upd, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("pool %s: disruption budget: %w", pool, err)
	}
	return nil
}
