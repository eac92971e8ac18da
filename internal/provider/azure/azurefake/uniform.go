package azurefake

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"

	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7/fake"
)

// A Uniform scale set makes its VMs itself, all from its one VM profile,
// as many as its SKU capacity says: a PATCH of sku.capacity adds instances
// (numbered 0, 1, … and never reused) or removes the highest-numbered,
// DeleteInstances removes the named ones and lowers the capacity. Each
// instance has its own tags and user data, which a PUT of the instance
// changes. A Spot instance is evicted as the profile's eviction policy
// says: deleted (the capacity drops), or deallocated.

// Instance is a Uniform scale set's VM as the cloud holds it.
type Instance struct {
	ResourceGroup, ScaleSet string
	Model                   armcompute.VirtualMachineScaleSetVM
	Power                   string // running, deallocated
	Evictions               int
}

// InstanceID is the instance's ID in its scale set.
func (i *Instance) InstanceID() string { return *i.Model.InstanceID }

// UserData is the instance's user data, decoded.
func (i *Instance) UserData() string {
	b, _ := base64.StdEncoding.DecodeString(deref(i.Model.Properties.UserData))
	return string(b)
}

// uniform is a Uniform scale set's instances.
type uniform struct {
	instances map[string]*Instance
	next      int
}

// AddUniformScaleSet makes a Uniform scale set of VMs of size with no
// instances (az vmss create --orchestration-mode Uniform --instance-count
// 0), Spot with eviction policy eviction or Regular as priority says.
func (c *Cloud) AddUniformScaleSet(rg, name, location, size string, priority armcompute.VirtualMachinePriorityTypes, eviction armcompute.VirtualMachineEvictionPolicyTypes) {
	c.AddScaleSet(rg, name, location, armcompute.OrchestrationModeUniform)
	c.mu.Lock()
	defer c.mu.Unlock()
	ss := c.scaleSets[key(rg, name)]
	ss.SKU = &armcompute.SKU{Name: to.Ptr(size), Tier: to.Ptr("Standard"), Capacity: to.Ptr[int64](0)}
	profile := &armcompute.VirtualMachineScaleSetVMProfile{Priority: to.Ptr(priority),
		OSProfile: &armcompute.VirtualMachineScaleSetOSProfile{ComputerNamePrefix: to.Ptr(name), AdminUsername: to.Ptr("spotml")}}
	if priority == armcompute.VirtualMachinePriorityTypesSpot {
		profile.EvictionPolicy = to.Ptr(eviction)
		profile.BillingProfile = &armcompute.BillingProfile{MaxPrice: to.Ptr(-1.0)}
	}
	ss.Properties.VirtualMachineProfile = profile
	ss.Properties.UpgradePolicy = &armcompute.UpgradePolicy{Mode: to.Ptr(armcompute.UpgradeModeAutomatic)}
	if c.uniform == nil {
		c.uniform = map[string]*uniform{}
	}
	c.uniform[key(rg, name)] = &uniform{instances: map[string]*Instance{}}
}

// Instances returns copies of a Uniform scale set's instances, by ID.
func (c *Cloud) Instances(rg, scaleSet string) []Instance {
	c.mu.Lock()
	defer c.mu.Unlock()
	u := c.uniform[key(rg, scaleSet)]
	if u == nil {
		return nil
	}
	var out []Instance
	for _, id := range u.ids() {
		out = append(out, *u.instances[id])
	}
	return out
}

// Capacity is a scale set's SKU capacity.
func (c *Cloud) Capacity(rg, scaleSet string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ss := c.scaleSets[key(rg, scaleSet)]; ss != nil && ss.SKU != nil {
		return deref(ss.SKU.Capacity)
	}
	return 0
}

