package kubetest

import (
	"context"
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
)

// The platform's part in a spot node going away, each written to the
// apiserver exactly as the platform's component does it, so that what a
// test's code sees is what it would see on the cloud.

// Taint adds (or replaces, by key and effect) a taint on the node, as
// Karpenter (karpenter.sh/disrupted:NoSchedule), AWS Node Termination Handler
// (aws-node-termination-handler/spot-itn) or AKS's node auto-drain do.
func (c *Cluster) Taint(ctx context.Context, node, key, value string, effect corev1.TaintEffect) error {
	return c.updateNode(ctx, node, func(n *corev1.Node) {
		now := metav1.Now()
		t := corev1.Taint{Key: key, Value: value, Effect: effect}
		if effect == corev1.TaintEffectNoExecute {
			t.TimeAdded = &now
		}
		for i, old := range n.Spec.Taints {
			if old.Key == key && old.Effect == effect {
				n.Spec.Taints[i] = t
				return
			}
		}
		n.Spec.Taints = append(n.Spec.Taints, t)
	})
}

// Untaint removes the node's taints with key (any effect).
func (c *Cluster) Untaint(ctx context.Context, node, key string) error {
	return c.updateNode(ctx, node, func(n *corev1.Node) {
		kept := n.Spec.Taints[:0]
		for _, t := range n.Spec.Taints {
			if t.Key != key {
				kept = append(kept, t)
			}
		}
		n.Spec.Taints = kept
	})
}

// Cordon marks the node unschedulable, as `kubectl cordon` and the first
// step of a drain do (the node lifecycle controller then adds the
// node.kubernetes.io/unschedulable:NoSchedule taint).
func (c *Cluster) Cordon(ctx context.Context, node string) error {
	return c.updateNode(ctx, node, func(n *corev1.Node) { n.Spec.Unschedulable = true })
}

// UpdateNode changes the Node object (labels, say) through the API,
// retrying on a conflict with the node's other writers.
func (c *Cluster) UpdateNode(ctx context.Context, name string, change func(*corev1.Node)) error {
	return c.updateNode(ctx, name, change)
}

func (c *Cluster) updateNode(ctx context.Context, name string, change func(*corev1.Node)) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := c.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		change(n)
		_, err = c.Client.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("kubetest: update node %s: %w", name, err)
	}
	return nil
}

// SetDisruptionTarget sets the pod's DisruptionTarget condition (True,
// with reason, e.g. TerminationByKubelet for GKE's graceful node shutdown,
// PreemptionByScheduler, DeletionByTaintManager) through the pod's status
// subresource, as the component that disrupts the pod does before it
// deletes it. It only sets the condition: delete the pod, evict it or kill
// its node to carry the disruption out.
func (c *Cluster) SetDisruptionTarget(ctx context.Context, namespace, pod, reason string) error {
	patch, _ := json.Marshal(map[string]any{
		"status": map[string]any{"conditions": []corev1.PodCondition{{
			Type: corev1.DisruptionTarget, Status: corev1.ConditionTrue, Reason: reason,
			Message:            "kubetest: the platform is disrupting this pod",
			LastTransitionTime: metav1.Now(),
		}}},
	})
	_, err := c.Client.CoreV1().Pods(namespace).Patch(ctx, pod, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("kubetest: set DisruptionTarget on pod %s/%s: %w", namespace, pod, err)
	}
	return nil
}

// EvictPod evicts the pod through the Eviction API (POST
// pods/<pod>/eviction), as `kubectl drain`, Karpenter and the cluster
// autoscaler do: PodDisruptionBudgets apply (a refusal is returned as the
// API's 429 error), the apiserver sets DisruptionTarget with reason
// EvictionByEvictionAPI and deletes the pod with its grace period.
func (c *Cluster) EvictPod(ctx context.Context, namespace, pod string) error {
	err := c.Client.PolicyV1().Evictions(namespace).Evict(ctx, &policyv1.Eviction{
		ObjectMeta: metav1.ObjectMeta{Name: pod, Namespace: namespace},
	})
	if err != nil {
		return fmt.Errorf("kubetest: evict pod %s/%s: %w", namespace, pod, err)
	}
	return nil
}

// DeleteNode deletes the Node object, as a cloud's node controller does
// once the instance is gone. A played node stops renewing its Lease then
// but its containers keep running until their pods are deleted (the pod
// garbage collector marks them DisruptionTarget DeletionByPodGC and deletes
// them); combine it with KillNode for a node that vanished outright.
func (c *Cluster) DeleteNode(ctx context.Context, node string) error {
	if err := c.Client.CoreV1().Nodes().Delete(ctx, node, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("kubetest: delete node %s: %w", node, err)
	}
	return nil
}

// KillNode stops playing a node as if its machine died: no more
// heartbeats or status writes, every container SIGKILLed. The Node and its
// pods stay in the API as they were; after the controller-manager's
// node-monitor grace period the node turns Unknown and is tainted
// node.kubernetes.io/unreachable.
func (c *Cluster) KillNode(node string) error {
	n := c.Node(node)
	if n == nil {
		return fmt.Errorf("kubetest: KillNode: %s is not a played node of this cluster", node)
	}
	n.kill()
	return nil
}
