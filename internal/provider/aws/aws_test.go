package aws

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/provider/aws/ec2fake"
	"github.com/spotml/spotml/internal/provider/providertest"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

func pool(t *testing.T, priority string) spec.Pool {
	t.Helper()
	p := spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: "gpu"},
		Spec: spec.PoolSpec{Provider: spec.ProviderAWS, Priority: priority, InstanceType: "g4dn.xlarge", Max: 4,
			AWS: &spec.AWSPool{Region: "us-east-1", Subnets: []string{"subnet-0000000a", "subnet-0000000b"},
				SecurityGroups: []string{"sg-00000001"}, Image: "ami-0123456789abcdef0", InstanceProfile: "spotml-node",
				Setup: []string{"nvidia-smi"}}}}
	p.Default()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	return p
}

type env struct {
	ec2   *ec2fake.EC2
	prov  *Provider
	plane *providertest.Plane
}

func newEnv(t *testing.T, pools ...spec.Pool) *env {
	t.Helper()
	e := &env{ec2: ec2fake.New("us-east-1", map[string]string{"subnet-0000000a": "us-east-1a", "subnet-0000000b": "us-east-1b"}),
		plane: providertest.NewPlane()}
	t.Cleanup(e.ec2.Close)
	for _, p := range pools {
		e.plane.AddPool(store.Pool{Spec: p})
	}
	e.prov = New(func(region string) (*ec2.Client, error) {
		return ec2.New(ec2.Options{Region: region, BaseEndpoint: awssdk.String(e.ec2.URL),
			Credentials:      credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", ""),
			RetryMaxAttempts: 1}), nil
	}, Config{ServerURL: "https://cp.example", SpotmlURL: "https://blobs.example/spotml"}, nil, nil)
	return e
}

func (e *env) launch(t *testing.T, p spec.Pool, name string) error {
	t.Helper()
	n := store.Node{Name: name, Pool: p.Metadata.Name, Priority: p.Spec.Priority, InstanceType: p.Spec.InstanceType, State: store.NodeProvisioning, Incarnation: 1}
	at, err := e.prov.Launch(context.Background(), control.LaunchRequest{Pool: p, Node: n, Credential: "cred-" + name})
	if err != nil {
		return err
	}
	n.ProviderID = at.ProviderID
	e.plane.AddNode(n)
	return nil
}

func (e *env) pass(t *testing.T) []string {
	t.Helper()
	if err := e.prov.Pass(context.Background(), e.plane, e.plane); err != nil {
		t.Fatal(err)
	}
	return e.plane.Took()
}

func TestLaunchRunsTaggedSpotInstance(t *testing.T) {
	p := pool(t, spec.PrioritySpot)
	e := newEnv(t, p)
	if err := e.launch(t, p, "gpu-a1"); err != nil {
		t.Fatal(err)
	}
	ins := e.ec2.Instances()
	if len(ins) != 1 {
		t.Fatalf("%d instances", len(ins))
	}
	in := ins[0]
	if !in.Spot || in.SpotType != "one-time" || in.Interruption != "terminate" || in.Type != "g4dn.xlarge" || in.Subnet != "subnet-0000000a" ||
		in.ImageID != "ami-0123456789abcdef0" || in.Profile != "spotml-node" || in.HTTPTokens != "required" || !slices.Equal(in.SecurityGroups, []string{"sg-00000001"}) {
		t.Errorf("instance = %+v", in)
	}
	if in.Tags[TagPool] != "gpu" || in.Tags[TagNode] != "gpu-a1" {
		t.Errorf("tags = %v", in.Tags)
	}
	for _, want := range []string{"#cloud-config\n# spotml-node=gpu-a1\n# spotml-credential=cred-gpu-a1\n", "--metadata-format aws", "nvidia-smi", "https://cp.example"} {
		if !strings.Contains(in.UserData, want) {
			t.Errorf("user data lacks %q:\n%s", want, in.UserData)
		}
	}
	if got := e.plane.Node("gpu-a1").ProviderID; got != "us-east-1/"+in.ID {
		t.Errorf("provider ID %s", got)
	}
	want := []string{`Placed gpu-a1 zone "us-east-1a"`}
	if got := e.pass(t); !slices.Equal(got, want) {
		t.Errorf("pass = %q, want %q", got, want)
	}
	if got := e.pass(t); len(got) != 0 {
		t.Errorf("second pass = %q", got)
	}
}

