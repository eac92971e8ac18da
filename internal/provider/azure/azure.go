// Package azure is the provider that runs spotml nodes as VMs of an Azure
// Virtual Machine Scale Set in Flexible orchestration, through the Azure
// SDK for Go (armcompute). One node is one VM that spotml adds to the
// pool's scale set, named after the node, Spot or Regular as the pool
// says; its custom data installs and starts the agent (bootstrap.go). A
// runner polls each scale set's VMs and reports what the platform did: a
// Spot VM evicted (deleted, or deallocated with its disk kept), a VM that
// failed to allocate, the zone a VM landed in.
package azure

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/runtime"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/to"
	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/provider/cloudinit"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// Name is the provider name pools use.
const Name = spec.ProviderAzure

// Tags spotml puts on its VMs, so that its runner finds VMs whose node is
// gone and a person sees whose they are.
const (
	TagPool = "spotml-pool"
	TagNode = "spotml-node"
)

// Config says how VMs reach the control plane and get spotml.
type Config struct {
	// ServerURL is the control plane as the VMs reach it.
	ServerURL string
	// SpotmlURL is where VMs download a linux spotml binary (a blob URL,
	// a release asset).
	SpotmlURL string
	// AgentArgs are extra flags passed to every agent.
	AgentArgs []string
	// Interval is how often the runner lists each scale set's VMs;
	// default 15s (Azure Resource Manager allows a subscription about
	// 12,000 reads an hour).
	Interval time.Duration
	// PricesURL is the Azure Retail Prices API, for pools with prices:
	// cloud; default RetailPricesURL. HTTPClient reaches it (nil: one
	// with a 20 s timeout).
	PricesURL  string
	HTTPClient *http.Client
}

// Clients makes the compute clients of a subscription:
// armcompute.NewClientFactory with azidentity.DefaultAzureCredential in
// the product, with the SDK's fake transport in tests.
type Clients func(subscription string) (*armcompute.ClientFactory, error)

// Provider is the Azure provider.
type Provider struct {
	clients Clients
	cfg     Config
	log     *slog.Logger
	now     func() time.Time

	mu        sync.Mutex
	factories map[string]*armcompute.ClientFactory // by subscription
	scaleSets map[string]scaleSet                  // by resource ID, lower case
	restarted map[string]time.Time                 // node → when this provider started its VM again
	cleared   map[string]bool                      // provider IDs whose user data is emptied
	placed    map[string]bool                      // provider IDs reported Placed
	view      control.View                         // Run's, for Evict
	seen      map[string]spec.AzurePool            // scale sets of pools seen, by lower-case ID
	profiles  map[string]string                    // custom data written into Uniform profiles, by lower-case ID
	prices    map[string]cachedPrice               // by region/size

	uniformMu sync.Mutex // one Uniform scale-out at a time
}

var (
	_ control.Provider = (*Provider)(nil)
	_ control.Runner   = (*Provider)(nil)
	_ control.Evicter  = (*Provider)(nil)
)

// scaleSet is what Launch needs to know of a pool's scale set.
type scaleSet struct {
	id, location string
}

// New returns a provider that reaches Azure through clients.
func New(clients Clients, cfg Config, log *slog.Logger, now func() time.Time) *Provider {
	if cfg.Interval <= 0 {
		cfg.Interval = 15 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return &Provider{clients: clients, cfg: cfg, log: log.With("provider", Name), now: now,
		factories: map[string]*armcompute.ClientFactory{}, scaleSets: map[string]scaleSet{},
		restarted: map[string]time.Time{}, cleared: map[string]bool{}, placed: map[string]bool{}, seen: map[string]spec.AzurePool{},
		profiles: map[string]string{}, prices: map[string]cachedPrice{}}
}

// CapacityCodes are the error codes with which Azure refuses a VM for
// lack of capacity (or of capacity at the pool's max price): the launch
// is a capacity shortage, not a failure.
var CapacityCodes = map[string]bool{
	"SkuNotAvailable":                       true,
	"SpotPriceGreaterThanProvidedMaxPrice":  true,
	"AllocationFailed":                      true,
	"ZonalAllocationFailed":                 true,
	"OverconstrainedAllocationRequest":      true,
	"OverconstrainedZonalAllocationRequest": true,
}

func (p *Provider) factory(sub string) (*armcompute.ClientFactory, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if f, ok := p.factories[sub]; ok {
		return f, nil
	}
	f, err := p.clients(sub)
	if err != nil {
		return nil, fmt.Errorf("azure subscription %s: %w", sub, err)
	}
	p.factories[sub] = f
	return f, nil
}

// ScaleSetID is the resource ID of a pool's scale set.
func ScaleSetID(a *spec.AzurePool) string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/virtualMachineScaleSets/%s", a.Subscription, a.ResourceGroup, a.ScaleSet)
}

