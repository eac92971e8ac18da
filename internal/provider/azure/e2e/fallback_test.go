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
	// events is the Scheduled Events endpoint the VMs read.
	events *notice.Server
	// uniform are the Uniform scale sets (resource group ml), whose
	// instances the metadata service looks up too.
	uniform []string
}

func startAzure(t *testing.T) *azureCloud {
	t.Helper()
	log := cloudtest.Log(t)
	c := &azureCloud{Cloud: azurefake.New(sub), vms: cloudtest.NewMachines(t)}
	events := notice.NewServer(time.Now, log)
	c.events = events
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, ok := strings.CutPrefix(r.URL.Path, "/nodes/")
		name, path, _ := strings.Cut(rest, "/")
		if ok && path == "metadata/instance/compute/userData" {
			userData, found := c.userData(name)
			if !found || r.Header.Get("Metadata") != "true" {
				http.Error(w, "bad request", http.StatusBadRequest)
				return
			}
			w.Write([]byte(base64.StdEncoding.EncodeToString([]byte(userData))))
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
	// A Uniform instance boots the custom data its scale set's profile
	// had when it was made; it is known by its own name (the node's name
	// comes later, in its user data).
	c.OnInstanceBoot = func(in azurefake.Instance) {
		name := *in.Model.Name
		var doc struct {
			WriteFiles []struct{ Path, Content string } `yaml:"write_files"`
		}
		cd, _ := base64.StdEncoding.DecodeString(*in.Model.Properties.OSProfile.CustomData)
		if err := yaml.Unmarshal(cd, &doc); err != nil || len(doc.WriteFiles) == 0 {
			t.Errorf("instance %s: custom data is no cloud-config with files: %v", name, err)
			return
		}
		events.Ensure(name, notice.FormatAzure)
		c.vms.Boot(name, doc.WriteFiles[0].Content, "SPOTML_IMDS="+notice.BaseURL(imds.URL, name))
	}
	c.OnInstanceEnd = func(in azurefake.Instance) { c.vms.End(*in.Model.Name) }
	return c
}

// userData is the user data of the VM or Uniform instance called name.
func (c *azureCloud) userData(name string) (string, bool) {
	if vm, ok := c.VMByName(name); ok {
		return vm.UserData(), true
	}
	for _, ss := range c.uniform {
		for _, in := range c.Instances("ml", ss) {
			if *in.Model.Name == name {
				return in.UserData(), true
			}
		}
	}
	return "", false
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
// reports as a shortage), or, in Uniform scale sets whose instances boot
// the profile's custom data and wait for their identity, at the capacity
// raise (SkuNotAvailable). A prod and a strict service run on on-demand
// stand-ins in a Regular pool meanwhile, and return to Spot VMs once
// Azure has capacity again (see cloudtest.Fallback).
func TestCapacityShortageFallsBackToOnDemand(t *testing.T) {
	cloudtest.NeedTools(t, "sh", "curl", "base64", "sed")
	bin := cloudtest.SpotmlBinary(t)
	for _, tc := range []struct {
		name, code string
		refuse     func(c *azureCloud, size string, refuse bool)
		uniform    bool
	}{
		{"SkuNotAvailable", "SkuNotAvailable", func(c *azureCloud, size string, refuse bool) { c.SetSpotCapacity(size, !refuse) }, false},
		{"ZonalAllocationFailed", "ZonalAllocationFailed", func(c *azureCloud, size string, refuse bool) {
			code := ""
			if refuse {
				code = "ZonalAllocationFailed"
			}
			c.SetAllocationFailureCode(size, code)
		}, false},
		// A Uniform scale set refuses the capacity raise itself.
		{"Uniform/SkuNotAvailable", "SkuNotAvailable", func(c *azureCloud, size string, refuse bool) { c.SetSpotCapacity(size, !refuse) }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bins := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, bin) }))
			t.Cleanup(bins.Close)
			cloud := startAzure(t)
			const spotSize, odSize = "Standard_D2s_v5", "Standard_D4s_v5"
			spot, od := azurePool("spot", "spot", spotSize), azurePool("od", "regular", odSize)
			if tc.uniform {
				cloud.AddUniformScaleSet("ml", "spot", "westeurope", spotSize, armcompute.VirtualMachinePriorityTypesSpot, armcompute.VirtualMachineEvictionPolicyTypesDelete)
				cloud.AddUniformScaleSet("ml", "regular", "westeurope", odSize, armcompute.VirtualMachinePriorityTypesRegular, "")
				cloud.uniform = []string{"spot", "regular"}
				for _, pl := range []*spec.Pool{&spot, &od} {
					pl.Spec.Azure.Orchestration, pl.Spec.Zones = spec.AzureUniform, nil
				}
			} else {
				cloud.AddScaleSet("ml", "spot", "westeurope", armcompute.OrchestrationModeFlexible)
				cloud.AddScaleSet("ml", "regular", "westeurope", armcompute.OrchestrationModeFlexible)
			}
			p := cloudtest.Listen(t)
			p.Start(azureprov.Name, cloud.provider(p, bins.URL+"/spotml"))
			cloudtest.Fallback{
				Plane:    p,
				Spot:     spot,
				OnDemand: od,
				SetSpot:  func(ok bool) { tc.refuse(cloud, spotSize, !ok) },
				Refusal:  tc.code,
				SpotVMs: func() int {
					n := 0
					for _, vm := range cloud.VMs() {
						if pr := vm.Model.Properties.Priority; vm.Power == "running" && pr != nil && *pr == armcompute.VirtualMachinePriorityTypesSpot {
							n++
						}
					}
					for _, in := range cloud.Instances("ml", "spot") {
						if in.Power == "running" {
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
