package azure

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

const size = "Standard_NC4as_T4_v3"

// uniformEnv is an env whose scale set "gpu" is Uniform, of the pool's
// priority and eviction policy.
func uniformEnv(t *testing.T, priority, eviction string) (*env, spec.Pool) {
	t.Helper()
	p := pool(t, "gpu", priority, eviction)
	p.Spec.Azure.Orchestration = spec.AzureUniform
	p.Spec.Zones = nil
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, p)
	prio, policy := armcompute.VirtualMachinePriorityTypesRegular, armcompute.VirtualMachineEvictionPolicyTypes("")
	if priority == spec.PrioritySpot {
		prio, policy = armcompute.VirtualMachinePriorityTypesSpot, armcompute.VirtualMachineEvictionPolicyTypesDelete
		if eviction == spec.EvictionDeallocate {
			policy = armcompute.VirtualMachineEvictionPolicyTypesDeallocate
		}
	}
	e.cloud.AddUniformScaleSet(rg, "gpu", "westeurope", size, prio, policy)
	return e, p
}

func TestUniformScalesOutAndIn(t *testing.T) {
	e, p := uniformEnv(t, spec.PrioritySpot, spec.EvictionDelete)
	for _, n := range []string{"gpu-a1", "gpu-a2"} {
		if err := e.launch(t, p, n, ""); err != nil {
			t.Fatal(err)
		}
	}
	if c := e.cloud.Capacity(rg, "gpu"); c != 2 {
		t.Errorf("capacity %d after two launches, want 2", c)
	}
	ins := e.cloud.Instances(rg, "gpu")
	if len(ins) != 2 {
		t.Fatalf("%d instances", len(ins))
	}
	for i, in := range ins {
		name := []string{"gpu-a1", "gpu-a2"}[i]
		if *in.Model.Tags[TagNode] != name || *in.Model.Tags[TagPool] != "gpu" {
			t.Errorf("instance %s tags %v", in.InstanceID(), in.Model.Tags)
		}
		if want := "node=" + name + "\ncredential=cred-" + name + "\n"; in.UserData() != want {
			t.Errorf("instance %s user data %q, want %q", in.InstanceID(), in.UserData(), want)
		}
		if got := e.plane.Node(name).ProviderID; got != InstanceID(sub, rg, "gpu", in.InstanceID()) {
			t.Errorf("provider ID %s", got)
		}
	}
	// The bootstrap went into the scale set's profile; it waits for the
	// instance's user data.
	if e.cloud.Calls("VirtualMachineScaleSets.BeginUpdate") != 2 {
		t.Errorf("%d scale set updates", e.cloud.Calls("VirtualMachineScaleSets.BeginUpdate"))
	}
	cd := e.cloud.ProfileCustomData(rg, "gpu")
	for _, want := range []string{"#cloud-config", "https://spotml.example:8080", "--metadata-format azure", `[ -n "$id" ] && break`, "nvidia-driver-550"} {
		if !strings.Contains(cd, want) {
			t.Errorf("profile custom data lacks %q", want)
		}
	}

	// Stop deletes the instance; the capacity drops with it.
	n1 := e.plane.Node("gpu-a1")
	for range 2 {
		if err := e.prov.Stop(context.Background(), n1); err != nil {
			t.Fatal(err)
		}
	}
	if ins := e.cloud.Instances(rg, "gpu"); len(ins) != 1 || *ins[0].Model.Tags[TagNode] != "gpu-a2" || e.cloud.Capacity(rg, "gpu") != 1 {
		t.Errorf("after Stop: %d instances, capacity %d", len(ins), e.cloud.Capacity(rg, "gpu"))
	}
	e.plane.Set("gpu-a1", func(n *store.Node) { n.State = store.NodeTerminated })
	e.plane.Set("gpu-a2", func(n *store.Node) { n.State = store.NodeReady })
	if got := e.pass(t); len(got) != 0 {
		t.Errorf("pass = %q", got)
	}
	if got := e.cloud.Instances(rg, "gpu")[0].UserData(); got != "" {
		t.Errorf("user data of a registered node's instance: %q, want it emptied", got)
	}
	// A node ended while its instance stayed: the runner deletes it.
	e.plane.Set("gpu-a2", func(n *store.Node) { n.State = store.NodeTerminated })
	e.pass(t)
	if c := e.cloud.Capacity(rg, "gpu"); c != 0 {
		t.Errorf("capacity %d after every node ended", c)
	}
}

