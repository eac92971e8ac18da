// Package chaos is the chaos soak of spotml (issue #9): a real `spotml up`
// on this machine under a harsh, seeded schedule of faults and hostile
// input, with the invariants checked at the end. bench/soak runs it for
// minutes; e2e/TestSoak runs a 90-second version.
//
// While the soak runs, all at once:
//   - spot evictions every few seconds across two spot pools (short
//     notices) and a market that refuses a share of spot launches;
//   - SIGKILL of whole spot nodes (the agent and everything under it, a
//     machine gone without notice), of task processes and of replica
//     processes;
//   - SIGKILL of the control plane about once a minute, started again by
//     the soak over the same data directory;
//   - a stream of jobs whose tasks count through a checkpointed counter
//     and write outputs whose content the soak knows, and now and then a
//     job that fails by its own command;
//   - a strict and a prod service under open-loop load through a
//     separate `spotml gateway` (the one a production setup would run
//     apart from the control plane);
//   - bad input: malformed and hostile specs, malformed inference bodies,
//     slowloris connections to the gateways, agent calls made with another
//     node's credential.
//
// Every random choice (when each fault comes and which target it hits)
// is drawn from -seed, one stream per kind of fault, so a run can be
// repeated; the simulated market's own draws (capacity shortages) are
// spotml's and not seeded.
package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spotml/spotml/bench/cluster"
	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/client"
	"github.com/spotml/spotml/internal/inference"
	"github.com/spotml/spotml/internal/store"
)

// Config is one soak's parameters.
type Config struct {
	Duration    time.Duration // how long the chaos and the load run
	Seed        uint64        // drives every choice of the schedule
	Rate        float64       // requests per second to each service
	Bin         string        // the spotml binary; "" builds one into the work directory
	Dir         string        // work directory (data directory, ledger); "" a new temporary one
	ModelFile   string        // examples/fashion-mnist/model.onnx
	RequestFile string        // examples/fashion-mnist/sample-request.json
	ORTLib      string        // ONNX Runtime's shared library ("" whatever spotml finds)
	Drain       time.Duration // how long the jobs may take to finish after the chaos
	Progress    io.Writer     // a line per fault and phase
}

// Status of a check.
const (
	Pass = "PASS"
	Fail = "FAIL"
	Info = "INFO" // a figure reported without a target
)

// Check is one assertion of the soak's report.
type Check struct {
	Name   string
	Status string
	Detail string
}

// Report is what a soak found.
type Report struct {
	Config  Config
	Dir     string
	Elapsed time.Duration
	Checks  []Check
	// Faults counts what the soak did, by kind.
	Faults map[string]int
	// RSS is the control plane's resident memory sampled over the soak.
	RSS []Sample
}

// Sample is one reading of the control plane's memory.
type Sample struct {
	At       time.Duration // since the chaos began
	RSS, HWM int64         // bytes; HWM is the peak of the process alive then
}

// Failed says whether any check failed.
func (r *Report) Failed() bool {
	for _, c := range r.Checks {
		if c.Status == Fail {
			return true
		}
	}
	return false
}

func (r *Report) add(name string, ok bool, format string, args ...any) {
	st := Pass
	if !ok {
		st = Fail
	}
	r.Checks = append(r.Checks, Check{Name: name, Status: st, Detail: fmt.Sprintf(format, args...)})
}

func (r *Report) info(name string, format string, args ...any) {
	r.Checks = append(r.Checks, Check{Name: name, Status: Info, Detail: fmt.Sprintf(format, args...)})
}

// Print writes the report as a table.
func (r *Report) Print(w io.Writer) {
	fmt.Fprintf(w, "\nchaos soak: seed %d, %s of chaos (%s in all), data in %s\n", r.Config.Seed, r.Config.Duration, r.Elapsed.Round(time.Second), r.Dir)
	var kinds []string
	for k := range r.Faults {
		kinds = append(kinds, k)
	}
	slices.Sort(kinds)
	var fs []string
	for _, k := range kinds {
		fs = append(fs, fmt.Sprintf("%s %d", k, r.Faults[k]))
	}
	fmt.Fprintf(w, "faults: %s\n\n", strings.Join(fs, ", "))
	width := 0
	for _, c := range r.Checks {
		width = max(width, len(c.Name))
	}
	for _, c := range r.Checks {
		lines := strings.Split(c.Detail, "\n")
		fmt.Fprintf(w, "%-4s  %-*s  %s\n", c.Status, width, c.Name, lines[0])
		for _, l := range lines[1:] {
			fmt.Fprintf(w, "%-4s  %-*s  %s\n", "", width, "", l)
		}
	}
	checks, failed := 0, 0
	for _, c := range r.Checks {
		if c.Status != Info {
			checks++
		}
		if c.Status == Fail {
			failed++
		}
	}
	fmt.Fprintf(w, "\n%d checks, %d failed\n", checks, failed)
}

