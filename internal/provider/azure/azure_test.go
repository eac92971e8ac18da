package azure

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/provider/azure/azurefake"
	"github.com/spotml/spotml/internal/provider/providertest"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

const (
	sub = "00000000-1111-2222-3333-444444444444"
	rg  = "ml"
)

// pool is a valid azure pool, defaulted.
func pool(t *testing.T, name, priority, eviction string) spec.Pool {
	t.Helper()
	p := spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: name},
		Spec: spec.PoolSpec{Provider: spec.ProviderAzure, Priority: priority, InstanceType: "Standard_NC4as_T4_v3", Max: 4,
			EvictionPolicy: eviction, Zones: []string{"1", "2"},
			Azure: &spec.AzurePool{Subscription: sub, ResourceGroup: rg, ScaleSet: "gpu",
				Image:        "Canonical:ubuntu-24_04-lts:server:latest",
				Subnet:       "/subscriptions/" + sub + "/resourceGroups/ml/providers/Microsoft.Network/virtualNetworks/vnet/subnets/default",
				SSHPublicKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK0 test",
				Setup:        []string{"apt-get install -y nvidia-driver-550"}}}}
	p.Default()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	return p
}

type env struct {
	cloud *azurefake.Cloud
	prov  *Provider
	plane *providertest.Plane
	now   time.Time
}

func newEnv(t *testing.T, pools ...spec.Pool) *env {
	t.Helper()
	e := &env{cloud: azurefake.New(sub), plane: providertest.NewPlane(), now: time.Now()}
	e.cloud.AddScaleSet(rg, "gpu", "westeurope", armcompute.OrchestrationModeFlexible)
	for _, p := range pools {
		e.plane.AddPool(store.Pool{Spec: p})
	}
	e.prov = New(func(s string) (*armcompute.ClientFactory, error) {
		if s != sub {
			return nil, fmt.Errorf("unknown subscription %s", s)
		}
		return e.cloud.ClientFactory()
	}, Config{ServerURL: "https://spotml.example:8080", SpotmlURL: "https://blobs.example/spotml"}, nil, func() time.Time { return e.now })
	return e
}

// launch records a node and launches it, as the control plane does.
func (e *env) launch(t *testing.T, p spec.Pool, name, zone string) error {
	t.Helper()
	n := store.Node{Name: name, Pool: p.Metadata.Name, Priority: p.Spec.Priority, Zone: zone,
		InstanceType: p.Spec.InstanceType, State: store.NodeProvisioning, Incarnation: 1}
	e.plane.AddNode(n)
	at, err := e.prov.Launch(context.Background(), control.LaunchRequest{Pool: p, Node: n, Credential: "cred-" + name})
	if err != nil {
		e.plane.RemoveNode(name)
		return err
	}
	e.plane.Set(name, func(n *store.Node) { n.ProviderID = at.ProviderID })
	return nil
}

func (e *env) pass(t *testing.T) []string {
	t.Helper()
	if err := e.prov.Pass(context.Background(), e.plane, e.plane); err != nil {
		t.Fatal(err)
	}
	return e.plane.Took()
}

func TestLaunchMakesSpotVMInScaleSet(t *testing.T) {
	p := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDelete)
	e := newEnv(t, p)
	if err := e.launch(t, p, "gpu-a1", "2"); err != nil {
		t.Fatal(err)
	}
	vm, ok := e.cloud.VM(rg, "gpu-a1")
	if !ok {
		t.Fatal("no VM made")
	}
	props := vm.Model.Properties
	if got := *props.VirtualMachineScaleSet.ID; !strings.HasSuffix(got, "/virtualMachineScaleSets/gpu") {
		t.Errorf("scale set = %s", got)
	}
	if *props.Priority != armcompute.VirtualMachinePriorityTypesSpot || *props.EvictionPolicy != armcompute.VirtualMachineEvictionPolicyTypesDelete || *props.BillingProfile.MaxPrice != -1 {
		t.Errorf("priority %s, eviction %s, max price %g", *props.Priority, *props.EvictionPolicy, *props.BillingProfile.MaxPrice)
	}
	if *vm.Model.Location != "westeurope" || *vm.Model.Zones[0] != "2" || string(*props.HardwareProfile.VMSize) != "Standard_NC4as_T4_v3" {
		t.Errorf("location %s zone %s size %s", *vm.Model.Location, *vm.Model.Zones[0], *props.HardwareProfile.VMSize)
	}
	if got, want := vm.UserData(), "node=gpu-a1\ncredential=cred-gpu-a1\n"; got != want {
		t.Errorf("user data = %q, want %q", got, want)
	}
	ci := vm.CustomData()
	for _, want := range []string{"#cloud-config", "spotml-agent.service", "https://spotml.example:8080", "nvidia-driver-550"} {
		if !strings.Contains(ci, want) {
			t.Errorf("custom data lacks %q:\n%s", want, ci)
		}
	}
	if strings.Contains(ci, "cred-gpu-a1") {
		t.Error("custom data holds the credential; it must only be in the user data")
	}
	if got := e.plane.Node("gpu-a1").ProviderID; got != VMID(sub, rg, "gpu-a1") {
		t.Errorf("provider ID = %s", got)
	}
	// The VM runs; nothing to report but placement (none: the zone was asked).
	if got := e.pass(t); len(got) != 0 {
		t.Errorf("pass reported %v", got)
	}
	// Once the agent registered, the credential leaves the user data.
	e.plane.Set("gpu-a1", func(n *store.Node) { n.State = store.NodeReady })
	e.pass(t)
	if vm, _ := e.cloud.VM(rg, "gpu-a1"); vm.UserData() != "" {
		t.Errorf("user data after registration = %q, want empty", vm.UserData())
	}
}

