// Package azurefake is an in-memory Azure compute control plane behind the
// Azure SDK's own fake server transports (armcompute/v7/fake): VM Scale
// Sets and the VMs in them, behaving as Azure documents for the calls
// spotml's azure provider makes. Spot VMs are refused for lack of
// capacity (SkuNotAvailable) or price (SpotPriceGreaterThanProvidedMaxPrice),
// fail allocation after being accepted, and are evicted as their eviction
// policy says: deleted, or deallocated with their disk kept. A test may
// hook a VM's boot and end to run something in its place.
package azurefake

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/arm"
	azfake "github.com/Azure/azure-sdk-for-go/sdk/azcore/fake"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7/fake"
)

// VM is a VM as the cloud holds it.
type VM struct {
	ResourceGroup string
	Model         armcompute.VirtualMachine // as created, with Azure's read-only fields
	Power         string                    // running, deallocated
	Failed        string                    // the code its provisioning failed with
	Evictions     int
}

// Name is the VM's name.
func (v *VM) Name() string { return *v.Model.Name }

// UserData is the VM's user data, decoded.
func (v *VM) UserData() string {
	b, _ := base64.StdEncoding.DecodeString(deref(v.Model.Properties.UserData))
	return string(b)
}

// CustomData is the VM's custom data, decoded.
func (v *VM) CustomData() string {
	b, _ := base64.StdEncoding.DecodeString(deref(v.Model.Properties.OSProfile.CustomData))
	return string(b)
}

// Cloud is one subscription's compute resources.
type Cloud struct {
	Subscription string

	// OnBoot is called (without the cloud's lock) when a VM starts
	// running: created, or started again; OnEnd when it stops running:
	// deleted, deallocated or evicted. Both may be nil.
	OnBoot func(v VM)
	OnEnd  func(v VM)
	// OnInstanceBoot and OnInstanceEnd are the same for the instances of
	// Uniform scale sets: made by a capacity raise or started again;
	// deleted, removed by a capacity cut, deallocated or evicted.
	OnInstanceBoot func(i Instance)
	OnInstanceEnd  func(i Instance)

	mu        sync.Mutex
	scaleSets map[string]*armcompute.VirtualMachineScaleSet // by rg/name, lower case
	vms       map[string]*VM                                // by rg/name, lower case
	noSpot    map[string]bool                               // VM sizes without spot capacity
	failAlloc map[string]string                             // VM size → the code its allocation fails with after acceptance
	spotPrice map[string]float64                            // VM size → current spot price
	uniform   map[string]*uniform                           // Uniform scale sets' instances, by rg/name
	calls     map[string]int
}

// New returns an empty subscription.
func New(subscription string) *Cloud {
	return &Cloud{Subscription: subscription, scaleSets: map[string]*armcompute.VirtualMachineScaleSet{},
		vms: map[string]*VM{}, noSpot: map[string]bool{}, failAlloc: map[string]string{},
		spotPrice: map[string]float64{}, calls: map[string]int{}}
}

func key(rg, name string) string { return strings.ToLower(rg + "/" + name) }

// AddScaleSet makes a scale set (as az vmss create would).
func (c *Cloud) AddScaleSet(rg, name, location string, mode armcompute.OrchestrationMode) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.scaleSets[key(rg, name)] = &armcompute.VirtualMachineScaleSet{
		ID:       to.Ptr(fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/virtualMachineScaleSets/%s", c.Subscription, rg, name)),
		Name:     to.Ptr(name),
		Type:     to.Ptr("Microsoft.Compute/virtualMachineScaleSets"),
		Location: to.Ptr(location),
		Properties: &armcompute.VirtualMachineScaleSetProperties{
			OrchestrationMode:        to.Ptr(mode),
			PlatformFaultDomainCount: to.Ptr[int32](1),
			ProvisioningState:        to.Ptr("Succeeded"),
		},
	}
}

// SetSpotCapacity says whether Spot VMs of a size can be allocated now.
func (c *Cloud) SetSpotCapacity(size string, available bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.noSpot[strings.ToLower(size)] = !available
}

