package gcp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"cloud.google.com/go/compute/apiv1/computepb"
	"google.golang.org/api/iterator"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/provider/poll"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// Run lists the gcp pools' VMs every interval and reports to the sink
// what Compute Engine did to them, until ctx ends. What it keeps between
// passes only saves calls: a restarted control plane's first pass reads
// the view and the zones anew.
func (p *Provider) Run(ctx context.Context, sink control.Sink, view control.View) error {
	p.mu.Lock()
	p.view = view
	p.mu.Unlock()
	return poll.Every(ctx, p.cfg.Interval, p.log, "gcp", func(ctx context.Context) error { return p.Pass(ctx, sink, view) })
}

// Pass is one look at every zone with gcp pools.
func (p *Provider) Pass(ctx context.Context, sink control.Sink, view control.View) error {
	// Nodes first, VMs second: a node launched in between has its VM in
	// the list.
	nodes, err := view.ListNodes(ctx)
	if err != nil {
		return err
	}
	pools, err := view.ListPools(ctx)
	if err != nil {
		return err
	}
	all := map[string]spec.Pool{}
	p.mu.Lock()
	for _, pl := range pools {
		all[pl.Spec.Metadata.Name] = pl.Spec
		if pl.Spec.Spec.Provider == Name && pl.Spec.Spec.GCP != nil {
			for _, z := range pl.Spec.Spec.Zones {
				p.seen[[2]string{pl.Spec.Spec.GCP.Project, z}] = true
			}
		}
	}
	// Zones of pools deleted since are still looked at: their VMs are
	// deleted.
	zones := slices.SortedFunc(maps.Keys(p.seen), func(a, b [2]string) int {
		return cmpPair(a, b)
	})
	p.mu.Unlock()
	var errs []error
	for _, z := range zones {
		errs = append(errs, p.passZone(ctx, sink, z[0], z[1], all, nodes))
	}
	return errors.Join(errs...)
}

func cmpPair(a, b [2]string) int {
	if a[0] != b[0] {
		if a[0] < b[0] {
			return -1
		}
		return 1
	}
	switch {
	case a[1] < b[1]:
		return -1
	case a[1] > b[1]:
		return 1
	}
	return 0
}

// passZone compares one zone's spotml VMs with the nodes placed there.
func (p *Provider) passZone(ctx context.Context, sink control.Sink, project, zone string, pools map[string]spec.Pool, nodes []store.Node) error {
	got := map[string]*computepb.Instance{} // by name
	it := p.c.Instances.List(ctx, &computepb.ListInstancesRequest{
		Project: project, Zone: zone, Filter: ptr("labels." + LabelPool + ":*"), MaxResults: ptr(uint32(500)),
	})
	for {
		in, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			return fmt.Errorf("list VMs of project %s in %s: %w", project, zone, err)
		}
		got[in.GetName()] = in
	}
	var errs []error
	known := map[string]store.Node{}
	for _, n := range nodes {
		pl, ok := pools[n.Pool]
		if !ok || pl.Spec.Provider != Name || n.ProviderID == "" {
			continue
		}
		pr, z, name, err := parseID(n.ProviderID)
		if err != nil || pr != project || z != zone {
			continue
		}
		known[name] = n
		if store.Live(n.State) {
			errs = append(errs, p.check(ctx, sink, pl, n, got[name]))
		}
	}
	// A VM labelled as a pool's whose node has ended (or was never
	// recorded: a crash between inserting it and recording the node) is
	// deleted again: Stop does not wait for deletions to finish.
	for name, in := range got {
		pool := in.GetLabels()[LabelPool]
		if in.GetLabels()[LabelNode] == "" || in.GetStatus() == "STOPPING" && in.GetScheduling().GetInstanceTerminationAction() == "DELETE" {
			continue
		}
		_, poolExists := pools[pool]
		n, ok := known[name]
		switch {
		case ok && (store.Live(n.State) || n.State == store.NodeDeallocated):
			continue
		case !poolExists, ok:
		default:
			created, err := time.Parse(time.RFC3339, in.GetCreationTimestamp())
			if err != nil || p.now().Sub(created) < 10*time.Minute {
				continue // perhaps a launch whose node is being recorded
			}
		}
		p.log.Info("deleting VM whose node has ended", "vm", name, "zone", zone, "pool", pool)
		errs = append(errs, p.deleteVM(ctx, project, zone, name))
	}
	return errors.Join(errs...)
}