// soak is one run's state.
type soak struct {
	cfg      Config
	dir      string // work directory
	data     string // spotml's data directory
	ledger   string // where tasks note where each attempt started
	bin      string
	up, gw   *daemon
	upGW     string // the gateway inside spotml up
	gwAddr   string // the separate gateway under load
	api      *client.Client
	token    string
	apiURL   string
	started  time.Time
	progress io.Writer

	// cpMu is held for reading by whatever needs the control plane up
	// (API calls, probes) and for writing while the soak kills it.
	cpMu sync.RWMutex
	// specMu serializes applies: job submissions and the bad-spec probes,
	// which compare the stored objects before and after.
	specMu sync.Mutex

	mu        sync.Mutex
	faults    map[string]int
	jobs      []jobRecord
	taskKills map[string]int // job/task -> SIGKILLs of its process
	probes    []probeResult
	restarts  []string // problems restarting the control plane
	secrets   secretScan
	rss       []Sample
	load      map[string]*loadStats
}

func (s *soak) say(format string, args ...any) {
	fmt.Fprintf(s.progress, "%s soak: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func (s *soak) count(kind string) {
	s.mu.Lock()
	s.faults[kind]++
	s.mu.Unlock()
}

// rng returns the seeded stream of one kind of choice.
func (s *soak) rng(stream uint64) *rand.Rand {
	return rand.New(rand.NewPCG(s.cfg.Seed, stream))
}

// Run runs the soak. Its error is for a soak that could not run at all;
// what the soak found is in the report.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if cfg.Duration <= 0 {
		return nil, fmt.Errorf("duration %s must be positive", cfg.Duration)
	}
	if cfg.Rate <= 0 {
		cfg.Rate = 20
	}
	if cfg.Drain <= 0 {
		cfg.Drain = 3 * time.Minute
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	for _, f := range []string{cfg.ModelFile, cfg.RequestFile} {
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("soak input: %w", err)
		}
	}
	s := &soak{cfg: cfg, progress: cfg.Progress, faults: map[string]int{}, taskKills: map[string]int{},
		load: map[string]*loadStats{"strict": newLoadStats(), "prod": newLoadStats()}}
	s.dir = cfg.Dir
	if s.dir == "" {
		d, err := os.MkdirTemp("", "spotml-soak")
		if err != nil {
			return nil, err
		}
		s.dir = d
	}
	s.data, s.ledger = filepath.Join(s.dir, "data"), filepath.Join(s.dir, "ledger")
	for _, d := range []string{s.data, s.ledger} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	s.bin = cfg.Bin
	if s.bin == "" {
		s.say("building spotml")
		b, err := cluster.Build(ctx, s.dir, "github.com/spotml/spotml/cmd/spotml")
		if err != nil {
			return nil, err
		}
		s.bin = b
	}
	if abs, err := filepath.EvalSymlinks(s.bin); err == nil {
		s.bin = abs
	}
	rep := &Report{Config: cfg, Dir: s.dir}
	t0 := time.Now()
	err := s.run(ctx, rep)
	rep.Elapsed = time.Since(t0)
	rep.Faults = s.faults
	rep.RSS = s.rss
	return rep, err
}

