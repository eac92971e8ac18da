// Package e2e runs the azure provider with a real control plane against
// the SDK's fake (azurefake), where each "VM" runs its rendered start
// script on this machine: the script downloads a real spotml over
// loopback, reads its identity from a loopback metadata service and runs
// the real agent, which registers and runs a job's task. A platform
// eviction of the VM then requeues the task without spending a retry, and
// a replacement VM finishes it.
package e2e

import (
	"context"
	"encoding/base64"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"
	"go.yaml.in/yaml/v3"

	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/notice"
	azureprov "github.com/spotml/spotml/internal/provider/azure"
	"github.com/spotml/spotml/internal/provider/azure/azurefake"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
)

const sub = "00000000-1111-2222-3333-444444444444"

func spotmlBinary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("SPOTML_BIN"); b != "" {
		return b
	}
	out := filepath.Join(t.TempDir(), "spotml")
	if b, err := exec.Command("go", "build", "-o", out, "github.com/spotml/spotml/cmd/spotml").CombinedOutput(); err != nil {
		t.Fatalf("build spotml: %v\n%s", err, b)
	}
	return out
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) { w.t.Logf("%s", b); return len(b), nil }

// vms runs each booted VM's start script as a process group.
type vms struct {
	t    *testing.T
	dir  string
	imds string
	mu   sync.Mutex
	cmds map[string]*exec.Cmd
}

