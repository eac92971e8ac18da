package e2e

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"

	azureprov "github.com/spotml/spotml/internal/provider/azure"
	"github.com/spotml/spotml/internal/provider/azure/azurefake"
	"github.com/spotml/spotml/internal/provider/cloudtest"
	"github.com/spotml/spotml/internal/spec"
)

// TestDeallocateThenRestartKeepsNameAndDisk: Azure evicts a Spot VM of a
// pool with evictionPolicy deallocate; spotml starts the same VM again
// (same vmId, same OS disk: spotml is not downloaded again) under the
// node's name, with a new credential in its user data, and the requeued
// task finishes there (see cloudtest.Deallocate).
func TestDeallocateThenRestartKeepsNameAndDisk(t *testing.T) {
	cloudtest.NeedTools(t, "sh", "curl", "base64", "sed")
	bin := cloudtest.SpotmlBinary(t)
	var downloads atomic.Int32
	bins := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		downloads.Add(1)
		http.ServeFile(w, r, bin)
	}))
	t.Cleanup(bins.Close)
	cloud := startAzure(t)
	cloud.AddScaleSet("ml", "gpu", "westeurope", armcompute.OrchestrationModeFlexible)
	p := cloudtest.Listen(t)
	p.Start(azureprov.Name, cloud.provider(p, bins.URL+"/spotml"))
	cloudtest.Deallocate{
		Plane: p,
		Pool:  azurePool("gpu", "gpu", "Standard_D2s_v5"),
		Evict: func(node string) error { return cloud.Evict("ml", node) },
		VMID: func(node string) string {
			vm, ok := cloud.VM("ml", node)
			if !ok {
				return ""
			}
			return *vm.Model.Properties.VMID
		},
		Cleared: func(node string) bool {
			vm, ok := cloud.VM("ml", node)
			return ok && vm.UserData() == ""
		},
		Downloads: func() int { return int(downloads.Load()) },
		Dump:      cloud.vms.LogBoots,
	}.Run(t)
}

// TestUniformDeallocateThenRestartKeepsNameAndDisk is the same in a
// Uniform scale set whose profile deallocates evicted Spot instances:
// the node comes back on the same instance (same instance ID and disk)
// under its name.
func TestUniformDeallocateThenRestartKeepsNameAndDisk(t *testing.T) {
	cloudtest.NeedTools(t, "sh", "curl", "base64", "sed")
	bin := cloudtest.SpotmlBinary(t)
	var downloads atomic.Int32
	bins := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		downloads.Add(1)
		http.ServeFile(w, r, bin)
	}))
	t.Cleanup(bins.Close)
	cloud := startAzure(t)
	cloud.AddUniformScaleSet("ml", "gpu", "westeurope", "Standard_D2s_v5", armcompute.VirtualMachinePriorityTypesSpot, armcompute.VirtualMachineEvictionPolicyTypesDeallocate)
	cloud.uniform = []string{"gpu"}
	p := cloudtest.Listen(t)
	p.Start(azureprov.Name, cloud.provider(p, bins.URL+"/spotml"))
	instance := func(node string) (azurefake.Instance, bool) {
		for _, in := range cloud.Instances("ml", "gpu") {
			if tag := in.Model.Tags[azureprov.TagNode]; tag != nil && *tag == node {
				return in, true
			}
		}
		return azurefake.Instance{}, false
	}
	pool := azurePool("gpu", "gpu", "Standard_D2s_v5")
	pool.Spec.Azure.Orchestration, pool.Spec.Zones = spec.AzureUniform, nil
	cloudtest.Deallocate{
		Plane: p,
		Pool:  pool,
		Evict: func(node string) error {
			in, _ := instance(node)
			return cloud.EvictInstance("ml", "gpu", in.InstanceID())
		},
		VMID: func(node string) string {
			if in, ok := instance(node); ok {
				return in.InstanceID()
			}
			return ""
		},
		Cleared: func(node string) bool {
			in, ok := instance(node)
			return ok && in.UserData() == ""
		},
		Downloads: func() int { return int(downloads.Load()) },
		Dump:      cloud.vms.LogBoots,
	}.Run(t)
}
