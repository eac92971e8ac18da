package azure

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/provider/poll"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// restartGrace is how long after starting a deallocated VM again its
// power state may still read deallocated (Azure reports "starting" only
// once the start is under way) without the node counting as evicted.
const restartGrace = 2 * time.Minute

// Run polls the scale set of every azure pool and reports to the sink
// what Azure did to the nodes' VMs, until ctx ends. It keeps nothing that
// a restarted control plane needs: each pass reads the view and the
// scale sets anew.
func (p *Provider) Run(ctx context.Context, sink control.Sink, view control.View) error {
	p.mu.Lock()
	p.view = view
	p.mu.Unlock()
	return poll.Every(ctx, p.cfg.Interval, p.log, "azure", func(ctx context.Context) error { return p.Pass(ctx, sink, view) })
}

// Pass is one poll of every azure pool's scale set.
func (p *Provider) Pass(ctx context.Context, sink control.Sink, view control.View) error {
	// Nodes first, VMs second: a node launched in between has its VM in
	// the list (Launch creates the VM before the node records it).
	nodes, err := view.ListNodes(ctx)
	if err != nil {
		return err
	}
	pools, err := view.ListPools(ctx)
	if err != nil {
		return err
	}
	byScaleSet := map[string][]spec.Pool{}
	allPools := map[string]bool{}
	p.mu.Lock()
	for _, pl := range pools {
		allPools[pl.Spec.Metadata.Name] = true
		if pl.Spec.Spec.Provider == Name && pl.Spec.Spec.Azure != nil {
			id := strings.ToLower(ScaleSetID(pl.Spec.Spec.Azure))
			byScaleSet[id] = append(byScaleSet[id], pl.Spec)
			p.seen[id] = *pl.Spec.Spec.Azure
		}
	}
	seen := maps.Clone(p.seen)
	p.mu.Unlock()
	var errs []error
	// Scale sets of pools deleted since are still looked at: their VMs
	// are deleted.
	for id, a := range seen {
		errs = append(errs, p.passScaleSet(ctx, sink, a, byScaleSet[id], allPools, nodes))
	}
	return errors.Join(errs...)
}

// passScaleSet compares one scale set's VMs with its pools' nodes.
func (p *Provider) passScaleSet(ctx context.Context, sink control.Sink, a spec.AzurePool, pools []spec.Pool, allPools map[string]bool, nodes []store.Node) error {
	if a.Orchestration == spec.AzureUniform {
		return p.passUniform(ctx, sink, a, pools, allPools, nodes)
	}
	f, err := p.factory(a.Subscription)
	if err != nil {
		return err
	}
	vms := f.NewVirtualMachinesClient()
	filter := fmt.Sprintf("'virtualMachineScaleSet/id' eq '%s'", ScaleSetID(&a))
	pager := vms.NewListPager(a.ResourceGroup, &armcompute.VirtualMachinesClientListOptions{
		Filter: to.Ptr(filter), Expand: to.Ptr(armcompute.ExpandTypeForListVMsInstanceView),
	})
	got := map[string]*armcompute.VirtualMachine{} // by lower-case name
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return fmt.Errorf("list VMs of scale set %s: %w", a.ScaleSet, err)
		}
		for _, vm := range page.Value {
			got[strings.ToLower(deref(vm.Name))] = vm
		}
	}
	inPool := map[string]bool{}
	for _, pl := range pools {
		inPool[pl.Metadata.Name] = true
	}
	known := map[string]store.Node{}
	var errs []error
	for _, n := range nodes {
		if !inPool[n.Pool] {
			continue
		}
		known[strings.ToLower(n.Name)] = n
		if !store.Live(n.State) || n.ProviderID == "" {
			continue
		}
		var o *observed
		if vm := got[strings.ToLower(n.Name)]; vm != nil {
			o = observeVM(vm, func(ctx context.Context) error {
				_, rg, name, err := parseVMID(n.ProviderID)
				if err == nil {
					_, err = vms.BeginUpdate(ctx, rg, name, armcompute.VirtualMachineUpdate{
						Properties: &armcompute.VirtualMachineProperties{UserData: to.Ptr("")},
					}, nil)
				}
				return err
			})
		}
		errs = append(errs, p.check(ctx, sink, pools, n, o))
	}
	// A VM tagged as a pool's whose node has ended (or was never
	// recorded: a crash between creating it and recording the node) is
	// deleted again: Stop does not wait for deletions to finish.
	for name, vm := range got {
		pool := deref(vm.Tags[TagPool])
		if pool == "" || deref(vm.Tags[TagNode]) == "" {
			continue // not spotml's
		}
		if strings.EqualFold(deref(deref(vm.Properties).ProvisioningState), "Deleting") {
			continue // on its way already
		}
		if !allPools[pool] {
			p.log.Info("deleting VM of a deleted pool", "vm", deref(vm.Name), "pool", pool)
			errs = append(errs, p.deleteVM(ctx, f, a.ResourceGroup, deref(vm.Name)))
			continue
		}
		if !inPool[pool] {
			continue // another scale set's pool
		}
		n, ok := known[name]
		if ok && (store.Live(n.State) || n.State == store.NodeDeallocated) {
			continue
		}
		if ok || p.now().Sub(deref(vm.Properties.TimeCreated)) > 10*time.Minute {
			p.log.Info("deleting VM whose node has ended", "vm", deref(vm.Name))
			errs = append(errs, p.deleteVM(ctx, f, a.ResourceGroup, deref(vm.Name)))
		}
	}
	return errors.Join(errs...)
}