// EvictInstance is the platform evicting a Spot instance of a Uniform
// scale set, as its profile's eviction policy says.
func (c *Cloud) EvictInstance(rg, scaleSet, id string) error {
	c.mu.Lock()
	u, ss := c.uniform[key(rg, scaleSet)], c.scaleSets[key(rg, scaleSet)]
	if u == nil || u.instances[id] == nil {
		c.mu.Unlock()
		return fmt.Errorf("instance %s of %s not found", id, scaleSet)
	}
	p := ss.Properties.VirtualMachineProfile
	if deref(p.Priority) != armcompute.VirtualMachinePriorityTypesSpot {
		c.mu.Unlock()
		return fmt.Errorf("scale set %s is not Spot", scaleSet)
	}
	in := u.instances[id]
	if deref(p.EvictionPolicy) == armcompute.VirtualMachineEvictionPolicyTypesDeallocate {
		in.Power = "deallocated"
		in.Evictions++
	} else {
		delete(u.instances, id)
		*ss.SKU.Capacity--
	}
	ended := *in
	c.mu.Unlock()
	c.hooks(nil, []Instance{ended})
	return nil
}

// hooks calls the instance hooks for booted and ended instances, without
// the cloud's lock.
func (c *Cloud) hooks(booted, ended []Instance) {
	for _, i := range ended {
		if c.OnInstanceEnd != nil {
			c.OnInstanceEnd(i)
		}
	}
	for _, i := range booted {
		if c.OnInstanceBoot != nil {
			c.OnInstanceBoot(i)
		}
	}
}

func (u *uniform) ids() []string {
	ids := make([]string, 0, len(u.instances))
	for id := range u.instances {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { a, _ := strconv.Atoi(ids[i]); b, _ := strconv.Atoi(ids[j]); return a < b })
	return ids
}

func (c *Cloud) uniformServers(f *fake.ServerFactory) {
	f.VirtualMachineScaleSetsServer.BeginUpdate = c.updateScaleSet
	f.VirtualMachineScaleSetsServer.BeginDeleteInstances = c.deleteInstances
	f.VirtualMachineScaleSetVMsServer = fake.VirtualMachineScaleSetVMsServer{
		NewListPager:     c.listInstances,
		Get:              c.getInstance,
		BeginUpdate:      c.updateInstance,
		BeginStart:       c.startInstance,
		SimulateEviction: c.simulateInstanceEviction,
	}
}

// lookupUniform finds a Uniform scale set; the caller holds c.mu.
func (c *Cloud) lookupUniform(rg, name string) (*armcompute.VirtualMachineScaleSet, *uniform, string) {
	ss := c.scaleSets[key(rg, name)]
	if ss == nil {
		return nil, nil, "ResourceNotFound"
	}
	u := c.uniform[key(rg, name)]
	if u == nil {
		return nil, nil, "OperationNotAllowed" // a Flexible scale set has no instance IDs
	}
	return ss, u, ""
}

