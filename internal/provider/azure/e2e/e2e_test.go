// Package e2e runs the azure provider with a real control plane against
// the SDK's fake (azurefake), where each "VM" runs its rendered start
// script on this machine: the script downloads a real spotml over
// loopback, reads its identity from a loopback metadata service and runs
// the real agent, which registers and runs a job's task. A platform
// eviction of the VM then requeues the task without spending a retry, and
// a replacement VM finishes it.
package e2e

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/resourcemanager/compute/armcompute/v7"

	azureprov "github.com/spotml/spotml/internal/provider/azure"
	"github.com/spotml/spotml/internal/provider/cloudtest"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

const sub = "00000000-1111-2222-3333-444444444444"

func TestEvictionRequeuesTask(t *testing.T) {
	cloudtest.NeedTools(t, "sh", "curl", "base64", "sed")
	bin := cloudtest.SpotmlBinary(t)
	bins := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, bin) }))
	defer bins.Close()

	cloud := startAzure(t)
	cloud.AddScaleSet("ml", "gpu", "westeurope", armcompute.OrchestrationModeFlexible)
	p := cloudtest.Listen(t)
	p.Start(azureprov.Name, cloud.provider(p, bins.URL+"/spotml"))
	st, ctx := p.Store, p.Ctx

	pool := azurePool("gpu", "gpu", "Standard_D2s_v5")
	pool.Spec.Priority, pool.Spec.Zones, pool.Spec.Min, pool.Spec.Max = spec.PrioritySpot, nil, 1, 1
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
		p.Wait(what, 90*time.Second, ok, cloud.vms.LogBoots)
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
	// Azure publishes a Preempt event in the VM's Scheduled Events: the
	// agent reports the notice, its task is stopped and requeued, and
	// once the node is drained the agent approves the event (POST
	// StartRequests), as Microsoft documents, so that Azure may evict it
	// before NotBefore.
	cloud.events.Set(first, time.Now().Add(30*time.Second), "")
	wait("the agent's notice at the control plane", func() bool {
		n, err := st.GetNode(ctx, first)
		return err == nil && !n.NoticeDeadline.IsZero()
	})
	wait("the agent to acknowledge the Preempt event once drained", func() bool {
		return len(cloud.events.Acknowledged(first)) > 0
	})
	if task, _ := st.GetTask(ctx, "train", "t"); task.Node == first && task.State == store.TaskRunning {
		t.Errorf("the agent acknowledged the eviction while its task still ran there")
	}
	// The platform evicts the Spot VM (policy Delete): it vanishes with
	// its agent.
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