func TestRegularPoolHasNoSpotSettings(t *testing.T) {
	p := pool(t, "od", spec.PriorityOnDemand, "")
	e := newEnv(t, p)
	if err := e.launch(t, p, "od-a1", ""); err != nil {
		t.Fatal(err) // the fake refuses an eviction policy or max price on a Regular VM
	}
	vm, _ := e.cloud.VM(rg, "od-a1")
	if *vm.Model.Properties.Priority != armcompute.VirtualMachinePriorityTypesRegular || vm.Model.Properties.EvictionPolicy != nil {
		t.Errorf("priority %s eviction %v", *vm.Model.Properties.Priority, vm.Model.Properties.EvictionPolicy)
	}
	// Deleted by someone else: lost, not preempted.
	f, _ := e.cloud.ClientFactory()
	if _, err := f.NewVirtualMachinesClient().BeginDelete(context.Background(), rg, "od-a1", nil); err != nil {
		t.Fatal(err)
	}
	want := []string{"Gone od-a1 lost: VMDeleted: the VM was deleted outside spotml"}
	if got := e.pass(t); !slices.Equal(got, want) {
		t.Errorf("pass = %q, want %q", got, want)
	}
}

func TestCapacityErrors(t *testing.T) {
	p := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDelete)
	e := newEnv(t, p)
	e.cloud.SetSpotCapacity("Standard_NC4as_T4_v3", false)
	err := e.launch(t, p, "gpu-a1", "1")
	if !errors.Is(err, control.ErrNoCapacity) || !strings.Contains(err.Error(), "SkuNotAvailable") {
		t.Fatalf("launch without spot capacity: %v, want ErrNoCapacity (SkuNotAvailable)", err)
	}
	e.cloud.SetSpotCapacity("Standard_NC4as_T4_v3", true)

	// Above the pool's max price.
	capped := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDelete)
	price := 0.10
	capped.Spec.Azure.MaxPrice = &price
	e.cloud.SetSpotPrice("Standard_NC4as_T4_v3", 0.16)
	if err := e.launch(t, capped, "gpu-a2", "1"); !errors.Is(err, control.ErrNoCapacity) || !strings.Contains(err.Error(), "SpotPriceGreaterThanProvidedMaxPrice") {
		t.Fatalf("launch above max price: %v", err)
	}

	// Accepted, then the allocation failed: a shortage the runner reports.
	e.cloud.SetAllocationFailure("Standard_NC4as_T4_v3", true)
	if err := e.launch(t, p, "gpu-a3", "1"); err != nil {
		t.Fatal(err)
	}
	want := []string{"Shortage gpu-a3: Azure could not allocate the VM: AllocationFailed"}
	if got := e.pass(t); !slices.Equal(got, want) {
		t.Errorf("pass = %q, want %q", got, want)
	}
	// The control plane then stops it (Shortage does); its VM goes.
	if err := e.prov.Stop(context.Background(), store.Node{Name: "gpu-a3", ProviderID: VMID(sub, rg, "gpu-a3")}); err != nil {
		t.Fatal(err)
	}
	if _, ok := e.cloud.VM(rg, "gpu-a3"); ok {
		t.Error("failed VM still there after Stop")
	}
}

func TestEvictionDeleteIsPreemption(t *testing.T) {
	p := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDelete)
	e := newEnv(t, p)
	for _, n := range []string{"gpu-a1", "gpu-a2", "gpu-a3"} {
		if err := e.launch(t, p, n, ""); err != nil {
			t.Fatal(err)
		}
		e.plane.Set(n, func(n *store.Node) { n.State = store.NodeReady })
	}
	e.pass(t)
	// Through the provider's Evicter: Azure's SimulateEviction.
	e.prov.view = e.plane
	if err := e.prov.Evict(context.Background(), "gpu-a2", 0); err != nil {
		t.Fatal(err)
	}
	want := []string{"Gone gpu-a2 preempted: SpotEviction: the VM was deleted (Spot eviction, evictionPolicy Delete)"}
	if got := e.pass(t); !slices.Equal(got, want) {
		t.Errorf("pass = %q, want %q", got, want)
	}
	if got := e.pass(t); len(got) != 0 {
		t.Errorf("second pass reported again: %v", got)
	}
	if _, ok := e.cloud.VM(rg, "gpu-a2"); ok {
		t.Error("evicted VM still there")
	}
}

