package spec

import (
	"fmt"
	"regexp"
	"strings"
)

// GCPPool makes a pool's nodes Compute Engine VMs: Spot
// (provisioningModel SPOT) or standard as spec.priority says, of machine
// type spec.instanceType, in the zones of spec.zones. A preempted Spot VM
// is deleted, or stopped with its disk kept when spec.evictionPolicy is
// deallocate (instanceTerminationAction STOP).
type GCPPool struct {
	// Project is the project ID the VMs are made in.
	Project string `yaml:"project" json:"project"`
	// Image is the boot disk's source image: projects/P/global/images/I,
	// an image family (projects/P/global/images/family/F) or its URL.
	Image string `yaml:"image" json:"image"`
	// Network and Subnetwork are the VMs' network interface: a network
	// (default global/networks/default) and, for custom-mode networks, a
	// subnetwork (regions/R/subnetworks/S).
	Network    string `yaml:"network,omitempty" json:"network,omitempty"`
	Subnetwork string `yaml:"subnetwork,omitempty" json:"subnetwork,omitempty"`
	// InternalOnly gives the VMs no external IP address (they reach the
	// control plane and the spotml download through Cloud NAT or a VPN).
	InternalOnly bool `yaml:"internalOnly,omitempty" json:"internalOnly,omitempty"`
	// ServiceAccount is the email of the service account the VMs run as,
	// for the blob store the nodes use; empty is the project's default
	// Compute Engine service account.
	ServiceAccount string `yaml:"serviceAccount,omitempty" json:"serviceAccount,omitempty"`
	// DiskSizeGB overrides the image's boot disk size.
	DiskSizeGB int64 `yaml:"diskSizeGB,omitempty" json:"diskSizeGB,omitempty"`
	// Accelerators are GPUs attached to each VM (N1 machine types take
	// nvidia-tesla-t4 and the like; A2 and G2 types come with theirs).
	Accelerators []GCPAccelerator `yaml:"accelerators,omitempty" json:"accelerators,omitempty"`
	// Labels are added to the VMs' own (spotml-pool, spotml-node).
	Labels map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
	// Setup are shell commands the startup script runs as root on the
	// VM's first boot before the agent starts.
	Setup []string `yaml:"setup,omitempty" json:"setup,omitempty"`
}

// GCPAccelerator is a GPU type and how many of it a VM gets.
type GCPAccelerator struct {
	Type  string `yaml:"type" json:"type"`
	Count int32  `yaml:"count" json:"count"`
}

// DefaultGCPNetwork is the network of a gcp pool that names none.
const DefaultGCPNetwork = "global/networks/default"

var (
	gcpProject  = regexp.MustCompile(`^[a-z][a-z0-9-]{4,28}[a-z0-9]$`)
	gcpZone     = regexp.MustCompile(`^[a-z]+-[a-z]+[0-9]+-[a-z]$`)
	gcpMachine  = regexp.MustCompile(`^[a-z][a-z0-9]*(-[a-z0-9]+)+$`)
	gcpImage    = regexp.MustCompile(`^(https://www\.googleapis\.com/compute/v1/)?(projects/[a-z][-a-z0-9.:]*/)?global/images/(family/)?[a-z]([-a-z0-9]*[a-z0-9])?$`)
	gcpNetwork  = regexp.MustCompile(`^(https://www\.googleapis\.com/compute/v1/)?(projects/[a-z][-a-z0-9.:]*/)?global/networks/[a-z]([-a-z0-9]*[a-z0-9])?$`)
	gcpSubnet   = regexp.MustCompile(`^(https://www\.googleapis\.com/compute/v1/)?(projects/[a-z][-a-z0-9.:]*/)?regions/[a-z]+-[a-z]+[0-9]+/subnetworks/[a-z]([-a-z0-9]*[a-z0-9])?$`)
	gcpAccel    = regexp.MustCompile(`^[a-z][-a-z0-9]*[a-z0-9]$`)
	gcpLabelKey = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)
	gcpLabelVal = regexp.MustCompile(`^[a-z0-9_-]{0,63}$`)
	gcpEmail    = regexp.MustCompile(`^[^@\s]+@[^@\s]+\.[a-z]+$`)
)

func (g *GCPPool) defaults() {
	if g.Network == "" {
		g.Network = DefaultGCPNetwork
	}
}