// VMID is the resource ID of a VM, a node's provider ID.
func VMID(sub, rg, name string) string {
	return fmt.Sprintf("/subscriptions/%s/resourceGroups/%s/providers/Microsoft.Compute/virtualMachines/%s", sub, rg, name)
}

// parseVMID splits a VM's resource ID.
func parseVMID(id string) (sub, rg, name string, err error) {
	p := strings.Split(strings.TrimPrefix(id, "/"), "/")
	if len(p) != 8 || !strings.EqualFold(p[0], "subscriptions") || !strings.EqualFold(p[2], "resourceGroups") ||
		!strings.EqualFold(p[4], "providers") || !strings.EqualFold(p[5], "Microsoft.Compute") || !strings.EqualFold(p[6], "virtualMachines") {
		return "", "", "", fmt.Errorf("provider ID %q is not a VM resource ID", id)
	}
	return p[1], p[3], p[7], nil
}

// lookupScaleSet reads a pool's scale set once: it must exist and be in
// the pool's orchestration (a Uniform one making the pool's VMs), and its
// location is where the pool's VMs are made.
func (p *Provider) lookupScaleSet(ctx context.Context, f *armcompute.ClientFactory, pool spec.Pool) (scaleSet, error) {
	a := pool.Spec.Azure
	id := ScaleSetID(a)
	p.mu.Lock()
	ss, ok := p.scaleSets[strings.ToLower(id)]
	p.mu.Unlock()
	if ok {
		return ss, nil
	}
	got, err := f.NewVirtualMachineScaleSetsClient().Get(ctx, a.ResourceGroup, a.ScaleSet, nil)
	if err != nil {
		if code(err) == "ResourceNotFound" || code(err) == "NotFound" {
			return scaleSet{}, fmt.Errorf("spec.azure.scaleSet: scale set %s not found in resource group %s; create it with az vmss create --orchestration-mode Flexible", a.ScaleSet, a.ResourceGroup)
		}
		return scaleSet{}, fmt.Errorf("get scale set %s: %w", a.ScaleSet, err)
	}
	mode := ""
	if got.Properties != nil && got.Properties.OrchestrationMode != nil {
		mode = string(*got.Properties.OrchestrationMode)
	}
	want := a.Orchestration
	if want == "" {
		want = spec.AzureFlexible
	}
	if mode != want {
		return scaleSet{}, fmt.Errorf("spec.azure.orchestration: %s, but scale set %s is in %s orchestration; say %s", want, a.ScaleSet, mode, mode)
	}
	if mode == spec.AzureUniform {
		if err := checkUniform(pool, got.VirtualMachineScaleSet); err != nil {
			return scaleSet{}, err
		}
	}
	ss = scaleSet{id: id, location: deref(got.Location)}
	p.mu.Lock()
	p.scaleSets[strings.ToLower(id)] = ss
	p.mu.Unlock()
	return ss, nil
}