func (v *vms) boot(vm azurefake.VM) {
	var doc struct {
		WriteFiles []struct{ Path, Content string } `yaml:"write_files"`
	}
	if err := yaml.Unmarshal([]byte(vm.CustomData()), &doc); err != nil || len(doc.WriteFiles) == 0 {
		v.t.Errorf("VM %s: custom data is no cloud-config with files: %v", vm.Name(), err)
		return
	}
	root := filepath.Join(v.dir, vm.Name())
	os.MkdirAll(root, 0o755)
	script := filepath.Join(root, "start-agent.sh")
	os.WriteFile(script, []byte(doc.WriteFiles[0].Content), 0o755)
	log, _ := os.OpenFile(filepath.Join(root, "boot.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	cmd := exec.Command("sh", script)
	cmd.Env = append(os.Environ(), "SPOTML_ROOT="+root, "SPOTML_IMDS="+notice.BaseURL(v.imds, vm.Name()))
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		v.t.Errorf("VM %s: %v", vm.Name(), err)
		return
	}
	v.mu.Lock()
	v.cmds[vm.Name()] = cmd
	v.mu.Unlock()
	go cmd.Wait()
}

func (v *vms) end(vm azurefake.VM) {
	v.mu.Lock()
	cmd := v.cmds[vm.Name()]
	delete(v.cmds, vm.Name())
	v.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

func (v *vms) stopAll() {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, cmd := range v.cmds {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}

func TestEvictionRequeuesTask(t *testing.T) {
	for _, tool := range []string{"sh", "curl", "base64", "sed"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	bin := spotmlBinary(t)
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))

	bins := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, bin) }))
	defer bins.Close()

	cloud := azurefake.New(sub)
	cloud.AddScaleSet("ml", "gpu", "westeurope", armcompute.OrchestrationModeFlexible)
	events := notice.NewServer(time.Now, log)
	imds := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// /nodes/{vm}/metadata/instance/compute/userData: the VM's user
		// data, as Azure's IMDS answers it (base64, Metadata: true).
		rest, ok := strings.CutPrefix(r.URL.Path, "/nodes/")
		name, path, _ := strings.Cut(rest, "/")
		if ok && path == "metadata/instance/compute/userData" {
			vm, found := cloud.VM("ml", name)
			if !found || r.Header.Get("Metadata") != "true" {
				http.Error(w, "bad request", http.StatusBadRequest)
				return
			}
			w.Write([]byte(base64.StdEncoding.EncodeToString([]byte(vm.UserData()))))
			return
		}
		events.ServeHTTP(w, r)
	}))
	defer imds.Close()
	machines := &vms{t: t, dir: filepath.Join(dir, "vms"), imds: imds.URL, cmds: map[string]*exec.Cmd{}}
	defer machines.stopAll()
	cloud.OnBoot = func(vm azurefake.VM) {
		events.Ensure(vm.Name(), notice.FormatAzure)
		machines.boot(vm)
	}
	cloud.OnEnd = machines.end

	st, err := sqlite.Open(t.Context(), filepath.Join(dir, "spotml.db"), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	blobs, err := blob.NewStore("file://" + filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	prov := azureprov.New(func(string) (*armcompute.ClientFactory, error) { return cloud.ClientFactory() },
		azureprov.Config{ServerURL: url, SpotmlURL: bins.URL + "/spotml", Interval: 200 * time.Millisecond}, log, time.Now)
	cp := control.New(st, map[string]control.Provider{azureprov.Name: prov}, log, time.Now,
		control.Options{Interval: 200 * time.Millisecond, Retention: -1})
	srv := &http.Server{Handler: server.New(server.Config{Store: st, Blobs: blobs, Plane: cp, JoinToken: "join", Token: "admin",
		HeartbeatInterval: 200 * time.Millisecond, Log: log, Now: time.Now})}
	go srv.Serve(ln)
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); cp.Run(ctx) }()
	defer func() { cancel(); <-done }()

	pool := spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: "gpu"},
		Spec: spec.PoolSpec{Provider: spec.ProviderAzure, Priority: spec.PrioritySpot, InstanceType: "Standard_D2s_v5", Min: 1, Max: 1,
			Capacity: &spec.Resources{CPU: 2, Memory: 1 << 30},
			Azure: &spec.AzurePool{Subscription: sub, ResourceGroup: "ml", ScaleSet: "gpu", Image: "Canonical:ubuntu-24_04-lts:server:latest",
				Subnet:       "/subscriptions/" + sub + "/resourceGroups/ml/providers/Microsoft.Network/virtualNetworks/v/subnets/s",
				SSHPublicKey: "ssh-ed25519 AAAA test"}}}
	pool.Default()
	job := spec.Job{APIVersion: spec.APIVersion, Kind: spec.KindJob, Metadata: spec.Metadata{Name: "train"},
		Spec: spec.JobSpec{Pool: "gpu", Tasks: []spec.TaskSpec{{Name: "t", Command: spec.Command{"sleep", "4"}}}}}
	if err := pool.Validate(); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Apply(ctx, []spec.Pool{pool}, []spec.Job{job}); err != nil {
		t.Fatal(err)
	}

	wait := func(what string, ok func() bool) {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for !ok() {
			if time.Now().After(deadline) {
				nodes, _ := st.ListNodes(ctx)
				for _, n := range nodes {
					t.Logf("node %s: %s %q", n.Name, n.State, n.Reason)
				}
				for _, vm := range cloud.VMs() {
					b, _ := os.ReadFile(filepath.Join(machines.dir, vm.Name(), "boot.log"))
					t.Logf("VM %s boot log:\n%s", vm.Name(), b)
				}
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	var first string
	wait("the task running on an Azure VM's agent", func() bool {
		task, err := st.GetTask(ctx, "train", "t")
		first = task.Node
		return err == nil && task.State == store.TaskRunning
	})
	// The runner empties a registered node's user data on its next poll.
	wait("the registered node's VM to lose its identity from user data", func() bool {
		vm, ok := cloud.VM("ml", first)
		return ok && vm.UserData() == ""
	})
	// The platform evicts the Spot VM (policy Delete): it vanishes with
	// its agent and task.
	if err := cloud.Evict("ml", first); err != nil {
		t.Fatal(err)
	}
	wait("the task finished on a replacement", func() bool {
		task, err := st.GetTask(ctx, "train", "t")
		return err == nil && task.State == store.TaskSucceeded
	})
	task, _ := st.GetTask(ctx, "train", "t")
	if task.Node == first || task.Evictions != 1 || task.Failures != 0 {
		t.Errorf("task on %s (first %s), evictions %d, failures %d; want a new node, 1 eviction, no failure", task.Node, first, task.Evictions, task.Failures)
	}
	nodes, _ := st.ListNodes(ctx)
	for _, n := range nodes {
		if n.Name == first && n.State != store.NodePreempted {
			t.Errorf("evicted node %s is %s (%s), want preempted", n.Name, n.State, n.Reason)
		}
	}
}