// SetAllocationFailure makes the VMs of a size accepted but then failed
// (provisioning state Failed, AllocationFailed), as Azure does when the
// allocation fails after the request was taken.
func (c *Cloud) SetAllocationFailure(size string, fail bool) {
	code := ""
	if fail {
		code = "AllocationFailed"
	}
	c.SetAllocationFailureCode(size, code)
}

// SetAllocationFailureCode is SetAllocationFailure with the code the
// allocation fails with (AllocationFailed, ZonalAllocationFailed,
// OverconstrainedAllocationRequest, …); "" lifts it.
func (c *Cloud) SetAllocationFailureCode(size, code string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failAlloc[strings.ToLower(size)] = code
}

// SetSpotPrice sets a size's current spot price, checked against max prices.
func (c *Cloud) SetSpotPrice(size string, price float64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.spotPrice[strings.ToLower(size)] = price
}

// VMs returns copies of the VMs, by name.
func (c *Cloud) VMs() []VM {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]VM, 0, len(c.vms))
	for _, v := range c.vms {
		out = append(out, *v)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name() < out[j].Name() })
	return out
}

// VM returns a copy of one VM.
func (c *Cloud) VM(rg, name string) (VM, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.vms[key(rg, name)]
	if !ok {
		return VM{}, false
	}
	return *v, true
}

// Calls is how often each operation was called ("VirtualMachines.BeginDelete").
func (c *Cloud) Calls(op string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls[op]
}

// Evict is the platform evicting a Spot VM, as it does when it needs the
// capacity back: per the VM's eviction policy, the VM is deleted (with the
// disks and NICs whose deleteOption is Delete) or deallocated.
func (c *Cloud) Evict(rg, name string) error {
	c.mu.Lock()
	v, ok := c.vms[key(rg, name)]
	if !ok {
		c.mu.Unlock()
		return fmt.Errorf("VM %s not found", name)
	}
	if deref(v.Model.Properties.Priority) != armcompute.VirtualMachinePriorityTypesSpot {
		c.mu.Unlock()
		return fmt.Errorf("VM %s is not a Spot VM", name)
	}
	ended := *v
	if deref(v.Model.Properties.EvictionPolicy) == armcompute.VirtualMachineEvictionPolicyTypesDeallocate {
		v.Power = "deallocated"
		v.Evictions++
		ended = *v
	} else {
		delete(c.vms, key(rg, name))
	}
	c.mu.Unlock()
	if c.OnEnd != nil {
		c.OnEnd(ended)
	}
	return nil
}

// ClientFactory returns an armcompute client factory that talks to this
// cloud through the SDK's fake transport.
func (c *Cloud) ClientFactory() (*armcompute.ClientFactory, error) {
	return armcompute.NewClientFactory(c.Subscription, &azfake.TokenCredential{}, &arm.ClientOptions{
		ClientOptions: azcore.ClientOptions{Transport: c.Transport()},
	})
}

// Transport is the SDK's fake server transport over this cloud, called
// without its request's cancellation: the generated fake answers from a
// goroutine over a channel that it closes when the caller's context ends
// first, and that goroutine can then send on the closed channel and
// panic ("send on closed channel", armcompute v7.3.0
// fake/virtualmachines_server.go), which a control plane stopped mid-call
// at a test's end did. The fake answers from memory at once, so nothing
// waits on it.
func (c *Cloud) Transport() policy.Transporter {
	return detached{c.serverTransport()}
}

type detached struct{ next policy.Transporter }

func (d detached) Do(req *http.Request) (*http.Response, error) {
	return d.next.Do(req.WithContext(context.WithoutCancel(req.Context())))
}

func (c *Cloud) serverTransport() *fake.ServerFactoryTransport {
	f := &fake.ServerFactory{
		VirtualMachinesServer: fake.VirtualMachinesServer{
			BeginCreateOrUpdate: c.createOrUpdate,
			Get:                 c.get,
			NewListPager:        c.list,
			BeginUpdate:         c.update,
			BeginDelete:         c.delete,
			BeginDeallocate:     c.deallocate,
			BeginStart:          c.start,
			SimulateEviction:    c.simulateEviction,
		},
		VirtualMachineScaleSetsServer: fake.VirtualMachineScaleSetsServer{
			Get: c.getScaleSet,
		},
	}
	c.uniformServers(f)
	return fake.NewServerFactoryTransport(f)
}