// updateScaleSet is PATCH virtualMachineScaleSets/{name}: the capacity, and
// the VM profile's custom data (for instances made from then on).
func (c *Cloud) updateScaleSet(_ context.Context, rg, name string, upd armcompute.VirtualMachineScaleSetUpdate, _ *armcompute.VirtualMachineScaleSetsClientBeginUpdateOptions) (resp azfake.PollerResponder[armcompute.VirtualMachineScaleSetsClientUpdateResponse], errResp azfake.ErrorResponder) {
	var booted, ended []Instance
	c.mu.Lock()
	defer func() { c.mu.Unlock(); c.hooks(booted, ended) }()
	c.count("VirtualMachineScaleSets.BeginUpdate")
	ss, u, code := c.lookupUniform(rg, name)
	if code != "" {
		errResp.SetResponseError(http.StatusNotFound, code)
		return
	}
	profile := ss.Properties.VirtualMachineProfile
	if up := upd.Properties; up != nil && up.VirtualMachineProfile != nil && up.VirtualMachineProfile.OSProfile != nil && up.VirtualMachineProfile.OSProfile.CustomData != nil {
		cd := *up.VirtualMachineProfile.OSProfile.CustomData
		if _, err := base64.StdEncoding.DecodeString(cd); err != nil || len(cd) > 87380 {
			errResp.SetResponseError(http.StatusBadRequest, "InvalidParameter")
			return
		}
		profile.OSProfile.CustomData = to.Ptr(cd)
	}
	if upd.SKU != nil && upd.SKU.Capacity != nil {
		want, have := *upd.SKU.Capacity, *ss.SKU.Capacity
		size := strings.ToLower(deref(ss.SKU.Name))
		spot := deref(profile.Priority) == armcompute.VirtualMachinePriorityTypesSpot
		switch {
		case want < 0 || want > 1000:
			errResp.SetResponseError(http.StatusBadRequest, "InvalidParameter")
			return
		case want > have && spot && c.noSpot[size]:
			errResp.SetResponseError(http.StatusConflict, "SkuNotAvailable")
			return
		}
		for ; have < want; have++ {
			id := strconv.Itoa(u.next)
			u.next++
			u.instances[id] = &Instance{ResourceGroup: rg, ScaleSet: name, Power: "running", Model: armcompute.VirtualMachineScaleSetVM{
				ID:         to.Ptr(deref(ss.ID) + "/virtualMachines/" + id),
				InstanceID: to.Ptr(id),
				Name:       to.Ptr(name + "_" + id),
				Type:       to.Ptr("Microsoft.Compute/virtualMachineScaleSets/virtualMachines"),
				Location:   ss.Location,
				SKU:        &armcompute.SKU{Name: ss.SKU.Name, Tier: ss.SKU.Tier},
				Properties: &armcompute.VirtualMachineScaleSetVMProperties{ProvisioningState: to.Ptr("Succeeded"), LatestModelApplied: to.Ptr(true),
					OSProfile: &armcompute.OSProfile{ComputerName: to.Ptr(fmt.Sprintf("%s%06x", deref(profile.OSProfile.ComputerNamePrefix), u.next-1)),
						CustomData: profile.OSProfile.CustomData}},
			}}
			booted = append(booted, *u.instances[id])
		}
		ids := u.ids()
		for ; have > want; have-- {
			ended = append(ended, *u.instances[ids[have-1]])
			delete(u.instances, ids[have-1])
		}
		ss.SKU.Capacity = to.Ptr(want)
	}
	resp.SetTerminalResponse(http.StatusOK, armcompute.VirtualMachineScaleSetsClientUpdateResponse{VirtualMachineScaleSet: *ss}, nil)
	return
}

// deleteInstances is POST virtualMachineScaleSets/{name}/delete: the
// named instances go and the capacity drops by as many. IDs not in the
// scale set are refused.
func (c *Cloud) deleteInstances(_ context.Context, rg, name string, ids armcompute.VirtualMachineScaleSetVMInstanceRequiredIDs, _ *armcompute.VirtualMachineScaleSetsClientBeginDeleteInstancesOptions) (resp azfake.PollerResponder[armcompute.VirtualMachineScaleSetsClientDeleteInstancesResponse], errResp azfake.ErrorResponder) {
	var ended []Instance
	c.mu.Lock()
	defer func() { c.mu.Unlock(); c.hooks(nil, ended) }()
	c.count("VirtualMachineScaleSets.BeginDeleteInstances")
	ss, u, code := c.lookupUniform(rg, name)
	if code != "" {
		errResp.SetResponseError(http.StatusNotFound, code)
		return
	}
	if len(ids.InstanceIDs) == 0 {
		errResp.SetResponseError(http.StatusBadRequest, "InvalidParameter")
		return
	}
	for _, id := range ids.InstanceIDs {
		if u.instances[deref(id)] == nil {
			errResp.SetResponseError(http.StatusNotFound, "NotFound")
			return
		}
	}
	for _, id := range ids.InstanceIDs {
		if in := u.instances[deref(id)]; in.Power == "running" {
			ended = append(ended, *in)
		}
		delete(u.instances, deref(id))
		*ss.SKU.Capacity--
	}
	resp.SetTerminalResponse(http.StatusOK, armcompute.VirtualMachineScaleSetsClientDeleteInstancesResponse{}, nil)
	return
}

