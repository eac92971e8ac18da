// Command availability measures what serving on spot capacity costs in
// failed requests, latency and money, tier by tier. It builds spotml and
// the load generator, and runs the same service five ways, side by side in
// one run, each on its own `spotml up` (control plane, simulated spot
// market, agent processes, inference gateway on this machine):
//
//	dev       placement tier dev: all spot, no spreading, no stand-ins;
//	prod      tier prod: spot spread over two spot pools, on-demand stand-ins
//	          (while spot is short, or a spot replica is not ready after 30 s);
//	prod-10s  the same with standInAfter: 10s;
//	strict    tier strict: one on-demand replica, the rest spot;
//	on-demand every replica on on-demand nodes (baseOnDemand = replicas).
//
// Each gets the same constant, open-loop request rate through its gateway
// from its own load generator process (bench/serving/loadgen), for the
// same time, while spot nodes are evicted on one schedule: every -every, a
// node drawn at random (seeded: the same draws in every scenario) from the
// scenario's ready spot nodes gets an eviction notice of -notice. Nodes
// take -boot to start (a start task that sleeps, as a cloud VM takes time
// to boot), so a replacement launched at the notice is ready only after
// boot, which is what makes a short notice hurt.
//
// With -traces the spot market is real instead: one spot pool per trace
// file (as zones or regions would be), each replaying its trace
// (spec.local.market) at -speedup from -start, and the benchmark evicts
// nothing itself. The pools start without their market while the
// scenarios set up; when the load starts, every scenario's pools get their
// market at once, set so that all are at -start of their trace then.
//
//	go run ./bench/serving/availability -traces traces/cant-be-late/preemption_4-node_aws-08-03-2023_us-east-2a_v100_1.json,traces/cant-be-late/availability_16-node_aws-08-27-2023_us-east-2b_v100_1.json -speedup 120 -start 12h -only dev,prod,prod-nospare,strict,on-demand
//
// It prints, as Markdown, each scenario's success rate, latency
// percentiles, evictions, and cost per million answered requests.
//
//	go run ./bench/serving/availability -duration 3m -rate 20 -every 30s -notice 10s -boot 20s
//	go run ./bench/serving/availability -every 20s -notice 5s -boot 30s -target replica   # evictions faster than boots
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/spotml/spotml/bench/cluster"
	"github.com/spotml/spotml/bench/serving/machine"
	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/store"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "availability:", err)
		os.Exit(1)
	}
}

// config is the benchmark's parameters, from its flags.
type config struct {
	duration   time.Duration
	rate       float64
	every      time.Duration
	notice     time.Duration
	boot       time.Duration
	replicas   int
	seed       uint64
	target     string
	idle       time.Duration
	sequential bool
	only       string
	timeout    time.Duration
	keep       bool
	traces     []string
	speedup    float64
	start      time.Duration
}

// instanceType is every pool's machine: 2 cpu, so two 1-cpu replicas fit
// on a node; spotml's price table gives its spot and on-demand prices.
const instanceType = "Standard_D2s_v3"

// service is the name of the service in every scenario.
const service = "fmnist"

