package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/client"
)

// haGateway is one `spotml gateway --store` process of a test.
type haGateway struct {
	url  string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan struct{}
}

// startGateway starts `spotml gateway` over dsn as a process of its own
// and waits for it to listen.
func startGateway(t *testing.T, dsn, data, id string) *haGateway {
	t.Helper()
	cmd := exec.Command(os.Args[0], "gateway", "--store", dsn, "--data", data, "--addr", "127.0.0.1:0", "--id", id, "--log-level", "debug")
	cmd.Env = append(os.Environ(), runMainEnv+"=1")
	g := &haGateway{cmd: cmd, log: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stderr = g.log
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(g.done) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-g.done
	})
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if u, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "spotml gateway:"); ok {
			g.url = strings.TrimSpace(u)
			break
		}
	}
	go io.Copy(io.Discard, out)
	if g.url == "" {
		t.Fatalf("gateway %s did not come up:\n%s", id, g.log)
	}
	return g
}

// load calls url's service through a gateway from two clients until stop
// is closed, counting answers and failures (a transport error or a non-200).
type load struct {
	ok, failed atomic.Int64
	mu         sync.Mutex
	firstErr   string
}

func (l *load) run(ctx context.Context, url string, stop <-chan struct{}, wg *sync.WaitGroup) {
	c := &http.Client{Timeout: 10 * time.Second}
	for range 2 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				case <-time.After(20 * time.Millisecond):
				}
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
				res, err := c.Do(req)
				if err == nil {
					io.Copy(io.Discard, res.Body)
					res.Body.Close()
					if res.StatusCode != http.StatusOK {
						err = fmt.Errorf("status %d", res.StatusCode)
					}
				}
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					l.failed.Add(1)
					l.mu.Lock()
					if l.firstErr == "" {
						l.firstErr = time.Now().Format("15:04:05.000") + " " + err.Error()
					}
					l.mu.Unlock()
					continue
				}
				l.ok.Add(1)
			}
		})
	}
}

