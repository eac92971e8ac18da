package e2e

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/kubetest"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// counterTask counts to steps, one step every tick, keeping its position
// in the checkpoint directory; every attempt appends "start ATTEMPT STEP"
// to a history file there, which ends up in the outputs.
const counterTask = `
i=$(cat "$SPOTML_CHECKPOINT_DIR/step" 2>/dev/null || echo 0)
echo "attempt $SPOTML_ATTEMPT of $SPOTML_TASK on $SPOTML_NODE starts at step $i"
echo "start $SPOTML_ATTEMPT $i" >> "$SPOTML_CHECKPOINT_DIR/history"
trap 'echo "TERM at step $i"; exit 143' TERM
while [ "$i" -lt %d ]; do sleep %s; i=$((i+1)); echo "$i" > "$SPOTML_CHECKPOINT_DIR/step.tmp"; mv "$SPOTML_CHECKPOINT_DIR/step.tmp" "$SPOTML_CHECKPOINT_DIR/step"; done
mkdir -p "out/$SPOTML_TASK" && cp "$SPOTML_CHECKPOINT_DIR/history" "out/$SPOTML_TASK/history.txt" && echo "$SPOTML_TASK done" > "out/$SPOTML_TASK/result.txt"
`

// counterJob is a job of count counter tasks on pool, checkpointing every
// 300ms, no retries allowed, outputs uploaded to outputs/NAME/.
func counterJob(t *testing.T, name, pool string, count, steps int, tick string) spec.Job {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: spotml/v1\nkind: Job\nmetadata:\n  name: %s\nspec:\n  pool: %s\n  count: %d\n  template:\n    command: |\n", name, pool, count)
	for _, line := range strings.Split(strings.TrimSpace(fmt.Sprintf(counterTask, steps, tick)), "\n") {
		b.WriteString("      " + line + "\n")
	}
	b.WriteString(`    checkpoint: {path: ckpt, interval: 300ms}
    outputFiles:
      - {pattern: "out/**", destination: "outputs/` + name + `/", upload: onSuccess}
    maxRetries: 0
    resources: {cpu: 1, memory: 256Mi}
`)
	docs, err := spec.Parse([]byte(b.String()))
	if err != nil {
		t.Fatal(err)
	}
	return *docs[0].Job
}

