package aws

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/provider/poll"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// Run lists the aws pools' instances every interval and reports what EC2
// did to them, until ctx ends.
func (p *Provider) Run(ctx context.Context, sink control.Sink, view control.View) error {
	return poll.Every(ctx, p.cfg.Interval, p.log, "aws", func(ctx context.Context) error { return p.Pass(ctx, sink, view) })
}

// Pass is one look at every region with aws pools.
func (p *Provider) Pass(ctx context.Context, sink control.Sink, view control.View) error {
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
		if pl.Spec.Spec.Provider == Name && pl.Spec.Spec.AWS != nil {
			p.seen[pl.Spec.Spec.AWS.Region] = true
		}
	}
	regions := slices.Sorted(maps.Keys(p.seen))
	p.mu.Unlock()
	var errs []error
	for _, r := range regions {
		errs = append(errs, p.passRegion(ctx, sink, r, all, nodes))
	}
	return errors.Join(errs...)
}

func (p *Provider) passRegion(ctx context.Context, sink control.Sink, region string, pools map[string]spec.Pool, nodes []store.Node) error {
	c, err := p.client(region)
	if err != nil {
		return err
	}
	got := map[string]types.Instance{} // by instance ID
	pager := ec2.NewDescribeInstancesPaginator(c, &ec2.DescribeInstancesInput{
		Filters:    []types.Filter{{Name: awssdk.String("tag-key"), Values: []string{TagPool}}},
		MaxResults: awssdk.Int32(1000),
	})
	for pager.HasMorePages() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("describe instances in %s: %w", region, err)
		}
		for _, r := range page.Reservations {
			for _, in := range r.Instances {
				got[awssdk.ToString(in.InstanceId)] = in
			}
		}
	}
	var errs []error
	owned := map[string]store.Node{} // instance ID → node
	for _, n := range nodes {
		pl, ok := pools[n.Pool]
		if !ok || pl.Spec.Provider != Name || pl.Spec.AWS == nil || pl.Spec.AWS.Region != region || n.ProviderID == "" {
			continue
		}
		_, id, err := parseID(n.ProviderID)
		if err != nil {
			continue
		}
		owned[id] = n
		if store.Live(n.State) {
			in, ok := got[id]
			errs = append(errs, p.check(ctx, sink, pl, n, id, in, ok))
		}
	}
	// Instances whose node has ended, or whose pool is gone, are
	// terminated (again).
	for id, in := range got {
		st := in.State.Name
		if st == types.InstanceStateNameTerminated || st == types.InstanceStateNameShuttingDown {
			continue
		}
		pool := tag(in, TagPool)
		n, mine := owned[id]
		_, poolExists := pools[pool]
		switch {
		case mine && store.Live(n.State):
		case !poolExists, mine:
			p.log.Info("terminating instance whose node has ended", "instance", id, "pool", pool)
			errs = append(errs, terminate(ctx, c, id))
		}
	}
	return errors.Join(errs...)
}

// check reports what became of one live node's instance.
func (p *Provider) check(ctx context.Context, sink control.Sink, pl spec.Pool, n store.Node, id string, in types.Instance, found bool) error {
	spot := pl.Spec.Priority == spec.PrioritySpot
	if !found {
		if spot {
			return sink.Gone(ctx, n.Name, store.NodePreempted, "SpotInterruption: the instance is gone")
		}
		return sink.Gone(ctx, n.Name, store.NodeLost, "the instance is gone")
	}
	reason := ""
	if in.StateReason != nil {
		reason = awssdk.ToString(in.StateReason.Code)
	}
	switch in.State.Name {
	case types.InstanceStateNameShuttingDown, types.InstanceStateNameTerminated:
		if reason == "Server.SpotInstanceTermination" {
			return sink.Gone(ctx, n.Name, store.NodePreempted, "SpotInterruption: EC2 terminated the Spot instance ("+reason+")")
		}
		return sink.Gone(ctx, n.Name, store.NodeLost, "the instance was terminated outside spotml ("+reason+")")
	case types.InstanceStateNameStopping, types.InstanceStateNameStopped:
		return sink.Gone(ctx, n.Name, store.NodeLost, "the instance was stopped outside spotml ("+reason+")")
	}
	p.mu.Lock()
	placed := p.placed[id]
	p.mu.Unlock()
	if placed {
		return nil
	}
	var at control.Placement
	if in.Placement != nil && awssdk.ToString(in.Placement.AvailabilityZone) != n.Zone {
		at.Zone = awssdk.ToString(in.Placement.AvailabilityZone)
	}
	if t := string(in.InstanceType); t != "" && t != n.InstanceType {
		at.InstanceType = t
	}
	if at != (control.Placement{}) {
		if err := sink.Placed(ctx, n.Name, at); err != nil {
			return err
		}
	}
	p.mu.Lock()
	p.placed[id] = true
	p.mu.Unlock()
	return nil
}

func tag(in types.Instance, key string) string {
	for _, t := range in.Tags {
		if awssdk.ToString(t.Key) == key {
			return awssdk.ToString(t.Value)
		}
	}
	return ""
}