// view is an instance as GET and list return it.
func (i *Instance) view(instanceView, userData bool) armcompute.VirtualMachineScaleSetVM {
	m := i.Model
	p := *m.Properties
	if !userData {
		p.UserData = nil
	}
	if p.OSProfile != nil {
		os := *p.OSProfile
		os.CustomData = nil // never returned
		p.OSProfile = &os
	}
	if instanceView {
		p.InstanceView = &armcompute.VirtualMachineScaleSetVMInstanceView{Statuses: []*armcompute.InstanceViewStatus{
			{Code: to.Ptr("ProvisioningState/succeeded")}, {Code: to.Ptr("PowerState/" + i.Power)},
		}}
	}
	m.Properties = &p
	return m
}

func (c *Cloud) listInstances(rg, name string, opts *armcompute.VirtualMachineScaleSetVMsClientListOptions) (resp azfake.PagerResponder[armcompute.VirtualMachineScaleSetVMsClientListResponse]) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.count("VirtualMachineScaleSetVMs.NewListPager")
	_, u, code := c.lookupUniform(rg, name)
	if code != "" {
		resp.AddResponseError(http.StatusNotFound, code)
		return
	}
	expand := ""
	if opts != nil {
		expand = deref(opts.Expand)
	}
	if expand != "" && expand != "instanceView" {
		resp.AddResponseError(http.StatusBadRequest, "InvalidParameter")
		return
	}
	ids := u.ids()
	// Pages of two, so that paging is exercised.
	for i := 0; i < len(ids) || i == 0; i += 2 {
		var page []*armcompute.VirtualMachineScaleSetVM
		for _, id := range ids[i:min(i+2, len(ids))] {
			vm := u.instances[id].view(expand == "instanceView", false)
			page = append(page, &vm)
		}
		resp.AddPage(http.StatusOK, armcompute.VirtualMachineScaleSetVMsClientListResponse{VirtualMachineScaleSetVMListResult: armcompute.VirtualMachineScaleSetVMListResult{Value: page}}, nil)
		if len(ids) == 0 {
			break
		}
	}
	return
}

func (c *Cloud) instance(rg, name, id string) (*armcompute.VirtualMachineScaleSet, *Instance, string) {
	ss, u, code := c.lookupUniform(rg, name)
	if code != "" {
		return nil, nil, code
	}
	in := u.instances[id]
	if in == nil {
		return nil, nil, "NotFound"
	}
	return ss, in, ""
}

func (c *Cloud) getInstance(_ context.Context, rg, name, id string, opts *armcompute.VirtualMachineScaleSetVMsClientGetOptions) (resp azfake.Responder[armcompute.VirtualMachineScaleSetVMsClientGetResponse], errResp azfake.ErrorResponder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.count("VirtualMachineScaleSetVMs.Get")
	_, in, code := c.instance(rg, name, id)
	if code != "" {
		errResp.SetResponseError(http.StatusNotFound, code)
		return
	}
	var expand armcompute.InstanceViewTypes
	if opts != nil && opts.Expand != nil {
		expand = *opts.Expand
	}
	resp.SetResponse(http.StatusOK, armcompute.VirtualMachineScaleSetVMsClientGetResponse{
		VirtualMachineScaleSetVM: in.view(expand == armcompute.InstanceViewTypesInstanceView, expand == armcompute.InstanceViewTypesUserData)}, nil)
	return
}

