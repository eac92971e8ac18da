package gcp

import (
	"errors"
	"fmt"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/api/option"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/provider/gcp/gcpfake"
	"github.com/spotml/spotml/internal/provider/providertest"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

const project = "ml-project-1"

// pool is a valid gcp pool, defaulted.
func pool(t *testing.T, name, priority, eviction string) spec.Pool {
	t.Helper()
	p := spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: name},
		Spec: spec.PoolSpec{Provider: spec.ProviderGCP, Priority: priority, InstanceType: "n1-standard-4", Max: 4,
			EvictionPolicy: eviction, Zones: []string{"us-central1-a", "us-central1-b"},
			GCP: &spec.GCPPool{Project: project, Image: "projects/debian-cloud/global/images/family/debian-12",
				Subnetwork:   "regions/us-central1/subnetworks/ml",
				Accelerators: []spec.GCPAccelerator{{Type: "nvidia-tesla-t4", Count: 1}},
				Labels:       map[string]string{"team": "vision"},
				Setup:        []string{"apt-get install -y nvidia-driver"}}}}
	p.Default()
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	return p
}

type env struct {
	cloud *gcpfake.Cloud
	prov  *Provider
	plane *providertest.Plane
	now   time.Time
}

// newEnv runs the fake as a loopback HTTP server and points the official
// client at it.
func newEnv(t *testing.T, pools ...spec.Pool) *env {
	t.Helper()
	e := &env{cloud: gcpfake.New(), plane: providertest.NewPlane(), now: time.Now()}
	srv := httptest.NewServer(e.cloud)
	t.Cleanup(srv.Close)
	c, err := NewClients(t.Context(), option.WithEndpoint(srv.URL), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	for _, p := range pools {
		e.plane.AddPool(store.Pool{Spec: p})
	}
	e.prov = New(c, Config{ServerURL: "https://spotml.example:8080", SpotmlURL: "https://blobs.example/spotml"}, nil,
		func() time.Time { return e.now })
	e.prov.view = e.plane
	return e
}

// launch records a node and launches it, as the control plane does.
func (e *env) launch(t *testing.T, p spec.Pool, name, zone string) (store.Node, error) {
	t.Helper()
	n := store.Node{Name: name, Pool: p.Metadata.Name, Priority: p.Spec.Priority, Zone: zone, InstanceType: p.Spec.InstanceType,
		State: store.NodeProvisioning, Incarnation: 1, CreatedAt: e.now}
	at, err := e.prov.Launch(t.Context(), control.LaunchRequest{Pool: p, Node: n, Credential: "cred-" + name})
	if err != nil {
		return n, err
	}
	n.ProviderID = at.ProviderID
	e.plane.AddNode(n)
	return n, nil
}

func (e *env) pass(t *testing.T) {
	t.Helper()
	if err := e.prov.Pass(t.Context(), e.plane, e.plane); err != nil {
		t.Fatal(err)
	}
}

func TestLaunchMakesLabelledSpotVM(t *testing.T) {
	p := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDelete)
	e := newEnv(t, p)
	n, err := e.launch(t, p, "gpu-a1", "us-central1-b")
	if err != nil {
		t.Fatal(err)
	}
	if n.ProviderID != project+"/us-central1-b/gpu-a1" {
		t.Errorf("provider ID %q", n.ProviderID)
	}
	vm, ok := e.cloud.Instance(project, "us-central1-b", "gpu-a1")
	if !ok {
		t.Fatalf("no VM; calls %v", e.cloud.Calls())
	}
	in := vm.Proto()
	s := in.GetScheduling()
	if s.GetProvisioningModel() != "SPOT" || s.GetInstanceTerminationAction() != "DELETE" || s.GetOnHostMaintenance() != "TERMINATE" || s.GetAutomaticRestart() {
		t.Errorf("scheduling %v", s)
	}
	if l := in.GetLabels(); l[LabelPool] != "gpu" || l[LabelNode] != "gpu-a1" || l["team"] != "vision" {
		t.Errorf("labels %v", l)
	}
	if last(in.GetMachineType()) != "n1-standard-4" || last(in.GetZone()) != "us-central1-b" {
		t.Errorf("machine type %s zone %s", in.GetMachineType(), in.GetZone())
	}
	if g := in.GetGuestAccelerators(); len(g) != 1 || g[0].GetAcceleratorType() != "zones/us-central1-b/acceleratorTypes/nvidia-tesla-t4" {
		t.Errorf("accelerators %v", g)
	}
	if nic := in.GetNetworkInterfaces()[0]; nic.GetSubnetwork() != "regions/us-central1/subnetworks/ml" || len(nic.GetAccessConfigs()) != 1 {
		t.Errorf("network interface %v", nic)
	}
	script, _ := vm.Metadata(KeyStartup)
	for _, want := range []string{"--metadata-format gcp", "https://spotml.example:8080", "https://blobs.example/spotml", "nvidia-driver", "systemctl enable --now spotml-agent.service"} {
		if !strings.Contains(script, want) {
			t.Errorf("startup-script lacks %q", want)
		}
	}
	if strings.Contains(script, "cred-gpu-a1") {
		t.Error("the credential is in the startup script")
	}
	if v, _ := vm.Metadata(KeyCredential); v != "cred-gpu-a1" {
		t.Errorf("credential metadata %q", v)
	}
	if v, _ := vm.Metadata(KeyNode); v != "gpu-a1" {
		t.Errorf("node metadata %q", v)
	}
	// A launch retried after a lost answer (same node and incarnation)
	// carries the same requestId: the same operation, no second VM, no
	// "already exists".
	if _, err := e.launch(t, p, "gpu-a1", "us-central1-b"); err != nil {
		t.Fatalf("retried launch: %v", err)
	}
	if got := len(e.cloud.Instances()); got != 1 {
		t.Errorf("%d VMs after a retried launch", got)
	}
	// The runner sees the insert done and the VM where it was asked.
	e.pass(t)
	if c := e.plane.Took(); len(c) != 0 {
		t.Errorf("sink calls %v", c)
	}
}

