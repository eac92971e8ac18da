package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/spotml/spotml/bench/cluster"
	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/store"
)

// measured is what one way of scoring measured.
type measured struct {
	span      span    // results, makespan, CPU of every process involved
	workerCPU float64 // of that, the workers' (spotml)
	upCPU     float64 // of that, spotml up's: control plane, API (this benchmark's polls too), simulated market
	agentCPU  float64 // of that, the agents'
	polls     int     // rounds of this benchmark's 3 API calls, counted in upCPU
	forced    int     // notices this benchmark gave (-evict-at)
	loop      time.Duration
	apply     time.Duration // spotml: the apply call (checks, the first page of the input queued)
	listed    time.Duration // spotml: from the apply until the whole input was queued
	load      string        // load average at the end

	// spotml only.
	evictions   int        // the batch's count: notices to worker nodes and vanished nodes
	notices     []eviction // seen by this benchmark
	released    int        // items given back on a notice
	expired     int        // items whose lease ran out
	redoneAcks  int        // acks of items already done
	extraLeases int        // Σ(attempts − 1): leases that ended without an ack or a release
	multi       int        // items leased (and so maybe scored) more than once
	cost, od    float64    // the workers' node time, and the same on demand

	results resultCheck
	procs   []procRow // the processes this way started
	err     error
}

// procRow is one process a spotml way started: when it was first and last
// seen (after the apply) and its CPU.
type procRow struct {
	role        role
	worker      string
	first, last time.Duration
	cpu         float64
}

// newProcs lists the processes seen in after but not in before, the
// workers first, each kind by when it started.
func newProcs(before, after map[int]procCPU, apply time.Duration) []procRow {
	var rows []procRow
	for pid, p := range after {
		if _, ok := before[pid]; ok || p.role == roleUp {
			continue
		}
		rows = append(rows, procRow{role: p.role, worker: p.worker, first: p.first - apply, last: p.last - apply,
			cpu: float64(p.ticks) / userHZ})
	}
	slices.SortFunc(rows, func(a, b procRow) int {
		if a.role != b.role {
			return cmp.Compare(b.role, a.role)
		}
		return cmp.Compare(a.first, b.first)
	})
	return rows
}

// eviction is one worker node's notice, with the items its workers held
// then (leased, at the benchmark's last look before or at the notice).
type eviction struct {
	node     string
	at       time.Duration // after the apply
	inFlight int
}

func (m *measured) summary() string {
	if m.err != nil {
		return "failed: " + m.err.Error()
	}
	return fmt.Sprintf("%d results in %s: %.0f items/s, %.0f items per CPU-second, %d evictions, %d leases ended without an ack or release",
		m.span.items, m.span.wall.Round(100*time.Millisecond), m.span.rate(), m.span.perCPUSec(), m.evictions, m.extraLeases)
}

// way is one spotml run: a BatchInference on a pool.
type way struct {
	name string // a or b
	pool string
}

