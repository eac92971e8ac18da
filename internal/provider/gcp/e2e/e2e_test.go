// Package e2e runs the gcp provider with a real control plane against
// gcpfake, served over loopback HTTP and called through the official
// Compute Engine client, where each "VM" runs its rendered startup script
// on this machine: the script writes the start script and the agent's
// unit, a systemctl stand-in runs the unit's ExecStart, and the start
// script downloads a real spotml over loopback, reads its identity from a
// loopback metadata server (Metadata-Flavor: Google) and runs the real
// agent, which registers and runs a job's task. `spotml evict` (the
// control plane's Evict) preempts the Spot VM through
// instances.simulateMaintenanceEvent: the agent reads instance/preempted
// as TRUE and reports the notice, the VM is deleted, the task is requeued
// without spending a retry and a replacement VM finishes it; the idle
// pool then scales in to no VMs.
package e2e

import (
	"context"
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

	"google.golang.org/api/option"

	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/notice"
	gcpprov "github.com/spotml/spotml/internal/provider/gcp"
	"github.com/spotml/spotml/internal/provider/gcp/gcpfake"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
)

const project = "ml-project-1"

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

// systemctl stands in for systemd on the "VMs": enable --now runs the
// unit's ExecStart (under SPOTML_ROOT) in the foreground.
const systemctl = `#!/bin/sh
case "$1" in
daemon-reload) exit 0 ;;
enable)
	[ "$2" = "--now" ] || exit 0
	cmd=$(sed -n 's/^ExecStart=//p' "$SPOTML_ROOT/etc/systemd/system/$3")
	exec "$SPOTML_ROOT$cmd" ;;
esac
echo "systemctl stand-in: $* not supported" >&2
exit 1
`

// vms runs each booted VM's startup script as a process group.
type vms struct {
	t    *testing.T
	dir  string
	imds string
	path string
	mu   sync.Mutex
	cmds map[string]*exec.Cmd
}

