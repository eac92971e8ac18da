package control

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spotml/spotml/internal/store"
)

// The Plane is the Sink and the View its providers get.
var (
	_ Sink = (*Plane)(nil)
	_ View = (*Plane)(nil)
)

// Notice records a node's eviction notice (the earliest deadline wins) and
// starts a pass at once, so replacements launch on the notice.
func (p *Plane) Notice(ctx context.Context, node string, deadline time.Time, source string) error {
	changed, err := p.store.SetNotice(ctx, node, deadline, source)
	if errors.Is(err, store.ErrNotFound) {
		return nil // forgotten already: nothing to warn
	}
	if err != nil {
		return p.fenced(err)
	}
	if changed {
		p.log.Info("eviction notice", "node", node, "deadline", deadline, "source", source)
		p.Kick()
	}
	return nil
}

var _ RiskSink = (*Plane)(nil)

// AtRisk records an early warning: the pool scaler launches a replacement
// beside the node, which keeps its work.
func (p *Plane) AtRisk(ctx context.Context, node string, at time.Time, source string) error {
	changed, err := p.store.SetAtRisk(ctx, node, at, source)
	if errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrConflict) {
		return nil // forgotten or ended already: nothing to replace
	}
	if err != nil {
		return p.fenced(err)
	}
	if changed {
		p.log.Info("node at risk", "node", node, "since", at, "source", source)
		p.Kick()
	}
	return nil
}

// Gone ends a node the platform took away; its work goes back to the queue
// without spending retries.
func (p *Plane) Gone(ctx context.Context, node, state, reason string) error {
	switch state {
	case store.NodePreempted, store.NodeDeallocated, store.NodeLost:
	default:
		return fmt.Errorf("node %s gone: state %q is not preempted, deallocated or lost", node, state)
	}
	err := p.store.EndNode(ctx, node, state, reason)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return p.fenced(err)
	}
	p.Kick()
	return nil
}

// Shortage forgets a launched node that got no capacity, as a launch the
// platform refused at once, and removes what the provider made for it.
func (p *Plane) Shortage(ctx context.Context, node, reason string) error {
	n, err := p.store.GetNode(ctx, node)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	if n.State != store.NodeProvisioning || !n.HeartbeatAt.IsZero() {
		return nil // it joined after all: not a shortage
	}
	if err := p.launchFailed(ctx, n.Pool, n.Name, n.Incarnation > 1, fmt.Errorf("%w: %s", ErrNoCapacity, reason)); err != nil {
		return err
	}
	if err := p.stop(ctx, n); err != nil {
		return err
	}
	p.Kick()
	return nil
}

// Placed records where the platform put a node, and its prices for the
// instance type it got.
func (p *Plane) Placed(ctx context.Context, node string, pl Placement) error {
	n, err := p.store.GetNode(ctx, node)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	price, onDemand := n.PricePerHour, n.OnDemandPrice
	if pl.InstanceType != "" && pl.InstanceType != n.InstanceType {
		pool, err := p.store.GetPool(ctx, n.Pool)
		if err != nil {
			return err
		}
		ps := pool.Spec
		ps.Spec.InstanceType = pl.InstanceType
		price, onDemand = Prices(ps)
		if prov, ok := p.providers[ps.Spec.Provider]; ok {
			// A pool on cloud prices is billed at the cloud's price of
			// the type it got, from here on (the billing run splits).
			at := n
			at.PricePerHour = price
			if pl.Zone != "" {
				at.Zone = pl.Zone
			}
			price = p.cloudPrice(ctx, prov, ps, at)
		}
	}
	return p.store.SetNodePlacement(ctx, node, store.Placement{
		Zone: pl.Zone, InstanceType: pl.InstanceType, Capacity: pl.Capacity, Host: pl.Host,
		PricePerHour: price, OnDemandPrice: onDemand,
	})
}

// ListPools is the providers' view of the pools.
func (p *Plane) ListPools(ctx context.Context) ([]store.Pool, error) { return p.store.ListPools(ctx) }

// ListNodes is the providers' view of the nodes.
func (p *Plane) ListNodes(ctx context.Context) ([]store.Node, error) { return p.store.ListNodes(ctx) }

// Evict gives a node its platform's eviction notice, where its provider can
// do that (the simulated market can; a real cloud cannot be asked to).
func (p *Plane) Evict(ctx context.Context, node string, noticeFor time.Duration) error {
	n, err := p.store.GetNode(ctx, node)
	if err != nil {
		return err
	}
	pool, err := p.store.GetPool(ctx, n.Pool)
	if err != nil {
		return fmt.Errorf("node %s: its pool is gone: %w", node, err)
	}
	prov := p.providers[pool.Spec.Spec.Provider]
	ev, ok := prov.(Evicter)
	if !ok {
		return store.Conflict("node %s is in pool %s of provider %q, which cannot evict on request", node, n.Pool, pool.Spec.Spec.Provider)
	}
	if !store.Live(n.State) {
		return store.Conflict("node %s is already %s", node, n.State)
	}
	return ev.Evict(ctx, node, noticeFor)
}