// check reports what became of one live node's VM.
func (p *Provider) check(ctx context.Context, sink control.Sink, pl spec.Pool, n store.Node, in *computepb.Instance) error {
	p.mu.Lock()
	op, pending := p.pending[n.Name]
	p.mu.Unlock()
	if pending {
		got, err := p.c.Operations.Get(ctx, &computepb.GetZoneOperationRequest{Project: op.project, Zone: op.zone, Operation: op.name})
		if err != nil && !isNotFound(err) {
			return fmt.Errorf("node %s: get insert operation: %w", n.Name, err)
		}
		if err == nil && got.GetStatus() != computepb.Operation_DONE {
			return nil // still inserting
		}
		p.mu.Lock()
		delete(p.pending, n.Name)
		p.mu.Unlock()
		if err := opError(got); err != nil {
			if c := capacityCode(err); c != "" {
				p.markShort(op.pool, op.zone)
				return sink.Shortage(ctx, n.Name, "Compute Engine could not make the VM in "+op.zone+": "+err.Error())
			}
			return sink.Gone(ctx, n.Name, store.NodeLost, "inserting the VM failed: "+err.Error())
		}
	}
	spot := pl.Spec.Priority == spec.PrioritySpot
	p.mu.Lock()
	listed := p.listed[n.ProviderID]
	if in != nil {
		p.listed[n.ProviderID] = true
	}
	p.mu.Unlock()
	if in == nil {
		if !listed && n.State == store.NodeProvisioning && n.HeartbeatAt.IsZero() && p.now().Sub(n.CreatedAt) < insertGrace {
			return nil // its insert may not show in the list yet
		}
		if spot {
			return sink.Gone(ctx, n.Name, store.NodePreempted, "Preempted: Compute Engine deleted the Spot VM (instanceTerminationAction DELETE)")
		}
		return sink.Gone(ctx, n.Name, store.NodeLost, "the VM was deleted outside spotml")
	}
	switch st := in.GetStatus(); st {
	case "STOPPING", "TERMINATED", "SUSPENDING", "SUSPENDED":
		if in.GetScheduling().GetInstanceTerminationAction() == "DELETE" && spot {
			return sink.Gone(ctx, n.Name, store.NodePreempted, "Preempted: Compute Engine is deleting the Spot VM (instanceTerminationAction DELETE)")
		}
		if spot {
			return sink.Gone(ctx, n.Name, store.NodeDeallocated, "Preempted: Compute Engine stopped the Spot VM (instanceTerminationAction STOP); its disk is kept")
		}
		return sink.Gone(ctx, n.Name, store.NodeDeallocated, "the VM was stopped outside spotml ("+st+"); its disk is kept")
	}
	var errs []error
	p.mu.Lock()
	placed, cleared := p.placed[n.ProviderID], p.cleared[n.ProviderID]
	p.mu.Unlock()
	if !placed {
		var at control.Placement
		if z := last(in.GetZone()); z != "" && z != n.Zone {
			at.Zone = z
		}
		if t := last(in.GetMachineType()); t != "" && t != n.InstanceType {
			at.InstanceType = t
		}
		err := error(nil)
		if at != (control.Placement{}) {
			err = sink.Placed(ctx, n.Name, at)
		}
		if err == nil {
			p.mu.Lock()
			p.placed[n.ProviderID] = true
			p.mu.Unlock()
		}
		errs = append(errs, err)
	}
	if !cleared && n.State != store.NodeProvisioning {
		// The agent has registered: its credential leaves the metadata
		// server, where any task could read it.
		_, has := item(in.GetMetadata(), KeyCredential)
		if has {
			project, zone, name, _ := parseID(n.ProviderID)
			_, err := p.c.Instances.SetMetadata(ctx, &computepb.SetMetadataInstanceRequest{Project: project, Zone: zone, Instance: name,
				MetadataResource: withItem(in.GetMetadata(), KeyCredential, nil)})
			if err != nil {
				errs = append(errs, fmt.Errorf("node %s: remove credential from metadata: %w", n.Name, err))
				return errors.Join(errs...)
			}
		}
		p.mu.Lock()
		p.cleared[n.ProviderID] = true
		p.mu.Unlock()
	}
	return errors.Join(errs...)
}