func waitJob(t *testing.T, st *sqlstore.Store, name, what string, timeout time.Duration, ok func(store.Job) bool) store.Job {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		j, err := st.GetJob(t.Context(), name)
		if err != nil {
			t.Fatal(err)
		}
		if ok(j) {
			return j
		}
		if time.Now().After(deadline) {
			for _, task := range j.Tasks {
				t.Logf("task %s: %s on %s attempt %d evictions %d failures %d: %s", task.Name, task.State, task.Node, task.Attempt, task.Evictions, task.Failures, task.Message)
			}
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestCheckpointedJobOnCluster runs a checkpointing job of six tasks on a
// spot pool of six cluster nodes, one of them the real kubelet's (its task
// runs in a real container), and gives each node a different platform
// signal at once: a Karpenter disruption taint, an AWS Node Termination
// Handler spot-interruption taint, a drain (cordon, then the Eviction API)
// of the real kubelet's node, GKE's graceful node shutdown (DisruptionTarget
// TerminationByKubelet on the pod), the Node deleted, and the node's machine
// dying without a word. Every task is requeued without spending a retry
// (maxRetries 0), resumes from its last checkpoint on a spare spot node
// (the control plane restarted while they are being replaced), and
// the job completes with every output in the blob store.
func TestCheckpointedJobOnCluster(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{RealKubelet: true})
	ctx := t.Context()
	setUp(t, c, nil)
	// The real kubelet's node is a spot node too.
	err := c.UpdateNode(ctx, kubetest.RealNodeName, func(n *corev1.Node) {
		for k, v := range karpenterNode("", "spot", "g5.xlarge", "us-east-1c").Labels {
			n.Labels[k] = v
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	addNodes(t, c, karpenterNode("spot-1", "spot", "g5.xlarge", "us-east-1a"), karpenterNode("spot-2", "spot", "g5.xlarge", "us-east-1b"),
		karpenterNode("spot-3", "spot", "g5.xlarge", "us-east-1a"), karpenterNode("spot-4", "spot", "g5.xlarge", "us-east-1b"),
		karpenterNode("spot-5", "spot", "g5.xlarge", "us-east-1a"))

	// The control plane listens on the real node's address, which the real
	// kubelet's pods reach through their bridge and the played nodes' pods
	// (in the test's namespace) directly.
	dir := t.TempDir()
	ln, err := net.Listen("tcp", net.JoinHostPort(c.RealNodeIP(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	// A node whose agent falls silent is lost after 20s (the machine that
	// died without notice): long enough that a drained agent's pod ends
	// (the node preempted) before its silence counts, on a loaded machine
	// too (10s was not, at a load average of 10-50).
	// Checkpoints and outputs go to S3, which every pod reaches.
	blobURL, env := startS3(t, c.RealNodeIP())
	p := startPlane(t, dir, c, ln, planeConfig{Options: control.Options{NodeTimeout: 20 * time.Second}, BlobURL: blobURL, AgentEnv: env})
	pool := kubePool("spot", spec.PrioritySpot, 12, 10*time.Second)
	pool.Default()
	if err := pool.Validate(); err != nil {
		t.Fatal(err)
	}
	job := counterJob(t, "ckpt", "spot", 6, 80, "0.2")
	if _, err := p.st.Apply(ctx, []spec.Pool{pool}, []spec.Job{job}); err != nil {
		t.Fatal(err)
	}

	// Every task running, one per cluster node.
	j := waitJob(t, p.st, "ckpt", "six tasks running on six cluster nodes", 120*time.Second, func(j store.Job) bool {
		return j.Counts[store.TaskRunning] == 6
	})
	hostOf := map[string]string{} // spotml node → cluster node
	for _, n := range waitNode(t, p.st, "every task's node placed", 30*time.Second, func(ns []store.Node) bool {
		for _, n := range ns {
			if store.Live(n.State) && n.Host == "" {
				return false
			}
		}
		return true
	}) {
		hostOf[n.Name] = n.Host
	}
	taskOn := map[string]store.Task{} // cluster node → its task
	for _, task := range j.Tasks {
		taskOn[hostOf[task.Node]] = task
	}
	if len(taskOn) != 6 || taskOn[kubetest.RealNodeName].Name == "" {
		t.Fatalf("tasks on cluster nodes %v, want one on each of the six", hostOf)
	}
	// Spare spot nodes for the replacements, then progress worth keeping.
	addNodes(t, c, karpenterNode("spare-1", "spot", "g5.xlarge", "us-east-1a"), karpenterNode("spare-2", "spot", "g5.xlarge", "us-east-1b"),
		karpenterNode("spare-3", "spot", "g5.xlarge", "us-east-1a"), karpenterNode("spare-4", "spot", "g5.xlarge", "us-east-1b"),
		karpenterNode("spare-5", "spot", "g5.xlarge", "us-east-1a"), karpenterNode("spare-6", "spot", "g5.xlarge", "us-east-1b"))
	time.Sleep(3 * time.Second)

	type signal struct {
		name  string
		host  string
		apply func(host string, task store.Task) error
		// end is the spotml node's end state; notice, where not empty, is
		// in the node's Notice event (who saw the signal).
		end, notice string
	}
	signals := []signal{
		// First, while every agent pod is ready, so that the pool's
		// disruption budget allows one eviction.
		{name: "drain of the real kubelet's node", host: kubetest.RealNodeName, end: store.NodePreempted, notice: "seen by",
			apply: func(host string, task store.Task) error {
				if err := c.Cordon(ctx, host); err != nil {
					return err
				}
				return evictRetrying(ctx, c, "spotml", task.Node)
			}},
		{name: "Karpenter disruption taint", host: "spot-1", end: store.NodePreempted, notice: "karpenter.sh/disrupted taint",
			apply: func(host string, _ store.Task) error {
				return c.Taint(ctx, host, "karpenter.sh/disrupted", "", corev1.TaintEffectNoSchedule)
			}},
		{name: "NTH spot interruption taint", host: "spot-2", end: store.NodePreempted, notice: "aws-node-termination-handler/spot-itn taint",
			apply: func(host string, _ store.Task) error {
				return c.Taint(ctx, host, "aws-node-termination-handler/spot-itn", "", corev1.TaintEffectNoSchedule)
			}},
		{name: "DisruptionTarget TerminationByKubelet", host: "spot-3", end: store.NodePreempted, notice: "DisruptionTarget: TerminationByKubelet",
			apply: func(host string, task store.Task) error {
				return c.SetDisruptionTarget(ctx, "spotml", task.Node, "TerminationByKubelet")
			}},
		{name: "Node deleted", host: "spot-4", end: store.NodeLost,
			apply: func(host string, _ store.Task) error { return c.DeleteNode(ctx, host) }},
		{name: "node killed without notice", host: "spot-5", end: store.NodeLost,
			apply: func(host string, _ store.Task) error { return c.KillNode(host) }},
	}
	for _, s := range signals {
		task := taskOn[s.host]
		if err := s.apply(s.host, task); err != nil {
			t.Fatalf("%s on %s: %v", s.name, s.host, err)
		}
		t.Logf("%s: cluster node %s, spotml node %s, task %s", s.name, s.host, task.Node, task.Name)
	}

	// The control plane restarted mid-job, while the six tasks are being
	// requeued and their replacements launched: the new one takes up from
	// the store and from the cluster (its informers list what is there),
	// and nothing is lost: the checks below hold as without the restart.
	time.Sleep(2 * time.Second)
	addr := ln.Addr().String()
	p.cancel()
	t.Log("control plane stopped mid-job; starting it again")
	ln2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	p = startPlane(t, dir, c, ln2, planeConfig{Options: control.Options{NodeTimeout: 20 * time.Second}, BlobURL: blobURL, AgentEnv: env})

	j = waitJob(t, p.st, "ckpt", "the job succeeded", 150*time.Second, func(j store.Job) bool {
		return j.State == store.JobSucceeded || j.State == store.JobFailed
	})
	if j.State != store.JobSucceeded {
		t.Fatalf("job %s", j.State)
	}
	nodes, err := p.st.ListNodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]store.Node{}
	for _, n := range nodes {
		byName[n.Name] = n
	}
	blobs, err := blob.NewStore(blobURL)
	if err != nil {
		t.Fatal(err)
	}
	defer blobs.Close()
	tasks := map[string]store.Task{}
	for _, task := range j.Tasks {
		tasks[task.Name] = task
	}
	for _, s := range signals {
		t.Run(s.name, func(t *testing.T) {
			first := taskOn[s.host]
			task := tasks[first.Name]
			if task.State != store.TaskSucceeded || task.Failures != 0 {
				t.Errorf("task %s: %s with %d failures, want succeeded with no retry spent", task.Name, task.State, task.Failures)
			}
			if task.Evictions < 1 || task.Attempt != task.Evictions+1 {
				t.Errorf("task %s: attempt %d after %d evictions, want requeued by the signal", task.Name, task.Attempt, task.Evictions)
			}
			if n := byName[first.Node]; n.State != s.end {
				t.Errorf("node %s on %s ended %s (%s), want %s", n.Name, s.host, n.State, n.Reason, s.end)
			}
			if s.notice != "" {
				evs, err := p.st.ListEvents(ctx, store.EventFilter{Kind: "Notice", Of: "node/" + first.Node})
				if err != nil {
					t.Fatal(err)
				}
				if len(evs) == 0 || !strings.Contains(evs[0].Message, s.notice) {
					t.Errorf("node %s's notice events %+v, want one naming %q", first.Node, evs, s.notice)
				}
			}
			out := "outputs/ckpt/out/" + task.Name + "/"
			hist, err := blobs.ReadAll(ctx, out+"history.txt")
			if err != nil {
				t.Fatalf("outputs not in blob storage: %v", err)
			}
			starts := strings.Split(strings.TrimSpace(string(hist)), "\n")
			if len(starts) != task.Attempt {
				t.Errorf("history %q has %d starts, want %d", hist, len(starts), task.Attempt)
			}
			if last := starts[len(starts)-1]; strings.HasSuffix(last, " 0") {
				t.Errorf("the attempt after the signal started from zero, not from its checkpoint: %q", hist)
			}
			if res, err := blobs.ReadAll(ctx, out+"result.txt"); err != nil || strings.TrimSpace(string(res)) != task.Name+" done" {
				t.Errorf("result.txt = %q, %v", res, err)
			}
			t.Logf("task %s: history %q", task.Name, strings.Join(starts, "; "))
		})
	}
}

// evictRetrying evicts a pod through the Eviction API as `kubectl drain`
// does: a refusal by a disruption budget (429) is retried for a while.
func evictRetrying(ctx context.Context, c *kubetest.Cluster, ns, pod string) error {
	deadline := time.Now().Add(20 * time.Second)
	for {
		err := c.EvictPod(ctx, ns, pod)
		if err == nil || !apierrors.IsTooManyRequests(err) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
}