func TestUniformCapacityAndMismatch(t *testing.T) {
	e, p := uniformEnv(t, spec.PrioritySpot, spec.EvictionDelete)
	e.cloud.SetSpotCapacity(size, false)
	err := e.launch(t, p, "gpu-a1", "")
	if !errors.Is(err, control.ErrNoCapacity) || !strings.Contains(err.Error(), "SkuNotAvailable") {
		t.Fatalf("launch without capacity: %v", err)
	}
	if c := e.cloud.Capacity(rg, "gpu"); c != 0 {
		t.Errorf("capacity %d after a refusal", c)
	}
	// The pool must say what the scale set makes.
	for _, tc := range []struct {
		mod   func(*spec.Pool)
		field string
	}{
		{func(p *spec.Pool) {
			p.Spec.Priority, p.Spec.EvictionPolicy, p.Spec.Azure.MaxPrice = spec.PriorityOnDemand, "", nil
		}, "spec.priority"},
		{func(p *spec.Pool) { p.Spec.EvictionPolicy = spec.EvictionDeallocate }, "spec.evictionPolicy"},
		{func(p *spec.Pool) { p.Spec.InstanceType = "Standard_D4s_v5" }, "spec.instanceType"},
	} {
		q := p
		a := *p.Spec.Azure
		q.Spec.Azure = &a
		tc.mod(&q)
		f := New(e.prov.clients, e.prov.cfg, nil, nil) // no cached scale set
		n := store.Node{Name: "gpu-x", Pool: "gpu", Priority: q.Spec.Priority, InstanceType: q.Spec.InstanceType, Incarnation: 1}
		_, err := f.Launch(context.Background(), control.LaunchRequest{Pool: q, Node: n, Credential: "c"})
		if err == nil || !strings.HasPrefix(err.Error(), tc.field+":") {
			t.Errorf("launch with a wrong %s: %v", tc.field, err)
		}
	}
}

func TestUniformEvictionDeleteIsPreemption(t *testing.T) {
	e, p := uniformEnv(t, spec.PrioritySpot, spec.EvictionDelete)
	for _, n := range []string{"gpu-a1", "gpu-a2"} {
		if err := e.launch(t, p, n, ""); err != nil {
			t.Fatal(err)
		}
		e.plane.Set(n, func(n *store.Node) { n.State = store.NodeReady })
	}
	e.pass(t)
	// Evict asks Azure (SimulateEviction) through the instance.
	e.prov.view = e.plane
	if err := e.prov.Evict(context.Background(), "gpu-a2", 0); err != nil {
		t.Fatal(err)
	}
	want := []string{"Gone gpu-a2 preempted: SpotEviction: the VM was deleted (Spot eviction, evictionPolicy Delete)"}
	if got := e.pass(t); !slices.Equal(got, want) {
		t.Errorf("pass = %q, want %q", got, want)
	}
	if got := e.pass(t); len(got) != 0 {
		t.Errorf("second pass = %q", got)
	}
	if c := e.cloud.Capacity(rg, "gpu"); c != 1 {
		t.Errorf("capacity %d after an eviction that deleted", c)
	}
}