func TestEvictionDeallocateThenRestart(t *testing.T) {
	p := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDeallocate)
	e := newEnv(t, p)
	if err := e.launch(t, p, "gpu-a1", "1"); err != nil {
		t.Fatal(err)
	}
	e.plane.Set("gpu-a1", func(n *store.Node) { n.State = store.NodeReady })
	e.pass(t)
	if err := e.cloud.Evict(rg, "gpu-a1"); err != nil {
		t.Fatal(err)
	}
	want := []string{"Gone gpu-a1 deallocated: SpotEviction: the VM was deallocated (Spot eviction, evictionPolicy Deallocate); its disk is kept"}
	if got := e.pass(t); !slices.Equal(got, want) {
		t.Fatalf("pass = %q, want %q", got, want)
	}
	vm, _ := e.cloud.VM(rg, "gpu-a1")
	vmID := *vm.Model.Properties.VMID

	// The control plane restarts it: same name, same VM (and disk), a new
	// credential in its user data before it boots.
	n := e.plane.Node("gpu-a1")
	n.State, n.Incarnation = store.NodeProvisioning, 2
	e.plane.Set("gpu-a1", func(m *store.Node) { *m = n })
	e.cloud.SetSpotCapacity("Standard_NC4as_T4_v3", false)
	_, err := e.prov.Launch(context.Background(), control.LaunchRequest{Pool: p, Node: n, Credential: "cred-2", Restart: true})
	if !errors.Is(err, control.ErrNoCapacity) {
		t.Fatalf("restart without capacity: %v, want ErrNoCapacity", err)
	}
	e.cloud.SetSpotCapacity("Standard_NC4as_T4_v3", true)
	var booted []string
	e.cloud.OnBoot = func(v azurefake.VM) { booted = append(booted, v.Name()+" "+v.UserData()) }
	at, err := e.prov.Launch(context.Background(), control.LaunchRequest{Pool: p, Node: n, Credential: "cred-2", Restart: true})
	if err != nil {
		t.Fatal(err)
	}
	if at.ProviderID != n.ProviderID {
		t.Errorf("restart provider ID %s, want %s", at.ProviderID, n.ProviderID)
	}
	if want := []string{"gpu-a1 node=gpu-a1\ncredential=cred-2\n"}; !slices.Equal(booted, want) {
		t.Errorf("booted %q, want %q", booted, want)
	}
	vm, _ = e.cloud.VM(rg, "gpu-a1")
	if *vm.Model.Properties.VMID != vmID || vm.Evictions != 1 {
		t.Errorf("restarted VM is another VM (%s, was %s)", *vm.Model.Properties.VMID, vmID)
	}
	if got := e.pass(t); len(got) != 0 {
		t.Errorf("pass after restart reported %v", got)
	}
}

func TestStopDeletesAndOrphansAreCollected(t *testing.T) {
	p := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDelete)
	e := newEnv(t, p)
	for _, n := range []string{"gpu-a1", "gpu-a2"} {
		if err := e.launch(t, p, n, ""); err != nil {
			t.Fatal(err)
		}
	}
	n1 := e.plane.Node("gpu-a1")
	if err := e.prov.Stop(context.Background(), n1); err != nil {
		t.Fatal(err)
	}
	if err := e.prov.Stop(context.Background(), n1); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if _, ok := e.cloud.VM(rg, "gpu-a1"); ok {
		t.Error("stopped VM still there")
	}
	// A node that ended while its VM stayed (a deletion that failed) has
	// its VM deleted by the runner.
	e.plane.Set("gpu-a2", func(n *store.Node) { n.State = store.NodeTerminated })
	e.plane.Set("gpu-a1", func(n *store.Node) { n.State = store.NodeTerminated })
	e.pass(t)
	if _, ok := e.cloud.VM(rg, "gpu-a2"); ok {
		t.Error("VM of an ended node not collected")
	}
}

func TestOrchestrationMismatchRefused(t *testing.T) {
	p := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDelete)
	e := newEnv(t, p)
	e.cloud.AddScaleSet(rg, "gpu", "westeurope", armcompute.OrchestrationModeUniform)
	err := e.launch(t, p, "gpu-a1", "")
	if err == nil || !strings.Contains(err.Error(), "spec.azure.orchestration: Flexible") || !strings.Contains(err.Error(), "Uniform") {
		t.Fatalf("launch into a Uniform scale set: %v", err)
	}
	p.Spec.Azure.ScaleSet = "nope"
	if err := e.launch(t, p, "gpu-a2", ""); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("launch into a missing scale set: %v", err)
	}
}

func TestDeletedPoolsVMsAreDeleted(t *testing.T) {
	p := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDelete)
	e := newEnv(t, p)
	if err := e.launch(t, p, "gpu-a1", ""); err != nil {
		t.Fatal(err)
	}
	e.pass(t)
	e.plane.SetPools()
	e.pass(t)
	if vms := e.cloud.VMs(); len(vms) != 0 {
		t.Errorf("%d VMs remain after the pool's deletion", len(vms))
	}
}