const (
	modelFile   = "examples/fashion-mnist/model.onnx"
	requestFile = "examples/fashion-mnist/sample-request.json"
)

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	var cfg config
	fs := flag.NewFlagSet("availability", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&cfg.duration, "duration", 3*time.Minute, "how long the load runs")
	fs.Float64Var(&cfg.rate, "rate", 20, "requests per second to each scenario's gateway (open loop)")
	fs.DurationVar(&cfg.every, "every", 30*time.Second, "evict a random ready spot node this often")
	fs.DurationVar(&cfg.notice, "notice", 10*time.Second, "eviction notice")
	fs.DurationVar(&cfg.boot, "boot", 20*time.Second, "how long a node takes to start (a start task that sleeps; 0: at once)")
	fs.IntVar(&cfg.replicas, "replicas", 2, "replicas of the service in every scenario (min = max: no autoscaling)")
	fs.Uint64Var(&cfg.seed, "seed", 1, "seed of the eviction draws (the same in every scenario)")
	fs.StringVar(&cfg.target, "target", "any", "which spot nodes the schedule draws from: any (every ready spot node) or replica (only those running a replica of the service)")
	fs.DurationVar(&cfg.idle, "idle-timeout", 30*time.Second, "the pools' idleTimeout: an idle node is removed after this")
	fs.BoolVar(&cfg.sequential, "sequential", false, "run the scenarios one after the other instead of side by side")
	fs.StringVar(&cfg.only, "only", "", "comma-separated scenarios to run (dev, prod, strict, on-demand); default all")
	fs.DurationVar(&cfg.timeout, "timeout", 30*time.Minute, "give up after this long")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the data directories (logs, databases, load reports) and say where")
	traces := fs.String("traces", "", "comma-separated trace files (see traces/): one spot pool each replays one; the benchmark then evicts nothing itself")
	fs.Float64Var(&cfg.speedup, "speedup", 120, "with -traces: how much faster than real time the traces replay")
	fs.DurationVar(&cfg.start, "start", 12*time.Hour, "with -traces: where in the traces the load starts (at least the setup time × -speedup)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *traces != "" {
		for _, f := range strings.Split(*traces, ",") {
			abs, err := filepath.Abs(strings.TrimSpace(f))
			if err != nil {
				return err
			}
			if _, err := os.Stat(abs); err != nil {
				return fmt.Errorf("-traces: %v", err)
			}
			cfg.traces = append(cfg.traces, abs)
		}
		if cfg.speedup <= 0 {
			return errors.New("-speedup must be positive")
		}
	}
	switch {
	case cfg.duration < time.Second:
		return errors.New("-duration must be at least 1s")
	case cfg.rate <= 0:
		return errors.New("-rate must be positive")
	case cfg.every <= 0:
		return errors.New("-every must be positive")
	case cfg.notice < time.Second:
		return errors.New("-notice must be at least 1s")
	case cfg.boot < 0:
		return errors.New("-boot must not be negative")
	case cfg.replicas < 2:
		return errors.New("-replicas must be at least 2 (tiers prod and strict run at least 2)")
	case cfg.target != "any" && cfg.target != "replica":
		return fmt.Errorf("-target %q: use any or replica", cfg.target)
	}
	scenarios, err := pick(cfg.only, cfg.replicas)
	if err != nil {
		return err
	}
	for _, f := range []string{modelFile, requestFile} {
		if _, err := os.Stat(f); err != nil {
			return fmt.Errorf("%v: run from the root of the spotml repository", err)
		}
	}
	ortLib, err := cluster.ONNXRuntime()
	if err != nil {
		return err
	}
	host := machine.Describe()

	ws, err := cluster.NewWorkspace(ctx, "spotml-availability", stderr)
	if err != nil {
		return err
	}
	defer func() { ws.Close(cfg.keep, err) }()
	dir, bin := ws.Dir, ws.Bin
	loadgen, err := cluster.Build(ctx, dir, "github.com/spotml/spotml/bench/serving/loadgen")
	if err != nil {
		return err
	}
	env := runEnv{bin: bin, loadgen: loadgen, ortLib: ortLib, cfg: cfg, progress: stderr}

	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	results := make([]result, len(scenarios))
	begin := time.Now()
	if cfg.sequential {
		for i, sc := range scenarios {
			results[i] = sc.run(ctx, env, filepath.Join(dir, sc.name), nil)
			if err = results[i].err; err != nil {
				err = fmt.Errorf("%s: %w", sc.name, err)
				break
			}
		}
	} else {
		// Every scenario sets up, then all start their load and their
		// eviction schedule at the same moment.
		start := newBarrier(len(scenarios))
		g, gctx := errgroup.WithContext(ctx) // one scenario failing stops the others
		for i, sc := range scenarios {
			g.Go(func() error {
				results[i] = sc.run(gctx, env, filepath.Join(dir, sc.name), start)
				if err := results[i].err; err != nil {
					return fmt.Errorf("%s: %w", sc.name, err)
				}
				return nil
			})
		}
		err = g.Wait()
	}
	for _, r := range results {
		if r.done {
			printReport(stdout, args, cfg, host, scenarios, results, time.Since(begin))
			break
		}
	}
	return err
}

