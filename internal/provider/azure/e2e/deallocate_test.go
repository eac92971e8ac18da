package e2e

import (
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"

	azureprov "github.com/spotml/spotml/internal/provider/azure"
	"github.com/spotml/spotml/internal/provider/cloudtest"
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