func (s *soak) run(ctx context.Context, rep *Report) error {
	addr, err := cluster.FreeAddr()
	if err != nil {
		return err
	}
	if s.upGW, err = cluster.FreeAddr(); err != nil {
		return err
	}
	if s.gwAddr, err = cluster.FreeAddr(); err != nil {
		return err
	}
	env := os.Environ()
	if s.cfg.ORTLib != "" {
		env = append(env, inference.LibraryEnv+"="+s.cfg.ORTLib)
	}
	s.up = newUp(s.bin, s.data, addr, s.upGW, env)
	s.gw = newGateway(s.bin, s.data, s.gwAddr, env)
	s.say("starting spotml up (API %s, gateway %s) and spotml gateway (%s); data in %s", addr, s.upGW, s.gwAddr, s.data)
	if err := s.up.start(ctx); err != nil {
		return err
	}
	// Whatever happens, spotml is stopped and what it left behind is
	// counted (and then cleaned up).
	defer func() { s.shutdown(rep) }()
	token, err := os.ReadFile(filepath.Join(s.data, "token"))
	if err != nil {
		return err
	}
	s.token = strings.TrimSpace(string(token))
	s.apiURL = "http://" + addr
	s.api = client.New(s.apiURL, s.token)
	if err := s.gw.start(ctx); err != nil {
		return err
	}
	if err := s.setup(ctx); err != nil {
		return err
	}

	s.started = time.Now()
	s.say("chaos for %s, seed %d", s.cfg.Duration, s.cfg.Seed)
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Duration)
	defer cancel()
	var wg sync.WaitGroup
	for _, f := range []func(context.Context){
		s.evictions, s.nodeKills, s.killTasks, s.replicaKills, s.controlPlaneKills,
		s.submitJobs, s.badInput, s.sampleMemory, s.scanSecrets,
	} {
		wg.Go(func() { f(cctx) })
	}
	for name, st := range s.load {
		wg.Go(func() { s.runLoad(cctx, name, st) })
	}
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	s.say("chaos over; waiting up to %s for the jobs to finish", s.cfg.Drain)
	s.drain(ctx)
	s.check(ctx, rep)
	return nil
}

// pools are two spot pools in two zones and an on-demand pool. The
// market's own evictions are off (the soak's seeded schedule evicts);
// its capacity shortages are on.
func pools() string {
	var b strings.Builder
	for _, p := range []struct{ name, priority, zone, market string }{
		{"spot-a", "spot", "1", "  local:\n    evictionRate: 0\n    notice: 3s\n    capacityShortage: 0.25\n"},
		{"spot-b", "spot", "2", "  local:\n    evictionRate: 0\n    notice: 3s\n    capacityShortage: 0.25\n"},
		{"od", "ondemand", "1", ""},
	} {
		fmt.Fprintf(&b, `apiVersion: spotml/v1
kind: Pool
metadata: {name: %s}
spec:
  provider: local
  priority: %s
  instanceType: local-small
  zones: [%q]
  min: 0
  max: 3
  idleTimeout: 20s
%s---
`, p.name, p.priority, p.zone, p.market)
	}
	return b.String()
}

// serviceYAML is a service of the shipped model with n replicas in the
// tier's default placement.
func serviceYAML(name, tier string, n int) string {
	return fmt.Sprintf(`apiVersion: spotml/v1
kind: Service
metadata: {name: %s}
spec:
  model: {uri: models/soak.onnx}
  runtime: {type: builtin, threads: 1, maxBatch: 16}
  replicas: {min: %d, max: %d}
  placement: {tier: %s}
  readiness: {period: 200ms}
  resources: {cpu: 1, memory: 512Mi}
---
`, name, n, n, tier)
}

// setup applies the pools and the services, uploads the model and waits
// until both services answer through the separate gateway. strict runs
// three replicas (its on-demand base and two spot): with two, one SIGKILL
// of the on-demand replica while the spot one is being evicted leaves it
// none for the seconds a replacement takes.
func (s *soak) setup(ctx context.Context) error {
	model, err := os.ReadFile(s.cfg.ModelFile)
	if err != nil {
		return err
	}
	if err := s.api.Do(ctx, http.MethodPut, api.Prefix+"/blobs/models/soak.onnx", model, nil); err != nil {
		return fmt.Errorf("upload the model: %w", err)
	}
	if _, err := s.apply(ctx, pools()+serviceYAML("strict", "strict", 3)+serviceYAML("prod", "prod", 2)); err != nil {
		return fmt.Errorf("apply pools and services: %w", err)
	}
	s.say("waiting for both services to serve through the gateway")
	deadline := time.Now().Add(4 * time.Minute)
	for _, name := range []string{"strict", "prod"} {
		for {
			var svc store.Service
			err := s.api.Do(ctx, http.MethodGet, api.Prefix+"/services/"+name, nil, &svc)
			if err == nil && len(cluster.Ready(svc)) >= 2 && s.infer(ctx, name) == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("service %s not serving after 4m (last: %v); see %s", name, err, s.up.logf)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(300 * time.Millisecond):
			}
		}
	}
	return nil
}

