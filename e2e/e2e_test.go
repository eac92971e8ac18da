// Package e2e runs spotml as a user does: the real binary, `spotml up` with
// agent processes on loopback, the CLI, SQLite and a file blob store in a
// temp directory.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/proc"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "spotml-e2e-bin")
	if err != nil {
		panic(err)
	}
	binary = filepath.Join(dir, "spotml")
	out, err := exec.Command("go", "build", "-o", binary, "github.com/spotml/spotml/cmd/spotml").CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build spotml: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// cluster is one `spotml up` with its data directory.
type cluster struct {
	t    *testing.T
	data string
	addr string
	gw   string // gateway address
	cmd  *exec.Cmd
	logf *os.File
	args []string // more flags for spotml up
}

func newCluster(t *testing.T, args ...string) *cluster {
	t.Helper()
	return newClusterIn(t, t.TempDir(), args...)
}

// newClusterIn runs spotml up over the data directory data, with more
// flags for it.
func newClusterIn(t *testing.T, data string, args ...string) *cluster {
	t.Helper()
	c := &cluster{t: t, data: data, addr: freeAddr(t), gw: freeAddr(t), args: args}
	c.start()
	t.Cleanup(func() {
		c.stop(syscall.SIGINT)
		killAgents(c.data)
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(c.data, "up.log"))
			t.Logf("spotml up log (tail):\n%s", tail(string(b), 6000))
		}
	})
	return c
}