// scenario is one way of placing the service.
type scenario struct {
	name      string
	placement string // the service's placement, YAML flow style
	what      string
}

func allScenarios(replicas int) []scenario {
	return []scenario{
		{"dev", "{tier: dev}", "all spot, not spread, no stand-ins"},
		{"prod", "{tier: prod}", "spot spread over pools, on-demand stand-ins"},
		{"prod-10s", "{tier: prod, standInAfter: 10s}", "prod, a stand-in after 10 s of a slow spot start"},
		{"prod-nospare", "{tier: prod, spareSpot: \"0\"}", "prod without spare spot replicas"},
		{"strict", "{tier: strict}", "1 on-demand + spot"},
		{"on-demand", fmt.Sprintf("{tier: strict, baseOnDemand: %d}", replicas), "all on-demand"},
	}
}

func pick(only string, replicas int) ([]scenario, error) {
	all := allScenarios(replicas)
	if only == "" {
		return slices.DeleteFunc(all, func(s scenario) bool { return s.name == "prod-nospare" }), nil
	}
	var out []scenario
	for _, name := range strings.Split(only, ",") {
		i := slices.IndexFunc(all, func(s scenario) bool { return s.name == strings.TrimSpace(name) })
		if i < 0 {
			return nil, fmt.Errorf("-only: no scenario %q (dev, prod, strict, on-demand)", name)
		}
		out = append(out, all[i])
	}
	return out, nil
}

// runEnv is what every scenario shares.
type runEnv struct {
	bin, loadgen, ortLib string
	cfg                  config
	progress             io.Writer
}

// eviction is one draw of the schedule.
type eviction struct {
	at       time.Duration // from the start of the load
	node     string        // empty: no ready spot node to evict
	replicas int           // live replicas on it when it got its notice
}

// result is what one scenario measured.
type result struct {
	done      bool
	placed    string // replicas by priority and nodes, when the load started
	load      loadReport
	evictions []eviction
	notices   int           // with -traces: spot nodes that got a notice during the load
	noReady   time.Duration // time with no ready replica (sampled)
	minReady  int
	cost      cost.Summary // node time during the load: the difference of two reads
	launched  int          // nodes launched during the load
	unused    int          // of those, nodes no replica was ever placed on
	err       error
}

// loadReport is the part of the load generator's JSON report used here.
type loadReport struct {
	Sent, OK, Failed int
	SuccessRate      float64
	Errors           map[string]int
	LatencyMs        struct{ P50, P90, P99, P999, Max, Mean float64 }
	Timeline         []struct{ T, OK, Failed int }
	FirstFailures    []struct {
		AtMs  float64
		Error string
	}
}

