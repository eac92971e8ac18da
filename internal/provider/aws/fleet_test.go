package aws

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"github.com/aws/aws-sdk-go-v2/service/ec2/types"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

func fleetPool(t *testing.T, priority string) spec.Pool {
	t.Helper()
	p := pool(t, priority)
	p.Spec.AWS.API = spec.AWSFleet
	p.Spec.AWS.InstanceTypes = []string{"g5.xlarge"}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestFleetPicksCheapestPoolWithCapacity(t *testing.T) {
	p := fleetPool(t, spec.PrioritySpot)
	e := newEnv(t, p)
	e.ec2.SetSpotPrice("g4dn.xlarge", 0.21)
	e.ec2.SetSpotPrice("g5.xlarge", 0.16)
	e.ec2.SetSpotCapacity("us-east-1a", "g5.xlarge", false)
	if err := e.launch(t, p, "gpu-a1"); err != nil {
		t.Fatal(err)
	}
	in := e.ec2.Instances()[0]
	// g5 is cheaper; zone a has none of it, so g5 in zone b.
	if in.Type != "g5.xlarge" || in.Zone != "us-east-1b" || !in.Spot || in.Interruption != "terminate" || in.HTTPTokens != "required" ||
		in.ImageID != "ami-0123456789abcdef0" || in.Profile != "spotml-node" || !slices.Equal(in.SecurityGroups, []string{"sg-00000001"}) {
		t.Errorf("instance = %+v", in)
	}
	if in.Tags[TagPool] != "gpu" || in.Tags[TagNode] != "gpu-a1" {
		t.Errorf("tags = %v", in.Tags)
	}
	if !strings.Contains(in.UserData, "# spotml-credential=cred-gpu-a1\n") {
		t.Errorf("user data lacks the node's credential:\n%s", in.UserData)
	}
	if n := e.ec2.Templates(); n != 0 {
		t.Errorf("%d launch templates left after the launch", n)
	}
	if e.ec2.Calls("CreateFleet") != 1 || e.ec2.Calls("RunInstances") != 0 {
		t.Errorf("calls: CreateFleet %d, RunInstances %d", e.ec2.Calls("CreateFleet"), e.ec2.Calls("RunInstances"))
	}
	// The node was recorded as g4dn.xlarge (the pool's type): the runner
	// reports the type it got, which reprices the node.
	want := []string{`Placed gpu-a1 zone "us-east-1b" type "g5.xlarge"`}
	if got := e.pass(t); !slices.Equal(got, want) {
		t.Errorf("pass = %q, want %q", got, want)
	}

	// A launch retried after a lost answer gets the same instance.
	n := store.Node{Name: "gpu-a1", Pool: "gpu", Priority: spec.PrioritySpot, InstanceType: "g4dn.xlarge", Incarnation: 1}
	again, err := e.prov.Launch(context.Background(), control.LaunchRequest{Pool: p, Node: n, Credential: "cred-gpu-a1"})
	if err != nil || again.ProviderID != "us-east-1/"+in.ID || len(e.ec2.Instances()) != 1 {
		t.Errorf("retried launch = %v, %v; %d instances", again, err, len(e.ec2.Instances()))
	}

	// g5 gone everywhere: the dearer g4dn.
	e.ec2.SetSpotCapacity("us-east-1b", "g5.xlarge", false)
	if err := e.launch(t, p, "gpu-a2"); err != nil {
		t.Fatal(err)
	}
	if in := e.ec2.Instances()[1]; in.Type != "g4dn.xlarge" || in.Zone != "us-east-1a" {
		t.Errorf("second instance %s in %s, want g4dn.xlarge in us-east-1a", in.Type, in.Zone)
	}
}

func TestFleetErrorsAreShortage(t *testing.T) {
	p := fleetPool(t, spec.PrioritySpot)
	e := newEnv(t, p)
	for _, z := range []string{"us-east-1a", "us-east-1b"} {
		for _, ty := range []string{"g4dn.xlarge", "g5.xlarge"} {
			e.ec2.SetSpotCapacity(z, ty, false)
		}
	}
	err := e.launch(t, p, "gpu-a1")
	if !errors.Is(err, control.ErrNoCapacity) || strings.Count(err.Error(), "InsufficientInstanceCapacity") != 4 ||
		!strings.Contains(err.Error(), "g5.xlarge in subnet-0000000b: InsufficientInstanceCapacity") {
		t.Fatalf("launch without capacity: %v", err)
	}
	e.ec2.SetSpotCapacity("us-east-1a", "g4dn.xlarge", true)
	capped := fleetPool(t, spec.PrioritySpot)
	capped.Spec.AWS.MaxPrice = "0.10"
	e.ec2.SetSpotPrice("g4dn.xlarge", 0.16)
	err = e.launch(t, capped, "gpu-a2")
	if !errors.Is(err, control.ErrNoCapacity) || !strings.Contains(err.Error(), "g4dn.xlarge in subnet-0000000a: SpotMaxPriceTooLow") {
		t.Fatalf("launch under the spot price: %v", err)
	}
	if n := len(e.ec2.Instances()); n != 0 {
		t.Errorf("%d instances", n)
	}
	if n := e.ec2.Templates(); n != 0 {
		t.Errorf("%d launch templates left after failed launches", n)
	}
	// Any other error is a failure, not a shortage.
	bad := fleetPool(t, spec.PrioritySpot)
	bad.Spec.AWS.Subnets = []string{"subnet-0000000f"}
	if err := e.launch(t, bad, "gpu-a3"); err == nil || errors.Is(err, control.ErrNoCapacity) || !strings.Contains(err.Error(), "InvalidSubnetID.NotFound") {
		t.Errorf("launch into an unknown subnet: %v", err)
	}
}

func TestFleetOnDemandLowestPrice(t *testing.T) {
	p := fleetPool(t, spec.PriorityOnDemand)
	e := newEnv(t, p)
	e.ec2.SetOnDemandPrice("g4dn.xlarge", 0.526)
	e.ec2.SetOnDemandPrice("g5.xlarge", 1.006)
	// No Spot capacity matters not to On-Demand.
	e.ec2.SetSpotCapacity("us-east-1a", "g4dn.xlarge", false)
	if err := e.launch(t, p, "od-a1"); err != nil {
		t.Fatal(err)
	}
	if in := e.ec2.Instances()[0]; in.Spot || in.Type != "g4dn.xlarge" || in.Zone != "us-east-1a" {
		t.Errorf("on-demand fleet made %+v", in)
	}
}

// TestSpotPriceHistory: ec2fake answers DescribeSpotPriceHistory as EC2
// documents it, per zone of its subnets, read through the SDK.
func TestSpotPriceHistory(t *testing.T) {
	e := newEnv(t)
	e.ec2.SetSpotPrice("g5.xlarge", 0.4123)
	c, _ := e.prov.client("us-east-1")
	out, err := c.DescribeSpotPriceHistory(context.Background(), &ec2.DescribeSpotPriceHistoryInput{
		InstanceTypes: []types.InstanceType{"g5.xlarge", "g4dn.xlarge"}, ProductDescriptions: []string{"Linux/UNIX"}})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, h := range out.SpotPriceHistory {
		got = append(got, string(h.InstanceType)+" "+awssdk.ToString(h.AvailabilityZone)+" "+awssdk.ToString(h.SpotPrice))
		if h.Timestamp == nil || h.ProductDescription != types.RIProductDescriptionLinuxUnix {
			t.Errorf("item %+v", h)
		}
	}
	if want := []string{"g5.xlarge us-east-1a 0.412300", "g5.xlarge us-east-1b 0.412300"}; !slices.Equal(got, want) {
		t.Errorf("history %q, want %q", got, want)
	}
}

// TestSpotPriceFromEC2: SpotPrice reads DescribeSpotPriceHistory, once per
// TTL, and fails where EC2 has no price.
func TestSpotPriceFromEC2(t *testing.T) {
	p := pool(t, spec.PrioritySpot)
	e := newEnv(t, p)
	e.ec2.SetSpotPrice("g4dn.xlarge", 0.1893)
	got, err := e.prov.SpotPrice(context.Background(), p, "")
	if err != nil || got != 0.1893 {
		t.Fatalf("SpotPrice = %v, %v", got, err)
	}
	e.ec2.SetSpotPrice("g4dn.xlarge", 0.25)
	if got, _ := e.prov.SpotPrice(context.Background(), p, ""); got != 0.1893 || e.ec2.Calls("DescribeSpotPriceHistory") != 1 {
		t.Errorf("within the TTL: %v after %d calls, want the cached price from one", got, e.ec2.Calls("DescribeSpotPriceHistory"))
	}
	if got, _ := e.prov.SpotPrice(context.Background(), p, "us-east-1b"); got != 0.25 {
		t.Errorf("zone us-east-1b: %v, want the current 0.25", got)
	}
	// Past the TTL the price is read again: a running node's price
	// follows EC2's (control.Plane.Reprice).
	at := time.Now().Add(priceTTL + time.Second)
	e.prov.now = func() time.Time { return at }
	if got, _ := e.prov.SpotPrice(context.Background(), p, ""); got != 0.25 || e.ec2.Calls("DescribeSpotPriceHistory") != 3 {
		t.Errorf("past the TTL: %v after %d calls, want the new 0.25 read again", got, e.ec2.Calls("DescribeSpotPriceHistory"))
	}
	q := pool(t, spec.PrioritySpot)
	q.Spec.InstanceType = "p5.48xlarge"
	if _, err := e.prov.SpotPrice(context.Background(), q, ""); err == nil || !strings.Contains(err.Error(), "no Spot price") {
		t.Errorf("a type without a price: %v", err)
	}
}
