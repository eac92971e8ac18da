package azure

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// A pool with orchestration: Uniform runs its nodes as the instances of a
// Uniform scale set, which makes its VMs itself from its one VM profile:
// spotml cannot create a VM in it, only raise its capacity. A launch
// raises the capacity by one (waiting for Azure to finish, so that a
// refusal for capacity is known at once), claims the new instance with
// the node's tags and gives it the node's identity as the instance's own
// user data, which the start script waits for. Stop deletes the instance
// (DeleteInstances, which lowers the capacity with it); an evicted
// instance is deleted or deallocated as the scale set's profile says, and
// a deallocated one is started again under the same node name. The
// profile's priority and eviction policy are the scale set's, fixed when
// it was made: a pool must say the same. spotml writes its bootstrap into
// the profile's custom data.

// InstanceID is the resource ID of a Uniform scale set's instance: a
// node's provider ID in a Uniform pool.
func InstanceID(sub, rg, scaleSet, id string) string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/virtualMachineScaleSets/%s/virtualMachines/%s", sub, rg, scaleSet, id)
}

// parseInstanceID splits a Uniform instance's resource ID.
func parseInstanceID(id string) (sub, rg, scaleSet, instance string, err error) {
	p := strings.Split(strings.TrimPrefix(id, "/"), "/")
	if len(p) != 10 || !strings.EqualFold(p[0], "subscriptions") || !strings.EqualFold(p[2], "resourceGroups") ||
		!strings.EqualFold(p[4], "providers") || !strings.EqualFold(p[5], "Microsoft.Compute") ||
		!strings.EqualFold(p[6], "virtualMachineScaleSets") || !strings.EqualFold(p[8], "virtualMachines") {
		return "", "", "", "", fmt.Errorf("provider ID %q is not a scale set instance's resource ID", id)
	}
	return p[1], p[3], p[7], p[9], nil
}

// checkUniform checks that a Uniform scale set's profile makes the VMs the
// pool says.
func checkUniform(pool spec.Pool, got armcompute.VirtualMachineScaleSet) error {
	a := pool.Spec.Azure
	props := deref(got.Properties)
	profile := deref(props.VirtualMachineProfile)
	prio := deref(profile.Priority)
	spot := prio == armcompute.VirtualMachinePriorityTypesSpot || prio == armcompute.VirtualMachinePriorityTypesLow
	if want := pool.Spec.Priority == spec.PrioritySpot; spot != want {
		return fmt.Errorf("spec.priority: %q, but the VM profile of Uniform scale set %s is %s; a Uniform scale set's priority is fixed: use a scale set made with --priority %s",
			pool.Spec.Priority, a.ScaleSet, prio, map[bool]string{true: "Spot", false: "Regular"}[want])
	}
	if spot {
		dealloc := deref(profile.EvictionPolicy) == armcompute.VirtualMachineEvictionPolicyTypesDeallocate
		if want := pool.Spec.EvictionPolicy == spec.EvictionDeallocate; dealloc != want {
			return fmt.Errorf("spec.evictionPolicy: %q, but Uniform scale set %s evicts by %s; say the scale set's policy", pool.Spec.EvictionPolicy, a.ScaleSet, deref(profile.EvictionPolicy))
		}
	}
	if got.SKU == nil || !strings.EqualFold(deref(got.SKU.Name), pool.Spec.InstanceType) {
		size := ""
		if got.SKU != nil {
			size = deref(got.SKU.Name)
		}
		return fmt.Errorf("spec.instanceType: %q, but Uniform scale set %s makes %s VMs; say its size", pool.Spec.InstanceType, a.ScaleSet, size)
	}
	return nil
}