// validateGCP checks a gcp pool: its spec.gcp block and the common fields
// as Compute Engine reads them.
func (s *PoolSpec) validateGCP(errs *fieldErrors) {
	const at = "spec.gcp"
	if len(s.Zones) == 0 {
		errs.add("spec.zones", "required when provider is %q: at least one zone such as us-central1-a; a VM goes to the node's zone, or to another of the pool's zones while that one is out of capacity", ProviderGCP)
	}
	for i, z := range s.Zones {
		if !gcpZone.MatchString(z) {
			errs.add(fmt.Sprintf("spec.zones[%d]", i), "%q is not a Compute Engine zone; use a name such as us-central1-a (gcloud compute zones list)", z)
		}
	}
	if s.InstanceType != "" && !gcpMachine.MatchString(s.InstanceType) {
		errs.add("spec.instanceType", "%q is not a Compute Engine machine type; use a name such as n2-standard-8 or g2-standard-4 (gcloud compute machine-types list)", s.InstanceType)
	}
	if s.EvictionPolicy == EvictionDeallocate && s.Priority == PriorityOnDemand {
		errs.add("spec.evictionPolicy", "%q applies to Spot VMs only (instanceTerminationAction STOP); leave it out for an on-demand pool", EvictionDeallocate)
	}
	g := s.GCP
	if g == nil {
		errs.add(at, "required when provider is %q: at least project and image", ProviderGCP)
		return
	}
	switch {
	case g.Project == "":
		errs.add(at+".project", "required: the project ID the VMs are made in (gcloud config get project)")
	case !gcpProject.MatchString(g.Project):
		errs.add(at+".project", "%q is not a project ID (6-30 lowercase letters, digits and '-', starting with a letter); use the ID, not the project's display name or number", g.Project)
	}
	switch {
	case g.Image == "":
		errs.add(at+".image", "required: a boot image such as projects/debian-cloud/global/images/family/debian-12")
	case !gcpImage.MatchString(g.Image):
		errs.add(at+".image", "%q is not an image; use projects/PROJECT/global/images/IMAGE or projects/PROJECT/global/images/family/FAMILY", g.Image)
	}
	if g.Network != "" && !gcpNetwork.MatchString(g.Network) {
		errs.add(at+".network", "%q is not a network; use global/networks/NAME or projects/PROJECT/global/networks/NAME", g.Network)
	}
	if g.Subnetwork != "" {
		if !gcpSubnet.MatchString(g.Subnetwork) {
			errs.add(at+".subnetwork", "%q is not a subnetwork; use regions/REGION/subnetworks/NAME or projects/PROJECT/regions/REGION/subnetworks/NAME", g.Subnetwork)
		} else {
			// A subnetwork belongs to one region: every zone must be in it.
			region := strings.Split(strings.SplitAfter(g.Subnetwork, "regions/")[1], "/")[0]
			for i, z := range s.Zones {
				if gcpZone.MatchString(z) && z[:strings.LastIndex(z, "-")] != region {
					errs.add(fmt.Sprintf("spec.zones[%d]", i), "%q is not in region %s of spec.gcp.subnetwork; use zones of %s", z, region, region)
				}
			}
		}
	}
	if g.ServiceAccount != "" && !gcpEmail.MatchString(g.ServiceAccount) {
		errs.add(at+".serviceAccount", "%q is not a service account email (NAME@PROJECT.iam.gserviceaccount.com)", g.ServiceAccount)
	}
	if g.DiskSizeGB < 0 || g.DiskSizeGB > 65536 {
		errs.add(at+".diskSizeGB", "must be between 10 and 65536, got %d", g.DiskSizeGB)
	} else if g.DiskSizeGB > 0 && g.DiskSizeGB < 10 {
		errs.add(at+".diskSizeGB", "must be between 10 and 65536, got %d", g.DiskSizeGB)
	}
	for i, a := range g.Accelerators {
		f := fmt.Sprintf("%s.accelerators[%d]", at, i)
		if !gcpAccel.MatchString(a.Type) {
			errs.add(f+".type", "%q is not an accelerator type; use a name such as nvidia-tesla-t4 (gcloud compute accelerator-types list)", a.Type)
		}
		if a.Count < 1 || a.Count > 16 {
			errs.add(f+".count", "must be between 1 and 16, got %d", a.Count)
		}
	}
	for k, v := range g.Labels {
		f := at + ".labels." + k
		switch {
		case !gcpLabelKey.MatchString(k):
			errs.add(f, "%q is not a label key (lowercase letters, digits, '_' and '-', starting with a letter, at most 63)", k)
		case k == "spotml-pool" || k == "spotml-node":
			errs.add(f, "is spotml's own label, set on every VM; use another key")
		case !gcpLabelVal.MatchString(v):
			errs.add(f, "%q is not a label value (lowercase letters, digits, '_' and '-', at most 63)", v)
		}
	}
	for i, c := range g.Setup {
		if strings.TrimSpace(c) == "" {
			errs.add(fmt.Sprintf("%s.setup[%d]", at, i), "must not be empty")
		}
	}
}
