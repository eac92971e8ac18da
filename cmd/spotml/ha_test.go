package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/client"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/postgres"
)

// runMainEnv, set to 1, makes this test binary run spotml's main.
const runMainEnv = "SPOTML_TEST_RUN_MAIN"

// haServer is one `spotml server` process of a test's control plane.
type haServer struct {
	id   string
	url  string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
}

// startServer starts `spotml server` over dsn as a process of its own
// (this test binary as spotml) and waits for its API.
func startServer(t *testing.T, dsn, data, id, addr string, extra ...string) *haServer {
	t.Helper()
	return startInstance(t, "server", dsn, data, id, addr, extra...)
}

// startInstance is startServer for `spotml server` or `spotml up`.
func startInstance(t *testing.T, command, dsn, data, id, addr string, extra ...string) *haServer {
	t.Helper()
	args := append([]string{command, "--store", dsn, "--data", data, "--addr", addr, "--gateway-addr", "",
		"--instance-id", id, "--lease-ttl", "1s", "--reconcile-interval", "100ms", "--node-timeout", "2s", "--log-level", "debug"}, extra...)
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	s := &haServer{id: id, cmd: cmd, log: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = s.log
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(s.done) }()
	t.Cleanup(s.stop)
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if u, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "API:"); ok {
			s.url = strings.TrimSpace(u)
			break
		}
	}
	go io.Copy(io.Discard, out)
	if s.url == "" {
		t.Fatalf("server %s did not come up:\n%s", id, s.log)
	}
	return s
}

// stop stops the instance gracefully (a stopping `spotml up` ends its
// local nodes, whose agents would outlive it), and kills it if it takes
// longer than 15 s.
func (s *haServer) stop() {
	s.cmd.Process.Signal(syscall.SIGCONT)
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		s.kill()
	}
}

func (s *haServer) kill() {
	s.cmd.Process.Signal(syscall.SIGCONT)
	s.cmd.Process.Kill()
	<-s.done
}

func (s *haServer) client(t *testing.T, data string) *client.Client {
	token, err := os.ReadFile(filepath.Join(data, "token"))
	if err != nil {
		t.Fatal(err)
	}
	return client.New(s.url, strings.TrimSpace(string(token)))
}

// controlPlane asks s who leads; the zero value when it cannot answer.
func controlPlane(ctx context.Context, cl *client.Client) api.ControlPlane {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var cp api.ControlPlane
	cl.Do(ctx, http.MethodGet, api.Prefix+"/controlplane", nil, &cp)
	return cp
}