// Launch adds a VM for the node to the pool's scale set, or starts a
// deallocated node's VM again. It returns once Azure accepted the
// request; the runner sees the VM allocated or failed.
func (p *Provider) Launch(ctx context.Context, req control.LaunchRequest) (control.Launched, error) {
	pool, n := req.Pool, req.Node
	a := pool.Spec.Azure
	if a == nil {
		return control.Launched{}, fmt.Errorf("pool %s: spec.azure is missing", pool.Metadata.Name)
	}
	if p.cfg.ServerURL == "" || p.cfg.SpotmlURL == "" {
		return control.Launched{}, errors.New("the azure provider needs --cloud-agent-server-url and --cloud-spotml-url")
	}
	f, err := p.factory(a.Subscription)
	if err != nil {
		return control.Launched{}, err
	}
	if a.Orchestration == spec.AzureUniform {
		return p.launchUniform(ctx, f, req)
	}
	vms := f.NewVirtualMachinesClient()
	if req.Restart && n.ProviderID != "" {
		started, err := p.restart(ctx, vms, n, req.Credential)
		if err != nil {
			return control.Launched{}, err
		}
		if started {
			return control.Launched{ProviderID: n.ProviderID}, nil
		}
		// The VM is gone (deleted by someone): a new one takes its name.
	}
	ss, err := p.lookupScaleSet(ctx, f, pool)
	if err != nil {
		return control.Launched{}, err
	}
	vm, err := p.vmFor(pool, n, req.Credential, ss)
	if err != nil {
		return control.Launched{}, err
	}
	if _, err := vms.BeginCreateOrUpdate(ctx, a.ResourceGroup, n.Name, vm, nil); err != nil {
		return control.Launched{}, p.launchError(pool, n, err)
	}
	p.log.Info("node launched", "node", n.Name, "scaleSet", a.ScaleSet, "priority", pool.Spec.Priority)
	return control.Launched{ProviderID: VMID(a.Subscription, a.ResourceGroup, n.Name)}, nil
}

// restart gives a deallocated VM this incarnation's identity and starts
// it; false if the VM no longer exists.
func (p *Provider) restart(ctx context.Context, vms *armcompute.VirtualMachinesClient, n store.Node, credential string) (bool, error) {
	_, rg, name, err := parseVMID(n.ProviderID)
	if err != nil {
		return false, fmt.Errorf("node %s: %w", n.Name, err)
	}
	// The new credential must be in place before the VM boots: wait for
	// the update to finish.
	poller, err := vms.BeginUpdate(ctx, rg, name, armcompute.VirtualMachineUpdate{
		Properties: &armcompute.VirtualMachineProperties{UserData: to.Ptr(Identity(n.Name, credential))},
	}, nil)
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
	if _, err := vms.BeginStart(ctx, rg, name, nil); err != nil {
		if CapacityCodes[code(err)] {
			return false, fmt.Errorf("%w: start VM %s: %s", control.ErrNoCapacity, name, code(err))
		}
		if isNotFound(err) {
			return false, nil
		}
		return false, fmt.Errorf("node %s: start VM: %w", n.Name, err)
	}
	p.log.Info("node restarted", "node", n.Name)
	return true, nil
}

