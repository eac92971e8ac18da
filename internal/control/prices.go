package control

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// DefaultRepriceEvery is how often running nodes of pools on cloud
// prices are priced again. The providers cache what they read (AWS 5
// minutes, Azure 15), so most passes cost no cloud call.
const DefaultRepriceEvery = time.Minute

// cloudPrices says whether a pool bills its nodes at the cloud's current
// Spot price (prices: cloud in its aws or azure block, a spot pool).
func cloudPrices(pool spec.Pool) bool {
	prices := ""
	switch {
	case pool.Spec.AWS != nil:
		prices = pool.Spec.AWS.Prices
	case pool.Spec.Azure != nil:
		prices = pool.Spec.Azure.Prices
	}
	return prices == spec.PricesCloud && pool.Spec.Priority == spec.PrioritySpot
}

// Reprice bills each live node of a pool on cloud prices at the cloud's
// current Spot price of its instance type in its zone, from now on: a
// price that changed closes the node's billing run and opens one at the
// new price (SetNodePlacement), so the cost report integrates the price
// over the node's life, and the node gets a PriceChanged event. A price
// that cannot be read leaves the node at the price it has: cloud prices
// are cached, never required.
func (p *Plane) Reprice(ctx context.Context) error {
	pools, err := p.store.ListPools(ctx)
	if err != nil {
		return err
	}
	byName := map[string]spec.Pool{}
	for _, pl := range pools {
		if cloudPrices(pl.Spec) {
			byName[pl.Spec.Metadata.Name] = pl.Spec
		}
	}
	if len(byName) == 0 {
		return nil
	}
	nodes, err := p.store.LiveNodes(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, n := range nodes {
		pool, ok := byName[n.Pool]
		if !ok || n.Priority != spec.PrioritySpot {
			continue
		}
		pr, ok := p.providers[pool.Spec.Provider].(Pricer)
		if !ok {
			continue
		}
		// The node's own type: a fleet may have put it on another.
		pool.Spec.InstanceType = n.InstanceType
		price, err := pr.SpotPrice(ctx, pool, n.Zone)
		if err != nil || price <= 0 {
			p.log.Debug("cloud price unavailable; the node keeps its price", "node", n.Name, "price", n.PricePerHour, "err", err)
			continue
		}
		if math.Abs(price-n.PricePerHour) <= 1e-9*max(price, n.PricePerHour) {
			continue
		}
		if err := p.store.SetNodePlacement(ctx, n.Name, store.Placement{PricePerHour: price}); err != nil {
			if !errors.Is(err, store.ErrNotFound) {
				errs = append(errs, err)
			}
			continue
		}
		zone := n.Zone
		if zone == "" {
			zone = "the region's lowest"
		}
		errs = append(errs, p.store.AddEvent(ctx, "PriceChanged", "node/"+n.Name, "CloudPrice",
			fmt.Sprintf("the cloud's Spot price of %s (%s) is now $%.4f/h, was $%.4f/h; billed at it from now", n.InstanceType, zone, price, n.PricePerHour)))
	}
	return errors.Join(errs...)
}

// runRepricer prices the nodes of pools on cloud prices again every
// RepriceEvery, until ctx ends.
func (p *Plane) runRepricer(ctx context.Context) {
	t := time.NewTicker(p.opt.RepriceEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := p.fenced(p.Reprice(ctx)); err != nil && ctx.Err() == nil {
			p.log.Warn("reprice nodes", "err", err)
		}
	}
}