// observed is what check needs of a node's VM (a Flexible scale set's VM
// or a Uniform one's instance): its states, size, zone, and how to empty
// its user data.
type observed struct {
	provisioning, power, failure string
	size, zone                   string
	clear                        func(context.Context) error
}

// observeVM reads a Flexible scale set's VM.
func observeVM(vm *armcompute.VirtualMachine, clear func(context.Context) error) *observed {
	props := deref(vm.Properties)
	o := &observed{provisioning: strings.ToLower(deref(props.ProvisioningState)), size: string(deref(deref(props.HardwareProfile).VMSize)), clear: clear}
	if len(vm.Zones) > 0 {
		o.zone = deref(vm.Zones[0])
	}
	if props.InstanceView != nil {
		o.statuses(props.InstanceView.Statuses)
	}
	return o
}

// statuses reads an instance view's statuses: the power state and
// provisioning state (the parts after "PowerState/" and
// "ProvisioningState/"), and the error code a failed provisioning ended
// with.
func (o *observed) statuses(ss []*armcompute.InstanceViewStatus) {
	for _, s := range ss {
		c := deref(s.Code)
		switch {
		case strings.HasPrefix(c, "PowerState/"):
			o.power = strings.TrimPrefix(c, "PowerState/")
		case strings.HasPrefix(c, "ProvisioningState/failed"):
			o.provisioning = "failed"
			o.failure = strings.TrimPrefix(strings.TrimPrefix(c, "ProvisioningState/failed"), "/")
		}
	}
}

// check reports what became of one live node's VM (nil: it is gone).
func (p *Provider) check(ctx context.Context, sink control.Sink, pools []spec.Pool, n store.Node, vm *observed) error {
	spot := false
	for _, pl := range pools {
		if pl.Metadata.Name == n.Pool {
			spot = pl.Spec.Priority == spec.PrioritySpot
		}
	}
	if vm == nil {
		if spot {
			return sink.Gone(ctx, n.Name, store.NodePreempted, "SpotEviction: the VM was deleted (Spot eviction, evictionPolicy Delete)")
		}
		return sink.Gone(ctx, n.Name, store.NodeLost, "VMDeleted: the VM was deleted outside spotml")
	}
	provisioning, power, failure := vm.provisioning, vm.power, vm.failure
	if provisioning == "failed" {
		if n.State == store.NodeProvisioning && n.HeartbeatAt.IsZero() {
			if CapacityCodes[failure] {
				return sink.Shortage(ctx, n.Name, "Azure could not allocate the VM: "+failure)
			}
			return sink.Gone(ctx, n.Name, store.NodeLost, "VM provisioning failed: "+failure)
		}
	}
	p.mu.Lock()
	restartedAt, restarted := p.restarted[n.Name]
	p.mu.Unlock()
	switch power {
	case "deallocated", "deallocating", "stopped", "stopping":
		if restarted && p.now().Sub(restartedAt) < restartGrace && power == "deallocated" {
			return nil // not started yet
		}
		if spot {
			return sink.Gone(ctx, n.Name, store.NodeDeallocated, "SpotEviction: the VM was deallocated (Spot eviction, evictionPolicy Deallocate); its disk is kept")
		}
		return sink.Gone(ctx, n.Name, store.NodeDeallocated, "VMDeallocated: the VM was "+power+" outside spotml; its disk is kept")
	case "running":
		p.mu.Lock()
		delete(p.restarted, n.Name)
		p.mu.Unlock()
	}
	id := strings.ToLower(n.ProviderID)
	p.mu.Lock()
	placed, cleared := p.placed[id], p.cleared[id]
	p.mu.Unlock()
	var errs []error
	if !placed {
		pl := control.Placement{InstanceType: vm.size, Zone: vm.zone}
		if strings.EqualFold(pl.InstanceType, n.InstanceType) {
			pl.InstanceType = ""
		}
		if pl.Zone == n.Zone {
			pl.Zone = ""
		}
		err := error(nil)
		if pl != (control.Placement{}) {
			err = sink.Placed(ctx, n.Name, pl)
		}
		if err == nil {
			p.mu.Lock()
			p.placed[id] = true
			p.mu.Unlock()
		}
		errs = append(errs, err)
	}
	if !cleared && n.State != store.NodeProvisioning {
		// The agent has registered: its credential leaves the metadata
		// service, where any task could read it.
		err := vm.clear(ctx)
		if err == nil {
			p.mu.Lock()
			p.cleared[id] = true
			p.mu.Unlock()
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