func TestUniformDeallocateThenRestartKeepsName(t *testing.T) {
	e, p := uniformEnv(t, spec.PrioritySpot, spec.EvictionDeallocate)
	if err := e.launch(t, p, "gpu-a1", ""); err != nil {
		t.Fatal(err)
	}
	e.plane.Set("gpu-a1", func(n *store.Node) { n.State = store.NodeReady })
	e.pass(t)
	id := e.cloud.Instances(rg, "gpu")[0].InstanceID()
	if err := e.cloud.EvictInstance(rg, "gpu", id); err != nil {
		t.Fatal(err)
	}
	want := []string{"Gone gpu-a1 deallocated: SpotEviction: the VM was deallocated (Spot eviction, evictionPolicy Deallocate); its disk is kept"}
	if got := e.pass(t); !slices.Equal(got, want) {
		t.Fatalf("pass = %q, want %q", got, want)
	}
	n := e.plane.Node("gpu-a1")
	n.State, n.Incarnation = store.NodeProvisioning, 2
	e.plane.Set("gpu-a1", func(m *store.Node) { *m = n })
	e.cloud.SetSpotCapacity(size, false)
	if _, err := e.prov.Launch(context.Background(), control.LaunchRequest{Pool: p, Node: n, Credential: "cred-2", Restart: true}); !errors.Is(err, control.ErrNoCapacity) {
		t.Fatalf("restart without capacity: %v", err)
	}
	e.cloud.SetSpotCapacity(size, true)
	at, err := e.prov.Launch(context.Background(), control.LaunchRequest{Pool: p, Node: n, Credential: "cred-2", Restart: true})
	if err != nil {
		t.Fatal(err)
	}
	ins := e.cloud.Instances(rg, "gpu")
	if at.ProviderID != n.ProviderID || len(ins) != 1 || ins[0].InstanceID() != id || ins[0].Power != "running" || ins[0].Evictions != 1 {
		t.Fatalf("restart: %s (was %s), instances %+v", at.ProviderID, n.ProviderID, ins)
	}
	if got := ins[0].UserData(); got != "node=gpu-a1\ncredential=cred-2\n" {
		t.Errorf("restarted instance's user data %q", got)
	}
	if c := e.cloud.Capacity(rg, "gpu"); c != 1 {
		t.Errorf("capacity %d: a restart adds no instance", c)
	}
	if got := e.pass(t); len(got) != 0 {
		t.Errorf("pass after restart reported %v", got)
	}
}

// TestUniformStartScriptWaitsForIdentity runs the Uniform bootstrap's
// start script in a temp directory: the instance boots before spotml
// claims it, so its user data is empty at first; the script asks again
// until the identity is there, then starts the agent with it.
func TestUniformStartScriptWaitsForIdentity(t *testing.T) {
	for _, tool := range []string{"sh", "curl", "base64", "sed"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	root := t.TempDir()
	bins := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("#!/bin/sh\nprintf '%s\\n' \"$@\" >\"$SPOTML_ROOT/args\"\n"))
	}))
	defer bins.Close()
	var reads atomic.Int32
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Metadata") != "true" || r.URL.Path != "/metadata/instance/compute/userData" {
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		if reads.Add(1) == 1 {
			return // not claimed yet: empty user data
		}
		w.Write([]byte(Identity("gpu-a1", "cred-1")))
	}))
	defer imds.Close()
	script := filepath.Join(root, "start-agent.sh")
	if err := os.WriteFile(script, []byte(UniformBootstrap(Config{ServerURL: "http://cp", SpotmlURL: bins.URL}, nil).StartScript()), 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sh", script)
	cmd.Env = append(os.Environ(), "SPOTML_ROOT="+root, "SPOTML_IMDS="+imds.URL)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("start script: %v\n%s", err, out)
	}
	args, _ := os.ReadFile(filepath.Join(root, "args"))
	if !strings.Contains(string(args), "--node\ngpu-a1\n") || reads.Load() != 2 {
		t.Errorf("agent run as %q after %d reads of user data, want node gpu-a1 after 2", args, reads.Load())
	}
}

// TestUniformRegularInstanceDeletedIsLost: an instance of a Regular
// (on-demand) Uniform scale set deleted outside spotml (az vmss
// delete-instances) is the node lost, not preempted.
func TestUniformRegularInstanceDeletedIsLost(t *testing.T) {
	e, p := uniformEnv(t, spec.PriorityOnDemand, "")
	if err := e.launch(t, p, "gpu-a1", ""); err != nil {
		t.Fatal(err)
	}
	e.plane.Set("gpu-a1", func(n *store.Node) { n.State = store.NodeReady })
	e.pass(t)
	f, err := e.cloud.ClientFactory()
	if err != nil {
		t.Fatal(err)
	}
	ins := e.cloud.Instances(rg, "gpu")
	if len(ins) != 1 {
		t.Fatalf("%d instances, want 1", len(ins))
	}
	poller, err := f.NewVirtualMachineScaleSetsClient().BeginDeleteInstances(context.Background(), rg, "gpu",
		armcompute.VirtualMachineScaleSetVMInstanceRequiredIDs{InstanceIDs: []*string{ins[0].Model.InstanceID}}, nil)
	if err == nil {
		_, err = poller.PollUntilDone(context.Background(), nil)
	}
	if err != nil {
		t.Fatal(err)
	}
	got := e.pass(t)
	if len(got) != 1 || !strings.HasPrefix(got[0], "Gone gpu-a1 lost: ") {
		t.Errorf("pass = %q, want the node lost", got)
	}
}