// metric reads one counter from s's /metrics.
func metric(t *testing.T, s *haServer, name string) float64 {
	t.Helper()
	res, err := http.Get(s.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("%s: no %s in /metrics", s.id, name)
	}
	v, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", within, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// silentNodes records a ready node whose agent was last heard an hour ago
// every 100ms until ctx ends, straight in the store: each is work for the
// leader's liveness check (an EndNode, a fenced write), so that the
// leader writes all the time.
func silentNodes(ctx context.Context, t *testing.T, dsn string) {
	st, err := postgres.Open(ctx, dsn, func() time.Time { return time.Now().Add(-time.Hour) })
	if err != nil {
		t.Error(err)
		return
	}
	defer st.Close()
	for i := 0; ctx.Err() == nil; i++ {
		name := fmt.Sprintf("silent-%d", i)
		n := store.Node{Name: name, Pool: "cpu", Priority: spec.PrioritySpot, InstanceType: "local-small",
			Capacity: spec.Resources{CPU: 1, Memory: 1 << 30}}
		if err := st.CreateNode(ctx, n); err == nil {
			st.Heartbeat(ctx, name, true)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// TestLeaderFencedAfterPause: the leader is stopped (SIGSTOP) until its
// lease has expired and a successor has taken over and written; resumed
// (SIGCONT), it commits no write (the successor keeps the lease at its
// term, and the old leader's committed writes do not grow), its attempts
// are refused, and it steps down at once.
func TestLeaderFencedAfterPause(t *testing.T) {
	dsn := cluster.DB(t)
	data := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	a := startServer(t, dsn, data, "a", "127.0.0.1:0")
	ca := a.client(t, data)
	waitFor(t, 10*time.Second, "a to lead", func() bool { return controlPlane(ctx, ca).Leader == "a" })
	b := startServer(t, dsn, data, "b", "127.0.0.1:0")
	cb := b.client(t, data)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { silentNodes(ctx, t, dsn) })
	defer cancel()

	waitFor(t, 10*time.Second, "a to end silent nodes", func() bool { return metric(t, a, "spotml_leader_writes_total") >= 3 })
	wrote := metric(t, a, "spotml_leader_writes_total")
	if err := a.cmd.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var cp api.ControlPlane
	waitFor(t, 15*time.Second, "b to take over", func() bool { cp = controlPlane(ctx, cb); return cp.Leader == "b" })
	if cp.Term < 2 {
		t.Fatalf("b leads at term %d, want > a's", cp.Term)
	}
	waitFor(t, 10*time.Second, "b to act", func() bool { return metric(t, b, "spotml_leader_writes_total") >= 3 })

	resumed := time.Now()
	if err := a.cmd.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 3*time.Second, "a to step down", func() bool {
		return strings.Contains(a.log.String(), `msg="stepped down" instance=a term=1`)
	})
	t.Logf("a stepped down %s after SIGCONT", time.Since(resumed).Round(time.Millisecond))
	time.Sleep(2 * time.Second) // a's loops would have run many passes by now
	after := controlPlane(ctx, cb)
	if after.Leader != "b" || after.Term != cp.Term {
		t.Errorf("lease after a resumed: %s at term %d, want b at %d", after.Leader, after.Term, cp.Term)
	}
	// A commit of a's that was already on its way to the database when
	// it stopped (its COMMIT sent) may be counted after it resumed: it
	// landed before b's takeover, which waits for a's open writes. The
	// leader's loops write concurrently (reconcile passes, sampling, the
	// providers' markets, repricing, batch listing), so each may have had
	// one on its way; every write a checks after it resumed is refused
	// (b holds the lease at a later term), and is counted as fenced.
	const leaderLoops = 5
	if now := metric(t, a, "spotml_leader_writes_total"); now > wrote+leaderLoops {
		t.Errorf("a committed %v leader writes after it was paused", now-wrote)
	}
	t.Logf("a's writes refused after resuming: %v", metric(t, a, "spotml_fenced_writes_total"))
	if strings.Contains(a.log.String(), `msg=leading instance=a term=`+strconv.FormatInt(cp.Term, 10)) {
		t.Errorf("a led at b's term")
	}
}

// checkpointedTask counts to STEPS, one step per 0.2 s, keeping the step
// in its checkpoint, and writes out/TASK/done with the count at the end.
const checkpointedTask = `c="$SPOTML_CHECKPOINT_DIR"; mkdir -p "$c"
i=$(cat "$c/step" 2>/dev/null || echo 0)
while [ "$i" -lt "$STEPS" ]; do sleep 0.2; i=$((i+1)); echo $i > "$c/step.tmp" && mv "$c/step.tmp" "$c/step"; done
mkdir -p "out/$SPOTML_TASK" && echo "$i" > "out/$SPOTML_TASK/done"
`

// TestFailoverUnderKills: three `spotml up` instances over one PostgreSQL
// (one shared data directory, as on one machine), local-provider agents,
// a checkpointing job. The leader is SIGKILLed every few seconds and
// restarted on its address (as a supervisor would), and a follower takes
// over each time. The job completes with every output, and no task ever
// had two attempts at once. SPOTML_HA_LONG=1: a kill every 15 s for two
// minutes, with a longer job.
func TestFailoverUnderKills(t *testing.T) {
	dsn := cluster.DB(t)
	data := t.TempDir()
	ctx := t.Context()
	every, tasks, steps, within := 6*time.Second, 4, 60, 90*time.Second
	if os.Getenv("SPOTML_HA_LONG") == "1" {
		every, tasks, steps, within = 15*time.Second, 6, 450, 5*time.Minute
	}
	var addrs []string
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addrs = append(addrs, ln.Addr().String())
		ln.Close()
	}
	insts := make([]*haServer, 3)
	restarts := 0
	start := func(i int) {
		restarts++
		insts[i] = startInstance(t, "up", dsn, data, fmt.Sprintf("up%d-%d", i, restarts), addrs[i], "--node-timeout", "10s")
	}
	for i := range insts {
		start(i)
	}
	yaml := fmt.Sprintf(`apiVersion: spotml/v1
kind: Pool
metadata: {name: cpu}
spec: {provider: local, priority: spot, instanceType: local-small, min: 0, max: 2, idleTimeout: 5m, capacity: {cpu: 2, memory: 2Gi}}
---
apiVersion: spotml/v1
kind: Job
metadata: {name: train}
spec:
  priority: spot
  count: %d
  template:
    command: |
%s    env: {STEPS: "%d"}
    checkpoint: {path: ckpt, interval: 300ms}
    outputFiles:
      - {pattern: "out/**", destination: "outputs/train/", upload: onSuccess}
    maxRetries: 0
    resources: {cpu: 1, memory: 64Mi}
`, tasks, indentLines(checkpointedTask, "      "), steps)
	file := filepath.Join(t.TempDir(), "train.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	token, _ := os.ReadFile(filepath.Join(data, "token"))
	env := map[string]string{"SPOTML_SERVER": insts[0].url, "SPOTML_TOKEN": strings.TrimSpace(string(token)), "SPOTML_DATA": t.TempDir()}
	if err := run(ctx, []string{"apply", "-f", file}, func(k string) string { return env[k] }, io.Discard, io.Discard); err != nil {
		t.Fatalf("apply: %v", err)
	}

	job, kills := killLeadersUntilDone(t, within, every, insts, start, func() (api.Job, error) {
		var job api.Job
		var err error
		for _, in := range insts {
			c := client.New(in.url, strings.TrimSpace(string(token)))
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			err = c.Do(rctx, http.MethodGet, api.Prefix+"/jobs/train", nil, &job)
			cancel()
			if err == nil {
				break
			}
		}
		return job, err
	}, func() string {
		for _, in := range insts {
			if cp := controlPlane(ctx, client.New(in.url, strings.TrimSpace(string(token)))); cp.Leader != "" {
				return cp.Leader
			}
		}
		return ""
	})
	checkJobThroughKills(t, job, kills, data, steps)
}

// killLeadersUntilDone polls the job (through whichever instance
// answers) until it ends, SIGKILLing the leader every interval and
// starting a fresh instance in its slot, as a supervisor would. It
// returns the ended job and the number of kills.
func killLeadersUntilDone(t *testing.T, within, every time.Duration, insts []*haServer, start func(int), job func() (api.Job, error), leader func() string) (api.Job, int) {
	t.Helper()
	var j api.Job
	deadline := time.Now().Add(within)
	kills := 0
	next := time.Now().Add(every)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("job not done after %s and %d kills: %+v", within, kills, j)
		}
		if got, err := job(); err == nil {
			j = got
			if j.State == "succeeded" || j.State == "failed" {
				return j, kills
			}
		}
		if time.Now().After(next) {
			l := leader()
			for i, in := range insts {
				if in.id == l {
					in.cmd.Process.Kill()
					<-in.done
					kills++
					t.Logf("killed leader %s (%s)", l, in.url)
					start(i)
				}
			}
			next = time.Now().Add(every)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkJobThroughKills checks that the checkpointed job (see
// checkpointedTask) succeeded through at least two leader kills, that
// every task's output counts all its steps, and that no task ever had
// two attempts at once.
func checkJobThroughKills(t *testing.T, job api.Job, kills int, data string, steps int) {
	t.Helper()
	if job.State != "succeeded" {
		t.Fatalf("job %s after %d kills: %+v", job.State, kills, job)
	}
	if kills < 2 {
		t.Errorf("only %d leader kills during the job: the test did not test failover", kills)
	}
	for _, tk := range job.Tasks {
		// destination + the file's path under the work directory
		b, err := os.ReadFile(filepath.Join(data, "blobs", "outputs", "train", "out", tk.Name, "done"))
		if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(steps) {
			t.Errorf("task %s output: %q, %v", tk.Name, b, err)
		}
		for i, a := range tk.Attempts {
			for _, b := range tk.Attempts[i+1:] {
				aEnd, bEnd := a.EndedAt, b.EndedAt
				if aEnd.IsZero() {
					aEnd = time.Now()
				}
				if bEnd.IsZero() {
					bEnd = time.Now()
				}
				if a.StartedAt.Before(bEnd) && b.StartedAt.Before(aEnd) {
					t.Errorf("task %s: attempts %d (%s) and %d (%s) overlap", tk.Name, a.Attempt, a.Node, b.Attempt, b.Node)
				}
			}
		}
	}
	t.Logf("job succeeded through %d leader kills", kills)
}

func indentLines(s, pre string) string {
	var b strings.Builder
	for _, l := range strings.SplitAfter(s, "\n") {
		if l != "" {
			b.WriteString(pre + l)
		}
	}
	return b.String()
}