// launchUniform adds one instance to a Uniform pool's scale set for n, or
// starts n's deallocated instance again.
func (p *Provider) launchUniform(ctx context.Context, f *armcompute.ClientFactory, req control.LaunchRequest) (control.Launched, error) {
	pool, n := req.Pool, req.Node
	a := pool.Spec.Azure
	// One launch at a time: two that read the same capacity would add one
	// instance between them, and claim it twice.
	p.uniformMu.Lock()
	defer p.uniformMu.Unlock()
	insts := f.NewVirtualMachineScaleSetVMsClient()
	if req.Restart && n.ProviderID != "" {
		started, err := p.restartInstance(ctx, insts, n, req.Credential)
		if err != nil || started {
			return control.Launched{ProviderID: n.ProviderID}, err
		}
		// The instance is gone: a new one takes the node's name.
	}
	if _, err := p.lookupScaleSet(ctx, f, pool); err != nil {
		return control.Launched{}, err
	}
	sets := f.NewVirtualMachineScaleSetsClient()
	got, err := sets.Get(ctx, a.ResourceGroup, a.ScaleSet, nil)
	if err != nil {
		return control.Launched{}, fmt.Errorf("get scale set %s: %w", a.ScaleSet, err)
	}
	before, err := p.listInstances(ctx, insts, a, false)
	if err != nil {
		return control.Launched{}, err
	}
	upd := armcompute.VirtualMachineScaleSetUpdate{SKU: &armcompute.SKU{Capacity: to.Ptr(deref(deref(got.SKU).Capacity) + 1)}}
	ci, err := UniformBootstrap(p.cfg, a.Setup).CloudInit()
	if err != nil {
		return control.Launched{}, err
	}
	custom := base64String(ci)
	p.mu.Lock()
	written := p.profiles[strings.ToLower(ScaleSetID(a))] == custom
	p.mu.Unlock()
	if !written {
		// New instances boot spotml's bootstrap; existing ones keep theirs.
		upd.Properties = &armcompute.VirtualMachineScaleSetUpdateProperties{VirtualMachineProfile: &armcompute.VirtualMachineScaleSetUpdateVMProfile{
			OSProfile: &armcompute.VirtualMachineScaleSetUpdateOSProfile{CustomData: to.Ptr(custom)}}}
	}
	poller, err := sets.BeginUpdate(ctx, a.ResourceGroup, a.ScaleSet, upd, nil)
	if err == nil {
		_, err = poller.PollUntilDone(ctx, &runtimePollOptions)
	}
	if err != nil {
		if CapacityCodes[code(err)] {
			return control.Launched{}, fmt.Errorf("%w: %s %s in scale set %s: %s", control.ErrNoCapacity, pool.Spec.Priority, n.InstanceType, a.ScaleSet, code(err))
		}
		return control.Launched{}, fmt.Errorf("scale out %s for %s: %w", a.ScaleSet, n.Name, err)
	}
	p.mu.Lock()
	p.profiles[strings.ToLower(ScaleSetID(a))] = custom
	p.mu.Unlock()
	after, err := p.listInstances(ctx, insts, a, false)
	if err != nil {
		return control.Launched{}, err
	}
	for id, vm := range after {
		if _, old := before[id]; old || deref(vm.Tags[TagNode]) != "" {
			continue
		}
		vm.Tags = map[string]*string{TagPool: to.Ptr(pool.Metadata.Name), TagNode: to.Ptr(n.Name)}
		vm.Properties.UserData = to.Ptr(Identity(n.Name, req.Credential))
		poller, err := insts.BeginUpdate(ctx, a.ResourceGroup, a.ScaleSet, id, *vm, nil)
		if err == nil {
			_, err = poller.PollUntilDone(ctx, &runtimePollOptions)
		}
		if err != nil {
			return control.Launched{}, fmt.Errorf("give instance %s of %s to node %s: %w", id, a.ScaleSet, n.Name, err)
		}
		p.log.Info("node launched", "node", n.Name, "scaleSet", a.ScaleSet, "instance", id, "priority", pool.Spec.Priority)
		return control.Launched{ProviderID: InstanceID(a.Subscription, a.ResourceGroup, a.ScaleSet, id)}, nil
	}
	return control.Launched{}, fmt.Errorf("scale out %s for %s: no new instance appeared", a.ScaleSet, n.Name)
}

// listInstances lists a Uniform scale set's instances by ID.
func (p *Provider) listInstances(ctx context.Context, insts *armcompute.VirtualMachineScaleSetVMsClient, a *spec.AzurePool, view bool) (map[string]*armcompute.VirtualMachineScaleSetVM, error) {
	var opts *armcompute.VirtualMachineScaleSetVMsClientListOptions
	if view {
		opts = &armcompute.VirtualMachineScaleSetVMsClientListOptions{Expand: to.Ptr("instanceView")}
	}
	out := map[string]*armcompute.VirtualMachineScaleSetVM{}
	pager := insts.NewListPager(a.ResourceGroup, a.ScaleSet, opts)
	for pager.More() {
		page, err := pager.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("list instances of scale set %s: %w", a.ScaleSet, err)
		}
		for _, vm := range page.Value {
			out[deref(vm.InstanceID)] = vm
		}
	}
	return out, nil
}

