package e2e

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/api/option"

	"github.com/spotml/spotml/internal/notice"
	"github.com/spotml/spotml/internal/provider/cloudtest"
	gcpprov "github.com/spotml/spotml/internal/provider/gcp"
	"github.com/spotml/spotml/internal/provider/gcp/gcpfake"
	"github.com/spotml/spotml/internal/spec"
)

// gcpCloud is gcpfake served over loopback, with its VMs booted as
// processes on this machine (their startup script, a systemctl stand-in,
// the real agent) and the metadata server they read, and a control plane
// with the gcp provider.
type gcpCloud struct {
	*gcpfake.Cloud
	vms       *cloudtest.Machines
	p         *cloudtest.Plane
	downloads atomic.Int32
}

func startGCP(t *testing.T) *gcpCloud {
	t.Helper()
	cloudtest.NeedTools(t, "sh", "curl", "sed")
	bin := cloudtest.SpotmlBinary(t)
	c := &gcpCloud{}
	bins := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { c.downloads.Add(1); http.ServeFile(w, r, bin) }))
	t.Cleanup(bins.Close)
	log := cloudtest.Log(t)

	cloud := gcpfake.New()
	c.Cloud = cloud
	cloud.NoticeFor = 3 * time.Second
	api := httptest.NewServer(cloud)
	t.Cleanup(api.Close)
	events := notice.NewServer(time.Now, log)
	imds := httptest.NewServer(metadataServer(cloud, events))
	t.Cleanup(imds.Close)
	fakebin := filepath.Join(t.TempDir(), "bin")
	os.MkdirAll(fakebin, 0o755)
	os.WriteFile(filepath.Join(fakebin, "systemctl"), []byte(systemctl), 0o755)
	machines := cloudtest.NewMachines(t)
	cloud.OnBoot = func(vm gcpfake.Instance) {
		script, ok := vm.Metadata(gcpprov.KeyStartup)
		if !ok {
			t.Errorf("VM %s has no startup-script", vm.Name())
			return
		}
		events.Ensure(vm.Name(), notice.FormatGCP)
		events.Clear(vm.Name())
		machines.Boot(vm.Name(), script, "SPOTML_IMDS="+notice.BaseURL(imds.URL, vm.Name()), "PATH="+fakebin+":"+os.Getenv("PATH"))
	}
	cloud.OnNotice = func(vm gcpfake.Instance) { events.Set(vm.Name(), time.Now().Add(cloud.NoticeFor), "") }
	cloud.OnEnd = func(vm gcpfake.Instance) { machines.End(vm.Name()) }

	p := cloudtest.Listen(t)
	clients, err := gcpprov.NewClients(t.Context(), option.WithEndpoint(api.URL), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { clients.Close() })
	p.Start(gcpprov.Name, gcpprov.New(clients, gcpprov.Config{ServerURL: p.URL, SpotmlURL: bins.URL + "/spotml", Interval: 200 * time.Millisecond}, log, time.Now))

	c.vms, c.p = machines, p
	return c
}

const zone = "us-central1-a"

func gcpPool(name string) spec.Pool {
	return spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: name},
		Spec: spec.PoolSpec{Provider: spec.ProviderGCP, InstanceType: "n1-standard-4", Zones: []string{zone},
			GCP: &spec.GCPPool{Project: project, Image: "projects/debian-cloud/global/images/family/debian-12"}}}
}

// TestCapacityShortageFallsBackToOnDemand: Compute Engine refuses the
// spot pool's Spot VMs with ZONE_RESOURCE_POOL_EXHAUSTED in the insert's
// operation, which the provider reports as a capacity shortage. A prod
// and a strict service run on on-demand stand-ins in a standard pool
// meanwhile, and return to Spot VMs once the zone has capacity again
// (see cloudtest.Fallback).
func TestCapacityShortageFallsBackToOnDemand(t *testing.T) {
	c := startGCP(t)
	cloud, machines, p := c.Cloud, c.vms, c.p
	cloudtest.Fallback{
		Plane:    p,
		Spot:     gcpPool("spot"),
		OnDemand: gcpPool("od"),
		SetSpot: func(ok bool) {
			code := "ZONE_RESOURCE_POOL_EXHAUSTED"
			if ok {
				code = ""
			}
			cloud.Refuse(zone, "SPOT", code)
		},
		Refusal: "ZONE_RESOURCE_POOL_EXHAUSTED",
		SpotVMs: func() int {
			n := 0
			for _, vm := range cloud.Instances() {
				if vm.Status() == "RUNNING" && vm.Proto().GetScheduling().GetProvisioningModel() == "SPOT" {
					n++
				}
			}
			return n
		},
		Dump: machines.LogBoots,
	}.Run(t)
}