// updateInstance is PUT virtualMachineScaleSets/{name}/virtualMachines/{id}:
// the instance's tags and user data change; what it was made from does
// not.
func (c *Cloud) updateInstance(_ context.Context, rg, name, id string, vm armcompute.VirtualMachineScaleSetVM, _ *armcompute.VirtualMachineScaleSetVMsClientBeginUpdateOptions) (resp azfake.PollerResponder[armcompute.VirtualMachineScaleSetVMsClientUpdateResponse], errResp azfake.ErrorResponder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.count("VirtualMachineScaleSetVMs.BeginUpdate")
	_, in, code := c.instance(rg, name, id)
	if code != "" {
		errResp.SetResponseError(http.StatusNotFound, code)
		return
	}
	if vm.Properties != nil && vm.Properties.UserData != nil {
		if _, err := base64.StdEncoding.DecodeString(*vm.Properties.UserData); err != nil {
			errResp.SetResponseError(http.StatusBadRequest, "InvalidParameter")
			return
		}
		in.Model.Properties.UserData = vm.Properties.UserData
	}
	in.Model.Tags = vm.Tags
	resp.SetTerminalResponse(http.StatusOK, armcompute.VirtualMachineScaleSetVMsClientUpdateResponse{VirtualMachineScaleSetVM: in.view(false, false)}, nil)
	return
}

// startInstance starts a deallocated instance; a Spot one needs capacity
// again.
func (c *Cloud) startInstance(_ context.Context, rg, name, id string, _ *armcompute.VirtualMachineScaleSetVMsClientBeginStartOptions) (resp azfake.PollerResponder[armcompute.VirtualMachineScaleSetVMsClientStartResponse], errResp azfake.ErrorResponder) {
	var booted []Instance
	c.mu.Lock()
	defer func() { c.mu.Unlock(); c.hooks(booted, nil) }()
	c.count("VirtualMachineScaleSetVMs.BeginStart")
	ss, in, code := c.instance(rg, name, id)
	if code != "" {
		errResp.SetResponseError(http.StatusNotFound, code)
		return
	}
	spot := deref(ss.Properties.VirtualMachineProfile.Priority) == armcompute.VirtualMachinePriorityTypesSpot
	if spot && c.noSpot[strings.ToLower(deref(ss.SKU.Name))] && in.Power != "running" {
		errResp.SetResponseError(http.StatusConflict, "SkuNotAvailable")
		return
	}
	if in.Power != "running" {
		in.Power = "running"
		booted = append(booted, *in)
	}
	resp.SetTerminalResponse(http.StatusOK, armcompute.VirtualMachineScaleSetVMsClientStartResponse{}, nil)
	return
}

func (c *Cloud) simulateInstanceEviction(_ context.Context, rg, name, id string, _ *armcompute.VirtualMachineScaleSetVMsClientSimulateEvictionOptions) (resp azfake.Responder[armcompute.VirtualMachineScaleSetVMsClientSimulateEvictionResponse], errResp azfake.ErrorResponder) {
	c.mu.Lock()
	c.count("VirtualMachineScaleSetVMs.SimulateEviction")
	ss, _, code := c.instance(rg, name, id)
	spot := code == "" && deref(ss.Properties.VirtualMachineProfile.Priority) == armcompute.VirtualMachinePriorityTypesSpot
	c.mu.Unlock()
	switch {
	case code != "":
		errResp.SetResponseError(http.StatusNotFound, code)
		return
	case !spot:
		errResp.SetResponseError(http.StatusConflict, "OperationNotAllowed")
		return
	}
	if err := c.EvictInstance(rg, name, id); err != nil {
		errResp.SetError(err)
		return
	}
	resp.SetResponse(http.StatusNoContent, armcompute.VirtualMachineScaleSetVMsClientSimulateEvictionResponse{}, nil)
	return
}

// ProfileCustomData is a Uniform scale set's VM profile's custom data,
// decoded.
func (c *Cloud) ProfileCustomData(rg, scaleSet string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	ss := c.scaleSets[key(rg, scaleSet)]
	if ss == nil || ss.Properties.VirtualMachineProfile == nil {
		return ""
	}
	b, _ := base64.StdEncoding.DecodeString(deref(ss.Properties.VirtualMachineProfile.OSProfile.CustomData))
	return string(b)
}