// apply posts YAML to the API; the answer's error keeps its status.
func (s *soak) apply(ctx context.Context, yaml string) ([]store.ApplyResult, error) {
	var out []store.ApplyResult
	err := s.api.Do(ctx, http.MethodPost, api.Prefix+"/apply?source=soak.yaml", []byte(yaml), &out)
	return out, err
}

// sleep waits d or until ctx ends, and says which.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// between draws a duration uniformly in [lo, hi).
func between(r *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(r.Int64N(int64(hi-lo)))
}

// nodes lists the live nodes, sorted by name.
func (s *soak) nodes(ctx context.Context) ([]store.Node, error) {
	var ns []store.Node
	if err := s.api.Do(ctx, http.MethodGet, api.Prefix+"/nodes", nil, &ns); err != nil {
		return nil, err
	}
	slices.SortFunc(ns, func(a, b store.Node) int { return strings.Compare(a.Name, b.Name) })
	return ns, nil
}

// stateSnapshot is what an apply may change: pools, jobs and services
// with their versions and specs (not their live status).
func (s *soak) stateSnapshot(ctx context.Context) (string, error) {
	var pools []store.Pool
	var jobs []store.Job
	var svcs []store.Service
	for path, v := range map[string]any{"/pools": &pools, "/jobs": &jobs, "/services": &svcs} {
		if err := s.api.Do(ctx, http.MethodGet, api.Prefix+path, nil, v); err != nil {
			return "", err
		}
	}
	var b strings.Builder
	for _, p := range pools {
		sp, _ := json.Marshal(p.Spec)
		fmt.Fprintf(&b, "pool %s gen %d %s\n", p.Spec.Metadata.Name, p.Generation, sp)
	}
	for _, j := range jobs {
		fmt.Fprintf(&b, "job %s %s\n", j.Spec.Metadata.Name, j.UID)
	}
	for _, v := range svcs {
		fmt.Fprintf(&b, "service %s gen %d %s\n", v.Name, v.Generation, v.Spec)
	}
	return b.String(), nil
}

// drain waits until every accepted job has ended, or cfg.Drain.
func (s *soak) drain(ctx context.Context) {
	deadline := time.Now().Add(s.cfg.Drain)
	for time.Now().Before(deadline) {
		jobs, err := s.listJobs(ctx)
		if err == nil {
			open := 0
			for _, j := range s.acceptedJobs() {
				if jb, ok := jobs[j.name]; !ok || (jb.State != store.JobSucceeded && jb.State != store.JobFailed) {
					open++
				}
			}
			if open == 0 {
				return
			}
		}
		if !sleep(ctx, time.Second) {
			return
		}
	}
}

func (s *soak) listJobs(ctx context.Context) (map[string]store.Job, error) {
	var js []store.Job
	if err := s.api.Do(ctx, http.MethodGet, api.Prefix+"/jobs", nil, &js); err != nil {
		return nil, err
	}
	out := map[string]store.Job{}
	for _, j := range js {
		out[j.Spec.Metadata.Name] = j
	}
	return out, nil
}

// shutdown stops the gateway and spotml up as a user would (Ctrl-C),
// then counts the processes of this soak's spotml binary still running
// and the task processes under its data directory, and kills them.
func (s *soak) shutdown(rep *Report) {
	if s.gw != nil {
		s.gw.stop(15 * time.Second)
	}
	clean, err := s.up.stop(30 * time.Second)
	var left []string
	deadline := time.Now().Add(10 * time.Second)
	for {
		left = left[:0]
		for _, p := range ownProcesses(s.bin) {
			left = append(left, fmt.Sprintf("pid %d: %s", p.pid, strings.Join(p.args, " ")))
		}
		for _, p := range taskProcesses(s.data) {
			left = append(left, fmt.Sprintf("pid %d (task): %s", p.pid, strings.Join(p.args, " ")))
		}
		if len(left) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	detail := "0 processes of " + s.bin + " and 0 task processes left"
	if len(left) > 0 {
		if len(left) > 8 {
			left = append(left[:8], fmt.Sprintf("... and %d more", len(left)-8))
		}
		detail = fmt.Sprintf("%d processes left 10s after spotml up exited:\n%s", len(left), strings.Join(left, "\n"))
	}
	if !clean {
		detail = fmt.Sprintf("%v; ", err) + detail
	}
	rep.add("no processes left", clean && len(left) == 0, "%s", detail)
	for _, p := range ownProcesses(s.bin) {
		kill(p.pid)
	}
	for _, p := range taskProcesses(s.data) {
		kill(p.pid)
	}
}