func (c *Cloud) count(op string) {
	c.calls[op]++
}

func (c *Cloud) getScaleSet(_ context.Context, rg, name string, _ *armcompute.VirtualMachineScaleSetsClientGetOptions) (resp azfake.Responder[armcompute.VirtualMachineScaleSetsClientGetResponse], errResp azfake.ErrorResponder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.count("VirtualMachineScaleSets.Get")
	ss, ok := c.scaleSets[key(rg, name)]
	if !ok {
		errResp.SetResponseError(http.StatusNotFound, "ResourceNotFound")
		return
	}
	resp.SetResponse(http.StatusOK, armcompute.VirtualMachineScaleSetsClientGetResponse{VirtualMachineScaleSet: *ss}, nil)
	return
}

var scaleSetRef = regexp.MustCompile(`(?i)^/subscriptions/([^/]+)/resourceGroups/([^/]+)/providers/Microsoft\.Compute/virtualMachineScaleSets/([^/]+)$`)

// createOrUpdate is PUT virtualMachines/{name}: checks the request as
// Azure does for a VM joining a Flexible scale set, then creates it
// running (or failed), or, for an existing VM, replaces its tags.
func (c *Cloud) createOrUpdate(_ context.Context, rg, name string, vm armcompute.VirtualMachine, _ *armcompute.VirtualMachinesClientBeginCreateOrUpdateOptions) (resp azfake.PollerResponder[armcompute.VirtualMachinesClientCreateOrUpdateResponse], errResp azfake.ErrorResponder) {
	c.mu.Lock()
	c.count("VirtualMachines.BeginCreateOrUpdate")
	if old, ok := c.vms[key(rg, name)]; ok {
		// An update may not change what the VM was made with.
		old.Model.Tags = vm.Tags
		out := old.Model
		c.mu.Unlock()
		resp.SetTerminalResponse(http.StatusOK, armcompute.VirtualMachinesClientCreateOrUpdateResponse{VirtualMachine: out}, nil)
		return
	}
	code, status := c.checkCreate(rg, vm)
	if code != "" {
		c.mu.Unlock()
		errResp.SetResponseError(status, code)
		return
	}
	p := vm.Properties
	size := strings.ToLower(string(*p.HardwareProfile.VMSize))
	spot := deref(p.Priority) == armcompute.VirtualMachinePriorityTypesSpot
	if spot && c.noSpot[size] {
		c.mu.Unlock()
		errResp.SetResponseError(http.StatusConflict, "SkuNotAvailable")
		return
	}
	if spot && p.BillingProfile != nil && deref(p.BillingProfile.MaxPrice) != -1 && deref(p.BillingProfile.MaxPrice) < c.spotPrice[size] {
		c.mu.Unlock()
		errResp.SetResponseError(http.StatusConflict, "SpotPriceGreaterThanProvidedMaxPrice")
		return
	}
	vm.ID = to.Ptr(fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/virtualMachines/%s", c.Subscription, rg, name))
	vm.Name = to.Ptr(name)
	vm.Type = to.Ptr("Microsoft.Compute/virtualMachines")
	p.VMID = to.Ptr(fmt.Sprintf("%08x-0000-4000-8000-%012x", len(c.vms)+1, time.Now().UnixNano()&0xffffffffffff))
	p.TimeCreated = to.Ptr(time.Now().UTC())
	v := &VM{ResourceGroup: rg, Model: vm, Power: "running"}
	if code := c.failAlloc[size]; code != "" {
		v.Power, v.Failed = "", code
		p.ProvisioningState = to.Ptr("Failed")
	} else {
		p.ProvisioningState = to.Ptr("Succeeded")
	}
	c.vms[key(rg, name)] = v
	out, booted := *v, v.Failed == ""
	c.mu.Unlock()
	if booted && c.OnBoot != nil {
		c.OnBoot(out)
	}
	resp.SetTerminalResponse(http.StatusCreated, armcompute.VirtualMachinesClientCreateOrUpdateResponse{VirtualMachine: out.Model}, nil)
	return
}

// checkCreate returns the error code (and status) Azure answers a VM
// create with, or "".
func (c *Cloud) checkCreate(rg string, vm armcompute.VirtualMachine) (string, int) {
	p := vm.Properties
	switch {
	case vm.Location == nil || p == nil || p.HardwareProfile == nil || p.HardwareProfile.VMSize == nil ||
		p.StorageProfile == nil || p.StorageProfile.ImageReference == nil || p.OSProfile == nil || p.NetworkProfile == nil:
		return "InvalidParameter", http.StatusBadRequest
	}
	if p.VirtualMachineScaleSet != nil {
		m := scaleSetRef.FindStringSubmatch(deref(p.VirtualMachineScaleSet.ID))
		if m == nil || !strings.EqualFold(m[1], c.Subscription) {
			return "InvalidParameter", http.StatusBadRequest
		}
		ss, ok := c.scaleSets[key(m[2], m[3])]
		switch {
		case !ok:
			return "NotFound", http.StatusNotFound
		case deref(ss.Properties.OrchestrationMode) != armcompute.OrchestrationModeFlexible:
			// Only a Flexible scale set takes VMs made on their own.
			return "OperationNotAllowed", http.StatusBadRequest
		case !strings.EqualFold(deref(ss.Location), deref(vm.Location)):
			return "InvalidParameter", http.StatusBadRequest
		}
		// A Flexible scale set's VMs need the network API version form
		// of network profile.
		if p.NetworkProfile.NetworkAPIVersion == nil || len(p.NetworkProfile.NetworkInterfaceConfigurations) == 0 {
			return "InvalidParameter", http.StatusBadRequest
		}
	}
	spot := deref(p.Priority) == armcompute.VirtualMachinePriorityTypesSpot
	if !spot && p.EvictionPolicy != nil {
		return "EvictionPolicyCanBeSetOnlyOnAzureSpotVirtualMachines", http.StatusBadRequest
	}
	if !spot && p.BillingProfile != nil && p.BillingProfile.MaxPrice != nil {
		return "MaxPriceIsSupportedOnlyForAzureSpotVirtualMachines", http.StatusBadRequest
	}
	if spot && p.BillingProfile != nil && p.BillingProfile.MaxPrice != nil {
		if mp := *p.BillingProfile.MaxPrice; mp != -1 && !(mp > 0) {
			return "MaxPriceValueInvalid", http.StatusBadRequest
		}
	}
	for _, data := range []*string{p.OSProfile.CustomData, p.UserData} {
		if data == nil {
			continue
		}
		if _, err := base64.StdEncoding.DecodeString(*data); err != nil {
			return "InvalidParameter", http.StatusBadRequest
		}
	}
	if p.OSProfile.CustomData != nil && len(*p.OSProfile.CustomData) > 87380 {
		return "InvalidParameter", http.StatusBadRequest // custom data is at most 64 KiB before encoding
	}
	if lc := p.OSProfile.LinuxConfiguration; lc != nil && deref(lc.DisablePasswordAuthentication) && (lc.SSH == nil || len(lc.SSH.PublicKeys) == 0) {
		return "InvalidParameter", http.StatusBadRequest
	}
	for _, z := range vm.Zones {
		if z := deref(z); z != "1" && z != "2" && z != "3" {
			return "InvalidParameter", http.StatusBadRequest
		}
	}
	_ = rg
	return "", 0
}

// withView is a VM as GET returns it: the instance view only when asked
// for, the user data only when asked for.
func (v *VM) withView(instanceView, userData bool) armcompute.VirtualMachine {
	m := v.Model
	p := *m.Properties
	if !userData {
		p.UserData = nil
	}
	// Azure never returns custom data.
	if p.OSProfile != nil {
		os := *p.OSProfile
		os.CustomData = nil
		p.OSProfile = &os
	}
	if instanceView {
		prov := "ProvisioningState/succeeded"
		if v.Failed != "" {
			prov = "ProvisioningState/failed/" + v.Failed
		}
		statuses := []*armcompute.InstanceViewStatus{{Code: to.Ptr(prov)}}
		if v.Power != "" {
			statuses = append(statuses, &armcompute.InstanceViewStatus{Code: to.Ptr("PowerState/" + v.Power)})
		}
		p.InstanceView = &armcompute.VirtualMachineInstanceView{Statuses: statuses}
	}
	m.Properties = &p
	return m
}

func (c *Cloud) get(_ context.Context, rg, name string, opts *armcompute.VirtualMachinesClientGetOptions) (resp azfake.Responder[armcompute.VirtualMachinesClientGetResponse], errResp azfake.ErrorResponder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.count("VirtualMachines.Get")
	v, ok := c.vms[key(rg, name)]
	if !ok {
		errResp.SetResponseError(http.StatusNotFound, "ResourceNotFound")
		return
	}
	var expand armcompute.InstanceViewTypes
	if opts != nil && opts.Expand != nil {
		expand = *opts.Expand
	}
	resp.SetResponse(http.StatusOK, armcompute.VirtualMachinesClientGetResponse{
		VirtualMachine: v.withView(expand == armcompute.InstanceViewTypesInstanceView, expand == armcompute.InstanceViewTypesUserData),
	}, nil)
	return
}

var scaleSetFilter = regexp.MustCompile(`^'virtualMachineScaleSet/id' eq '([^']+)'$`)

// list is GET virtualMachines in a resource group; with the filter on a
// scale set, only its VMs; $expand=instanceView needs that filter.
func (c *Cloud) list(rg string, opts *armcompute.VirtualMachinesClientListOptions) (resp azfake.PagerResponder[armcompute.VirtualMachinesClientListResponse]) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.count("VirtualMachines.NewListPager")
	var filter string
	expand := false
	if opts != nil {
		filter = deref(opts.Filter)
		expand = deref(opts.Expand) == armcompute.ExpandTypeForListVMsInstanceView
	}
	var want string
	if filter != "" {
		m := scaleSetFilter.FindStringSubmatch(filter)
		if m == nil {
			resp.AddResponseError(http.StatusBadRequest, "InvalidParameter")
			return
		}
		want = m[1]
	}
	if expand && filter == "" {
		resp.AddResponseError(http.StatusBadRequest, "InvalidParameter")
		return
	}
	var names []string
	for k, v := range c.vms {
		if !strings.EqualFold(v.ResourceGroup, rg) {
			continue
		}
		if want != "" && (v.Model.Properties.VirtualMachineScaleSet == nil || !strings.EqualFold(deref(v.Model.Properties.VirtualMachineScaleSet.ID), want)) {
			continue
		}
		names = append(names, k)
	}
	sort.Strings(names)
	// Pages of two, so that paging is exercised.
	for i := 0; i < len(names) || i == 0; i += 2 {
		var page []*armcompute.VirtualMachine
		for _, k := range names[i:min(i+2, len(names))] {
			vm := c.vms[k].withView(expand, false)
			page = append(page, &vm)
		}
		resp.AddPage(http.StatusOK, armcompute.VirtualMachinesClientListResponse{VirtualMachineListResult: armcompute.VirtualMachineListResult{Value: page}}, nil)
		if len(names) == 0 {
			break
		}
	}
	return
}

