package e2e

import (
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	"go.yaml.in/yaml/v3"

	"github.com/spotml/spotml/internal/notice"
	azureprov "github.com/spotml/spotml/internal/provider/azure"
	"github.com/spotml/spotml/internal/provider/azure/azurefake"
	"github.com/spotml/spotml/internal/provider/cloudtest"
	"github.com/spotml/spotml/internal/spec"
)

// azureCloud is azurefake with its VMs booted as processes on this
// machine (their cloud-init's start script, the real agent) and the
// Azure metadata service they read (user data, Scheduled Events).
type azureCloud struct {
	*azurefake.Cloud
	vms *cloudtest.Machines
}

func startAzure(t *testing.T) *azureCloud {
	t.Helper()
	log := cloudtest.Log(t)
	c := &azureCloud{Cloud: azurefake.New(sub), vms: cloudtest.NewMachines(t)}
	events := notice.NewServer(time.Now, log)
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, ok := strings.CutPrefix(r.URL.Path, "/nodes/")
		name, path, _ := strings.Cut(rest, "/")
		if ok && path == "metadata/instance/compute/userData" {
			vm, found := c.VMByName(name)
			if !found || r.Header.Get("Metadata") != "true" {
				http.Error(w, "bad request", http.StatusBadRequest)
				return
			}
			w.Write([]byte(base64.StdEncoding.EncodeToString([]byte(vm.UserData()))))
			return
		}
		events.ServeHTTP(w, r)
	}))
	t.Cleanup(imds.Close)
	c.OnBoot = func(vm azurefake.VM) {
		var doc struct {
			WriteFiles []struct{ Path, Content string } `yaml:"write_files"`
		}
		if err := yaml.Unmarshal([]byte(vm.CustomData()), &doc); err != nil || len(doc.WriteFiles) == 0 {
			t.Errorf("VM %s: custom data is no cloud-config with files: %v", vm.Name(), err)
			return
		}
		events.Ensure(vm.Name(), notice.FormatAzure)
		c.vms.Boot(vm.Name(), doc.WriteFiles[0].Content, "SPOTML_IMDS="+notice.BaseURL(imds.URL, vm.Name()))
	}
	c.OnEnd = func(vm azurefake.VM) { c.vms.End(vm.Name()) }
	return c
}

// VMByName finds a VM in any resource group.
func (c *azureCloud) VMByName(name string) (azurefake.VM, bool) {
	for _, vm := range c.VMs() {
		if vm.Name() == name {
			return vm, true
		}
	}
	return azurefake.VM{}, false
}

func (c *azureCloud) provider(p *cloudtest.Plane, bins string) *azureprov.Provider {
	return azureprov.New(func(string) (*armcompute.ClientFactory, error) { return c.ClientFactory() },
		azureprov.Config{ServerURL: p.URL, SpotmlURL: bins, Interval: 200 * time.Millisecond}, p.Log, time.Now)
}

func azurePool(name, scaleSet, size string) spec.Pool {
	return spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: name},
		Spec: spec.PoolSpec{Provider: spec.ProviderAzure, InstanceType: size, Zones: []string{"1"},
			Azure: &spec.AzurePool{Subscription: sub, ResourceGroup: "ml", ScaleSet: scaleSet, Image: "Canonical:ubuntu-24_04-lts:server:latest",
				Subnet:       "/subscriptions/" + sub + "/resourceGroups/ml/providers/Microsoft.Network/virtualNetworks/v/subnets/s",
				SSHPublicKey: "ssh-ed25519 AAAA test"}}}
}

// TestCapacityShortageFallsBackToOnDemand: Azure refuses the spot
// pool's Spot VMs, at the create (SkuNotAvailable) or after accepting it
// (the VM's provisioning fails ZonalAllocationFailed, which the runner
// reports as a shortage). A prod and a strict service run on on-demand
// stand-ins in a Regular pool meanwhile, and return to Spot VMs once
// Azure has capacity again (see cloudtest.Fallback).
func TestCapacityShortageFallsBackToOnDemand(t *testing.T) {
	cloudtest.NeedTools(t, "sh", "curl", "base64", "sed")
	bin := cloudtest.SpotmlBinary(t)
	for _, tc := range []struct {
		name, code string
		refuse     func(c *azureCloud, size string, refuse bool)
	}{
		{"SkuNotAvailable", "SkuNotAvailable", func(c *azureCloud, size string, refuse bool) { c.SetSpotCapacity(size, !refuse) }},
		{"ZonalAllocationFailed", "ZonalAllocationFailed", func(c *azureCloud, size string, refuse bool) {
			code := ""
			if refuse {
				code = "ZonalAllocationFailed"
			}
			c.SetAllocationFailureCode(size, code)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bins := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, bin) }))
			t.Cleanup(bins.Close)
			cloud := startAzure(t)
			cloud.AddScaleSet("ml", "spot", "westeurope", armcompute.OrchestrationModeFlexible)
			cloud.AddScaleSet("ml", "regular", "westeurope", armcompute.OrchestrationModeFlexible)
			p := cloudtest.Listen(t)
			p.Start(azureprov.Name, cloud.provider(p, bins.URL+"/spotml"))
			const spotSize = "Standard_D2s_v5"
			cloudtest.Fallback{
				Plane:    p,
				Spot:     azurePool("spot", "spot", spotSize),
				OnDemand: azurePool("od", "regular", "Standard_D4s_v5"),
				SetSpot:  func(ok bool) { tc.refuse(cloud, spotSize, !ok) },
				Refusal:  tc.code,
				SpotVMs: func() int {
					n := 0
					for _, vm := range cloud.VMs() {
						if pr := vm.Model.Properties.Priority; vm.Power == "running" && pr != nil && *pr == armcompute.VirtualMachinePriorityTypesSpot {
							n++
						}
					}
					return n
				},
				Dump: cloud.vms.LogBoots,
			}.Run(t)
		})
	}
}