// run sets the scenario up on a fresh `spotml up` in data, waits at start
// (if any) for the others, then runs the load and the evictions. The
// control plane and its nodes are stopped before it returns.
func (sc scenario) run(ctx context.Context, env runEnv, data string, start *barrier) (r result) {
	cfg := env.cfg
	c, err := cluster.Start(ctx, env.bin, data, env.ortLib)
	if err != nil {
		return result{err: err}
	}
	defer c.Stop()
	say := func(format string, args ...any) {
		fmt.Fprintf(env.progress, "%s %s: %s\n", time.Now().Format("15:04:05"), sc.name, fmt.Sprintf(format, args...))
	}
	if _, err := c.CLI(ctx, "blob", "put", modelFile, "models/fmnist.onnx"); err != nil {
		return result{err: err}
	}
	applied := time.Now()
	if err := c.Apply(ctx, "spec.yaml", sc.yaml(cfg, "")); err != nil {
		return result{err: err}
	}
	say("applied (spotml up on %s, gateway %s, data %s); waiting for %d ready replicas", c.Addr, c.Gateway, data, cfg.replicas)
	if err := c.WaitServing(ctx, service, cfg.replicas, 3*time.Minute+4*cfg.boot); err != nil {
		return result{err: err}
	}
	// The first runs of a fresh ONNX Runtime session are slow; keep them
	// out of the figures.
	url := "http://" + c.Gateway + "/v2/models/" + service + "/infer"
	if err := warmUp(ctx, url, 20*cfg.replicas); err != nil {
		return result{err: fmt.Errorf("warm-up through the gateway: %w", err)}
	}
	s, err := c.Service(ctx, service)
	if err != nil {
		return result{err: err}
	}
	r.placed = describePlacement(s)
	say("serving: %s", r.placed)
	if start != nil {
		say("waiting for the other scenarios")
		if err := start.wait(ctx); err != nil {
			return result{err: err}
		}
	}

	if len(cfg.traces) > 0 {
		// The market from now on, at -start of every trace.
		start := cfg.start - time.Duration(float64(time.Since(applied))*cfg.speedup)
		if start < 0 {
			return result{err: fmt.Errorf("setting up took %s, which is %s of trace at -speedup %g: raise -start to at least that",
				time.Since(applied).Round(time.Second), time.Duration(float64(time.Since(applied))*cfg.speedup).Round(time.Minute), cfg.speedup)}
		}
		if err := c.Apply(ctx, "market.yaml", sc.yaml(cfg, start.Round(time.Second).String())); err != nil {
			return result{err: err}
		}
		say("markets replaying from %s of their traces", cfg.start)
	}
	before, err := readCost(ctx, c)
	if err != nil {
		return result{err: err}
	}
	t0 := time.Now()
	reportFile := filepath.Join(data, "load.json")
	lg := exec.CommandContext(ctx, env.loadgen, "-url", url, "-body", requestFile, "-rate", strconv.FormatFloat(cfg.rate, 'g', -1, 64),
		"-duration", cfg.duration.String(), "-timeout", "10s", "-expect", `"logits"`)
	var lgOut, lgErr bytes.Buffer
	lg.Stdout, lg.Stderr = &lgOut, &lgErr
	if err := lg.Start(); err != nil {
		return result{err: fmt.Errorf("start the load generator: %w", err)}
	}
	say("load started: %g requests/s for %s", cfg.rate, cfg.duration)

	// The eviction schedule and a monitor of the ready replicas run until
	// the load ends.
	wctx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var evictErr error
	wg.Go(func() { r.evictions, evictErr = sc.evict(wctx, c, cfg, t0, say) })
	wg.Go(func() { r.noReady, r.minReady = watchReady(wctx, c) })
	lgWait := lg.Wait()
	after, costErr := readCost(ctx, c)
	stopWatch()
	wg.Wait()
	if lgWait != nil {
		return result{err: fmt.Errorf("load generator: %v: %s", lgWait, strings.TrimSpace(lgErr.String()))}
	}
	os.WriteFile(reportFile, lgOut.Bytes(), 0o644)
	if err := json.Unmarshal(lgOut.Bytes(), &r.load); err != nil {
		return result{err: fmt.Errorf("load generator's report: %w", err)}
	}
	if evictErr != nil && ctx.Err() == nil {
		return result{err: evictErr}
	}
	if costErr != nil {
		return result{err: costErr}
	}
	r.cost = costDelta(before, after)
	if r.launched, r.unused, r.notices, err = launches(ctx, c, t0); err != nil {
		return result{err: err}
	}
	r.done = true
	say("done: %d/%d answered, %d evictions", r.load.OK, r.load.Sent, max(r.notices, countEvictions(r.evictions)))
	return r
}

