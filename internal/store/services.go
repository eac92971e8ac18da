package store

import (
	"encoding/json"
	"strconv"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

// Service is a stored inference service. The store keeps its spec as JSON
// and does not interpret it: the control plane does. Generation is the
// service's version: it goes up when an apply changes what its replicas run
// (RolloutKey), which starts a rolling update.
type Service struct {
	Name       string          `json:"name"`
	Model      string          `json:"model"` // model.uri of the current version, filled by the API
	Spec       json.RawMessage `json:"service"`
	RolloutKey string          `json:"-"`
	Generation int             `json:"generation"`
	Desired    int             `json:"desired"`         // replicas the autoscaler wants now
	ScaleState json.RawMessage `json:"-"`               // the autoscaler's memory, opaque here
	CreatedAt  time.Time       `json:"createdAt"`       //
	UpdatedAt  time.Time       `json:"updatedAt"`       //
	Replicas   []Replica       `json:"replicas"`        // live ones, filled by ListServices
	QPS        float64         `json:"qps"`             // as the gateways measure it, filled by ListServices
	Traffic    GatewayStat     `json:"-"`               // all the gateways measured, filled by ListServices
	Ready      map[string]int  `json:"readyByPriority"` // ready replicas by priority (spot, ondemand)
}

// ServiceDoc is one service to apply: its name, its spec as JSON, the key
// of what its replicas run, and the replica count to start with.
type ServiceDoc struct {
	Name       string
	Spec       []byte
	RolloutKey string
	Initial    int
}

// Replica states. pending: waiting for a node; starting: placed, not yet
// answering its readiness probe; ready: serving; stopping: the control
// plane wants it gone, it gets no new requests and its agent drains it;
// stopped and failed are ended.
const (
	ReplicaPending  = "pending"
	ReplicaStarting = "starting"
	ReplicaReady    = "ready"
	ReplicaStopping = "stopping"
	ReplicaStopped  = "stopped"
	ReplicaFailed   = "failed"
)

// Replica is one running copy of one version of a service.
type Replica struct {
	ID       int64           `json:"id"`
	Name     string          `json:"name"` // service-ID
	Service  string          `json:"service"`
	Version  int             `json:"version"`
	Spec     json.RawMessage `json:"spec"` // what the agent runs (api.ReplicaSpec)
	Pool     string          `json:"pool"`
	Priority string          `json:"priority"`
	StandIn  bool            `json:"standIn,omitempty"` // on-demand while spot is short
	Req      spec.Resources  `json:"resources"`
	State    string          `json:"state"`
	Node     string          `json:"node,omitempty"`
	Addr     string          `json:"addr,omitempty"`
	// Noticed is set by ListReplicas when the replica's node has an
	// eviction notice: it must get no new requests.
	Noticed   bool      `json:"noticed,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
	StateAt   time.Time `json:"stateAt"`
	ReadyAt   time.Time `json:"readyAt,omitzero"`
	EndedAt   time.Time `json:"endedAt,omitzero"`
	Reason    string    `json:"reason,omitempty"`
}

// ReplicaName is how a replica is named: its service and its ID.
func ReplicaName(service string, id int64) string { return service + "-" + strconv.FormatInt(id, 10) }

// ReplicaStop names a replica to stop and why.
type ReplicaStop struct {
	ID     int64
	Reason string
}

// ReplicaAssignment places one pending replica on a node.
type ReplicaAssignment struct {
	ID   int64
	Node string
}

// ReplicaStatus is what an agent says of one replica it runs.
type ReplicaStatus struct {
	ID      int64
	Ready   bool   // answers its readiness probe
	Addr    string // host:port it serves on
	Exited  bool   // its process ended on its own
	Message string // why it exited, or why it is not ready
}

// GatewayStat is what one gateway measured of one service, or, from
// ServiceTraffic, what the gateways measured together.
type GatewayStat struct {
	QPS float64 // requests completed per second over the gateway's QPS window
	// P50 and P99 are the latencies, in seconds, that clients saw over the
	// last minute.
	P50, P99 float64
	// Requests completed in the last minute, answered or not; Errors are
	// those that got a 5xx or an answer that broke off.
	Requests, Errors int64
	// InFlight is the requests outstanding at once, averaged over time
	// over the autoscaler's stable window (60s), InFlightPanic over its
	// panic window (6s); InFlightMax the most at once in the stable
	// window. Summed over gateways.
	InFlight, InFlightPanic float64
	InFlightMax             int64
	// Gateways is how many gateways reported (filled by ServiceTraffic).
	Gateways int
}

// ReplicaFailures counts a service's replicas that failed recently.
type ReplicaFailures struct {
	Count int
	Last  time.Time
}