func TestOnDemandPoolIsStandard(t *testing.T) {
	p := pool(t, "od", spec.PriorityOnDemand, "")
	p.Spec.GCP.Accelerators = nil
	p.Spec.GCP.InternalOnly = true
	e := newEnv(t, p)
	if _, err := e.launch(t, p, "od-a1", "us-central1-a"); err != nil {
		t.Fatal(err)
	}
	vm, _ := e.cloud.Instance(project, "us-central1-a", "od-a1")
	s := vm.Proto().GetScheduling()
	if s.GetProvisioningModel() != "STANDARD" || s.InstanceTerminationAction != nil || s.GetOnHostMaintenance() != "MIGRATE" {
		t.Errorf("scheduling %v", s)
	}
	if ac := vm.Proto().GetNetworkInterfaces()[0].GetAccessConfigs(); len(ac) != 0 {
		t.Errorf("internal-only VM has access configs %v", ac)
	}
	// A standard VM cannot be preempted: evicting it is refused.
	if err := e.prov.Evict(t.Context(), "od-a1", 0); err == nil || !strings.Contains(err.Error(), "not a Spot VM") {
		t.Errorf("evict on-demand node: %v", err)
	}
	e.pass(t)
	// Deleted by someone else: the node is lost, not preempted.
	if err := e.prov.deleteVM(t.Context(), project, "us-central1-a", "od-a1"); err != nil {
		t.Fatal(err)
	}
	e.pass(t)
	if c := e.plane.Took(); len(c) != 1 || !strings.HasPrefix(c[0], "Gone od-a1 lost: ") {
		t.Errorf("sink calls %v", c)
	}
}

// TestEveryCapacityCodeIsShortage: each code Compute Engine reports a
// full zone or a spent quota with, in the insert's operation, is a
// shortage; another error is the node lost.
func TestEveryCapacityCodeIsShortage(t *testing.T) {
	p := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDelete)
	p.Spec.Zones = []string{"us-central1-a"}
	e := newEnv(t, p)
	for i, code := range []string{"ZONE_RESOURCE_POOL_EXHAUSTED", "ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", "QUOTA_EXCEEDED"} {
		e.cloud.Refuse("us-central1-a", "SPOT", code)
		name := fmt.Sprintf("gpu-c%d", i)
		if _, err := e.launch(t, p, name, "us-central1-a"); err != nil {
			t.Fatalf("%s: launch: %v", code, err)
		}
		e.pass(t)
		if c := e.plane.Took(); len(c) != 1 || !strings.HasPrefix(c[0], "Shortage "+name+": ") || !strings.Contains(c[0], code+":") {
			t.Errorf("%s: sink calls %v", code, c)
		}
	}
}

