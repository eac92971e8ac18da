// Package aws is the provider that runs spotml nodes as EC2 instances,
// Spot or On-Demand, through the AWS SDK for Go v2. One node is one
// instance, tagged with its pool and node, launched by RunInstances into
// the first of the pool's subnets with capacity; its user data is a
// cloud-config that installs and starts the agent. A runner lists the
// pools' instances and reports what EC2 did: a Spot instance interrupted,
// an instance terminated by someone else, the zone an instance landed in.
package aws

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"
	"github.com/aws/smithy-go"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/provider/cloudinit"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// Name is the provider name pools use.
const Name = spec.ProviderAWS

// Tags spotml puts on its instances.
const (
	TagPool = "spotml-pool"
	TagNode = "spotml-node"
)

// Config says how instances reach the control plane and get spotml.
type Config struct {
	ServerURL string
	SpotmlURL string
	AgentArgs []string
	// Interval is how often the runner lists the pools' instances;
	// default 15s.
	Interval time.Duration
}

// Clients makes the EC2 client of a region: ec2.NewFromConfig over the
// default config chain in the product, with BaseEndpoint at a loopback
// EC2 in tests.
type Clients func(region string) (*ec2.Client, error)

// Provider is the AWS provider.
type Provider struct {
	clients Clients
	cfg     Config
	log     *slog.Logger
	now     func() time.Time

	mu      sync.Mutex
	regions map[string]*ec2.Client
	placed  map[string]bool // instance IDs reported Placed
	seen    map[string]bool // regions of pools seen
	prices  map[string]cachedPrice
}

var (
	_ control.Provider = (*Provider)(nil)
	_ control.Runner   = (*Provider)(nil)
)

