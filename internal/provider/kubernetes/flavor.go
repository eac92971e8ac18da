package kubernetes

import (
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/spotml/spotml/internal/notice"
	"github.com/spotml/spotml/internal/spec"
)

// Flavor is how one platform marks its spot and on-demand nodes. A spot
// pool's pods must land only on spot nodes and an on-demand pool's only on
// on-demand nodes, so each side is a required node affinity: a list of
// terms, any one of which a node must match (each term's requirements all
// hold).
type Flavor struct {
	Name     string
	Spot     [][]corev1.NodeSelectorRequirement
	OnDemand [][]corev1.NodeSelectorRequirement
	// SpotTolerations are the taints the platform puts on spot nodes by
	// itself (or that its guides tell users to put there), which a spot
	// pod must tolerate to land at all.
	SpotTolerations []corev1.Toleration
	// MetadataFormat is the notice format of the cloud's instance
	// metadata service, watched from inside the pod when the pool asks;
	// empty where spotml has no watcher for it.
	MetadataFormat string
	// Notice is the platform's eviction notice (spec.FlavorNotice).
	Notice time.Duration
}

func in(key string, values ...string) corev1.NodeSelectorRequirement {
	return corev1.NodeSelectorRequirement{Key: key, Operator: corev1.NodeSelectorOpIn, Values: values}
}

func notIn(key string, values ...string) corev1.NodeSelectorRequirement {
	return corev1.NodeSelectorRequirement{Key: key, Operator: corev1.NodeSelectorOpNotIn, Values: values}
}

func absent(key string) corev1.NodeSelectorRequirement {
	return corev1.NodeSelectorRequirement{Key: key, Operator: corev1.NodeSelectorOpDoesNotExist}
}

func noSchedule(key, value string) corev1.Toleration {
	return corev1.Toleration{Key: key, Operator: corev1.TolerationOpEqual, Value: value, Effect: corev1.TaintEffectNoSchedule}
}

// Labels and taints the flavors use.
const (
	// Karpenter: https://karpenter.sh/docs/concepts/scheduling/ (well-known
	// labels): spot, on-demand (and reserved).
	labelKarpenterCapacity = "karpenter.sh/capacity-type"
	// EKS managed node groups: SPOT or ON_DEMAND.
	labelEKSCapacity = "eks.amazonaws.com/capacityType"
	// AKS spot node pools: the label scalesetpriority=spot, and the taint
	// kubernetes.azure.com/scalesetpriority=spot:NoSchedule AKS adds to
	// every spot node by itself; regular pools carry no such label.
	labelAKSPriority = "kubernetes.azure.com/scalesetpriority"
	// GKE: Spot VMs carry cloud.google.com/gke-spot=true, the older
	// preemptible VMs cloud.google.com/gke-preemptible=true. Google's guide
	// suggests tainting them with the same key (NoSchedule), so spot pods
	// tolerate it.
	labelGKESpot        = "cloud.google.com/gke-spot"
	labelGKEPreemptible = "cloud.google.com/gke-preemptible"
	// ACK: the cloud-controller-manager labels each node with its ECS spot
	// strategy, NoSpot for pay-as-you-go and subscription nodes and
	// SpotWithPriceLimit or SpotAsPriceGo for spot instances. Source:
	// Alibaba Cloud ACK documentation, "Cloud Controller Manager" release
	// notes, v2.10.2 (January 20, 2025): "Support adding the
	// node.alibabacloud.com/spot-strategy label to identify whether a node
	// is a Spot instance" (https://www.alibabacloud.com/help/en/ack/product-overview/cloud-controller-manager);
	// the values are those of the node pool API's spot_strategy
	// (CreateClusterNodePool). ACK documents no taint of its own on spot
	// nodes; a pool that taints its nodes adds the toleration itself.
	labelACKSpotStrategy = "node.alibabacloud.com/spot-strategy"
)

// flavors is every flavor by name, less its name and notice (Lookup).
var flavors = map[string]Flavor{
	spec.FlavorKarpenter: {
		Spot:           [][]corev1.NodeSelectorRequirement{{in(labelKarpenterCapacity, "spot")}},
		OnDemand:       [][]corev1.NodeSelectorRequirement{{in(labelKarpenterCapacity, "on-demand")}},
		MetadataFormat: notice.FormatAWS,
	},
	spec.FlavorEKS: {
		Spot:           [][]corev1.NodeSelectorRequirement{{in(labelEKSCapacity, "SPOT")}},
		OnDemand:       [][]corev1.NodeSelectorRequirement{{in(labelEKSCapacity, "ON_DEMAND")}},
		MetadataFormat: notice.FormatAWS,
	},
	spec.FlavorAKS: {
		Spot:            [][]corev1.NodeSelectorRequirement{{in(labelAKSPriority, "spot")}},
		OnDemand:        [][]corev1.NodeSelectorRequirement{{notIn(labelAKSPriority, "spot")}},
		SpotTolerations: []corev1.Toleration{noSchedule(labelAKSPriority, "spot")},
		MetadataFormat:  notice.FormatAzure,
	},
	spec.FlavorGKE: {
		// Either label makes a node spot: two terms.
		Spot:            [][]corev1.NodeSelectorRequirement{{in(labelGKESpot, "true")}, {in(labelGKEPreemptible, "true")}},
		OnDemand:        [][]corev1.NodeSelectorRequirement{{absent(labelGKESpot), absent(labelGKEPreemptible)}},
		SpotTolerations: []corev1.Toleration{noSchedule(labelGKESpot, "true"), noSchedule(labelGKEPreemptible, "true")},
		MetadataFormat:  notice.FormatGCP,
	},
	spec.FlavorACK: {
		Spot:     [][]corev1.NodeSelectorRequirement{{in(labelACKSpotStrategy, "SpotWithPriceLimit", "SpotAsPriceGo")}},
		OnDemand: [][]corev1.NodeSelectorRequirement{{notIn(labelACKSpotStrategy, "SpotWithPriceLimit", "SpotAsPriceGo")}},
	},
	// custom: the pool's nodeSelector and tolerations say it all.
	spec.FlavorCustom: {},
}

// Lookup returns a flavor by name. Its notice comes from the spec's
// table, which owns the defaults users see.
func Lookup(name string) (Flavor, bool) {
	f, ok := flavors[name]
	f.Name, f.Notice = name, spec.FlavorNotice[name]
	return f, ok
}

// Terms returns the node affinity terms for a priority; nil for custom.
func (f Flavor) Terms(priority string) [][]corev1.NodeSelectorRequirement {
	if priority == spec.PrioritySpot {
		return f.Spot
	}
	return f.OnDemand
}

// Tolerations returns what a pod of a priority must tolerate.
func (f Flavor) Tolerations(priority string) []corev1.Toleration {
	if priority == spec.PrioritySpot {
		return f.SpotTolerations
	}
	return nil
}
