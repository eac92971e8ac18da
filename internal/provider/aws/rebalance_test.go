package aws

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/ec2"

	"github.com/spotml/spotml/internal/agent"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/notice"
	"github.com/spotml/spotml/internal/provider/aws/ec2fake"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
)

// TestRebalanceLaunchesReplacementWithoutDraining runs a real control
// plane (SQLite, its HTTP server, its reconcile passes) with this provider
// over ec2fake, and the real agent for the first instance, reading the
// simulated IMDSv2. A rebalance recommendation makes the control plane
// launch a second instance while the first keeps its task; the
// instance-action notice that follows drains the first as always.
func TestRebalanceLaunchesReplacementWithoutDraining(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	dir := t.TempDir()
	st, err := sqlite.Open(ctx, filepath.Join(dir, "spotml.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	blobs, err := blob.NewStore("file://" + filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	docs, err := spec.Parse([]byte(`
apiVersion: spotml/v1
kind: Pool
metadata: {name: gpu}
spec:
  provider: aws
  priority: spot
  instanceType: g4dn.xlarge
  max: 3
  aws:
    region: us-east-1
    subnets: [subnet-0000000a]
    image: ami-0123456789abcdef0
---
apiVersion: spotml/v1
kind: Job
metadata: {name: train}
spec:
  pool: gpu
  count: 1
  template: {command: [sleep, "60"]}
`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Apply(ctx, []spec.Pool{*docs[0].Pool}, []spec.Job{*docs[1].Job}); err != nil {
		t.Fatal(err)
	}

	fake := ec2fake.New("us-east-1", map[string]string{"subnet-0000000a": "us-east-1a"})
	defer fake.Close()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	prov := New(func(region string) (*ec2.Client, error) {
		return ec2.New(ec2.Options{Region: region, BaseEndpoint: awssdk.String(fake.URL),
			Credentials: credentials.NewStaticCredentialsProvider("AKIDEXAMPLE", "secret", ""), RetryMaxAttempts: 1}), nil
	}, Config{ServerURL: "https://cp.example", SpotmlURL: "https://blobs.example/spotml"}, log, nil)
	plane := control.New(st, map[string]control.Provider{Name: prov}, log, time.Now, control.Options{})
	imds := notice.NewServer(nil, log)
	srv := httptest.NewServer(server.New(server.Config{Store: st, Blobs: blobs, Plane: plane, Metadata: imds, MetadataPrefix: "/imds",
		Token: "admin", HeartbeatInterval: 50 * time.Millisecond, Log: log, Now: time.Now}))
	defer srv.Close()

	reconcile := func() {
		t.Helper()
		if err := plane.Reconcile(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitNode := func(name, why string, ok func(store.Node) bool) store.Node {
		t.Helper()
		for {
			n, err := st.GetNode(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if ok(n) {
				return n
			}
			select {
			case <-ctx.Done():
				t.Fatalf("node %s never %s: %+v", name, why, n)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}

	// The job's task makes the pool launch one instance; its agent (the
	// real one, on this machine) reads its identity from the user data.
	reconcile()
	ins := fake.Instances()
	if len(ins) != 1 {
		t.Fatalf("%d instances after the first pass, want 1", len(ins))
	}
	node := ins[0].Tags[TagNode]
	cred := regexp.MustCompile(`(?m)^# spotml-credential=(\S+)$`).FindStringSubmatch(ins[0].UserData)
	if cred == nil {
		t.Fatalf("no credential in the user data:\n%s", ins[0].UserData)
	}
	imds.Register(node, notice.FormatAWS)
	a := agent.New(agent.Config{Server: srv.URL, Credential: cred[1], Node: node, WorkDir: filepath.Join(dir, "node"),
		MetadataURL: notice.BaseURL(srv.URL+"/imds", node), MetadataFormat: notice.FormatAWS, NoticePoll: 20 * time.Millisecond}, log, time.Now)
	done := make(chan error, 1)
	actx, stop := context.WithCancel(ctx)
	defer func() { stop(); <-done }()
	go func() { done <- a.Run(actx) }()
	waitNode(node, "ready", func(n store.Node) bool { return n.State == store.NodeReady })
	var task store.Task
	for task.State != store.TaskRunning {
		reconcile()
		job, err := st.GetJob(ctx, "train")
		if err != nil {
			t.Fatal(err)
		}
		task = job.Tasks[0]
		time.Sleep(20 * time.Millisecond)
	}
	if len(fake.Instances()) != 1 {
		t.Fatal("a second instance before any warning")
	}

	// EC2 recommends a rebalance: the agent passes it on; the node is at
	// risk, not draining, and a replacement instance is launched.
	imds.SetRebalance(node, time.Now())
	n := waitNode(node, "at risk", func(n store.Node) bool { return !n.AtRisk.IsZero() })
	if n.State != store.NodeReady || !n.NoticeDeadline.IsZero() {
		t.Errorf("node after the recommendation: %+v", n)
	}
	reconcile()
	if ins := fake.Instances(); len(ins) != 2 || ins[1].Tags[TagPool] != "gpu" {
		t.Fatalf("instances after the recommendation: %d, want the first and its replacement", len(ins))
	}
	reconcile()
	if len(fake.Instances()) != 2 {
		t.Error("the replacement was launched again")
	}
	job, err := st.GetJob(ctx, "train")
	if err != nil {
		t.Fatal(err)
	}
	if got := job.Tasks[0]; got.State != store.TaskRunning || got.Node != node || got.Attempt != task.Attempt {
		t.Errorf("task after the recommendation: %+v, want still attempt %d on %s", got, task.Attempt, node)
	}
	evs, err := st.ListEvents(ctx, store.EventFilter{Object: "node/" + node, Kind: "AtRisk"})
	if err != nil || len(evs) != 1 || evs[0].Reason != "RebalanceRecommendation" {
		t.Errorf("AtRisk events: %+v, %v", evs, err)
	}

	// The instance-action notice drains it as always; the task goes back
	// to the queue for the replacement, without a retry spent.
	imds.Set(node, time.Now().Add(2*time.Minute), "terminate")
	waitNode(node, "draining", func(n store.Node) bool { return n.State == store.NodeDraining })
	for {
		job, err := st.GetJob(ctx, "train")
		if err != nil {
			t.Fatal(err)
		}
		if got := job.Tasks[0]; got.State == store.TaskPending {
			if got.Failures != 0 {
				t.Errorf("the eviction spent a retry: %+v", got)
			}
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("task never requeued: %+v", job.Tasks[0])
		}
		time.Sleep(20 * time.Millisecond)
	}
	reconcile()
	if len(fake.Instances()) != 2 {
		t.Errorf("%d instances after the notice, want 2: the replacement is already there", len(fake.Instances()))
	}
}