// TestFailoverServiceUnderLoad: three `spotml up` instances over one
// PostgreSQL, each on an address of its own (no shared address in front:
// every restart takes a new port), agents that know the instances from
// their server list and heartbeats, and two `spotml gateway --store`
// instances. A service of two replicas is called steadily through both
// gateways while a checkpointing job runs and the leader is SIGKILLed
// every few seconds. No request fails at either gateway, the job
// completes with every output, no task has two attempts at once, and no
// node is lost (its agent moved to a live instance each time). Then one
// gateway is SIGKILLed under load: the other's clients see no failure.
// SPOTML_HA_LONG=1: a kill every 15 s, longer.
func TestFailoverServiceUnderLoad(t *testing.T) {
	dsn := cluster.DB(t)
	data := t.TempDir()
	ctx := t.Context()
	every, steps, within := 6*time.Second, 90, 120*time.Second
	if os.Getenv("SPOTML_HA_LONG") == "1" {
		every, steps, within = 15*time.Second, 450, 5*time.Minute
	}
	insts := make([]*haServer, 3)
	restarts := 0
	start := func(i int) {
		restarts++
		insts[i] = startInstance(t, "up", dsn, data, fmt.Sprintf("up%d-%d", i, restarts), "127.0.0.1:0", "--node-timeout", "10s")
	}
	for i := range insts {
		start(i)
	}
	token := func() string {
		b, _ := os.ReadFile(filepath.Join(data, "token"))
		return strings.TrimSpace(string(b))
	}
	// The CLI and this test reach the control plane through every
	// instance's URL, as the agents do.
	cl := func() *client.Client {
		var urls []string
		for _, in := range insts {
			urls = append(urls, in.url)
		}
		return client.New(strings.Join(urls, ","), token(), client.TryTimeout(2*time.Second))
	}
	model := filepath.Join(data, "blobs", "models", "echo", "model.txt")
	if err := os.MkdirAll(filepath.Dir(model), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(model, []byte("echo\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	yaml := fmt.Sprintf(`apiVersion: spotml/v1
kind: Pool
metadata: {name: cpu}
spec: {provider: local, priority: spot, instanceType: local-small, min: 0, max: 3, idleTimeout: 5m, capacity: {cpu: 2, memory: 2Gi}}
---
apiVersion: spotml/v1
kind: Service
metadata: {name: echo}
spec:
  model: {uri: models/echo/model.txt}
  runtime: {type: command, command: [sh, -c, 'exec python3 -m http.server "$PORT" --bind 127.0.0.1']}
  resources: {cpu: 1, memory: 64Mi}
  replicas: {min: 2, max: 2}
  placement: {tier: dev}
---
apiVersion: spotml/v1
kind: Job
metadata: {name: train}
spec:
  priority: spot
  count: 2
  template:
    command: |
%s    env: {STEPS: "%d"}
    checkpoint: {path: ckpt, interval: 300ms}
    outputFiles:
      - {pattern: "out/**", destination: "outputs/train/", upload: onSuccess}
    maxRetries: 0
    resources: {cpu: 1, memory: 64Mi}
`, indentLines(checkpointedTask, "      "), steps)
	file := filepath.Join(t.TempDir(), "all.yaml")
	if err := os.WriteFile(file, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	gws := []*haGateway{startGateway(t, dsn, data, "gw0"), startGateway(t, dsn, data, "gw1")}
	env := map[string]string{"SPOTML_SERVER": strings.Join(cl().Servers(), ","), "SPOTML_TOKEN": token(), "SPOTML_DATA": t.TempDir()}
	if err := run(ctx, []string{"apply", "-f", file}, func(k string) string { return env[k] }, io.Discard, io.Discard); err != nil {
		t.Fatalf("apply: %v", err)
	}
	waitFor(t, 90*time.Second, "both gateways to serve echo", func() bool {
		for _, g := range gws {
			res, err := http.Get(g.url + "/services/echo/")
			if err != nil {
				return false
			}
			res.Body.Close()
			if res.StatusCode != http.StatusOK {
				return false
			}
		}
		return true
	})

	lctx, stopAll := context.WithCancel(ctx)
	defer stopAll()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stopAll()
	loads := []*load{{}, {}}
	stops := []chan struct{}{make(chan struct{}), make(chan struct{})}
	for i, g := range gws {
		loads[i].run(lctx, g.url+"/services/echo/", stops[i], &wg)
	}

	job, kills := killLeadersUntilDone(t, within, every, insts, start, func() (api.Job, error) {
		var job api.Job
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		err := cl().Do(rctx, http.MethodGet, api.Prefix+"/jobs/train", nil, &job)
		return job, err
	}, func() string { return controlPlane(ctx, cl()).Leader })
	// A few more seconds of load past the last takeover.
	time.Sleep(2 * time.Second)
	for i, l := range loads {
		t.Logf("gateway %d through %d leader kills: %d answered, %d failed", i, kills, l.ok.Load(), l.failed.Load())
		if l.failed.Load() > 0 {
			t.Errorf("gateway %d dropped %d requests during the leader kills; first: %s", i, l.failed.Load(), l.firstErr)
		}
		if l.ok.Load() == 0 {
			t.Errorf("gateway %d answered nothing: the load did not run", i)
		}
	}
	checkJobThroughKills(t, job, kills, data, steps)
	var nodes []api.Node
	if err := cl().Do(ctx, http.MethodGet, api.Prefix+"/nodes", nil, &nodes); err != nil {
		t.Fatal(err)
	}
	// Every instance that launched a node is gone by now (each kill took
	// the leader, and the new ones listen on new ports): the agents that
	// still heartbeat found the new instances themselves.
	ready := 0
	for _, n := range nodes {
		switch {
		case n.State == "lost":
			t.Errorf("node %s was lost: its agent did not move to a live instance", n.Name)
		case n.State == "ready" && time.Since(n.HeartbeatAt) < 5*time.Second:
			ready++
		}
	}
	if ready == 0 {
		t.Errorf("no node heartbeats after %d leader kills: %+v", kills, nodes)
	}

	// A gateway killed under load: the other's clients see nothing.
	before := loads[1].ok.Load()
	gws[0].cmd.Process.Kill()
	<-gws[0].done
	close(stops[0])
	time.Sleep(3 * time.Second)
	close(stops[1])
	stopAll()
	wg.Wait()
	t.Logf("gateway 1 after gateway 0 was killed: %d more answered, %d failed in all", loads[1].ok.Load()-before, loads[1].failed.Load())
	if loads[1].failed.Load() > 0 {
		t.Errorf("gateway 1 dropped %d requests; first: %s", loads[1].failed.Load(), loads[1].firstErr)
	}
	if loads[1].ok.Load() == before {
		t.Errorf("gateway 1 answered nothing after gateway 0 was killed")
	}
}