// vmFor is the VM a node is: in the pool's scale set, Spot or Regular,
// with the bootstrap as custom data and the node's identity as user data.
func (p *Provider) vmFor(pool spec.Pool, n store.Node, credential string, ss scaleSet) (armcompute.VirtualMachine, error) {
	a := pool.Spec.Azure
	ci, err := Bootstrap(p.cfg, a.Setup).CloudInit()
	if err != nil {
		return armcompute.VirtualMachine{}, err
	}
	image := &armcompute.ImageReference{}
	if strings.HasPrefix(a.Image, "/") {
		image.ID = to.Ptr(a.Image)
	} else {
		u := strings.Split(a.Image, ":")
		if len(u) != 4 {
			return armcompute.VirtualMachine{}, fmt.Errorf("pool %s: spec.azure.image %q is not Publisher:Offer:Sku:Version", pool.Metadata.Name, a.Image)
		}
		image.Publisher, image.Offer, image.SKU, image.Version = &u[0], &u[1], &u[2], &u[3]
	}
	osDisk := &armcompute.OSDisk{
		CreateOption: to.Ptr(armcompute.DiskCreateOptionTypesFromImage),
		// The disk goes with the VM: a deleted node leaves nothing billed.
		DeleteOption: to.Ptr(armcompute.DiskDeleteOptionTypesDelete),
	}
	if a.OSDiskSizeGB > 0 {
		osDisk.DiskSizeGB = to.Ptr(a.OSDiskSizeGB)
	}
	user := a.AdminUsername
	if user == "" {
		user = spec.DefaultAzureAdminUser
	}
	props := &armcompute.VirtualMachineProperties{
		VirtualMachineScaleSet: &armcompute.SubResource{ID: to.Ptr(ss.id)},
		HardwareProfile:        &armcompute.HardwareProfile{VMSize: to.Ptr(armcompute.VirtualMachineSizeTypes(n.InstanceType))},
		StorageProfile:         &armcompute.StorageProfile{ImageReference: image, OSDisk: osDisk},
		OSProfile: &armcompute.OSProfile{
			ComputerName:  to.Ptr(n.Name),
			AdminUsername: to.Ptr(user),
			CustomData:    to.Ptr(base64String(ci)),
			LinuxConfiguration: &armcompute.LinuxConfiguration{
				DisablePasswordAuthentication: to.Ptr(true),
				SSH: &armcompute.SSHConfiguration{PublicKeys: []*armcompute.SSHPublicKey{{
					Path: to.Ptr("/home/" + user + "/.ssh/authorized_keys"), KeyData: to.Ptr(a.SSHPublicKey),
				}}},
			},
		},
		UserData: to.Ptr(Identity(n.Name, credential)),
		NetworkProfile: &armcompute.NetworkProfile{
			NetworkAPIVersion: to.Ptr(armcompute.NetworkAPIVersionTwoThousandTwenty1101),
			NetworkInterfaceConfigurations: []*armcompute.VirtualMachineNetworkInterfaceConfiguration{{
				Name: to.Ptr(n.Name + "-nic"),
				Properties: &armcompute.VirtualMachineNetworkInterfaceConfigurationProperties{
					Primary:      to.Ptr(true),
					DeleteOption: to.Ptr(armcompute.DeleteOptionsDelete),
					IPConfigurations: []*armcompute.VirtualMachineNetworkInterfaceIPConfiguration{{
						Name: to.Ptr("ipconfig1"),
						Properties: &armcompute.VirtualMachineNetworkInterfaceIPConfigurationProperties{
							Primary: to.Ptr(true), Subnet: &armcompute.SubResource{ID: to.Ptr(a.Subnet)},
						},
					}},
				},
			}},
		},
	}
	if pool.Spec.Priority == spec.PrioritySpot {
		props.Priority = to.Ptr(armcompute.VirtualMachinePriorityTypesSpot)
		policy := armcompute.VirtualMachineEvictionPolicyTypesDelete
		if pool.Spec.EvictionPolicy == spec.EvictionDeallocate {
			policy = armcompute.VirtualMachineEvictionPolicyTypesDeallocate
		}
		props.EvictionPolicy = to.Ptr(policy)
		maxPrice := -1.0
		if a.MaxPrice != nil {
			maxPrice = *a.MaxPrice
		}
		props.BillingProfile = &armcompute.BillingProfile{MaxPrice: to.Ptr(maxPrice)}
	} else {
		props.Priority = to.Ptr(armcompute.VirtualMachinePriorityTypesRegular)
	}
	vm := armcompute.VirtualMachine{
		Location:   to.Ptr(ss.location),
		Properties: props,
		Tags:       map[string]*string{TagPool: to.Ptr(pool.Metadata.Name), TagNode: to.Ptr(n.Name)},
	}
	if n.Zone != "" {
		vm.Zones = []*string{to.Ptr(n.Zone)}
	}
	return vm, nil
}

func (p *Provider) launchError(pool spec.Pool, n store.Node, err error) error {
	c := code(err)
	if CapacityCodes[c] {
		return fmt.Errorf("%w: %s %s in zone %q: %s", control.ErrNoCapacity, pool.Spec.Priority, n.InstanceType, n.Zone, c)
	}
	return fmt.Errorf("create VM %s in scale set %s: %w", n.Name, pool.Spec.Azure.ScaleSet, err)
}

// Stop deletes a node's VM, with its disk and NIC. Deleting a VM already
// gone succeeds. It does not wait for Azure to finish: the runner deletes
// again a VM whose node has ended, should the deletion fail.
func (p *Provider) Stop(ctx context.Context, n store.Node) error {
	if n.ProviderID == "" {
		return nil // Launch never returned a VM
	}
	if sub, rg, ss, id, err := parseInstanceID(n.ProviderID); err == nil {
		f, err := p.factory(sub)
		if err != nil {
			return err
		}
		return p.deleteInstance(ctx, f, rg, ss, id)
	}
	sub, rg, name, err := parseVMID(n.ProviderID)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	f, err := p.factory(sub)
	if err != nil {
		return err
	}
	return p.deleteVM(ctx, f, rg, name)
}