func (c *cluster) start() {
	c.t.Helper()
	f, err := os.OpenFile(filepath.Join(c.data, "up.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatal(err)
	}
	c.logf = f
	args := []string{"up", "--data", c.data, "--addr", c.addr, "--gateway-addr", c.gw,
		"--heartbeat", "200ms", "--reconcile-interval", "200ms", "--node-timeout", "5s"}
	c.cmd = exec.Command(binary, append(args, c.args...)...)
	c.cmd.Stdout, c.cmd.Stderr = f, f
	if err := c.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	waitFor(c.t, 20*time.Second, "control plane healthy", func() bool {
		resp, err := http.Get("http://" + c.addr + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
}

func (c *cluster) stop(sig syscall.Signal) {
	if c.cmd == nil || c.cmd.Process == nil {
		return
	}
	c.cmd.Process.Signal(sig)
	done := make(chan struct{})
	go func() { c.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		c.cmd.Process.Kill()
		<-done
	}
	c.logf.Close()
	c.cmd = nil
}

// cli runs the spotml CLI against this cluster.
func (c *cluster) cli(args ...string) (string, error) {
	cmd := exec.Command(binary, append([]string{"--data", c.data, "--server", "http://" + c.addr}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("spotml %s: %v: %s", strings.Join(args, " "), err, errb.String())
	}
	return out.String(), nil
}

func (c *cluster) mustCLI(args ...string) string {
	c.t.Helper()
	out, err := c.cli(args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

func (c *cluster) apply(yaml string) {
	c.t.Helper()
	f := filepath.Join(c.t.TempDir(), "spec.yaml")
	if err := os.WriteFile(f, []byte(yaml), 0o644); err != nil {
		c.t.Fatal(err)
	}
	c.mustCLI("apply", "-f", f)
}

func (c *cluster) job(name string) api.Job {
	c.t.Helper()
	var js []api.Job
	if err := json.Unmarshal([]byte(c.mustCLI("get", "jobs", name, "-o", "json")), &js); err != nil || len(js) != 1 {
		c.t.Fatalf("get job %s: %v", name, err)
	}
	return js[0]
}

func (c *cluster) nodes() []api.Node {
	c.t.Helper()
	var ns []api.Node
	if err := json.Unmarshal([]byte(c.mustCLI("get", "nodes", "-o", "json")), &ns); err != nil {
		c.t.Fatal(err)
	}
	return ns
}

func (c *cluster) events() []api.Event {
	c.t.Helper()
	var es []api.Event
	if err := json.Unmarshal([]byte(c.mustCLI("get", "events", "-o", "json")), &es); err != nil {
		c.t.Fatal(err)
	}
	return es
}

// nodeDir is where the local provider keeps a node's work directory
// (its disk, its agent's pid file): DATA/nodes/NAME. The API does not
// say: that is the provider's business.
func (c *cluster) nodeDir(name string) string { return filepath.Join(c.data, "nodes", name) }

func freeAddr(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// killAgents kills agent processes left from a data directory (a test that
// SIGKILLs the control plane leaves them running, as a crash would).
func killAgents(data string) {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte(data)) {
			continue
		}
		var pid int
		fmt.Sscanf(filepath.Base(filepath.Dir(p)), "%d", &pid)
		if pid > 0 && pid != os.Getpid() {
			syscall.Kill(-pid, syscall.SIGKILL)
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// counterTask counts to steps, one step every tick, keeping its position
// in the checkpoint directory; every attempt appends "start ATTEMPT STEP"
// to a history file there, which ends up in the outputs.
const counterTask = `
i=$(cat "$SPOTML_CHECKPOINT_DIR/step" 2>/dev/null || echo 0)
echo "attempt $SPOTML_ATTEMPT of $SPOTML_JOB/$SPOTML_TASK (index $SPOTML_TASK_INDEX) on $SPOTML_NODE starts at step $i"
echo "start $SPOTML_ATTEMPT $i" >> "$SPOTML_CHECKPOINT_DIR/history"
trap 'echo "TERM at step $i"; exit 143' TERM
while [ "$i" -lt %d ]; do sleep %s; i=$((i+1)); echo "$i" > "$SPOTML_CHECKPOINT_DIR/step.tmp"; mv "$SPOTML_CHECKPOINT_DIR/step.tmp" "$SPOTML_CHECKPOINT_DIR/step"; done
mkdir -p "out/$SPOTML_TASK" && cp "$SPOTML_CHECKPOINT_DIR/history" "out/$SPOTML_TASK/history.txt" && echo "$SPOTML_TASK done" > "out/$SPOTML_TASK/result.txt"
`

func jobYAML(name, selector string, count, steps int, tick string) string {
	script := fmt.Sprintf(counterTask, steps, tick)
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: spotml/v1\nkind: Job\nmetadata:\n  name: %s\nspec:\n  %s\n  count: %d\n  template:\n    command: |\n", name, selector, count)
	for _, line := range strings.Split(strings.TrimSpace(script), "\n") {
		b.WriteString("      " + line + "\n")
	}
	b.WriteString(`    checkpoint: {path: ckpt, interval: 300ms}
    outputFiles:
      - {pattern: "out/**", destination: "outputs/` + name + `/", upload: onSuccess}
    maxRetries: 0
    resources: {cpu: 1, memory: 256Mi}
`)
	return b.String()
}

func spotPool(name, format string, max int) string {
	return fmt.Sprintf(`apiVersion: spotml/v1
kind: Pool
metadata: {name: %s}
spec:
  provider: local
  priority: spot
  instanceType: local-small
  zones: ["1", "2"]
  min: 0
  max: %d
  local:
    notice: 3s
    noticeFormat: %s
  idleTimeout: 30s
---
`, name, max, format)
}

// TestBatchSurvivesEvictions evicts nodes of three spot pools, one per
// notice format (Azure, AWS, GCP), while a job's tasks run on them. Every
// task must succeed although maxRetries is 0, and a task that was evicted
// must have resumed from its checkpoint, not from zero.
func TestBatchSurvivesEvictions(t *testing.T) {
	c := newCluster(t)
	c.apply(spotPool("spot-az", "azure", 1) + spotPool("spot-aws", "aws", 1) + spotPool("spot-gcp", "gcp", 1) +
		jobYAML("counter", "priority: spot", 6, 40, "0.15"))

	waitFor(t, 30*time.Second, "tasks running on every pool", func() bool {
		pools := map[string]bool{}
		for _, n := range c.nodes() {
			if n.Tasks > 0 && n.State == api.NodeReady {
				pools[n.Pool] = true
			}
		}
		return len(pools) == 3
	})
	time.Sleep(1500 * time.Millisecond) // let the tasks make progress worth keeping
	evicted := map[string]bool{}
	for _, n := range c.nodes() {
		if n.Tasks > 0 && !evicted[n.Pool] {
			evicted[n.Pool] = true
			c.mustCLI("evict", n.Name, "--notice", "2s")
		}
	}
	if len(evicted) != 3 {
		t.Fatalf("evicted nodes of %d pools, want 3", len(evicted))
	}

	if out, err := c.cli("wait", "job", "counter", "--timeout", "120s", "-q"); err != nil {
		t.Fatalf("job did not succeed: %v\n%s\n%s", err, out, c.mustCLI("get", "tasks", "counter"))
	}
	j := c.job("counter")
	// Each pool's agent read the notice in its own format and drained.
	drained := map[string]bool{}
	for _, e := range c.events() {
		if e.Kind == "Draining" {
			drained[strings.SplitN(strings.TrimPrefix(e.Object, "node/"), "-", 3)[1]] = true
		}
	}
	for _, f := range []string{"az", "aws", "gcp"} {
		if !drained[f] {
			t.Errorf("no node of pool spot-%s drained on its notice; events: %v", f, drained)
		}
	}
	var tasks []api.Task
	json.Unmarshal([]byte(c.mustCLI("get", "tasks", "counter", "-o", "json")), &tasks)
	evictions := 0
	for _, task := range tasks {
		evictions += task.Evictions
		if task.State != api.TaskSucceeded || task.Failures != 0 {
			t.Errorf("%s: state %s, failures %d; want succeeded with no failures used", task.Name, task.State, task.Failures)
		}
		if task.Attempt != task.Evictions+1 {
			t.Errorf("%s: attempt %d after %d evictions", task.Name, task.Attempt, task.Evictions)
		}
		out := filepath.Join(c.data, "blobs", "outputs", "counter", "out", task.Name)
		hist, err := os.ReadFile(filepath.Join(out, "history.txt"))
		if err != nil {
			t.Fatalf("outputs not in blob storage: %v", err)
		}
		starts := strings.Split(strings.TrimSpace(string(hist)), "\n")
		if len(starts) != task.Attempt {
			t.Errorf("%s: history %q has %d starts, want %d", task.Name, hist, len(starts), task.Attempt)
		}
		if task.Evictions > 0 && strings.HasSuffix(starts[len(starts)-1], " 0") {
			t.Errorf("%s: last attempt started from zero after eviction: %q", task.Name, hist)
		}
		if own, err := os.ReadFile(filepath.Join(out, "result.txt")); err != nil || !strings.Contains(string(own), "done") {
			t.Errorf("result.txt: %q %v", own, err)
		}
	}
	if evictions < 3 {
		t.Errorf("tasks saw %d evictions, want at least 3", evictions)
	}
	if len(j.Tasks) != 6 {
		t.Errorf("job has %d tasks", len(j.Tasks))
	}
	// Every evicted task resumed from its checkpoint: its logs show a later
	// attempt starting past step 0.
	for _, task := range tasks {
		if task.Evictions == 0 {
			continue
		}
		logs := c.mustCLI("logs", "counter/"+task.Name)
		last := logs[strings.LastIndex(logs, "attempt "):]
		if strings.Contains(last, "starts at step 0\n") {
			t.Errorf("%s restarted from zero after eviction:\n%s", task.Name, logs)
		}
		if !strings.Contains(logs, "----- attempt 1 -----") || !strings.Contains(logs, "TERM at step") {
			t.Errorf("%s logs lack the first attempt or its SIGTERM:\n%s", task.Name, logs)
		}
	}
}

// TestControlPlaneKilled SIGKILLs `spotml up` in the middle of a job and
// starts it again over the same data directory: nothing is lost and the
// job completes.
func TestControlPlaneKilled(t *testing.T) {
	c := newCluster(t)
	c.apply(spotPool("spot-a", "azure", 2) + jobYAML("survivor", "pool: spot-a", 3, 30, "0.2"))
	waitFor(t, 30*time.Second, "tasks running", func() bool { return c.job("survivor").Counts[api.TaskRunning] == 3 })
	time.Sleep(time.Second)
	c.stop(syscall.SIGKILL)
	time.Sleep(3 * time.Second) // the tasks go on and finish while the control plane is away
	c.start()
	if out, err := c.cli("wait", "job", "survivor", "--timeout", "90s", "-q"); err != nil {
		t.Fatalf("job did not complete after restart: %v\n%s\n%s", err, out, c.mustCLI("get", "tasks", "survivor"))
	}
	for _, task := range c.job("survivor").Tasks {
		if task.State != api.TaskSucceeded || task.Failures != 0 {
			t.Errorf("%s: %s with %d failures", task.Name, task.State, task.Failures)
		}
	}
	if _, err := os.Stat(filepath.Join(c.data, "blobs", "outputs", "survivor", "out", "task-0", "result.txt")); err != nil {
		t.Errorf("outputs lost: %v", err)
	}
	// A job submitted before the crash and one after both run.
	c.apply(jobYAML("after", "pool: spot-a", 1, 2, "0.1"))
	c.mustCLI("wait", "job", "after", "--timeout", "60s", "-q")
}

// TestWaitFailsAndAuth: a failing task uses its retries and then fails the
// job (wait exits non-zero); the API refuses requests without the token.
func TestWaitFailsAndAuth(t *testing.T) {
	c := newCluster(t)
	c.apply(spotPool("spot-a", "aws", 1) + `apiVersion: spotml/v1
kind: Job
metadata: {name: broken}
spec:
  pool: spot-a
  tasks:
    - name: boom
      command: ["/bin/sh", "-c", "echo attempt $SPOTML_ATTEMPT >&2; exit 3"]
      maxRetries: 2
      resources: {cpu: 1}
`)
	_, err := c.cli("wait", "job", "broken", "--timeout", "60s", "-q")
	if err == nil {
		t.Fatal("wait succeeded on a failing job")
	}
	var ee *exec.ExitError
	if !strings.Contains(err.Error(), "exit status 1") {
		t.Errorf("wait error %v, want exit status 1", err)
	}
	_ = ee
	j := c.job("broken")
	if j.State != api.JobFailed || j.Tasks[0].Failures != 3 || j.Tasks[0].Attempt != 3 {
		t.Errorf("job %s, failures %d, attempt %d; want failed after 3 attempts", j.State, j.Tasks[0].Failures, j.Tasks[0].Attempt)
	}
	stderr := c.mustCLI("logs", "broken/boom", "--stderr")
	for a := 1; a <= 3; a++ {
		if !strings.Contains(stderr, fmt.Sprintf("attempt %d", a)) {
			t.Errorf("stderr lacks attempt %d:\n%s", a, stderr)
		}
	}

	for _, path := range []string{"/api/v1/jobs", "/api/v1/nodes", "/api/v1/nope"} {
		resp, err := http.Get("http://" + c.addr + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusUnauthorized {
			t.Errorf("GET %s without token: %d, want 401", path, resp.StatusCode)
		}
	}
	// Prometheus metrics, no token needed.
	resp, err := http.Get("http://" + c.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	var mb bytes.Buffer
	mb.ReadFrom(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`spotml_tasks{state="failed"} 1`, `spotml_jobs{state="failed"} 1`, `spotml_cost_dollars{pool="spot-a",priority="spot"}`} {
		if !strings.Contains(mb.String(), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	// Bad input names the field and changes nothing.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(bad, []byte("apiVersion: spotml/v1\nkind: Pool\nmetadata: {name: p2}\nspec:\n  provider: local\n  priority: spot\n  instanceType: local-small\n  max: 2\n  evictionRat: 3\n"), 0o644)
	_, err = c.cli("apply", "-f", bad)
	if err == nil || !strings.Contains(err.Error(), "line 9") || !strings.Contains(err.Error(), "evictionRat") {
		t.Errorf("bad apply error: %v", err)
	}
	if out := c.mustCLI("get", "pools", "-o", "name"); strings.Contains(out, "p2") {
		t.Errorf("bad pool stored: %s", out)
	}
	_ = context.Background
}

// TestDeallocateAndLostNode: in a deallocate pool an evicted node comes back
// under the same name with its disk; a node whose agent dies without notice
// is found lost by its missing heartbeats and its task resumes elsewhere from
// the last periodic checkpoint, without using a retry.
func TestDeallocateAndLostNode(t *testing.T) {
	c := newCluster(t)
	c.apply(strings.Replace(spotPool("spot-d", "gcp", 1), "idleTimeout: 30s", "idleTimeout: 30s\n  evictionPolicy: deallocate", 1) +
		jobYAML("dealloc", "pool: spot-d", 1, 40, "0.15"))
	var node api.Node
	waitFor(t, 30*time.Second, "task running", func() bool {
		for _, n := range c.nodes() {
			if n.Tasks > 0 {
				node = n
				return true
			}
		}
		return false
	})
	marker := filepath.Join(c.nodeDir(node.Name), "disk-marker")
	if err := os.WriteFile(marker, []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	c.mustCLI("evict", node.Name, "--notice", "2s")
	waitFor(t, 30*time.Second, "node restarted", func() bool {
		for _, n := range c.nodes() {
			if n.Name == node.Name && n.Incarnation == 2 && n.State == api.NodeReady {
				return true
			}
		}
		return false
	})
	if b, err := os.ReadFile(marker); err != nil || string(b) != "kept" {
		t.Errorf("deallocated node lost its disk: %q %v", b, err)
	}
	for _, n := range c.nodes() {
		if n.Pool == "spot-d" && n.Name != node.Name {
			t.Errorf("a new node %s replaced the deallocated one", n.Name)
		}
	}

	// Now kill the agent of the node running the task, with no notice.
	var victim api.Node
	waitFor(t, 30*time.Second, "task running again", func() bool {
		for _, n := range c.nodes() {
			if n.Tasks > 0 {
				victim = n
				return true
			}
		}
		return false
	})
	time.Sleep(1500 * time.Millisecond)
	ids, err := proc.ReadFile(filepath.Join(c.nodeDir(victim.Name), "agent.pid"))
	if err != nil || len(ids) != 1 {
		t.Fatalf("agent of %s: %v %v", victim.Name, ids, err)
	}
	syscall.Kill(-ids[0].PID, syscall.SIGKILL)
	if out, err := c.cli("wait", "job", "dealloc", "--timeout", "90s", "-q"); err != nil {
		t.Fatalf("job did not complete: %v\n%s\n%s", err, out, c.mustCLI("get", "tasks", "dealloc"))
	}
	task := c.job("dealloc").Tasks[0]
	if task.Failures != 0 || task.Evictions != 2 || task.Attempt != 3 {
		t.Errorf("task: attempt %d, evictions %d, failures %d; want 3, 2, 0", task.Attempt, task.Evictions, task.Failures)
	}
	outcomes := []string{}
	for _, a := range task.Attempts {
		outcomes = append(outcomes, a.Outcome)
	}
	if strings.Join(outcomes, ",") != "preempted,lost,succeeded" {
		t.Errorf("attempt outcomes %v, want preempted,lost,succeeded", outcomes)
	}
	hist, _ := os.ReadFile(filepath.Join(c.data, "blobs", "outputs", "dealloc", "out", "task-0", "history.txt"))
	for i, line := range strings.Split(strings.TrimSpace(string(hist)), "\n")[1:] {
		if strings.HasSuffix(line, " 0") {
			t.Errorf("attempt %d started from zero: %q", i+2, hist)
		}
	}
	lost := false
	for _, e := range c.events() {
		if e.Kind == "Lost" && e.Object == "node/"+victim.Name {
			lost = true
		}
	}
	if !lost {
		t.Errorf("no Lost event for %s", victim.Name)
	}
}
