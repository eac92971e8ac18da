package store

import (
	"time"

	"github.com/spotml/spotml/internal/spec"
)

// Node states.
const (
	NodeProvisioning = "provisioning" // launched, agent not yet ready
	NodeReady        = "ready"
	NodeDraining     = "draining"    // an eviction notice was received
	NodePreempted    = "preempted"   // taken back by the spot market
	NodeDeallocated  = "deallocated" // preempted with evictionPolicy deallocate: restarted later, same name and disk
	NodeLost         = "lost"        // stopped heartbeating
	NodeTerminated   = "terminated"  // removed by spotml (scale-down, pool deleted)
)

// Live reports whether a node in this state may still run work or become
// able to.
func Live(state string) bool {
	return state == NodeProvisioning || state == NodeReady || state == NodeDraining
}

// Node is one machine running the spotml agent.
type Node struct {
	Name          string         `json:"name"`
	Pool          string         `json:"pool"`
	Priority      string         `json:"priority"`
	Zone          string         `json:"zone,omitempty"`
	InstanceType  string         `json:"instanceType"`
	State         string         `json:"state"`
	Capacity      spec.Resources `json:"capacity"`
	PricePerHour  float64        `json:"pricePerHour"`
	OnDemandPrice float64        `json:"onDemandPricePerHour"`
	// ProviderID is the provider's own name for the node (a work
	// directory, a pod, a VM), opaque to everything but its provider.
	ProviderID string `json:"providerID,omitempty"`
	// Host is the platform's machine the node runs on, where that is not
	// the node itself (the Kubernetes node under an agent pod).
	Host           string    `json:"host,omitempty"`
	CreatedAt      time.Time `json:"createdAt"`
	StateAt        time.Time `json:"stateAt"`
	HeartbeatAt    time.Time `json:"heartbeatAt,omitzero"`
	IdleSince      time.Time `json:"idleSince,omitzero"`
	NoticeDeadline time.Time `json:"noticeDeadline,omitzero"`
	// NoticeAt is when the node's eviction notice arrived; unlike
	// NoticeDeadline it is kept once the node has ended, so the warning
	// each preemption gave can be read back (placement.Spares).
	NoticeAt time.Time `json:"noticeAt,omitzero"`
	// AtRisk is when the platform warned that the node is at elevated
	// risk of being taken (AWS's rebalance recommendation): it does not
	// count toward its pool's size, so a replacement is launched, but it
	// keeps its work until a notice comes (or it idles out).
	AtRisk      time.Time `json:"atRisk,omitzero"`
	Reason      string    `json:"reason,omitempty"`
	Incarnation int       `json:"incarnation"`
	Tasks       int       `json:"tasks"`    // running tasks, filled by ListNodes
	Replicas    int       `json:"replicas"` // live service replicas, filled by ListNodes
}

// Placement is where a provider's platform put a node, and its prices
// there. Zero fields are left as they are.
type Placement struct {
	Zone, InstanceType, Host    string
	Capacity                    spec.Resources
	PricePerHour, OnDemandPrice float64
}

// Run is one billed stretch of a node's life (a deallocated node that
// restarts gets a new run).
type Run struct {
	Node, Pool, Priority string
	Start, End           time.Time
	PricePerHour         float64
	OnDemandPerHour      float64
}