// run applies the way's BatchInference, watches it to its end (every
// pollEvery: the batch, the nodes and the leased items) and checks its results.
func (w way) run(ctx context.Context, c *cluster.Cluster, cpu *treeCPU, cfg config, keys []string, classes map[string]int, progress io.Writer) *measured {
	r := &measured{}
	name, out := "score-"+w.pool, "scored-"+w.pool
	profileCut(c)
	cpu.sample()
	all0, work0 := cpu.seconds()
	roles0 := cpu.byRole()
	procs0 := cpu.procs()
	start := time.Now()
	if err := applyLong(ctx, c, name+".yaml", batchYAML(cfg, name, w.pool, out+"/")); err != nil {
		r.err = err
		return r
	}
	r.apply = time.Since(start)
	var b api.BatchInference
	noticed := map[string]bool{}
	var prev map[string]int
	lastPrint := time.Now()
	polls := 0
	evictAt := cfg.evictAt
	for {
		polls++
		leased, err := leasedByNode(ctx, c, name)
		b = api.BatchInference{} // decoding leaves out what the answer omits (listing: false)
		if err == nil {
			err = c.API.Do(ctx, http.MethodGet, api.Prefix+"/batchinferences/"+name, nil, &b)
		}
		var nodes []store.Node
		if err == nil {
			err = c.API.Do(ctx, http.MethodGet, api.Prefix+"/nodes", nil, &nodes)
		}
		if err != nil {
			r.err = err
			return r
		}
		for _, n := range nodes {
			if n.Pool != w.pool || noticed[n.Name] || (n.NoticeDeadline.IsZero() && n.State != store.NodePreempted && n.State != store.NodeDeallocated) {
				continue
			}
			noticed[n.Name] = true
			r.notices = append(r.notices, eviction{node: n.Name, at: time.Since(start), inFlight: max(prev[n.Name], leased[n.Name])})
		}
		prev = leased
		// The benchmark's own notices: at each fraction of the items done,
		// one ready node of the pool that has none (spotml evict: the
		// same notice the market gives), so that every run has evictions
		// however short the market's draws leave it.
		if w.pool == "spot" && len(evictAt) > 0 && b.Done >= int(evictAt[0]*float64(cfg.n)) {
			for _, n := range nodes {
				if n.Pool == w.pool && n.State == store.NodeReady && n.NoticeDeadline.IsZero() {
					if _, err := c.CLI(ctx, "evict", n.Name); err != nil {
						r.err = err
						return r
					}
					r.forced++
					break
				}
			}
			evictAt = evictAt[1:]
		}
		if r.listed == 0 && !b.Listing {
			r.listed = time.Since(start)
		}
		if b.State != store.BatchRunning {
			break
		}
		if time.Since(lastPrint) >= 10*time.Second {
			fmt.Fprintf(progress, "(%s) %d/%d done, %d in flight, %d workers, %d evictions, %.0f items/s, %s\n", w.name,
				b.Done, b.Total, b.InFlight, b.Workers, b.Evictions, b.Throughput, time.Since(start).Round(time.Second))
			lastPrint = time.Now()
		}
		select {
		case <-ctx.Done():
			r.err = fmt.Errorf("batch still running: %w", context.Cause(ctx))
			return r
		case <-c.Exited():
			r.err = errors.New("spotml up exited; see " + filepath.Join(c.Data, "up.log"))
			return r
		case <-time.After(pollEvery):
		}
	}
	cpu.sample()
	all1, work1 := cpu.seconds()
	roles1 := cpu.byRole()
	r.upCPU, r.agentCPU = roles1[roleUp]-roles0[roleUp], roles1[roleAgent]-roles0[roleAgent]
	r.procs = newProcs(procs0, cpu.procs(), start.Sub(cpu.t0))
	r.polls = polls
	profileCut(c)
	r.span = span{items: b.Done, wall: b.FinishedAt.Sub(start), cpu: all1 - all0}
	r.workerCPU = work1 - work0
	r.load = loadAvg()
	r.evictions, r.released, r.expired, r.redoneAcks = b.Evictions, b.Released, b.Expired, b.Redone
	r.cost, r.od = b.Cost, b.OnDemandCost

	var items []api.BatchItem
	if err := c.API.Do(ctx, http.MethodGet, api.Prefix+"/batchinferences/"+name+"/items", nil, &items); err != nil {
		r.err = err
		return r
	}
	for _, it := range items {
		if it.Attempts > 1 {
			r.extraLeases += it.Attempts - 1
			r.multi++
		}
	}
	r.results = checkResults(filepath.Join(c.Data, "blobs", out), keys, classes)
	if b.State != store.BatchSucceeded || b.Done != len(keys) || b.Failed != 0 {
		r.err = fmt.Errorf("batch %s: %s, %d done, %d failed of %d", name, b.State, b.Done, b.Failed, len(keys))
	}
	return r
}

// pollEvery is how often the benchmark looks at the batch, its nodes and
// its leased items while it runs: three API calls whose CPU in spotml up
// counts against spotml (about a fifth of up's CPU at every 500 ms, from a
// profile, with the leased items' list the largest part).
const pollEvery = time.Second

// profileCut has spotml up start its next CPU profile when it writes
// them (SPOTML_CPUPROFILE), so that each way's profile is its own.
func profileCut(c *cluster.Cluster) {
	if os.Getenv("SPOTML_CPUPROFILE") != "" {
		c.Signal(syscall.SIGUSR1)
	}
}

// applyLong applies a document through the API as `spotml apply` does,
// but without the CLI's 30 s limit on an answer: queueing tens of
// thousands of inputs on a loaded machine takes longer (70,000 took 144 s
// here), and a client that gives up makes the server drop the apply.
func applyLong(ctx context.Context, c *cluster.Cluster, name, doc string) error {
	body, err := json.Marshal(api.ApplyRequest{Files: []api.File{{Name: name, Data: doc}}})
	if err != nil {
		return err
	}
	token, err := os.ReadFile(filepath.Join(c.Data, "token"))
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+c.Addr+api.Prefix+"/apply", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("apply %s: %w", name, err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("apply %s: %s: %s", name, resp.Status, msg)
	}
	return nil
}

