package control

import (
	"context"
	"time"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// SampleEvery is how often the control plane records a sample of every
// service by default (Options.SampleEvery).
const SampleEvery = 10 * time.Second

// Sample records one store.ServiceSample per service, taken now: its
// traffic as the gateways last reported it (within QPSMaxAge) and its
// replicas.
func (p *Plane) Sample(ctx context.Context) error {
	svcs, err := p.store.ListServices(ctx, QPSMaxAge)
	if err != nil || len(svcs) == 0 {
		return err
	}
	traffic, err := p.store.ServiceTraffic(ctx, QPSMaxAge)
	if err != nil {
		return err
	}
	now := p.now()
	samples := make(map[string]store.ServiceSample, len(svcs))
	for _, svc := range svcs {
		tr := traffic[svc.Name]
		spot, onDemand := svc.Ready[spec.PrioritySpot], svc.Ready[spec.PriorityOnDemand]
		samples[svc.Name] = store.ServiceSample{
			Time: now, QPS: tr.QPS, P50: tr.P50, P99: tr.P99, Requests: tr.Requests, Errors: tr.Errors,
			InFlight: tr.InFlight, InFlightMax: tr.InFlightMax,
			Ready: spot + onDemand, Desired: svc.Desired, Spot: spot, OnDemand: onDemand,
		}
	}
	return p.store.AddServiceSamples(ctx, samples)
}

// runSampler calls Sample every Options.SampleEvery until ctx ends.
func (p *Plane) runSampler(ctx context.Context) {
	t := time.NewTicker(p.opt.SampleEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := p.fenced(p.Sample(ctx)); err != nil && ctx.Err() == nil {
			p.log.Error("service sample failed", "err", err)
		}
	}
}
