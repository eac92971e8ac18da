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
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/notice"
	gcpprov "github.com/spotml/spotml/internal/provider/gcp"
	"github.com/spotml/spotml/internal/provider/gcp/gcpfake"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

const project = "ml-project-1"

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

func TestPreemptionRequeuesTaskThenScalesIn(t *testing.T) {
	c := startGCP(t)
	cloud, p := c.Cloud, c.p
	st, ctx, cp := p.Store, p.Ctx, p.Plane

	pool := gcpPool("gpu")
	pool.Spec.Priority, pool.Spec.Min, pool.Spec.Max = spec.PrioritySpot, 0, 1
	pool.Spec.IdleTimeout = spec.Duration{Duration: time.Second}
	pool.Spec.Capacity = &spec.Resources{CPU: 2, Memory: 1 << 30}
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
		p.Wait(what, 90*time.Second, ok, c.vms.LogBoots)
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