func TestCapacityFallsToNextSubnetThenShortage(t *testing.T) {
	p := pool(t, spec.PrioritySpot)
	e := newEnv(t, p)
	e.ec2.SetSpotCapacity("us-east-1a", "g4dn.xlarge", false)
	if err := e.launch(t, p, "gpu-a1"); err != nil {
		t.Fatal(err)
	}
	if in := e.ec2.Instances()[0]; in.Zone != "us-east-1b" {
		t.Errorf("launched in %s, want the zone with capacity", in.Zone)
	}
	e.ec2.SetSpotCapacity("us-east-1b", "g4dn.xlarge", false)
	err := e.launch(t, p, "gpu-a2")
	if !errors.Is(err, control.ErrNoCapacity) || !strings.Contains(err.Error(), "InsufficientInstanceCapacity") {
		t.Fatalf("launch without capacity anywhere: %v", err)
	}
	e.ec2.SetSpotCapacity("us-east-1a", "g4dn.xlarge", true)
	capped := pool(t, spec.PrioritySpot)
	capped.Spec.AWS.MaxPrice = "0.10"
	e.ec2.SetSpotPrice("g4dn.xlarge", 0.16)
	if err := e.launch(t, capped, "gpu-a3"); !errors.Is(err, control.ErrNoCapacity) || !strings.Contains(err.Error(), "SpotMaxPriceTooLow") {
		t.Fatalf("launch under the spot price: %v", err)
	}
	// An on-demand pool is not in the spot market.
	od := pool(t, spec.PriorityOnDemand)
	if err := e.launch(t, od, "od-a1"); err != nil {
		t.Fatal(err)
	}
	if in := e.ec2.Instances()[1]; in.Spot {
		t.Error("on-demand pool launched a Spot instance")
	}
}

func TestInterruptionIsPreemption(t *testing.T) {
	p := pool(t, spec.PrioritySpot)
	e := newEnv(t, p)
	for _, n := range []string{"gpu-a1", "gpu-a2"} {
		if err := e.launch(t, p, n); err != nil {
			t.Fatal(err)
		}
	}
	e.ec2.Run()
	e.pass(t)
	id := e.ec2.Instances()[1].ID
	if err := e.ec2.Interrupt(id); err != nil {
		t.Fatal(err)
	}
	want := []string{"Gone gpu-a2 preempted: SpotInterruption: EC2 terminated the Spot instance (Server.SpotInstanceTermination)"}
	if got := e.pass(t); !slices.Equal(got, want) {
		t.Errorf("pass = %q, want %q", got, want)
	}
	if got := e.pass(t); len(got) != 0 {
		t.Errorf("second pass = %q", got)
	}
}

func TestStopTerminatesAndOrphansGo(t *testing.T) {
	p := pool(t, spec.PrioritySpot)
	e := newEnv(t, p)
	for _, n := range []string{"gpu-a1", "gpu-a2", "gpu-a3"} {
		if err := e.launch(t, p, n); err != nil {
			t.Fatal(err)
		}
	}
	n1 := e.plane.Node("gpu-a1")
	for range 2 {
		if err := e.prov.Stop(context.Background(), n1); err != nil {
			t.Fatal(err)
		}
	}
	if got := e.ec2.Instances()[0].State; got != "terminated" {
		t.Errorf("stopped instance is %s", got)
	}
	// A node terminated by someone else is lost, not preempted.
	c, _ := e.prov.client("us-east-1")
	if _, err := c.TerminateInstances(context.Background(), &ec2.TerminateInstancesInput{InstanceIds: []string{e.ec2.Instances()[1].ID}}); err != nil {
		t.Fatal(err)
	}
	e.plane.Set("gpu-a1", func(n *store.Node) { n.State = store.NodeTerminated })
	got := e.pass(t)
	if !slices.Contains(got, "Gone gpu-a2 lost: the instance was terminated outside spotml (Client.UserInitiatedShutdown)") {
		t.Errorf("pass = %q", got)
	}
	// The pool deleted: its instances are terminated.
	e.plane.SetPools()
	e.pass(t)
	for _, in := range e.ec2.Instances() {
		if in.State != "terminated" {
			t.Errorf("instance %s of a deleted pool is %s", in.ID, in.State)
		}
	}
	// Stop of an instance EC2 no longer knows succeeds.
	if err := e.prov.Stop(context.Background(), store.Node{Name: "x", ProviderID: "us-east-1/i-00000000000000fff"}); err != nil {
		t.Errorf("stop of an unknown instance: %v", err)
	}
}
