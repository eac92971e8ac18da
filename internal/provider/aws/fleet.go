package aws

import (
	"context"
	"encoding/base64"
	"fmt"
	"strings"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// A pool with api: fleet launches each node by one CreateFleet request of
// type instant over every (instance type, subnet) pair, so that EC2
// chooses the pool: price-capacity-optimized for Spot (the pools least
// likely to be interrupted soon, and of those the cheapest), lowest-price
// for On-Demand. A fleet takes what an instance is made of from a launch
// template, and user data cannot be overridden per fleet, while each
// node's user data carries its own credential: so each launch makes a
// launch template of its own, named after the node and incarnation, and
// deletes it once the fleet has answered (an instance keeps a copy of its
// user data).

// TemplateName is the launch template of one launch of a node.
func TemplateName(n store.Node) string { return fmt.Sprintf("spotml-%s-%d", n.Name, n.Incarnation) }

// launchFleet launches n through an instant fleet; user data ud is the
// node's bootstrap.
func (p *Provider) launchFleet(ctx context.Context, c *ec2.Client, pool spec.Pool, n store.Node, ud string) (control.Launched, error) {
	a := pool.Spec.AWS
	name := TemplateName(n)
	data := &types.RequestLaunchTemplateData{
		ImageId:          awssdk.String(a.Image),
		SecurityGroupIds: a.SecurityGroups,
		UserData:         awssdk.String(base64.StdEncoding.EncodeToString([]byte(ud))),
		MetadataOptions:  &types.LaunchTemplateInstanceMetadataOptionsRequest{HttpTokens: types.LaunchTemplateHttpTokensStateRequired, HttpEndpoint: types.LaunchTemplateInstanceMetadataEndpointStateEnabled},
		TagSpecifications: []types.LaunchTemplateTagSpecificationRequest{{ResourceType: types.ResourceTypeInstance, Tags: []types.Tag{
			{Key: awssdk.String(TagPool), Value: awssdk.String(pool.Metadata.Name)},
			{Key: awssdk.String(TagNode), Value: awssdk.String(n.Name)},
			{Key: awssdk.String("Name"), Value: awssdk.String(n.Name)},
		}}},
	}
	if a.KeyName != "" {
		data.KeyName = awssdk.String(a.KeyName)
	}
	if a.InstanceProfile != "" {
		data.IamInstanceProfile = &types.LaunchTemplateIamInstanceProfileSpecificationRequest{Name: awssdk.String(a.InstanceProfile)}
		if strings.HasPrefix(a.InstanceProfile, "arn:") {
			data.IamInstanceProfile = &types.LaunchTemplateIamInstanceProfileSpecificationRequest{Arn: awssdk.String(a.InstanceProfile)}
		}
	}
	_, err := c.CreateLaunchTemplate(ctx, &ec2.CreateLaunchTemplateInput{
		LaunchTemplateName: awssdk.String(name), LaunchTemplateData: data,
		ClientToken: awssdk.String(name),
	})
	// A template left by a launch whose answer was lost is this launch's:
	// same node, same incarnation, same credential.
	if err != nil && code(err) != "InvalidLaunchTemplateName.AlreadyExistsException" {
		return control.Launched{}, fmt.Errorf("create launch template %s: %w", name, err)
	}
	defer func() {
		if _, err := c.DeleteLaunchTemplate(context.WithoutCancel(ctx), &ec2.DeleteLaunchTemplateInput{LaunchTemplateName: awssdk.String(name)}); err != nil {
			p.log.Warn("cannot delete launch template", "template", name, "err", err)
		}
	}()

	spot := pool.Spec.Priority == spec.PrioritySpot
	var overrides []types.FleetLaunchTemplateOverridesRequest
	for _, t := range append([]string{pool.Spec.InstanceType}, a.InstanceTypes...) {
		for _, subnet := range a.Subnets {
			o := types.FleetLaunchTemplateOverridesRequest{InstanceType: types.InstanceType(t), SubnetId: awssdk.String(subnet)}
			if spot && a.MaxPrice != "" {
				o.MaxPrice = awssdk.String(a.MaxPrice)
			}
			overrides = append(overrides, o)
		}
	}
	in := &ec2.CreateFleetInput{
		Type: types.FleetTypeInstant,
		LaunchTemplateConfigs: []types.FleetLaunchTemplateConfigRequest{{
			LaunchTemplateSpecification: &types.FleetLaunchTemplateSpecificationRequest{LaunchTemplateName: awssdk.String(name), Version: awssdk.String("$Latest")},
			Overrides:                   overrides,
		}},
		TargetCapacitySpecification: &types.TargetCapacitySpecificationRequest{TotalTargetCapacity: awssdk.Int32(1)},
		// Idempotent per node and incarnation, as RunInstances' token.
		ClientToken: awssdk.String(fmt.Sprintf("%s-%d-fleet", n.Name, n.Incarnation)),
	}
	if spot {
		in.TargetCapacitySpecification.DefaultTargetCapacityType = types.DefaultTargetCapacityTypeSpot
		in.SpotOptions = &types.SpotOptionsRequest{AllocationStrategy: types.SpotAllocationStrategyPriceCapacityOptimized,
			InstanceInterruptionBehavior: types.SpotInstanceInterruptionBehaviorTerminate}
	} else {
		in.TargetCapacitySpecification.DefaultTargetCapacityType = types.DefaultTargetCapacityTypeOnDemand
		in.OnDemandOptions = &types.OnDemandOptionsRequest{AllocationStrategy: types.FleetOnDemandAllocationStrategyLowestPrice}
	}
	out, err := c.CreateFleet(ctx, in)
	if err != nil {
		if CapacityCodes[code(err)] {
			return control.Launched{}, fmt.Errorf("%w: %s: %s", control.ErrNoCapacity, pool.Spec.Priority, code(err))
		}
		return control.Launched{}, fmt.Errorf("create fleet for %s: %w", n.Name, err)
	}
	for _, fi := range out.Instances {
		if len(fi.InstanceIds) == 1 {
			id := fi.InstanceIds[0]
			p.log.Info("node launched", "node", n.Name, "instance", id, "type", fi.InstanceType, "fleet", awssdk.ToString(out.FleetId))
			return control.Launched{ProviderID: ProviderID(a.Region, id)}, nil
		}
	}
	// No instance: the fleet's errors say why, one per pool it could not
	// use. Capacity errors make a shortage; any other is a failure.
	var refusals, failures []string
	for _, fe := range out.Errors {
		at := ""
		if o := fe.LaunchTemplateAndOverrides; o != nil && o.Overrides != nil {
			at = string(o.Overrides.InstanceType) + " in " + awssdk.ToString(o.Overrides.SubnetId) + ": "
		}
		c := awssdk.ToString(fe.ErrorCode)
		if CapacityCodes[c] {
			refusals = append(refusals, at+c)
		} else {
			failures = append(failures, at+c+": "+awssdk.ToString(fe.ErrorMessage))
		}
	}
	if len(failures) > 0 {
		return control.Launched{}, fmt.Errorf("create fleet for %s: %s", n.Name, strings.Join(failures, "; "))
	}
	return control.Launched{}, fmt.Errorf("%w: %s fleet: %s", control.ErrNoCapacity, pool.Spec.Priority, strings.Join(refusals, ", "))
}