// TestCapacityShortageMovesZone: an insert Compute Engine accepts and then
// refuses (ZONE_RESOURCE_POOL_EXHAUSTED in the operation) is a shortage;
// the next node goes to the pool's other zone, and is placed there. A
// quota refused at once in every zone is ErrNoCapacity from Launch.
func TestCapacityShortageMovesZone(t *testing.T) {
	p := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDelete)
	e := newEnv(t, p)
	e.cloud.Refuse("us-central1-a", "SPOT", "ZONE_RESOURCE_POOL_EXHAUSTED")
	if _, err := e.launch(t, p, "gpu-a1", "us-central1-a"); err != nil {
		t.Fatalf("launch: %v (the refusal comes in the operation)", err)
	}
	e.pass(t)
	c := e.plane.Took()
	if len(c) != 1 || !strings.HasPrefix(c[0], "Shortage gpu-a1: ") || !strings.Contains(c[0], "ZONE_RESOURCE_POOL_EXHAUSTED") {
		t.Fatalf("sink calls %v, want a shortage", c)
	}
	n, err := e.launch(t, p, "gpu-a2", "us-central1-a")
	if err != nil {
		t.Fatal(err)
	}
	if n.ProviderID != project+"/us-central1-b/gpu-a2" {
		t.Errorf("provider ID %q, want the other zone", n.ProviderID)
	}
	e.pass(t)
	if c := e.plane.Took(); !slices.Equal(c, []string{`Placed gpu-a2 zone "us-central1-b"`}) {
		t.Errorf("sink calls %v", c)
	}

	// On-demand capacity is another model: unaffected.
	od := pool(t, "od", spec.PriorityOnDemand, "")
	if _, err := e.launch(t, od, "od-a1", "us-central1-a"); err != nil {
		t.Errorf("on-demand launch: %v", err)
	}

	// Zones refused lately are tried again once spotml has forgotten.
	e.now = e.now.Add(shortageMemory + time.Second)
	e.cloud.Refuse("us-central1-a", "SPOT", "")
	e.cloud.Refuse("us-central1-a", "", "quotaExceeded")
	e.cloud.Refuse("us-central1-b", "", "quotaExceeded")
	_, err = e.launch(t, p, "gpu-a3", "us-central1-b")
	if !errors.Is(err, control.ErrNoCapacity) || !strings.Contains(err.Error(), "us-central1-a: quotaExceeded") || !strings.Contains(err.Error(), "us-central1-b: quotaExceeded") {
		t.Errorf("launch with no quota anywhere: %v", err)
	}
}

func TestPreemptionDeleteIsPreempted(t *testing.T) {
	p := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDelete)
	e := newEnv(t, p)
	e.cloud.NoticeFor = 10 * time.Millisecond
	noticed := make(chan string, 1)
	e.cloud.OnNotice = func(vm gcpfake.Instance) { noticed <- vm.Name() }
	ended := make(chan string, 1)
	e.cloud.OnEnd = func(vm gcpfake.Instance) { ended <- vm.Name() }
	if _, err := e.launch(t, p, "gpu-a1", "us-central1-a"); err != nil {
		t.Fatal(err)
	}
	e.pass(t)
	if err := e.prov.Evict(t.Context(), "gpu-a1", 0); err != nil {
		t.Fatal(err)
	}
	if got := <-noticed; got != "gpu-a1" {
		t.Errorf("notice for %s", got)
	}
	<-ended
	if _, ok := e.cloud.Instance(project, "us-central1-a", "gpu-a1"); ok {
		t.Error("VM still there after preemption with action DELETE")
	}
	e.pass(t)
	if c := e.plane.Took(); len(c) != 1 || !strings.HasPrefix(c[0], "Gone gpu-a1 preempted: Preempted") {
		t.Errorf("sink calls %v", c)
	}
}