// update is PATCH virtualMachines/{name}: user data and tags.
func (c *Cloud) update(_ context.Context, rg, name string, u armcompute.VirtualMachineUpdate, _ *armcompute.VirtualMachinesClientBeginUpdateOptions) (resp azfake.PollerResponder[armcompute.VirtualMachinesClientUpdateResponse], errResp azfake.ErrorResponder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.count("VirtualMachines.BeginUpdate")
	v, ok := c.vms[key(rg, name)]
	if !ok {
		errResp.SetResponseError(http.StatusNotFound, "ResourceNotFound")
		return
	}
	if u.Properties != nil && u.Properties.UserData != nil {
		if _, err := base64.StdEncoding.DecodeString(*u.Properties.UserData); err != nil {
			errResp.SetResponseError(http.StatusBadRequest, "InvalidParameter")
			return
		}
		v.Model.Properties.UserData = u.Properties.UserData
	}
	if u.Tags != nil {
		v.Model.Tags = u.Tags
	}
	resp.SetTerminalResponse(http.StatusOK, armcompute.VirtualMachinesClientUpdateResponse{VirtualMachine: v.withView(false, false)}, nil)
	return
}

// delete is DELETE virtualMachines/{name}; a VM already gone answers 204.
func (c *Cloud) delete(_ context.Context, rg, name string, _ *armcompute.VirtualMachinesClientBeginDeleteOptions) (resp azfake.PollerResponder[armcompute.VirtualMachinesClientDeleteResponse], errResp azfake.ErrorResponder) {
	c.mu.Lock()
	c.count("VirtualMachines.BeginDelete")
	v, ok := c.vms[key(rg, name)]
	delete(c.vms, key(rg, name))
	c.mu.Unlock()
	if !ok {
		resp.SetTerminalResponse(http.StatusNoContent, armcompute.VirtualMachinesClientDeleteResponse{}, nil)
		return
	}
	if v.Power == "running" && c.OnEnd != nil {
		c.OnEnd(*v)
	}
	resp.SetTerminalResponse(http.StatusOK, armcompute.VirtualMachinesClientDeleteResponse{}, nil)
	return
}