// yaml is the scenario's pools and service. Every scenario has the same
// pools: two spot pools in two zones (with -traces, one per trace) and an
// on-demand pool, all of the same instance type and all booting in
// cfg.boot; the spot pools' own market is off (evictionRate 0): only the
// benchmark's schedule evicts, or with -traces and a start, their traces.
func (sc scenario) yaml(cfg config, start string) string {
	boot := ""
	if cfg.boot > 0 {
		boot = fmt.Sprintf("  startTask: {command: [sleep, %q]}\n", strconv.FormatFloat(cfg.boot.Seconds(), 'f', -1, 64))
	}
	pool := func(name, priority, zone, market string) string {
		return fmt.Sprintf(`apiVersion: spotml/v1
kind: Pool
metadata: {name: %s}
spec:
  provider: local
  priority: %s
  instanceType: %s
  zones: [%q]
  min: 0
  max: %d
  idleTimeout: %s
%s%s---
`, name, priority, instanceType, zone, 2*cfg.replicas, cfg.idle, market, boot)
	}
	market := fmt.Sprintf("  local:\n    evictionRate: 0\n    notice: %s\n", cfg.notice)
	spot := pool("spot-a", "spot", "1", market) + pool("spot-b", "spot", "2", market)
	if len(cfg.traces) > 0 {
		spot = ""
		for i, f := range cfg.traces {
			m := market
			if start != "" {
				m += fmt.Sprintf("    market: {trace: %q, speedup: %g, start: %s}\n", f, cfg.speedup, start)
			}
			spot += pool("spot-"+string(rune('a'+i)), "spot", strconv.Itoa(i+1), m)
		}
	}
	return spot + pool("od", "ondemand", "1", "") +
		fmt.Sprintf(`apiVersion: spotml/v1
kind: Service
metadata: {name: %s}
spec:
  model: {uri: models/fmnist.onnx}
  runtime: {type: builtin, threads: 1, maxBatch: 32}
  replicas: {min: %d, max: %d}
  placement: %s
  resources: {cpu: 1, memory: 512Mi}
`, service, cfg.replicas, cfg.replicas, sc.placement)
}

// evict runs the eviction schedule: at every multiple of cfg.every within
// the load's duration, a node drawn from the ready spot nodes (sorted by
// name; with -target replica only those running a replica) with a
// generator seeded alike in every scenario.
func (sc scenario) evict(ctx context.Context, c *cluster.Cluster, cfg config, t0 time.Time, say func(string, ...any)) ([]eviction, error) {
	if len(cfg.traces) > 0 {
		return nil, nil // the traces evict
	}
	rng := rand.New(rand.NewPCG(cfg.seed, 0))
	var out []eviction
	for at := cfg.every; at < cfg.duration; at += cfg.every {
		select {
		case <-ctx.Done():
			return out, nil
		case <-time.After(time.Until(t0.Add(at))):
		}
		nodes, err := c.Nodes(ctx)
		if err != nil {
			return out, err
		}
		var spot []store.Node
		for _, n := range nodes {
			if n.Priority == "spot" && n.State == store.NodeReady && (cfg.target == "any" || n.Replicas > 0) {
				spot = append(spot, n)
			}
		}
		slices.SortFunc(spot, func(a, b store.Node) int { return strings.Compare(a.Name, b.Name) })
		draw := rng.IntN(1 << 30) // drawn even when nothing is evicted, so that the draws stay aligned
		if len(spot) == 0 {
			out = append(out, eviction{at: at})
			continue
		}
		n := spot[draw%len(spot)]
		if _, err := c.CLI(ctx, "evict", n.Name, "--notice", cfg.notice.String()); err != nil {
			return out, err
		}
		out = append(out, eviction{at: at, node: n.Name, replicas: n.Replicas})
		say("t=%s evicted %s (%d replicas on it)", at, n.Name, n.Replicas)
	}
	return out, nil
}

