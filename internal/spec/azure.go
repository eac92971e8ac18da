package spec

import (
	"fmt"
	"regexp"
	"strings"
)

// AzurePool makes a pool's nodes VMs of an Azure Virtual Machine Scale Set
// in Flexible orchestration: each node is one VM spotml adds to the scale
// set (priority Spot or Regular from spec.priority, the pool's
// evictionPolicy, vmSize from spec.instanceType, zones from spec.zones).
// The scale set itself is the user's (made once with az or a template);
// spotml adds and removes its VMs.
type AzurePool struct {
	Subscription  string `yaml:"subscription" json:"subscription"`
	ResourceGroup string `yaml:"resourceGroup" json:"resourceGroup"`
	ScaleSet      string `yaml:"scaleSet" json:"scaleSet"`
	// Orchestration is the scale set's orchestration mode: Flexible (the
	// default), where spotml makes each VM itself, or Uniform, where the
	// scale set makes its VMs from its one profile (whose priority,
	// eviction policy and size the pool must repeat) and spotml changes
	// its capacity and gives each new instance its identity.
	Orchestration string `yaml:"orchestration,omitempty" json:"orchestration,omitempty"`
	// Image is a marketplace image URN (Publisher:Offer:Sku:Version) or an
	// image resource ID (/subscriptions/…/images/… or a gallery version).
	Image string `yaml:"image" json:"image"`
	// Subnet is the resource ID of the subnet the VMs' NICs join.
	Subnet string `yaml:"subnet" json:"subnet"`
	// MaxPrice is the most a Spot VM may cost per hour, in US dollars;
	// -1 (the default) pays up to the on-demand price, so that the VM is
	// evicted for capacity only, never for price.
	MaxPrice *float64 `yaml:"maxPrice,omitempty" json:"maxPrice,omitempty"`
	// AdminUsername and SSHPublicKey make the VM's login (Azure requires
	// one); spotml itself never logs in.
	AdminUsername string `yaml:"adminUsername,omitempty" json:"adminUsername,omitempty"`
	SSHPublicKey  string `yaml:"sshPublicKey" json:"sshPublicKey"`
	// OSDiskSizeGB overrides the image's OS disk size.
	OSDiskSizeGB int32 `yaml:"osDiskSizeGB,omitempty" json:"osDiskSizeGB,omitempty"`
	// Setup are shell commands cloud-init runs as root on the VM's first
	// boot before the agent starts (drivers, packages, a model download).
	Setup []string `yaml:"setup,omitempty" json:"setup,omitempty"`
	// Prices is where a Spot node's price comes from: table (the default)
	// or cloud (the Azure Retail Prices API's Spot price for the size in
	// the scale set's region, falling back to the table).
	Prices string `yaml:"prices,omitempty" json:"prices,omitempty"`
}

// Azure settings.
const (
	AzureFlexible         = "Flexible"
	AzureUniform          = "Uniform"
	DefaultAzureAdminUser = "spotml"
)

var (
	azureGUID          = regexp.MustCompile(`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
	azureResourceGroup = regexp.MustCompile(`^[-\w._()]{1,90}$`)
	azureScaleSet      = regexp.MustCompile(`^[a-zA-Z0-9][-a-zA-Z0-9._]{0,62}[a-zA-Z0-9_]$|^[a-zA-Z0-9]$`)
	azureSubnet        = regexp.MustCompile(`(?i)^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Network/virtualNetworks/[^/]+/subnets/[^/]+$`)
	azureAdminUser     = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}$`)
)

func (a *AzurePool) defaults(priority string) {
	if a.Orchestration == "" {
		a.Orchestration = AzureFlexible
	}
	if a.AdminUsername == "" {
		a.AdminUsername = DefaultAzureAdminUser
	}
	if a.MaxPrice == nil && priority == PrioritySpot {
		unlimited := -1.0
		a.MaxPrice = &unlimited
	}
}

