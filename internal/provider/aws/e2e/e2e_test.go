// Package e2e runs the aws provider with a real control plane against
// ec2fake, called through the AWS SDK, where each instance runs its
// rendered user data's start script on this machine: the script
// downloads a real spotml over loopback, reads its identity from the
// instance's user data through a loopback IMDSv2 (a session token
// first) and runs the real agent, which registers and runs the work.
package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"
	"go.yaml.in/yaml/v3"

	"github.com/spotml/spotml/internal/notice"
	awsprov "github.com/spotml/spotml/internal/provider/aws"
	"github.com/spotml/spotml/internal/provider/aws/ec2fake"
	"github.com/spotml/spotml/internal/provider/cloudtest"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

const (
	region = "us-east-1"
	subnet = "subnet-0000000a"
	zone   = "us-east-1a"
)

// awsCloud is ec2fake with its instances booted as processes on this
// machine, and the IMDSv2 they read (user data, spot/instance-action).
type awsCloud struct {
	*ec2fake.EC2
	vms    *cloudtest.Machines
	events *notice.Server
	p      *cloudtest.Plane
}

// startAWS starts the fake EC2, the instances' metadata service, a
// control plane with the aws provider, and a loop that boots each new
// instance (EC2 makes it running) and kills the processes of each one
// terminated.
func startAWS(t *testing.T) *awsCloud {
	t.Helper()
	cloudtest.NeedTools(t, "sh", "curl", "sed")
	bin := cloudtest.SpotmlBinary(t)
	bins := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, bin) }))
	t.Cleanup(bins.Close)
	log := cloudtest.Log(t)
	c := &awsCloud{EC2: ec2fake.New(region, map[string]string{subnet: zone}), vms: cloudtest.NewMachines(t), events: notice.NewServer(time.Now, log)}
	t.Cleanup(c.Close)
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// /nodes/{node}/latest/user-data: the instance's user data, as
		// IMDSv2 answers it (a session token required).
		rest, ok := strings.CutPrefix(r.URL.Path, "/nodes/")
		name, path, _ := strings.Cut(rest, "/")
		if ok && path == "latest/user-data" && r.Method == http.MethodGet {
			if r.Header.Get("X-aws-ec2-metadata-token") == "" {
				http.Error(w, "", http.StatusUnauthorized)
				return
			}
			for _, in := range c.Instances() {
				if in.Tags[awsprov.TagNode] == name && in.State != "terminated" {
					w.Write([]byte(in.UserData))
					return
				}
			}
			http.NotFound(w, r)
			return
		}
		c.events.ServeHTTP(w, r)
	}))
	t.Cleanup(imds.Close)
	c.p = cloudtest.Listen(t)
	prov := awsprov.New(func(region string) (*ec2.Client, error) {
		return ec2.New(ec2.Options{Region: region, BaseEndpoint: awssdk.String(c.URL),
			Credentials: credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", ""), RetryMaxAttempts: 1}), nil
	}, awsprov.Config{ServerURL: c.p.URL, SpotmlURL: bins.URL + "/spotml", Interval: 200 * time.Millisecond}, log, time.Now)
	c.p.Start(awsprov.Name, prov)

	ctx, stop := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { stop(); wg.Wait() })
	wg.Go(func() {
		// An instance boots once: a one-time Spot or On-Demand instance
		// is never stopped and started here.
		booted := map[string]bool{}
		for ctx.Err() == nil {
			c.Run() // pending instances run, as EC2 makes them within a minute
			for _, in := range c.Instances() {
				node := in.Tags[awsprov.TagNode]
				switch {
				case in.State == "running" && !booted[in.ID]:
					booted[in.ID] = true
					var doc struct {
						WriteFiles []struct{ Path, Content string } `yaml:"write_files"`
					}
					if err := yaml.Unmarshal([]byte(in.UserData), &doc); err != nil || len(doc.WriteFiles) == 0 {
						t.Errorf("instance %s: user data is no cloud-config with files: %v", in.ID, err)
						continue
					}
					c.events.Ensure(node, notice.FormatAWS)
					c.vms.Boot(node, doc.WriteFiles[0].Content, "SPOTML_IMDS="+notice.BaseURL(imds.URL, node))
				case in.State != "running" && c.vms.Running(node):
					c.vms.End(node)
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	return c
}

func awsPool(name string) spec.Pool {
	return spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: name},
		Spec: spec.PoolSpec{Provider: spec.ProviderAWS, InstanceType: "g4dn.xlarge",
			AWS: &spec.AWSPool{Region: region, Subnets: []string{subnet}, Image: "ami-0123456789abcdef0"}}}
}

func (c *awsCloud) spotRunning() int {
	n := 0
	for _, in := range c.Instances() {
		if in.Spot && in.State == "running" {
			n++
		}
	}
	return n
}

// TestCapacityShortageFallsBackToOnDemand: EC2 refuses the spot pool's
// Spot instances with InsufficientInstanceCapacity in every subnet (to
// RunInstances, or in CreateFleet's errors with api: fleet), a capacity
// shortage. A prod and a strict service run on on-demand
// stand-ins in an On-Demand pool meanwhile, and return to Spot
// instances once EC2 has capacity again (see cloudtest.Fallback).
func TestCapacityShortageFallsBackToOnDemand(t *testing.T) {
	for _, api := range []string{"runInstances", "fleet"} {
		t.Run(api, func(t *testing.T) {
			c := startAWS(t)
			spot := awsPool("spot")
			spot.Spec.AWS.API = api
			cloudtest.Fallback{
				Plane:    c.p,
				Spot:     spot,
				OnDemand: awsPool("od"),
				SetSpot:  func(ok bool) { c.SetSpotCapacity(zone, "g4dn.xlarge", ok) },
				Refusal:  "InsufficientInstanceCapacity",
				SpotVMs:  c.spotRunning,
				Dump:     c.vms.LogBoots,
			}.Run(t)
		})
	}
}

// TestInterruptionRequeuesTask: the real agent on a Spot instance runs
// a job's task; EC2 gives the two-minute notice (IMDSv2
// spot/instance-action), which the agent reports, and then reclaims the
// instance (Server.SpotInstanceTermination). The node ends preempted,
// the task finishes on a replacement instance with one eviction and no
// failure, and the idle pool scales in to no instances.
func TestInterruptionRequeuesTask(t *testing.T) {
	c := startAWS(t)
	p := c.p
	ctx := p.Ctx
	pool := awsPool("gpu")
	pool.Spec.Priority, pool.Spec.Max = spec.PrioritySpot, 1
	pool.Spec.IdleTimeout = spec.Duration{Duration: time.Second}
	pool.Spec.Capacity = &spec.Resources{CPU: 2, Memory: 1 << 30}
	pool.Default()
	if err := pool.Validate(); err != nil {
		t.Fatal(err)
	}
	release := filepath.Join(t.TempDir(), "release")
	job := spec.Job{APIVersion: spec.APIVersion, Kind: spec.KindJob, Metadata: spec.Metadata{Name: "train"},
		Spec: spec.JobSpec{Pool: "gpu", Tasks: []spec.TaskSpec{{Name: "t", Command: cloudtest.GatedCommand(release)}}}}
	if _, err := p.Store.Apply(ctx, []spec.Pool{pool}, []spec.Job{job}); err != nil {
		t.Fatal(err)
	}
	var first string
	p.Wait("the task running on an EC2 instance's agent", 90*time.Second, func() bool {
		task, err := p.Store.GetTask(ctx, "train", "t")
		first = task.Node
		return err == nil && task.State == store.TaskRunning
	}, c.vms.LogBoots)
	var id string
	for _, in := range c.Instances() {
		if in.Tags[awsprov.TagNode] == first {
			id = in.ID
		}
	}
	c.events.Set(first, time.Now().Add(2*time.Second), "terminate")
	p.Wait("the agent's interruption notice at the control plane", 30*time.Second, func() bool {
		n, err := p.Store.GetNode(ctx, first)
		return err == nil && !n.NoticeDeadline.IsZero()
	}, c.vms.LogBoots)
	if err := c.Interrupt(id); err != nil {
		t.Fatal(err)
	}
	p.Wait("the task requeued by the interruption", 30*time.Second, func() bool {
		task, err := p.Store.GetTask(ctx, "train", "t")
		return err == nil && task.Evictions == 1
	}, c.vms.LogBoots)
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	p.Wait("the task finished on a replacement", 90*time.Second, func() bool {
		task, err := p.Store.GetTask(ctx, "train", "t")
		return err == nil && task.State == store.TaskSucceeded
	}, c.vms.LogBoots)
	task, _ := p.Store.GetTask(ctx, "train", "t")
	if task.Node == first || task.Evictions != 1 || task.Failures != 0 {
		t.Errorf("task on %s (first %s), evictions %d, failures %d; want a new node, 1 eviction, no failure", task.Node, first, task.Evictions, task.Failures)
	}
	if n, _ := p.Store.GetNode(ctx, first); n.State != store.NodePreempted {
		t.Errorf("interrupted node %s is %s (%s), want preempted", n.Name, n.State, n.Reason)
	}
	p.Wait("the pool scaled in to no instances", 60*time.Second, func() bool {
		return len(p.LiveNodes("gpu")) == 0 && c.spotRunning() == 0
	})
}

// TestApplyRefusesBadPool: `spotml apply` of an AWS pool with bad
// settings is refused by the control plane before anything is stored or
// asked of EC2, with an error naming each wrong field.
func TestApplyRefusesBadPool(t *testing.T) {
	c := startAWS(t)
	c.p.ApplyRefused(`apiVersion: spotml/v1
kind: Pool
metadata: {name: gpu}
spec:
  provider: aws
  priority: spot
  instanceType: g4dn
  max: 2
  aws:
    region: virginia
    subnets: [default]
    image: ubuntu
`, "spec.instanceType", "spec.aws.region", "spec.aws.subnets[0]", "spec.aws.image")
	if n := c.Calls("RunInstances") + c.Calls("CreateFleet"); n != 0 || len(c.Instances()) != 0 {
		t.Errorf("a refused apply made %d launches", n)
	}
}