// New returns a provider that reaches EC2 through clients.
func New(clients Clients, cfg Config, log *slog.Logger, now func() time.Time) *Provider {
	if cfg.Interval <= 0 {
		cfg.Interval = 15 * time.Second
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if now == nil {
		now = time.Now
	}
	return &Provider{clients: clients, cfg: cfg, log: log.With("provider", Name), now: now,
		regions: map[string]*ec2.Client{}, placed: map[string]bool{}, seen: map[string]bool{}, prices: map[string]cachedPrice{}}
}

// CapacityCodes are the EC2 error codes of a launch refused for lack of
// capacity, or of capacity at the pool's max price.
var CapacityCodes = map[string]bool{
	"InsufficientInstanceCapacity": true,
	"InsufficientCapacity":         true,
	"SpotMaxPriceTooLow":           true,
	"MaxSpotInstanceCountExceeded": true,
	"InstanceLimitExceeded":        true,
	"UnfulfillableCapacity":        true,
}

func (p *Provider) client(region string) (*ec2.Client, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c, ok := p.regions[region]; ok {
		return c, nil
	}
	c, err := p.clients(region)
	if err != nil {
		return nil, fmt.Errorf("aws region %s: %w", region, err)
	}
	p.regions[region] = c
	return c, nil
}

// ProviderID is a node's instance: region/instance-id.
func ProviderID(region, instance string) string { return region + "/" + instance }

func parseID(id string) (region, instance string, err error) {
	region, instance, ok := strings.Cut(id, "/")
	if !ok || !strings.HasPrefix(instance, "i-") {
		return "", "", fmt.Errorf("provider ID %q is not region/instance-id", id)
	}
	return region, instance, nil
}

// Bootstrap is the user data of the provider's instances. EC2 gives an
// instance one user data, readable by anything on it through the
// metadata service: the identity rides in it, as comments of the
// cloud-config, and the start script reads it with an IMDSv2 token.
func Bootstrap(cfg Config, setup []string, node, credential string) cloudinit.Bootstrap {
	var comments []string
	for _, l := range strings.Split(strings.TrimSpace(cloudinit.Identity(node, credential)), "\n") {
		comments = append(comments, "spotml-"+l)
	}
	return cloudinit.Bootstrap{ServerURL: cfg.ServerURL, SpotmlURL: cfg.SpotmlURL, AgentArgs: cfg.AgentArgs, Setup: setup,
		Format: spec.NoticeAWS, Comments: comments,
		ReadIdentity: `tok=$(curl -fsS --retry 20 --retry-delay 3 --retry-connrefused -X PUT -H 'X-aws-ec2-metadata-token-ttl-seconds: 60' "$imds/latest/api/token") && ` +
			`curl -fsS --retry 20 --retry-delay 3 --retry-connrefused -H "X-aws-ec2-metadata-token: $tok" "$imds/latest/user-data" | sed -n 's/^# spotml-//p'`}
}

// Launch runs the node's instance in the first of the pool's subnets
// that has capacity.
func (p *Provider) Launch(ctx context.Context, req control.LaunchRequest) (control.Launched, error) {
	pool, n := req.Pool, req.Node
	a := pool.Spec.AWS
	if a == nil {
		return control.Launched{}, fmt.Errorf("pool %s: spec.aws is missing", pool.Metadata.Name)
	}
	if p.cfg.ServerURL == "" || p.cfg.SpotmlURL == "" {
		return control.Launched{}, errors.New("the aws provider needs --cloud-agent-server-url and --cloud-spotml-url")
	}
	c, err := p.client(a.Region)
	if err != nil {
		return control.Launched{}, err
	}
	ud, err := Bootstrap(p.cfg, a.Setup, n.Name, req.Credential).CloudInit()
	if err != nil {
		return control.Launched{}, err
	}
	in := &ec2.RunInstancesInput{
		ImageId: awssdk.String(a.Image), InstanceType: types.InstanceType(n.InstanceType),
		MinCount: awssdk.Int32(1), MaxCount: awssdk.Int32(1),
		SecurityGroupIds: a.SecurityGroups,
		UserData:         awssdk.String(base64.StdEncoding.EncodeToString([]byte(ud))),
		// IMDSv2 only: the agent reads notices with a token, as AWS advises.
		MetadataOptions: &types.InstanceMetadataOptionsRequest{HttpTokens: types.HttpTokensStateRequired, HttpEndpoint: types.InstanceMetadataEndpointStateEnabled},
		TagSpecifications: []types.TagSpecification{{ResourceType: types.ResourceTypeInstance, Tags: []types.Tag{
			{Key: awssdk.String(TagPool), Value: awssdk.String(pool.Metadata.Name)},
			{Key: awssdk.String(TagNode), Value: awssdk.String(n.Name)},
			{Key: awssdk.String("Name"), Value: awssdk.String(n.Name)},
		}}},
	}
	if a.KeyName != "" {
		in.KeyName = awssdk.String(a.KeyName)
	}
	if a.InstanceProfile != "" {
		in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Name: awssdk.String(a.InstanceProfile)}
		if strings.HasPrefix(a.InstanceProfile, "arn:") {
			in.IamInstanceProfile = &types.IamInstanceProfileSpecification{Arn: awssdk.String(a.InstanceProfile)}
		}
	}
	if pool.Spec.Priority == spec.PrioritySpot {
		so := &types.SpotMarketOptions{SpotInstanceType: types.SpotInstanceTypeOneTime, InstanceInterruptionBehavior: types.InstanceInterruptionBehaviorTerminate}
		if a.MaxPrice != "" {
			so.MaxPrice = awssdk.String(a.MaxPrice)
		}
		in.InstanceMarketOptions = &types.InstanceMarketOptionsRequest{MarketType: types.MarketTypeSpot, SpotOptions: so}
	}
	if a.API == spec.AWSFleet {
		return p.launchFleet(ctx, c, pool, n, ud)
	}
	var refusals []string
	for i, subnet := range a.Subnets {
		in.SubnetId = awssdk.String(subnet)
		// Idempotent per node, incarnation and subnet: a launch retried
		// after a lost answer gets the same instance.
		in.ClientToken = awssdk.String(fmt.Sprintf("%s-%d-%d", n.Name, n.Incarnation, i))
		out, err := c.RunInstances(ctx, in)
		if err != nil {
			if CapacityCodes[code(err)] {
				refusals = append(refusals, subnet+": "+code(err))
				continue
			}
			return control.Launched{}, fmt.Errorf("run instance for %s in %s: %w", n.Name, subnet, err)
		}
		if len(out.Instances) != 1 {
			return control.Launched{}, fmt.Errorf("run instance for %s: EC2 answered %d instances", n.Name, len(out.Instances))
		}
		id := awssdk.ToString(out.Instances[0].InstanceId)
		p.log.Info("node launched", "node", n.Name, "instance", id, "subnet", subnet)
		return control.Launched{ProviderID: ProviderID(a.Region, id)}, nil
	}
	return control.Launched{}, fmt.Errorf("%w: %s %s: %s", control.ErrNoCapacity, pool.Spec.Priority, n.InstanceType, strings.Join(refusals, ", "))
}

// Stop terminates a node's instance; an instance already terminated or
// gone is stopped.
func (p *Provider) Stop(ctx context.Context, n store.Node) error {
	if n.ProviderID == "" {
		return nil
	}
	region, id, err := parseID(n.ProviderID)
	if err != nil {
		return fmt.Errorf("node %s: %w", n.Name, err)
	}
	c, err := p.client(region)
	if err != nil {
		return err
	}
	return terminate(ctx, c, id)
}

func terminate(ctx context.Context, c *ec2.Client, id string) error {
	_, err := c.TerminateInstances(ctx, &ec2.TerminateInstancesInput{InstanceIds: []string{id}})
	if err != nil && code(err) != "InvalidInstanceID.NotFound" {
		return fmt.Errorf("terminate %s: %w", id, err)
	}
	return nil
}

// code is an EC2 error's code, empty if err is not one.
func code(err error) string {
	var ae smithy.APIError
	if errors.As(err, &ae) {
		return ae.ErrorCode()
	}
	return ""
}