func (c *Cloud) deallocate(_ context.Context, rg, name string, _ *armcompute.VirtualMachinesClientBeginDeallocateOptions) (resp azfake.PollerResponder[armcompute.VirtualMachinesClientDeallocateResponse], errResp azfake.ErrorResponder) {
	c.mu.Lock()
	c.count("VirtualMachines.BeginDeallocate")
	v, ok := c.vms[key(rg, name)]
	if !ok {
		c.mu.Unlock()
		errResp.SetResponseError(http.StatusNotFound, "ResourceNotFound")
		return
	}
	wasRunning := v.Power == "running"
	v.Power = "deallocated"
	out := *v
	c.mu.Unlock()
	if wasRunning && c.OnEnd != nil {
		c.OnEnd(out)
	}
	resp.SetTerminalResponse(http.StatusOK, armcompute.VirtualMachinesClientDeallocateResponse{}, nil)
	return
}

// start is POST virtualMachines/{name}/start: a deallocated Spot VM needs
// capacity again, and may not get it.
func (c *Cloud) start(_ context.Context, rg, name string, _ *armcompute.VirtualMachinesClientBeginStartOptions) (resp azfake.PollerResponder[armcompute.VirtualMachinesClientStartResponse], errResp azfake.ErrorResponder) {
	c.mu.Lock()
	c.count("VirtualMachines.BeginStart")
	v, ok := c.vms[key(rg, name)]
	if !ok {
		c.mu.Unlock()
		errResp.SetResponseError(http.StatusNotFound, "ResourceNotFound")
		return
	}
	size := strings.ToLower(string(*v.Model.Properties.HardwareProfile.VMSize))
	if deref(v.Model.Properties.Priority) == armcompute.VirtualMachinePriorityTypesSpot && c.noSpot[size] && v.Power != "running" {
		c.mu.Unlock()
		errResp.SetResponseError(http.StatusConflict, "SkuNotAvailable")
		return
	}
	booted := v.Power != "running"
	v.Power = "running"
	out := *v
	c.mu.Unlock()
	if booted && c.OnBoot != nil {
		c.OnBoot(out)
	}
	resp.SetTerminalResponse(http.StatusOK, armcompute.VirtualMachinesClientStartResponse{}, nil)
	return
}

// simulateEviction is POST virtualMachines/{name}/simulateEviction: Spot
// VMs only. Azure evicts within 30 minutes; this cloud at once.
func (c *Cloud) simulateEviction(_ context.Context, rg, name string, _ *armcompute.VirtualMachinesClientSimulateEvictionOptions) (resp azfake.Responder[armcompute.VirtualMachinesClientSimulateEvictionResponse], errResp azfake.ErrorResponder) {
	c.mu.Lock()
	c.count("VirtualMachines.SimulateEviction")
	v, ok := c.vms[key(rg, name)]
	spot := ok && deref(v.Model.Properties.Priority) == armcompute.VirtualMachinePriorityTypesSpot
	c.mu.Unlock()
	switch {
	case !ok:
		errResp.SetResponseError(http.StatusNotFound, "ResourceNotFound")
		return
	case !spot:
		errResp.SetResponseError(http.StatusConflict, "OperationNotAllowed")
		return
	}
	if err := c.Evict(rg, name); err != nil {
		errResp.SetError(err)
		return
	}
	resp.SetResponse(http.StatusNoContent, armcompute.VirtualMachinesClientSimulateEvictionResponse{}, nil)
	return
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