// watchReady samples the service's ready replicas every 250ms and returns
// how long none was ready, and the fewest seen.
func watchReady(ctx context.Context, c *cluster.Cluster) (none time.Duration, fewest int) {
	const every = 250 * time.Millisecond
	fewest = -1
	for {
		select {
		case <-ctx.Done():
			return none, max(fewest, 0)
		case <-time.After(every):
		}
		s, err := c.Service(ctx, service)
		if err != nil {
			continue
		}
		n := len(cluster.Ready(s))
		if n == 0 {
			none += every
		}
		if fewest < 0 || n < fewest {
			fewest = n
		}
	}
}

func warmUp(ctx context.Context, url string, n int) error {
	body, err := os.ReadFile(requestFile)
	if err != nil {
		return err
	}
	client := &http.Client{Timeout: 30 * time.Second} // a hung request fails the warm-up, not the run
	for range n {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", resp.Status, b)
		}
	}
	return nil
}

// describePlacement says where the replicas are: "2 spot on 1 node".
func describePlacement(s store.Service) string {
	count := map[string]int{}
	nodes := map[string]map[string]bool{}
	for _, r := range cluster.Ready(s) {
		count[r.Priority]++
		if nodes[r.Priority] == nil {
			nodes[r.Priority] = map[string]bool{}
		}
		nodes[r.Priority][r.Node] = true
	}
	var parts []string
	for _, p := range []string{"spot", "ondemand"} {
		if count[p] == 0 {
			continue
		}
		name := p
		if p == "ondemand" {
			name = "on-demand"
		}
		parts = append(parts, fmt.Sprintf("%d %s on %d node%s", count[p], name, len(nodes[p]), plural(len(nodes[p]))))
	}
	return strings.Join(parts, " + ")
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// launches counts the nodes launched since t0 and, of those, the ones no
// replica was placed on, and the eviction notices since t0, from the
// events.
func launches(ctx context.Context, c *cluster.Cluster, t0 time.Time) (launched, unused, notices int, err error) {
	var events []store.Event
	if err := c.API.Do(ctx, http.MethodGet, api.Prefix+"/events", nil, &events); err != nil {
		return 0, 0, 0, err
	}
	used := map[string]bool{}
	var nodes []string
	for _, e := range events {
		switch e.Kind {
		case "Launched":
			if !e.Time.Before(t0) {
				nodes = append(nodes, strings.TrimPrefix(e.Object, "node/"))
			}
		case "ReplicaPlaced":
			used[strings.TrimPrefix(e.Message, "on node ")] = true
		case "Notice":
			if !e.Time.Before(t0) {
				notices++
			}
		}
	}
	for _, n := range nodes {
		if !used[n] {
			unused++
		}
	}
	return len(nodes), unused, notices, nil
}

func readCost(ctx context.Context, c *cluster.Cluster) (cost.Summary, error) {
	var s cost.Summary
	out, err := c.CLI(ctx, "cost", "-o", "json")
	if err != nil {
		return s, err
	}
	if err := json.Unmarshal(out, &s); err != nil {
		return s, fmt.Errorf("spotml cost -o json: %w", err)
	}
	return s, nil
}

// costDelta is what was spent between two reads of the cost.
func costDelta(before, after cost.Summary) cost.Summary {
	return cost.Summary{
		NodeSeconds: after.NodeSeconds - before.NodeSeconds,
		Spent:       after.Spent - before.Spent,
		OnDemand:    after.OnDemand - before.OnDemand,
	}
}

func countEvictions(es []eviction) int {
	n := 0
	for _, e := range es {
		if e.node != "" {
			n++
		}
	}
	return n
}

// barrier lets n goroutines start together.
type barrier struct {
	mu      sync.Mutex
	waiting int
	n       int
	open    chan struct{}
}

func newBarrier(n int) *barrier { return &barrier{n: n, open: make(chan struct{})} }

func (b *barrier) wait(ctx context.Context) error {
	b.mu.Lock()
	b.waiting++
	if b.waiting == b.n {
		close(b.open)
	}
	b.mu.Unlock()
	select {
	case <-b.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func printReport(w io.Writer, args []string, cfg config, host string, scenarios []scenario, results []result, elapsed time.Duration) {
	mode := fmt.Sprintf("side by side (all %d `spotml up` at once, load and evictions started together)", len(scenarios))
	if cfg.sequential {
		mode = "one after the other (-sequential)"
	}
	if len(cfg.traces) > 0 {
		fmt.Fprintf(w, "\n### Serving on traced spot markets: %g requests/s for %s, %d spot pools replaying traces at %g× from %s, %s notice\n\n",
			cfg.rate, cfg.duration, len(cfg.traces), cfg.speedup, cfg.start, cfg.notice)
	} else {
		fmt.Fprintf(w, "\n### Serving under evictions: %g requests/s for %s, a spot node evicted every %s with %s notice\n\n",
			cfg.rate, cfg.duration, cfg.every, cfg.notice)
	}
	fmt.Fprintf(w, "command: `%s`\n\n", strings.TrimSpace("go run ./bench/serving/availability "+strings.Join(args[1:], " ")))
	fmt.Fprintf(w, "effective flags: -duration %s -rate %g -every %s -notice %s -boot %s -replicas %d -seed %d -target %s -idle-timeout %s%s; wall time %s\n\n",
		cfg.duration, cfg.rate, cfg.every, cfg.notice, cfg.boot, cfg.replicas, cfg.seed, cfg.target, cfg.idle,
		map[bool]string{true: " -sequential"}[cfg.sequential], elapsed.Round(time.Second))
	fmt.Fprintf(w, "machine: %s\n\n", host)
	fmt.Fprintf(w, "Scenarios run %s. %d replicas of the Fashion-MNIST model (builtin runtime, 1 cpu, 1 thread each) "+
		"on %s nodes (2 cpu) that take %s to boot; one request = one image (KServe v2 JSON), open loop from a separate load generator process.\n\n",
		mode, cfg.replicas, instanceType, cfg.boot)
	drawn := "every ready spot node (idle ones too)"
	if cfg.target == "replica" {
		drawn = "the ready spot nodes that run a replica of the service"
	}
	if len(cfg.traces) > 0 {
		var names []string
		for i, f := range cfg.traces {
			names = append(names, fmt.Sprintf("spot-%c: `%s`", 'a'+i, filepath.Base(f)))
		}
		fmt.Fprintf(w, "Evictions: the spot pools' traces (%s), replayed at %g× from %s of each trace when the load starts "+
			"(a node beyond the trace's capacity is evicted with %s notice; a launch beyond it is refused); the benchmark evicts nothing itself.\n\n",
			strings.Join(names, ", "), cfg.speedup, cfg.start, cfg.notice)
	} else {
		fmt.Fprintf(w, "Evictions: at every %s of the load, `spotml evict NODE --notice %s` on a node drawn (seed %d, the same draws in every scenario) from %s; "+
			"the spot pools' own market is off (evictionRate 0).\n\n", cfg.every, cfg.notice, cfg.seed, drawn)
	}
	// The all-on-demand scenario's cost, if it ran, is what the others
	// are measured against.
	var allOD float64
	for i, r := range results {
		if r.done && scenarios[i].name == "on-demand" {
			allOD = r.cost.Spent
		}
	}
	fmt.Fprintln(w, "| scenario | replicas at start | evictions (replicas on the node) | requests | failed | success rate | p50 | p99 | max | no replica ready | nodes launched (never used) | node-hours | cost | ÷ all-on-demand run | per million answered | same node-time on demand |")
	fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for i, r := range results {
		sc := scenarios[i]
		if !r.done {
			fmt.Fprintf(w, "| %s | not measured: %v | | | | | | | | | | | | | | |\n", sc.name, r.err)
			continue
		}
		hit := 0
		for _, e := range r.evictions {
			hit += e.replicas
		}
		perM := "–"
		if r.load.OK > 0 {
			perM = fmt.Sprintf("$%.3f", r.cost.Spent/float64(r.load.OK)*1e6)
		}
		ratio := "–"
		if allOD > 0 {
			ratio = fmt.Sprintf("%.2f×", r.cost.Spent/allOD)
		}
		evicted := fmt.Sprintf("%d (%d)", countEvictions(r.evictions), hit)
		if len(cfg.traces) > 0 {
			evicted = fmt.Sprintf("%d notices", r.notices)
		}
		l := r.load.LatencyMs
		fmt.Fprintf(w, "| %s (%s) | %s | %s | %d | %d | %s | %.1f ms | %.1f ms | %.0f ms | %s | %d (%d) | %.3f | $%.4f | %s | %s | $%.4f |\n",
			sc.name, sc.what, r.placed, evicted, r.load.Sent, r.load.Failed, percent(r.load.SuccessRate),
			l.P50, l.P99, l.Max, r.noReady.Round(time.Second), r.launched, r.unused, r.cost.NodeSeconds/3600, r.cost.Spent, ratio, perM, r.cost.OnDemand)
	}
	fmt.Fprintln(w)
	for i, r := range results {
		if !r.done {
			continue
		}
		if len(cfg.traces) > 0 {
			fmt.Fprintf(w, "- %s: failures %s\n", scenarios[i].name, describeFailures(r.load))
			continue
		}
		fmt.Fprintf(w, "- %s: evictions %s; failures %s\n", scenarios[i].name, describeEvictions(r.evictions), describeFailures(r.load))
	}
	fmt.Fprintf(w, "- latency: of the answered requests, from the time each was due (open loop) to the last byte of the answer; a failure is anything but a 200 with logits within 10 s.\n")
	fmt.Fprintf(w, "- nodes launched: during the load, from the events; never used: no replica was ever placed on them (they idle until the pool's idleTimeout, %s, and cost money meanwhile).\n", cfg.idle)
	fmt.Fprintf(w, "- no replica ready: time the service had no ready replica without a notice (sampled every 250 ms from the API).\n")
	fmt.Fprintf(w, "- cost: `spotml cost -o json` read when the load started and when it ended; the difference is all node time in that window (idle and booting nodes too), at the price table's %s prices. Per million answered = that ÷ answered requests × 10⁶; it scales with 1/-rate, since the replicas are fixed.\n", instanceType)
}

func percent(f float64) string {
	if f == 1 {
		return "100 %"
	}
	return fmt.Sprintf("%.2f %%", 100*f)
}

func describeEvictions(es []eviction) string {
	if len(es) == 0 {
		return "none scheduled"
	}
	var parts []string
	for _, e := range es {
		if e.node == "" {
			parts = append(parts, fmt.Sprintf("t=%s none ready", e.at))
			continue
		}
		parts = append(parts, fmt.Sprintf("t=%s %s (%d)", e.at, e.node, e.replicas))
	}
	return strings.Join(parts, ", ")
}

// describeFailures gives the failure kinds and the seconds of the run in
// which requests failed, merged into runs: "status 503: 212; at 37–48 s".
func describeFailures(l loadReport) string {
	if l.Failed == 0 {
		return "none"
	}
	var kinds []string
	for k, n := range l.Errors {
		kinds = append(kinds, fmt.Sprintf("%s: %d", k, n))
	}
	slices.Sort(kinds)
	var spans []string
	from, to := -1, -1
	flush := func() {
		if from < 0 {
			return
		}
		if from == to {
			spans = append(spans, fmt.Sprintf("%d s", from))
		} else {
			spans = append(spans, fmt.Sprintf("%d–%d s", from, to))
		}
	}
	for _, s := range l.Timeline {
		if s.Failed == 0 {
			continue
		}
		if from >= 0 && s.T == to+1 {
			to = s.T
			continue
		}
		flush()
		from, to = s.T, s.T
	}
	flush()
	return strings.Join(kinds, ", ") + "; in seconds " + strings.Join(spans, ", ")
}