// restartInstance gives a deallocated instance this incarnation's
// identity and starts it; false if the instance no longer exists.
func (p *Provider) restartInstance(ctx context.Context, insts *armcompute.VirtualMachineScaleSetVMsClient, n store.Node, credential string) (bool, error) {
	_, rg, ss, id, err := parseInstanceID(n.ProviderID)
	if err != nil {
		return false, fmt.Errorf("node %s: %w", n.Name, err)
	}
	got, err := insts.Get(ctx, rg, ss, id, nil)
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("node %s: get instance: %w", n.Name, err)
	}
	vm := got.VirtualMachineScaleSetVM
	vm.Properties.UserData = to.Ptr(Identity(n.Name, credential))
	poller, err := insts.BeginUpdate(ctx, rg, ss, id, vm, nil)
	if err == nil {
		_, err = poller.PollUntilDone(ctx, &runtimePollOptions)
	}
	if isNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("node %s: set user data: %w", n.Name, err)
	}
	p.mu.Lock()
	delete(p.cleared, strings.ToLower(n.ProviderID))
	p.restarted[n.Name] = p.now()
	p.mu.Unlock()
	if _, err := insts.BeginStart(ctx, rg, ss, id, nil); err != nil {
		if CapacityCodes[code(err)] {
			return false, fmt.Errorf("%w: start instance %s of %s: %s", control.ErrNoCapacity, id, ss, code(err))
		}
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("node %s: start instance: %w", n.Name, err)
	}
	p.log.Info("node restarted", "node", n.Name, "scaleSet", ss, "instance", id)
	return true, nil
}

// deleteInstance removes one instance of a Uniform scale set; one already
// gone is deleted.
func (p *Provider) deleteInstance(ctx context.Context, f *armcompute.ClientFactory, rg, ss, id string) error {
	_, err := f.NewVirtualMachineScaleSetsClient().BeginDeleteInstances(ctx, rg, ss,
		armcompute.VirtualMachineScaleSetVMInstanceRequiredIDs{InstanceIDs: []*string{to.Ptr(id)}}, nil)
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("delete instance %s of %s: %w", id, ss, err)
	}
	return nil
}

// passUniform compares a Uniform scale set's instances with its pools'
// nodes.
func (p *Provider) passUniform(ctx context.Context, sink control.Sink, a spec.AzurePool, pools []spec.Pool, allPools map[string]bool, nodes []store.Node) error {
	f, err := p.factory(a.Subscription)
	if err != nil {
		return err
	}
	insts := f.NewVirtualMachineScaleSetVMsClient()
	got, err := p.listInstances(ctx, insts, &a, true)
	if err != nil {
		return err
	}
	inPool := map[string]bool{}
	for _, pl := range pools {
		inPool[pl.Metadata.Name] = true
	}
	known := map[string]store.Node{}
	var errs []error
	for _, n := range nodes {
		if !inPool[n.Pool] || n.ProviderID == "" {
			continue
		}
		_, _, _, id, err := parseInstanceID(n.ProviderID)
		if err != nil {
			continue
		}
		known[id] = n
		if !store.Live(n.State) {
			continue
		}
		var o *observed
		if vm := got[id]; vm != nil {
			o = observeInstance(vm, func(ctx context.Context) error {
				cur, err := insts.Get(ctx, a.ResourceGroup, a.ScaleSet, id, nil)
				if err != nil {
					return err
				}
				m := cur.VirtualMachineScaleSetVM
				m.Properties.UserData = to.Ptr("")
				_, err = insts.BeginUpdate(ctx, a.ResourceGroup, a.ScaleSet, id, m, nil)
				return err
			})
		}
		errs = append(errs, p.check(ctx, sink, pools, n, o))
	}
	// Instances claimed for a node that has ended, or for a pool since
	// deleted, are deleted again.
	for id, vm := range got {
		pool, node := deref(vm.Tags[TagPool]), deref(vm.Tags[TagNode])
		if pool == "" || node == "" || strings.EqualFold(deref(deref(vm.Properties).ProvisioningState), "Deleting") {
			continue
		}
		n, ok := known[id]
		switch {
		case !allPools[pool], ok && !store.Live(n.State) && n.State != store.NodeDeallocated:
			p.log.Info("deleting instance whose node has ended", "scaleSet", a.ScaleSet, "instance", id, "node", node)
			errs = append(errs, p.deleteInstance(ctx, f, a.ResourceGroup, a.ScaleSet, id))
		}
	}
	return errors.Join(errs...)
}

// observeInstance reads a Uniform instance as check needs it.
func observeInstance(vm *armcompute.VirtualMachineScaleSetVM, clear func(context.Context) error) *observed {
	props := deref(vm.Properties)
	o := &observed{provisioning: strings.ToLower(deref(props.ProvisioningState)), size: deref(deref(vm.SKU).Name), clear: clear}
	if len(vm.Zones) > 0 {
		o.zone = deref(vm.Zones[0])
	}
	if props.InstanceView != nil {
		o.statuses(props.InstanceView.Statuses)
	}
	return o
}
