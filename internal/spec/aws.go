package spec

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// AWSPool makes a pool's nodes EC2 instances: one-time Spot (terminated
// on interruption) or On-Demand as spec.priority says, of spec.instanceType, in the pool's subnets (their
// zones are the pool's zones).
type AWSPool struct {
	Region string `yaml:"region" json:"region"`
	// Subnets are tried in turn: an instance goes to the first subnet
	// (zone) with capacity.
	Subnets        []string `yaml:"subnets" json:"subnets"`
	SecurityGroups []string `yaml:"securityGroups,omitempty" json:"securityGroups,omitempty"`
	// Image is an AMI ID (ami-…) of a Linux image with cloud-init.
	Image string `yaml:"image" json:"image"`
	// InstanceProfile is an IAM instance profile name or ARN, for the
	// blob store the nodes use.
	InstanceProfile string `yaml:"instanceProfile,omitempty" json:"instanceProfile,omitempty"`
	KeyName         string `yaml:"keyName,omitempty" json:"keyName,omitempty"`
	// MaxPrice is the most a Spot instance may cost per hour, in US
	// dollars; empty (the default and AWS's advice) is up to the
	// On-Demand price.
	MaxPrice string   `yaml:"maxPrice,omitempty" json:"maxPrice,omitempty"`
	Setup    []string `yaml:"setup,omitempty" json:"setup,omitempty"`
	// API is how instances are asked for: runInstances (the default)
	// tries spec.instanceType in each subnet in turn; fleet makes one
	// CreateFleet request of type instant over every instance type and
	// subnet, and EC2 picks the pool (price-capacity-optimized for Spot,
	// lowest-price for On-Demand). fleet needs ec2:CreateLaunchTemplate,
	// ec2:DeleteLaunchTemplate and ec2:CreateFleet besides RunInstances.
	API string `yaml:"api,omitempty" json:"api,omitempty"`
	// InstanceTypes are further instance types a fleet may choose besides
	// spec.instanceType (api: fleet only); a node is priced at the type
	// it got.
	InstanceTypes []string `yaml:"instanceTypes,omitempty" json:"instanceTypes,omitempty"`
	// Prices is where a Spot node's price comes from: table (the default:
	// the price table, or spec.pricePerHour) or cloud (EC2's current Spot
	// price from DescribeSpotPriceHistory, falling back to the table).
	Prices string `yaml:"prices,omitempty" json:"prices,omitempty"`
}

// Where a cloud pool's prices come from.
const (
	PricesTable = "table"
	PricesCloud = "cloud"
)

// validatePrices checks a cloud pool's prices setting.
func (s *PoolSpec) validatePrices(errs *fieldErrors, field, prices string) {
	switch {
	case prices == "" || prices == PricesTable:
	case prices != PricesCloud:
		errs.add(field, "%q is not a price source; use %q or %q", prices, PricesTable, PricesCloud)
	case s.Priority != PrioritySpot:
		errs.add(field, "%q prices Spot nodes only; leave it out for an on-demand pool", PricesCloud)
	case s.PricePerHour != nil:
		errs.add(field, "%q and spec.pricePerHour both set the price; keep one", PricesCloud)
	}
}

// AWS APIs a pool may launch through.
const (
	AWSRunInstances = "runInstances"
	AWSFleet        = "fleet"
)

var (
	awsRegion   = regexp.MustCompile(`^[a-z]{2}(-gov|-iso[a-z]*)?-[a-z]+-\d$`)
	awsSubnet   = regexp.MustCompile(`^subnet-[0-9a-f]{8,17}$`)
	awsSG       = regexp.MustCompile(`^sg-[0-9a-f]{8,17}$`)
	awsAMI      = regexp.MustCompile(`^ami-[0-9a-f]{8,17}$`)
	awsInstance = regexp.MustCompile(`^[a-z][a-z0-9-]*\.[a-z0-9]+$`)
)