// TestPreemptionStopThenRestart: a Spot VM with action STOP is stopped by
// its preemption with its disk kept; the node is deallocated, and started
// again under its name with a new credential, the same VM and disk.
func TestPreemptionStopThenRestart(t *testing.T) {
	p := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDeallocate)
	e := newEnv(t, p)
	e.cloud.NoticeFor = time.Millisecond
	ended := make(chan string, 1)
	e.cloud.OnEnd = func(vm gcpfake.Instance) { ended <- vm.Name() }
	n, err := e.launch(t, p, "gpu-a1", "us-central1-a")
	if err != nil {
		t.Fatal(err)
	}
	before, _ := e.cloud.Instance(project, "us-central1-a", "gpu-a1")
	if a := before.Proto().GetScheduling().GetInstanceTerminationAction(); a != "STOP" {
		t.Fatalf("termination action %q", a)
	}
	e.pass(t)
	if err := e.cloud.Preempt(project, "us-central1-a", "gpu-a1"); err != nil {
		t.Fatal(err)
	}
	<-ended
	e.pass(t)
	if c := e.plane.Took(); len(c) != 1 || !strings.HasPrefix(c[0], "Gone gpu-a1 deallocated: Preempted") || !strings.Contains(c[0], "disk is kept") {
		t.Fatalf("sink calls %v", c)
	}
	// A restart the zone refuses leaves the VM stopped, disk and all.
	e.cloud.Refuse("us-central1-a", "SPOT", "ZONE_RESOURCE_POOL_EXHAUSTED")
	n.Incarnation = 2
	_, err = e.prov.Launch(t.Context(), control.LaunchRequest{Pool: p, Node: n, Credential: "cred-2", Restart: true})
	if !errors.Is(err, control.ErrNoCapacity) {
		t.Fatalf("restart in a full zone: %v", err)
	}
	if vm, ok := e.cloud.Instance(project, "us-central1-a", "gpu-a1"); !ok || vm.Status() != "TERMINATED" {
		t.Fatalf("VM after a refused restart: %v %v", ok, vm.Status())
	}
	e.cloud.Refuse("us-central1-a", "SPOT", "")
	n.Incarnation = 3
	at, err := e.prov.Launch(t.Context(), control.LaunchRequest{Pool: p, Node: n, Credential: "cred-3", Restart: true})
	if err != nil {
		t.Fatal(err)
	}
	if at.ProviderID != n.ProviderID {
		t.Errorf("restarted as %q, want %q", at.ProviderID, n.ProviderID)
	}
	after, _ := e.cloud.Instance(project, "us-central1-a", "gpu-a1")
	if after.Status() != "RUNNING" || after.Proto().GetId() != before.Proto().GetId() || after.Proto().GetDisks()[0].String() != before.Proto().GetDisks()[0].String() {
		t.Errorf("restarted VM %s id %d (was %d), disks %v", after.Status(), after.Proto().GetId(), before.Proto().GetId(), after.Proto().GetDisks())
	}
	if v, _ := after.Metadata(KeyCredential); v != "cred-3" {
		t.Errorf("credential after restart %q", v)
	}
	e.plane.Set("gpu-a1", func(n *store.Node) { n.State, n.Incarnation = store.NodeProvisioning, 3 })
	e.pass(t)
	if c := e.plane.Took(); len(c) != 0 {
		t.Errorf("sink calls after restart %v", c)
	}
}

// TestCredentialLeavesMetadata: once the agent registered, the runner
// removes its credential from the VM's metadata (readable by any process
// on the VM) and keeps the rest.
func TestCredentialLeavesMetadata(t *testing.T) {
	p := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDelete)
	e := newEnv(t, p)
	if _, err := e.launch(t, p, "gpu-a1", "us-central1-a"); err != nil {
		t.Fatal(err)
	}
	e.pass(t)
	if _, ok := mustVM(t, e, "gpu-a1").Metadata(KeyCredential); !ok {
		t.Fatal("credential removed before the agent registered")
	}
	e.plane.Set("gpu-a1", func(n *store.Node) { n.State = store.NodeReady })
	e.pass(t)
	vm := mustVM(t, e, "gpu-a1")
	if _, ok := vm.Metadata(KeyCredential); ok {
		t.Error("credential still in metadata after the agent registered")
	}
	if _, ok := vm.Metadata(KeyStartup); !ok {
		t.Error("startup-script removed with the credential")
	}
}

func mustVM(t *testing.T, e *env, name string) gcpfake.Instance {
	t.Helper()
	for _, vm := range e.cloud.Instances() {
		if vm.Name() == name {
			return vm
		}
	}
	t.Fatalf("no VM %s", name)
	return gcpfake.Instance{}
}

// TestStopDeletesAndOrphansGo: Stop deletes the VM (twice is fine); VMs of
// ended nodes and of deleted pools are deleted by the runner; a VM of
// someone else (no spotml labels) is left alone.
func TestStopDeletesAndOrphansGo(t *testing.T) {
	p := pool(t, "gpu", spec.PrioritySpot, spec.EvictionDelete)
	old := pool(t, "old", spec.PrioritySpot, spec.EvictionDelete)
	e := newEnv(t, p, old)
	n, _ := e.launch(t, p, "gpu-a1", "us-central1-a")
	if _, err := e.launch(t, p, "gpu-a2", "us-central1-a"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.launch(t, old, "old-a1", "us-central1-b"); err != nil {
		t.Fatal(err)
	}
	e.pass(t)
	for range 2 {
		if err := e.prov.Stop(t.Context(), n); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := e.cloud.Instance(project, "us-central1-a", "gpu-a1"); ok {
		t.Error("VM still there after Stop")
	}
	// gpu-a2's node ends without its VM being deleted (a Stop that
	// failed); pool old is deleted.
	e.plane.Set("gpu-a2", func(n *store.Node) { n.State = store.NodeTerminated })
	pools, _ := e.plane.ListPools(t.Context())
	e.plane.SetPools(pools[0])
	e.plane.RemoveNode("old-a1")
	e.pass(t)
	if vms := e.cloud.Instances(); len(vms) != 0 {
		t.Errorf("VMs left: %v", vms)
	}
}