func (p *Provider) deleteVM(ctx context.Context, f *armcompute.ClientFactory, rg, name string) error {
	_, err := f.NewVirtualMachinesClient().BeginDelete(ctx, rg, name, nil)
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("delete VM %s: %w", name, err)
	}
	return nil
}

// Evict asks Azure to evict a Spot node's VM (SimulateEviction): the VM
// gets its Scheduled Events Preempt notice, which its agent reports, and
// is then evicted as its eviction policy says. Azure decides when (within
// 30 minutes, it documents), so noticeFor is not Azure's to grant.
func (p *Provider) Evict(ctx context.Context, node string, noticeFor time.Duration) error {
	p.mu.Lock()
	view := p.view
	p.mu.Unlock()
	if view == nil {
		return errors.New("azure: the provider is not running yet")
	}
	nodes, err := view.ListNodes(ctx)
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if n.Name == node {
			return p.evictNode(ctx, n)
		}
	}
	return fmt.Errorf("node %s: %w", node, store.ErrNotFound)
}

func (p *Provider) evictNode(ctx context.Context, n store.Node) error {
	if sub, rg, ss, id, err := parseInstanceID(n.ProviderID); err == nil {
		f, err := p.factory(sub)
		if err != nil {
			return err
		}
		if _, err := f.NewVirtualMachineScaleSetVMsClient().SimulateEviction(ctx, rg, ss, id, nil); err != nil {
			return fmt.Errorf("node %s: simulate eviction: %w", n.Name, err)
		}
		return nil
	}
	sub, rg, name, err := parseVMID(n.ProviderID)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	f, err := p.factory(sub)
	if err != nil {
		return err
	}
	if _, err := f.NewVirtualMachinesClient().SimulateEviction(ctx, rg, name, nil); err != nil {
		return fmt.Errorf("node %s: simulate eviction: %w", n.Name, err)
	}
	return nil
}

// code is an Azure error's code ("SkuNotAvailable"), empty if err is not
// one.
func code(err error) string {
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return re.ErrorCode
	}
	return ""
}

func isNotFound(err error) bool {
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode == http.StatusNotFound
}

// A VM's bootstrap is in two parts, because Azure gives a VM two kinds of
// data. Its custom data, fixed when the VM is made, is the cloud-init
// document that installs and starts the agent. Its user data, which
// spotml can change (a deallocated VM restarted is a new incarnation with
// a new credential), holds the node's identity, which the start script
// reads from the instance metadata service. Once the agent has
// registered, spotml empties the user data, so that no task on the VM can
// read the credential from the metadata service.

// Bootstrap is the cloud-init of the provider's VMs.
func Bootstrap(cfg Config, setup []string) cloudinit.Bootstrap {
	return cloudinit.Bootstrap{ServerURL: cfg.ServerURL, SpotmlURL: cfg.SpotmlURL, AgentArgs: cfg.AgentArgs, Setup: setup,
		Format: spec.NoticeAzure,
		ReadIdentity: `curl -fsS --retry 20 --retry-delay 3 --retry-connrefused -H Metadata:true ` +
			`"$imds/metadata/instance/compute/userData?api-version=2021-01-01&format=text" | base64 -d`}
}

// UniformBootstrap is the cloud-init of a Uniform scale set's VMs: the
// same, except that an instance boots before spotml gives it its identity
// (the scale set makes the VM; spotml then claims it), so the start script
// waits for its user data to be set.
func UniformBootstrap(cfg Config, setup []string) cloudinit.Bootstrap {
	b := Bootstrap(cfg, setup)
	b.ReadIdentity = `while :; do id=$(curl -fsS --retry 20 --retry-delay 3 --retry-connrefused -H Metadata:true ` +
		`"$imds/metadata/instance/compute/userData?api-version=2021-01-01&format=text") && [ -n "$id" ] && break; sleep 3; done; printf '%s' "$id" | base64 -d`
	return b
}

// Identity is the user data of a node's VM: its identity, base64 as Azure
// takes it.
func Identity(node, credential string) string {
	return base64.StdEncoding.EncodeToString([]byte(cloudinit.Identity(node, credential)))
}

// runtimePollOptions polls Azure's long-running operations every 2s (the
// SDK's default is 30s), for the one Launch waits on.
var runtimePollOptions = runtime.PollUntilDoneOptions{Frequency: 2 * time.Second}

func base64String(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
