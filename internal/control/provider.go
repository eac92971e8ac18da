package control

import (
	"context"
	"errors"
	"time"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// The provider seam: what a platform (the simulated local market,
// Kubernetes, a cloud's VMs) implements so that the control plane can run
// work on it. The control plane owns the store; a provider never writes it.
// It is told what to launch and stop, and reports what its platform did on
// its own (a notice, a node gone, a launch that found no capacity) through
// the Sink it is handed when it runs.

// ErrNoCapacity is what a provider returns when the platform has no
// capacity for a launch right now; the scaler backs the pool off and
// retries later, and services get their on-demand stand-ins.
var ErrNoCapacity = errors.New("no capacity")

// Provider creates and removes nodes on one platform.
type Provider interface {
	// Launch asks the platform for a node the control plane has already
	// recorded (state provisioning). It returns once the request is made;
	// the node becomes ready when its agent registers. A platform that
	// knows at once that it has no capacity returns an error wrapping
	// ErrNoCapacity; one that learns it later (a pod left unschedulable)
	// reports Sink.Shortage.
	Launch(ctx context.Context, req LaunchRequest) (Launched, error)
	// Stop makes sure the node and everything it runs are gone. It is
	// called again for a node already stopped, and must then succeed.
	Stop(ctx context.Context, node store.Node) error
}

// LaunchRequest is one node to launch.
type LaunchRequest struct {
	Pool spec.Pool
	Node store.Node // as recorded: name, pool, priority, zone, instance type, capacity
	// Credential is the node's own secret, bound to its name. The
	// provider hands it to the node's agent privately (a file the agent
	// deletes, a Kubernetes Secret, VM metadata readable only by root);
	// it must never reach the node's tasks.
	Credential string
	// Restart is set when a deallocated node is started again: the
	// provider brings back the same node (its disk) under Node.ProviderID.
	Restart bool
}

// Launched is what a launch made.
type Launched struct {
	// ProviderID is the provider's own name for the node, opaque to the
	// control plane and stored with it: a work directory, a pod's
	// namespace/name, a VM's resource ID. Stop and Restart get it back.
	ProviderID string
}

// Sink is how a provider reports what its platform did. Every method is
// idempotent: a provider that is unsure whether it reported something
// reports it again.
type Sink interface {
	// Notice records that a node will be taken away at deadline (the
	// platform's notice, or the pod's grace period if sooner). source
	// names the signal ("karpenter.sh/disrupted taint", "provider", …).
	// A later deadline never replaces an earlier one.
	Notice(ctx context.Context, node string, deadline time.Time, source string) error
	// Gone records that a node no longer exists: state is one of
	// store.NodePreempted (a spot eviction), store.NodeDeallocated
	// (stopped, disk kept) or store.NodeLost (vanished unannounced);
	// reason says what happened. Its work is requeued without spending
	// retries: losing a node is never the work's failure (a task whose
	// own process fails is reported by the agent, not the provider).
	Gone(ctx context.Context, node, state, reason string) error
	// Shortage reports that a launched node cannot get capacity (its pod
	// stayed unschedulable past the limit): the node is forgotten as if
	// Launch had returned ErrNoCapacity, the pool backs off, and services
	// that need capacity get on-demand stand-ins.
	Shortage(ctx context.Context, node, reason string) error
	// Placed records where the platform put a node (known only once it is
	// scheduled): its zone, instance type and capacity; the node's prices
	// are looked up again for that instance type. Zero fields are left as
	// they are.
	Placed(ctx context.Context, node string, p Placement) error
}

// RiskSink is a Sink that also takes early warnings: a platform that
// says a node is at elevated risk of being taken before it gives notice
// (AWS's rebalance recommendation) reports it here. The control plane
// implements it; a provider type-asserts its Sink to use it.
type RiskSink interface {
	Sink
	// AtRisk records that node is at elevated risk since at. The node
	// stops counting toward its pool's size, so a replacement is
	// launched, but it is not drained: its work stays until a notice
	// comes. Idempotent; a later warning never moves the first.
	AtRisk(ctx context.Context, node string, at time.Time, source string) error
}

// Placement is where a node landed.
type Placement struct {
	Zone         string
	InstanceType string
	Capacity     spec.Resources
	// Host is the platform's machine the node runs on (the Kubernetes
	// node's name), shown to users; empty if it is the node itself.
	Host string
}

// View is what a provider may read of the control plane's state: its
// pools and their nodes, e.g. to take up again after a restart.
type View interface {
	ListPools(ctx context.Context) ([]store.Pool, error)
	ListNodes(ctx context.Context) ([]store.Node, error)
}

// Runner is a provider with work of its own while the control plane runs
// (a simulated market, informers on a cluster). Run returns when ctx ends.
type Runner interface {
	Run(ctx context.Context, sink Sink, view View) error
}

// Pricer is a provider that can tell a cloud's current Spot price of a
// pool's instance type (in zone, if not empty), for pools that ask for
// cloud prices. It caches what it read; an error makes the control plane
// use the price table and record why.
type Pricer interface {
	SpotPrice(ctx context.Context, pool spec.Pool, zone string) (float64, error)
}

// Evicter is a provider that can evict a node on request (the CLI's and
// console's Evict): the node gets its platform's notice and is taken away
// when it runs out. noticeFor 0 means the pool's usual notice.
type Evicter interface {
	Evict(ctx context.Context, node string, noticeFor time.Duration) error
}