// validateAWS checks an aws pool.
func (s *PoolSpec) validateAWS(errs *fieldErrors) {
	const at = "spec.aws"
	if len(s.Zones) > 0 {
		errs.add("spec.zones", "not used with provider %q: the zones are those of spec.aws.subnets; leave zones out", ProviderAWS)
	}
	if s.InstanceType != "" && !awsInstance.MatchString(s.InstanceType) {
		errs.add("spec.instanceType", "%q is not an EC2 instance type (family.size, such as g4dn.xlarge)", s.InstanceType)
	}
	a := s.AWS
	if a == nil {
		errs.add(at, "required when provider is %q: at least region, subnets and image", ProviderAWS)
		return
	}
	switch {
	case a.Region == "":
		errs.add(at+".region", "required: the region of the subnets, such as us-east-1")
	case !awsRegion.MatchString(a.Region):
		errs.add(at+".region", "%q is not an AWS region; use a code such as us-east-1", a.Region)
	}
	if len(a.Subnets) == 0 {
		errs.add(at+".subnets", "required: at least one subnet ID (subnet-…); one per zone the pool may use")
	}
	seen := map[string]int{}
	for i, sn := range a.Subnets {
		f := fmt.Sprintf("%s.subnets[%d]", at, i)
		if j, dup := seen[sn]; dup {
			errs.add(f, "%q is already %s.subnets[%d]", sn, at, j)
		} else if !awsSubnet.MatchString(sn) {
			errs.add(f, "%q is not a subnet ID; use subnet- and its hex digits", sn)
		}
		seen[sn] = i
	}
	for i, sg := range a.SecurityGroups {
		if !awsSG.MatchString(sg) {
			errs.add(fmt.Sprintf("%s.securityGroups[%d]", at, i), "%q is not a security group ID; use sg- and its hex digits", sg)
		}
	}
	switch {
	case a.Image == "":
		errs.add(at+".image", "required: an AMI ID (ami-…) of a Linux image with cloud-init, in the pool's region")
	case !awsAMI.MatchString(a.Image):
		errs.add(at+".image", "%q is not an AMI ID; use ami- and its hex digits", a.Image)
	}
	if strings.ContainsAny(a.InstanceProfile, " \t\n") {
		errs.add(at+".instanceProfile", "%q is not an instance profile name or ARN", a.InstanceProfile)
	}
	if a.MaxPrice != "" {
		v, err := strconv.ParseFloat(a.MaxPrice, 64)
		switch {
		case s.Priority != PrioritySpot:
			errs.add(at+".maxPrice", "only allowed when priority is %q", PrioritySpot)
		case err != nil || !(v > 0):
			errs.add(at+".maxPrice", "%q is not a price; use US dollars per hour above 0, such as \"0.35\", or leave it out to pay up to the On-Demand price", a.MaxPrice)
		}
	}
	s.validatePrices(errs, at+".prices", a.Prices)
	switch a.API {
	case "", AWSRunInstances, AWSFleet:
	default:
		errs.add(at+".api", "%q is not an EC2 launch API; use %q or %q", a.API, AWSRunInstances, AWSFleet)
	}
	if len(a.InstanceTypes) > 0 && a.API != AWSFleet {
		errs.add(at+".instanceTypes", "only used with api %q (one CreateFleet over several types); set api: %s or leave instanceTypes out", AWSFleet, AWSFleet)
	}
	for i, t := range a.InstanceTypes {
		if !awsInstance.MatchString(t) || t == s.InstanceType {
			errs.add(fmt.Sprintf("%s.instanceTypes[%d]", at, i), "%q is not a further EC2 instance type (family.size, such as g5.xlarge, other than spec.instanceType)", t)
		}
	}
	switch {
	case s.EvictionPolicy == EvictionDeallocate && s.Priority == PriorityOnDemand:
		errs.add("spec.evictionPolicy", "%q applies to Spot instances only; leave it out for an on-demand pool", EvictionDeallocate)
	case s.EvictionPolicy == EvictionDeallocate:
		// A stopped Spot instance needs a persistent Spot request, which
		// spotml does not manage yet.
		errs.add("spec.evictionPolicy", "%q is not supported on aws yet (it needs a persistent Spot request); use %q", EvictionDeallocate, EvictionDelete)
	}
	for i, c := range a.Setup {
		if strings.TrimSpace(c) == "" {
			errs.add(fmt.Sprintf("%s.setup[%d]", at, i), "must not be empty")
		}
	}
}