// validateAzure checks an azure pool: its spec.azure block and the common
// fields as Azure reads them.
func (s *PoolSpec) validateAzure(errs *fieldErrors) {
	const at = "spec.azure"
	for i, z := range s.Zones {
		if z != "1" && z != "2" && z != "3" {
			errs.add(fmt.Sprintf("spec.zones[%d]", i), "%q is not an Azure availability zone; use \"1\", \"2\" or \"3\" (the region's zone numbers), or leave zones out", z)
		}
	}
	if s.EvictionPolicy == EvictionDeallocate && s.Priority == PriorityOnDemand {
		errs.add("spec.evictionPolicy", "%q applies to Spot VMs only; leave it out for an on-demand (Regular) pool", EvictionDeallocate)
	}
	a := s.Azure
	if a == nil {
		errs.add(at, "required when provider is %q: at least subscription, resourceGroup, scaleSet, image, subnet and sshPublicKey", ProviderAzure)
		return
	}
	switch {
	case a.Subscription == "":
		errs.add(at+".subscription", "required: the subscription ID of the scale set (az account show --query id)")
	case !azureGUID.MatchString(a.Subscription):
		errs.add(at+".subscription", "%q is not a subscription ID; use its GUID (az account show --query id)", a.Subscription)
	}
	switch {
	case a.ResourceGroup == "":
		errs.add(at+".resourceGroup", "required: the resource group of the scale set")
	case !azureResourceGroup.MatchString(a.ResourceGroup) || strings.HasSuffix(a.ResourceGroup, "."):
		errs.add(at+".resourceGroup", "%q is not a resource group name (1-90 letters, digits, '-', '_', '.', '(', ')', not ending in '.')", a.ResourceGroup)
	}
	switch {
	case a.ScaleSet == "":
		errs.add(at+".scaleSet", "required: the name of a VM Scale Set in Flexible orchestration (az vmss create --orchestration-mode Flexible --platform-fault-domain-count 1)")
	case !azureScaleSet.MatchString(a.ScaleSet):
		errs.add(at+".scaleSet", "%q is not a scale set name (1-64 letters, digits, '-', '_', '.')", a.ScaleSet)
	}
	switch a.Orchestration {
	case "", AzureFlexible, AzureUniform:
	default:
		errs.add(at+".orchestration", "%q is not an orchestration mode; use %q or %q", a.Orchestration, AzureFlexible, AzureUniform)
	}
	switch {
	case a.Image == "":
		errs.add(at+".image", "required: a marketplace image URN such as Canonical:ubuntu-24_04-lts:server:latest, or an image resource ID")
	case strings.HasPrefix(a.Image, "/"):
		if !strings.HasPrefix(strings.ToLower(a.Image), "/subscriptions/") {
			errs.add(at+".image", "%q is not an image resource ID (/subscriptions/…/images/… or a gallery image version)", a.Image)
		}
	default:
		if p := strings.Split(a.Image, ":"); len(p) != 4 || p[0] == "" || p[1] == "" || p[2] == "" || p[3] == "" {
			errs.add(at+".image", "%q is not an image URN; use Publisher:Offer:Sku:Version, such as Canonical:ubuntu-24_04-lts:server:latest", a.Image)
		}
	}
	switch {
	case a.Subnet == "":
		errs.add(at+".subnet", "required: the resource ID of the subnet the VMs join (/subscriptions/…/providers/Microsoft.Network/virtualNetworks/…/subnets/…)")
	case !azureSubnet.MatchString(a.Subnet):
		errs.add(at+".subnet", "%q is not a subnet resource ID; use /subscriptions/ID/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/VNET/subnets/SUBNET", a.Subnet)
	}
	if a.MaxPrice != nil {
		switch {
		case s.Priority != PrioritySpot:
			errs.add(at+".maxPrice", "only allowed when priority is %q", PrioritySpot)
		case *a.MaxPrice != -1 && !(*a.MaxPrice > 0):
			errs.add(at+".maxPrice", "must be -1 (up to the on-demand price) or a price above 0 in US dollars per hour, got %g", *a.MaxPrice)
		}
	}
	if a.AdminUsername != "" && (!azureAdminUser.MatchString(a.AdminUsername) || a.AdminUsername == "root" || a.AdminUsername == "admin") {
		errs.add(at+".adminUsername", "%q is not a Linux user name Azure accepts (lowercase, not root or admin)", a.AdminUsername)
	}
	switch {
	case a.SSHPublicKey == "":
		errs.add(at+".sshPublicKey", "required: an OpenSSH public key for adminUsername (Azure Linux VMs need one; spotml never logs in)")
	case !strings.HasPrefix(a.SSHPublicKey, "ssh-") && !strings.HasPrefix(a.SSHPublicKey, "ecdsa-"):
		errs.add(at+".sshPublicKey", "is not an OpenSSH public key; use a line such as the content of ~/.ssh/id_ed25519.pub")
	}
	s.validatePrices(errs, at+".prices", a.Prices)
	if a.OSDiskSizeGB < 0 || a.OSDiskSizeGB > 4095 {
		errs.add(at+".osDiskSizeGB", "must be between 1 and 4095, got %d", a.OSDiskSizeGB)
	}
	for i, c := range a.Setup {
		if strings.TrimSpace(c) == "" {
			errs.add(fmt.Sprintf("%s.setup[%d]", at, i), "must not be empty")
		}
	}
}
