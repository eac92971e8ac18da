package spec

import (
	"strings"
	"testing"
)

// TestGCPPool: a gcp pool's settings are checked without calling Google,
// and each error names its field and the fix.
func TestGCPPool(t *testing.T) {
	valid := func() Pool {
		return Pool{APIVersion: APIVersion, Kind: KindPool, Metadata: Metadata{Name: "gpu"},
			Spec: PoolSpec{Provider: ProviderGCP, Priority: PrioritySpot, InstanceType: "n1-standard-4", Max: 2,
				Zones: []string{"us-central1-a", "us-central1-b"},
				GCP: &GCPPool{Project: "ml-project-1", Image: "projects/debian-cloud/global/images/family/debian-12",
					Subnetwork: "regions/us-central1/subnetworks/ml", ServiceAccount: "node@ml-project-1.iam.gserviceaccount.com",
					Accelerators: []GCPAccelerator{{Type: "nvidia-tesla-t4", Count: 1}}, Labels: map[string]string{"team": "vision"}}}}
	}
	p := valid()
	p.Default()
	if err := p.Validate(); err != nil {
		t.Fatalf("valid pool: %v", err)
	}
	if p.Spec.GCP.Network != DefaultGCPNetwork {
		t.Errorf("network defaulted to %q", p.Spec.GCP.Network)
	}
	for _, tc := range []struct {
		edit func(p *Pool)
		want string
	}{
		{func(p *Pool) { p.Spec.GCP = nil }, "spec.gcp: required when provider is \"gcp\""},
		{func(p *Pool) { p.Spec.Zones = nil }, "spec.zones: required when provider is \"gcp\""},
		{func(p *Pool) { p.Spec.Zones = []string{"us-central1"} }, "spec.zones[0]: \"us-central1\" is not a Compute Engine zone"},
		{func(p *Pool) { p.Spec.Zones = []string{"us-central1-a", "europe-west4-b"} }, "spec.zones[1]: \"europe-west4-b\" is not in region us-central1 of spec.gcp.subnetwork"},
		{func(p *Pool) { p.Spec.InstanceType = "Standard_D2s_v3" }, "spec.instanceType: \"Standard_D2s_v3\" is not a Compute Engine machine type"},
		{func(p *Pool) { p.Spec.GCP.Project = "" }, "spec.gcp.project: required"},
		{func(p *Pool) { p.Spec.GCP.Project = "My Project" }, "spec.gcp.project: \"My Project\" is not a project ID"},
		{func(p *Pool) { p.Spec.GCP.Image = "debian-12" }, "spec.gcp.image: \"debian-12\" is not an image"},
		{func(p *Pool) { p.Spec.GCP.Network = "default" }, "spec.gcp.network: \"default\" is not a network"},
		{func(p *Pool) { p.Spec.GCP.Subnetwork = "ml" }, "spec.gcp.subnetwork: \"ml\" is not a subnetwork"},
		{func(p *Pool) { p.Spec.GCP.ServiceAccount = "node" }, "spec.gcp.serviceAccount: \"node\" is not a service account email"},
		{func(p *Pool) { p.Spec.GCP.DiskSizeGB = 5 }, "spec.gcp.diskSizeGB: must be between 10 and 65536"},
		{func(p *Pool) { p.Spec.GCP.Accelerators[0].Count = 0 }, "spec.gcp.accelerators[0].count: must be between 1 and 16"},
		{func(p *Pool) { p.Spec.GCP.Labels = map[string]string{"Team": "x"} }, "spec.gcp.labels.Team: \"Team\" is not a label key"},
		{func(p *Pool) { p.Spec.GCP.Labels = map[string]string{"spotml-pool": "x"} }, "spec.gcp.labels.spotml-pool: is spotml's own label"},
		{func(p *Pool) { p.Spec.GCP.Setup = []string{" "} }, "spec.gcp.setup[0]: must not be empty"},
		{func(p *Pool) { p.Spec.Priority, p.Spec.EvictionPolicy = PriorityOnDemand, EvictionDeallocate }, "spec.evictionPolicy: \"deallocate\" applies to Spot VMs only"},
		{func(p *Pool) { p.Spec.Provider = ProviderAWS }, "spec.gcp: only allowed when provider is \"gcp\""},
	} {
		p := valid()
		tc.edit(&p)
		err := p.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("error %v, want one containing %q", err, tc.want)
		}
	}
}
