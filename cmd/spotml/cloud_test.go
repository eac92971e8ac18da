package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/provider/aws/ec2fake"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// TestCloudFlags: --azure needs the agents' server URL and where VMs get
// spotml, names the flag it misses, and builds a provider.
func TestCloudFlags(t *testing.T) {
	for _, tc := range []struct {
		f    cloudFlags
		want string
	}{
		{cloudFlags{azure: true, spotmlURL: "https://b/spotml", azureInterval: time.Minute}, "--cloud-agent-server-url"},
		{cloudFlags{azure: true, agentURL: "https://cp", azureInterval: time.Minute}, "--cloud-spotml-url"},
		{cloudFlags{azure: true, agentURL: "cp:8080", spotmlURL: "https://b/spotml", azureInterval: time.Minute}, "--cloud-agent-server-url"},
		{cloudFlags{azure: true, agentURL: "https://cp", spotmlURL: "https://b/spotml", azureInterval: time.Millisecond}, "--azure-poll-interval"},
		{cloudFlags{azure: true, agentURL: "https://cp/", spotmlURL: "https://b/spotml", azureInterval: time.Minute}, ""},
		{cloudFlags{aws: true, agentURL: "https://cp/", azureInterval: time.Minute}, "--cloud-spotml-url: required with --aws"},
	} {
		p, err := tc.f.azureProvider(nil)
		if tc.want == "" {
			// The same flags make the aws provider.
			f := tc.f
			f.azure, f.aws, f.awsInterval = false, true, time.Minute
			if ap, err := f.awsProvider(nil); err != nil || ap == nil {
				t.Errorf("aws %+v: %v", f, err)
			}
		}
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%+v: %v", tc.f, err)
		case tc.want == "" && p == nil:
			t.Errorf("%+v: no provider", tc.f)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%+v: error %v, want one naming %s", tc.f, err, tc.want)
		}
	}
}

// TestGCPFlags: --gcp names what it misses, and refuses to start without
// Application Default Credentials, naming how to provide them.
func TestGCPFlags(t *testing.T) {
	f := cloudFlags{gcp: true, agentURL: "https://cp", gcpInterval: time.Minute}
	if _, err := f.gcpProvider(t.Context(), nil); err == nil || !strings.Contains(err.Error(), "--cloud-spotml-url: required with --gcp") {
		t.Errorf("without --cloud-spotml-url: %v", err)
	}
	f.spotmlURL = "https://b/spotml"
	f.gcpInterval = time.Millisecond
	if _, err := f.gcpProvider(t.Context(), nil); err == nil || !strings.Contains(err.Error(), "--gcp-poll-interval") {
		t.Errorf("with a 1ms interval: %v", err)
	}
	f.gcpInterval = time.Minute
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", filepath.Join(t.TempDir(), "missing.json"))
	if _, err := f.gcpProvider(t.Context(), nil); err == nil || !strings.Contains(err.Error(), "--gcp: Application Default Credentials") || !strings.Contains(err.Error(), "GOOGLE_APPLICATION_CREDENTIALS") {
		t.Errorf("without credentials: %v", err)
	}
	key := filepath.Join(t.TempDir(), "key.json")
	os.WriteFile(key, []byte(`{"type":"service_account","project_id":"ml-project-1","private_key_id":"1","private_key":"-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n","client_email":"spotml@ml-project-1.iam.gserviceaccount.com","client_id":"1","token_uri":"https://oauth2.googleapis.com/token"}`), 0o600)
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", key)
	if p, err := f.gcpProvider(t.Context(), nil); err != nil || p == nil {
		t.Errorf("with a key file: %v", err)
	}
}

// TestAWSDefaultConfigChain: --aws's provider takes its credentials and
// endpoint from the AWS default config chain (here the environment): a
// launch reaches EC2 (ec2fake at AWS_ENDPOINT_URL_EC2) signed with the
// environment's access key.
func TestAWSDefaultConfigChain(t *testing.T) {
	fake := ec2fake.New("us-east-1", map[string]string{"subnet-0000000a": "us-east-1a"})
	defer fake.Close()
	dir := t.TempDir()
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDCHAINTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_ENDPOINT_URL_EC2", fake.URL)
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(dir, "config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(dir, "credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	f := cloudFlags{aws: true, agentURL: "https://cp", spotmlURL: "https://b/spotml", awsInterval: time.Minute}
	prov, err := f.awsProvider(nil)
	if err != nil {
		t.Fatal(err)
	}
	docs, err := spec.Parse([]byte(`apiVersion: spotml/v1
kind: Pool
metadata: {name: gpu}
spec:
  provider: aws
  priority: spot
  instanceType: g4dn.xlarge
  max: 1
  aws: {region: us-east-1, subnets: [subnet-0000000a], image: ami-0123456789abcdef0}
`))
	if err != nil {
		t.Fatal(err)
	}
	n := store.Node{Name: "gpu-a1", Pool: "gpu", Priority: spec.PrioritySpot, InstanceType: "g4dn.xlarge", State: store.NodeProvisioning, Incarnation: 1}
	if _, err := prov.Launch(t.Context(), control.LaunchRequest{Pool: *docs[0].Pool, Node: n, Credential: "cred"}); err != nil {
		t.Fatal(err)
	}
	if ins := fake.Instances(); len(ins) != 1 || !fake.SignedBy("AKIDCHAINTEST") {
		t.Errorf("%d instances, signed by the environment's key: %v", len(ins), fake.SignedBy("AKIDCHAINTEST"))
	}
}