// leasedByNode counts the batch's leased items by the node of the worker
// that holds them (a worker is NODE:JOB/TASK#ATTEMPT).
func leasedByNode(ctx context.Context, c *cluster.Cluster, name string) (map[string]int, error) {
	var items []api.BatchItem
	if err := c.API.Do(ctx, http.MethodGet, api.Prefix+"/batchinferences/"+name+"/items?state="+store.ItemLeased, nil, &items); err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, it := range items {
		node, _, _ := strings.Cut(it.Worker, ":")
		out[node]++
	}
	return out, nil
}

func batchYAML(cfg config, name, pool, out string) string {
	per := (cfg.n + cfg.workers - 1) / cfg.workers
	return fmt.Sprintf(`apiVersion: spotml/v1
kind: BatchInference
metadata: {name: %s}
spec:
  input: {uri: %s/, pattern: "**/*.png"}
  output: {uri: %s, format: jsonl}
  model: {uri: %s}
  runtime: {type: builtin, batchSize: %d, threads: 1}
  preprocess: {image: {grayscale: true, size: [28, 28], scale: 1/255}}
  pool: %s
  resources: {cpu: 1, memory: 512Mi}
  workers: {min: 0, max: %d, itemsPerWorker: %d}
  queue: {leaseTimeout: 10s}
`, name, inputPrefix, out, modelKey, cfg.batch, pool, cfg.workers, per)
}

// scorePython runs score.py over the files: (c).
func scorePython(ctx context.Context, cfg config, model, in, out string, keys []string, classes map[string]int) *measured {
	r := &measured{}
	if err := os.MkdirAll(out, 0o755); err != nil {
		r.err = err
		return r
	}
	list := filepath.Join(out, "..", "python-keys.txt")
	if err := os.WriteFile(list, []byte(strings.Join(keys, "\n")+"\n"), 0o644); err != nil {
		r.err = err
		return r
	}
	cmd := exec.CommandContext(ctx, cfg.python, filepath.Join("bench", "batchinf", "score.py"),
		"--input", in, "--output", out, "--keys", list, "--model", model,
		"--train-py", filepath.Join("examples", "fashion-mnist", "train.py"),
		"--batch", fmt.Sprint(cfg.batch), "--threads", fmt.Sprint(cfg.threads))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	t0 := time.Now()
	stdout, err := cmd.Output()
	wall := time.Since(t0)
	if err != nil {
		r.err = fmt.Errorf("score.py: %v: %s", err, tail(stderr.String(), 2000))
		return r
	}
	var fig struct {
		Items   int     `json:"items"`
		Seconds float64 `json:"seconds"`
	}
	if err := json.Unmarshal(stdout, &fig); err != nil {
		r.err = fmt.Errorf("score.py printed %q: %w", stdout, err)
		return r
	}
	r.span = span{items: fig.Items, wall: wall, cpu: (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()}
	r.loop = time.Duration(fig.Seconds * float64(time.Second))
	r.load = loadAvg()
	r.results = checkResults(out, keys, classes)
	return r
}

// resultCheck is what a way left under its output: one object per input,
// each one line naming its input, with its class against (d1)'s.
type resultCheck struct {
	objects, missing, extra, bad, agree, differ int
}

func (rc resultCheck) exact(n int) bool {
	return rc.objects == n && rc.missing == 0 && rc.extra == 0 && rc.bad == 0
}

func checkResults(dir string, keys []string, classes map[string]int) resultCheck {
	var rc resultCheck
	want := make(map[string]bool, len(keys))
	for _, k := range keys {
		want[k] = true
	}
	seen := make(map[string]bool, len(keys))
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		key, ok := strings.CutSuffix(filepath.ToSlash(rel), ".jsonl")
		rc.objects++
		if !ok || !want[key] {
			rc.extra++
			return nil
		}
		seen[key] = true
		b, err := os.ReadFile(p)
		var res struct {
			Input string `json:"input"`
			Class *int   `json:"class"`
		}
		if err != nil || strings.Count(string(b), "\n") != 1 || json.Unmarshal(b, &res) != nil || res.Input != key || res.Class == nil {
			rc.bad++
			return nil
		}
		if *res.Class == classes[key] {
			rc.agree++
		} else {
			rc.differ++
		}
		return nil
	})
	rc.missing = len(keys) - len(seen)
	return rc
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