func (v *vms) boot(vm gcpfake.Instance) {
	script, ok := vm.Metadata(gcpprov.KeyStartup)
	if !ok {
		v.t.Errorf("VM %s has no startup-script", vm.Name())
		return
	}
	root := filepath.Join(v.dir, vm.Name())
	os.MkdirAll(root, 0o755)
	path := filepath.Join(root, "startup-script")
	os.WriteFile(path, []byte(script), 0o755)
	log, _ := os.OpenFile(filepath.Join(root, "boot.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	cmd := exec.Command("sh", path)
	cmd.Env = append(os.Environ(), "SPOTML_ROOT="+root, "SPOTML_IMDS="+notice.BaseURL(v.imds, vm.Name()), "PATH="+v.path+":"+os.Getenv("PATH"))
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

func (v *vms) end(vm gcpfake.Instance) {
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

func TestPreemptionRequeuesTaskThenScalesIn(t *testing.T) {
	for _, tool := range []string{"sh", "curl", "sed"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	bin := spotmlBinary(t)
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))

	bins := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, bin) }))
	defer bins.Close()

	cloud := gcpfake.New()
	cloud.NoticeFor = 3 * time.Second
	api := httptest.NewServer(cloud)
	defer api.Close()
	events := notice.NewServer(time.Now, log)
	imds := httptest.NewServer(metadataServer(cloud, events))
	defer imds.Close()
	fakebin := filepath.Join(dir, "bin")
	os.MkdirAll(fakebin, 0o755)
	os.WriteFile(filepath.Join(fakebin, "systemctl"), []byte(systemctl), 0o755)
	machines := &vms{t: t, dir: filepath.Join(dir, "vms"), imds: imds.URL, path: fakebin, cmds: map[string]*exec.Cmd{}}
	defer machines.stopAll()
	cloud.OnBoot = func(vm gcpfake.Instance) {
		events.Ensure(vm.Name(), notice.FormatGCP)
		events.Clear(vm.Name())
		machines.boot(vm)
	}
	cloud.OnNotice = func(vm gcpfake.Instance) { events.Set(vm.Name(), time.Now().Add(cloud.NoticeFor), "") }
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
	clients, err := gcpprov.NewClients(t.Context(), option.WithEndpoint(api.URL), option.WithoutAuthentication())
	if err != nil {
		t.Fatal(err)
	}
	defer clients.Close()
	prov := gcpprov.New(clients, gcpprov.Config{ServerURL: url, SpotmlURL: bins.URL + "/spotml", Interval: 200 * time.Millisecond}, log, time.Now)
	cp := control.New(st, map[string]control.Provider{gcpprov.Name: prov}, log, time.Now,
		control.Options{Interval: 200 * time.Millisecond, Retention: -1})
	srv := &http.Server{Handler: server.New(server.Config{Store: st, Blobs: blobs, Plane: cp, Evictor: cp, JoinToken: "join", Token: "admin",
		HeartbeatInterval: 200 * time.Millisecond, Log: log, Now: time.Now})}
	go srv.Serve(ln)
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); cp.Run(ctx) }()
	defer func() { cancel(); <-done }()

	pool := spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: "gpu"},
		Spec: spec.PoolSpec{Provider: spec.ProviderGCP, Priority: spec.PrioritySpot, InstanceType: "n1-standard-4", Min: 0, Max: 1,
			Zones: []string{"us-central1-a"}, IdleTimeout: spec.Duration{Duration: time.Second},
			Capacity: &spec.Resources{CPU: 2, Memory: 1 << 30},
			GCP:      &spec.GCPPool{Project: project, Image: "projects/debian-cloud/global/images/family/debian-12"}}}
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
				entries, _ := os.ReadDir(machines.dir)
				for _, e := range entries {
					b, _ := os.ReadFile(filepath.Join(machines.dir, e.Name(), "boot.log"))
					t.Logf("VM %s boot log:\n%s", e.Name(), b)
				}
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	var first string
	wait("the task running on a Compute Engine VM's agent", func() bool {
		task, err := st.GetTask(ctx, "train", "t")
		first = task.Node
		return err == nil && task.State == store.TaskRunning
	})
	// The runner removes a registered node's credential from metadata.
	wait("the registered node's VM to lose its credential from metadata", func() bool {
		vm, ok := cloud.Instance(project, "us-central1-a", first)
		_, has := vm.Metadata(gcpprov.KeyCredential)
		return ok && !has
	})
	// spotml evict: Compute Engine preempts the Spot VM (action DELETE).
	if err := cp.Evict(ctx, first, 0); err != nil {
		t.Fatal(err)
	}
	wait("the agent's preemption notice at the control plane", func() bool {
		n, err := st.GetNode(ctx, first)
		return err == nil && !n.NoticeDeadline.IsZero()
	})
	wait("the task finished on a replacement", func() bool {
		task, err := st.GetTask(ctx, "train", "t")
		return err == nil && task.State == store.TaskSucceeded
	})
	task, _ := st.GetTask(ctx, "train", "t")
	if task.Node == first || task.Evictions != 1 || task.Failures != 0 {
		t.Errorf("task on %s (first %s), evictions %d, failures %d; want a new node, 1 eviction, no failure", task.Node, first, task.Evictions, task.Failures)
	}
	if n, _ := st.GetNode(ctx, first); n.State != store.NodePreempted {
		t.Errorf("preempted node %s is %s (%s), want preempted", n.Name, n.State, n.Reason)
	}
	// Scale in: the idle replacement is removed and its VM deleted.
	wait("the pool scaled in to no VMs", func() bool {
		nodes, _ := st.ListNodes(ctx)
		for _, n := range nodes {
			if store.Live(n.State) {
				return false
			}
		}
		return len(cloud.Instances()) == 0
	})
}

// metadataServer answers as each VM's metadata server would under
// /nodes/{vm}/: computeMetadata/v1/instance/attributes/{key} from the fake
// cloud's instance metadata (with GCP's Metadata-Flavor check), the rest
// (preempted, its waits) from events.
func metadataServer(cloud *gcpfake.Cloud, events *notice.Server) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rest, ok := strings.CutPrefix(r.URL.Path, "/nodes/")
		name, path, _ := strings.Cut(rest, "/")
		if key, isAttr := strings.CutPrefix(path, "computeMetadata/v1/instance/attributes/"); ok && isAttr {
			w.Header().Set("Metadata-Flavor", "Google")
			if r.Header.Get("Metadata-Flavor") != "Google" {
				http.Error(w, "Missing Metadata-Flavor:Google header.", http.StatusForbidden)
				return
			}
			for _, vm := range cloud.Instances() {
				if v, found := vm.Metadata(key); found && vm.Name() == name {
					w.Write([]byte(v))
					return
				}
			}
			http.NotFound(w, r)
			return
		}
		events.ServeHTTP(w, r)
	})
}
