// Package local is the provider that runs nodes as agent processes on this
// machine and simulates the spot market around them: random evictions at a
// pool's rate, eviction notices published through simulated instance
// metadata endpoints (Azure, AWS or GCP format), the kill when the notice
// runs out, and launches refused for lack of capacity.
package local

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spotml/spotml/internal/agent"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/notice"
	"github.com/spotml/spotml/internal/proc"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// Name is the provider name pools use.
const Name = "local"

// MetadataPrefix is where the control plane's HTTP server mounts Metadata.
const MetadataPrefix = "/imds"

// Config says how to start agents.
type Config struct {
	Binary    string // the spotml executable
	ServerURL string // this control-plane instance as agents reach it
	// Servers, when set, returns the API URLs of every control-plane
	// instance sharing the store: agents get them after ServerURL, so
	// that they keep working when this instance goes.
	Servers  func() []string
	DataDir  string        // node work directories go under DataDir/nodes
	Interval time.Duration // market tick; default 250ms
	// AgentArgs are extra flags passed to every agent (e.g. heartbeat).
	AgentArgs []string
	// Rand draws capacity shortages and evictions; nil means one seeded at
	// random. Tests pass a seeded one to make the market repeatable.
	Rand *rand.Rand
}

// Local is the local provider. It writes no store: what its market does
// goes to the control plane through the sink Run is given.
type Local struct {
	metadata *notice.Server
	cfg      Config
	log      *slog.Logger
	now      func() time.Time

	randMu sync.Mutex // Launch and the market draw from different goroutines
	rand   *rand.Rand

	mu   sync.Mutex
	sink control.Sink // set by Run
	view control.View

	replay replays

	// ticked is when the market last ran (time.Now, UnixNano): while it
	// runs here it serves the notices itself, and Mirror has nothing to add.
	ticked atomic.Int64
}

var (
	_ control.Provider = (*Local)(nil)
	_ control.Runner   = (*Local)(nil)
	_ control.Evicter  = (*Local)(nil)
)

// New returns a local provider.
func New(cfg Config, log *slog.Logger, now func() time.Time) *Local {
	if cfg.Interval == 0 {
		cfg.Interval = 250 * time.Millisecond
	}
	r := cfg.Rand
	if r == nil {
		r = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	return &Local{metadata: notice.NewServer(now, log), cfg: cfg, log: log, now: now, rand: r}
}

// draw reports whether an event of probability p happens.
func (l *Local) draw(p float64) bool {
	l.randMu.Lock()
	defer l.randMu.Unlock()
	return l.rand.Float64() < p
}

// Metadata is the handler serving every local node's instance metadata;
// mount it under MetadataPrefix.
func (l *Local) Metadata() *notice.Server { return l.metadata }

// Launch starts a node's agent process. A spot pool's capacityShortage is
// the chance the market refuses the launch. The node's provider ID is its
// work directory, which a restart keeps.
func (l *Local) Launch(ctx context.Context, req control.LaunchRequest) (control.Launched, error) {
	pool, n := req.Pool, req.Node
	if pool.Spec.Priority == spec.PrioritySpot && l.draw(pool.Spec.Market().CapacityShortage) {
		return control.Launched{}, fmt.Errorf("%w: no spot capacity for %s in zone %q now", control.ErrNoCapacity, pool.Spec.InstanceType, n.Zone)
	}
	if pool.Spec.Priority == spec.PrioritySpot {
		why, err := l.traceRefuses(ctx, pool, n.Name)
		if err != nil {
			return control.Launched{}, err
		}
		if why != "" {
			return control.Launched{}, fmt.Errorf("%w: no spot capacity for %s: %s", control.ErrNoCapacity, pool.Spec.InstanceType, why)
		}
	}
	wd := filepath.Join(l.cfg.DataDir, "nodes", n.Name)
	if req.Restart && l.ours(n.ProviderID) {
		wd = n.ProviderID
	}
	if err := os.MkdirAll(wd, 0o755); err != nil {
		return control.Launched{}, err
	}
	format := noticeFormat(pool)
	logf, err := os.OpenFile(filepath.Join(wd, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return control.Launched{}, err
	}
	defer logf.Close()
	// The node's own credential, bound to its name; the agent reads the
	// file and deletes it, so that its tasks find no secret.
	cred := req.Credential
	credFile := filepath.Join(wd, "credential")
	os.Remove(credFile)
	if err := os.WriteFile(credFile, []byte(cred+"\n"), 0o600); err != nil {
		return control.Launched{}, err
	}
	args := append([]string{"agent",
		"--credential-file", credFile,
		"--server", l.servers(),
		"--node", n.Name,
		"--workdir", wd,
		"--metadata-path", notice.BaseURL(MetadataPrefix, n.Name),
		"--metadata-format", format,
	}, l.cfg.AgentArgs...)
	cmd := exec.Command(l.cfg.Binary, args...)
	cmd.Env = agent.Environ(os.Environ())
	cmd.Dir = wd
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so that a kill takes the node and not us, and
	// it outlives a control plane restart like a real machine would.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A VM boots: its metadata starts afresh, once, and from now on changes
	// only when the node's state does.
	l.metadata.Register(n.Name, format)
	if err := cmd.Start(); err != nil {
		l.metadata.Remove(n.Name)
		os.Remove(credFile) // no agent will read and delete it
		return control.Launched{}, fmt.Errorf("start agent for %s: %w", n.Name, err)
	}
	// Its identity is read before it can be reaped, so it names this
	// process; killNode checks it before killing the stored PID.
	id, err := proc.Identify(cmd.Process.Pid)
	if err == nil {
		err = proc.WriteFile(filepath.Join(wd, agentPIDFile), []proc.ID{id})
	}
	if err != nil {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
		l.metadata.Remove(n.Name)
		return control.Launched{}, fmt.Errorf("record agent of %s: %w", n.Name, err)
	}
	go cmd.Wait() // reap
	l.log.Info("node launched", "node", n.Name, "pid", cmd.Process.Pid, "zone", n.Zone)
	return control.Launched{ProviderID: wd}, nil
}

// servers is the --server list of a new agent: this instance first.
func (l *Local) servers() string {
	list := []string{l.cfg.ServerURL}
	if l.cfg.Servers != nil {
		for _, s := range l.cfg.Servers() {
			if !slices.Contains(list, s) {
				list = append(list, s)
			}
		}
	}
	return strings.Join(list, ",")
}

// Mirror serves on this instance's metadata endpoint what the store says
// of the local nodes, until ctx ends: their documents while they live and
// the notices they were given, whether or not this instance leads (only
// the leader's market gives notices). Agents read whichever instance
// answers.
func (l *Local) Mirror(ctx context.Context, view control.View) error {
	t := time.NewTicker(l.cfg.Interval)
	defer t.Stop()
	for {
		if err := l.mirror(ctx, view); err != nil && ctx.Err() == nil {
			l.log.Warn("metadata mirror failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (l *Local) mirror(ctx context.Context, view control.View) error {
	if time.Since(time.Unix(0, l.ticked.Load())) < 2*l.cfg.Interval {
		return nil // this instance leads: its market serves them
	}
	pools, err := view.ListPools(ctx)
	if err != nil {
		return err
	}
	byName := map[string]spec.Pool{}
	for _, p := range pools {
		if p.Spec.Spec.Provider == Name {
			byName[p.Spec.Metadata.Name] = p.Spec
		}
	}
	if len(byName) == 0 && len(l.metadata.Names()) == 0 {
		return nil
	}
	nodes, err := view.ListNodes(ctx)
	if err != nil {
		return err
	}
	ended := map[string]bool{}
	for _, n := range nodes {
		pool, ok := byName[n.Pool]
		if !ok {
			continue
		}
		if !store.Live(n.State) {
			ended[n.Name] = true
			continue
		}
		l.metadata.Ensure(n.Name, noticeFormat(pool))
		if !n.NoticeDeadline.IsZero() {
			l.publish(n.Name, n.NoticeDeadline, pool)
		}
	}
	// Only nodes the store says have ended: one launched this instant is
	// served before this pass reads its row.
	for _, name := range l.metadata.Names() {
		if ended[name] {
			l.metadata.Remove(name)
		}
	}
	return nil
}

// Stop kills a node: its agent and every task process group it recorded,
// as a machine being taken away would.
func (l *Local) Stop(ctx context.Context, n store.Node) error {
	l.metadata.Remove(n.Name)
	l.killNode(n)
	return nil
}

// Files in a node's work directory naming its processes, one proc.ID a
// line: the agent's, written at launch, and its task and replica process
// groups', written by the agent.
const (
	agentPIDFile = "agent.pid"
	tasksPIDFile = "tasks.pids"
)

// killNode kills the agent's process group and its tasks' groups, named
// in files under the node's work directory (its provider ID). Each stored
// PID is killed only while it names the process that was started
// (proc.KillGroup): the control plane may have restarted, and the agent
// died, long after the PID was stored, and Linux hands PIDs out again.
func (l *Local) killNode(n store.Node) {
	wd := n.ProviderID
	if wd == "" {
		// Launched, but the control plane stopped before it stored the
		// provider ID (spotml up stopping mid-launch): the agent runs in
		// the work directory a launch makes.
		wd = filepath.Join(l.cfg.DataDir, "nodes", n.Name)
	}
	if !l.ours(wd) {
		if wd != "" {
			l.log.Warn("node's work directory is not under this data directory; its processes are left alone", "node", n.Name, "dir", wd)
		}
		return
	}
	for _, f := range []struct{ file, what string }{{agentPIDFile, "agent"}, {tasksPIDFile, "task"}} {
		ids, err := proc.ReadFile(filepath.Join(wd, f.file))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			l.log.Warn("cannot read the node's process groups", "node", n.Name, "file", f.file, "err", err)
		}
		for _, id := range ids {
			l.kill(n.Name, f.what, id)
		}
	}
}

// ours reports whether a node's work directory is one this provider
// makes, under its data directory. A store restored from another data
// directory (spotml restore) names nodes of the spotml that made the
// backup, which may still be running them: their processes are not ours
// to kill, nor their disks ours to restart on.
func (l *Local) ours(wd string) bool {
	if wd == "" {
		return false
	}
	rel, err := filepath.Rel(filepath.Join(l.cfg.DataDir, "nodes"), wd)
	return err == nil && rel != "." && filepath.IsLocal(rel)
}

func (l *Local) kill(node, what string, id proc.ID) {
	if err := proc.KillGroup(id); err != nil {
		l.log.Warn("stored process not killed", "node", node, "process", what, "pid", id.PID, "err", err)
	}
}

// Evict gives a node an eviction notice; it is killed when the notice runs
// out. The control plane has checked that the node is live and local.
func (l *Local) Evict(ctx context.Context, name string, noticeFor time.Duration) error {
	sink, view := l.market()
	if sink == nil {
		return errors.New("the local market is not running yet; try again in a moment")
	}
	nodes, err := view.ListNodes(ctx)
	if err != nil {
		return err
	}
	pools, err := view.ListPools(ctx)
	if err != nil {
		return err
	}
	return l.evict(ctx, sink, nodes, pools, name, noticeFor)
}

func (l *Local) evict(ctx context.Context, sink control.Sink, nodes []store.Node, pools []store.Pool, name string, noticeFor time.Duration) error {
	var node *store.Node
	for i := range nodes {
		if nodes[i].Name == name {
			node = &nodes[i]
		}
	}
	if node == nil {
		return fmt.Errorf("node %q: %w", name, store.ErrNotFound)
	}
	var pool *spec.Pool
	for i := range pools {
		if pools[i].Spec.Metadata.Name == node.Pool {
			pool = &pools[i].Spec
		}
	}
	if pool == nil || pool.Spec.Provider != Name {
		return store.Conflict("node %s is not in a pool of the local provider", name)
	}
	if noticeFor <= 0 {
		noticeFor = pool.Spec.Market().Notice.Duration
	}
	deadline := l.now().Add(noticeFor)
	if err := sink.Notice(ctx, name, deadline, "provider"); err != nil {
		return err
	}
	l.publish(name, deadline, *pool)
	return nil
}

func (l *Local) market() (control.Sink, control.View) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sink, l.view
}

func (l *Local) publish(node string, deadline time.Time, pool spec.Pool) {
	action := "terminate"
	if pool.Spec.EvictionPolicy == spec.EvictionDeallocate {
		action = "stop"
	}
	l.metadata.Set(node, deadline, action)
}

// Run runs the simulated market until ctx ends, reporting what it does to
// sink.
func (l *Local) Run(ctx context.Context, sink control.Sink, view control.View) error {
	l.mu.Lock()
	l.sink, l.view = sink, view
	l.mu.Unlock()
	t := time.NewTicker(l.cfg.Interval)
	defer t.Stop()
	last := l.now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		now := l.now()
		l.ticked.Store(time.Now().UnixNano())
		if err := l.tick(ctx, sink, view, now.Sub(last)); err != nil && ctx.Err() == nil {
			l.log.Error("market tick failed", "err", err)
		}
		last = now
	}
}

// tick replays the traced markets, publishes the notices the store holds
// (so a restarted control plane serves them again), ends nodes whose
// notice ran out, and draws random evictions at each spot pool's rate.
func (l *Local) tick(ctx context.Context, sink control.Sink, view control.View, dt time.Duration) error {
	pools, err := view.ListPools(ctx)
	if err != nil {
		return err
	}
	byName := map[string]spec.Pool{}
	for _, p := range pools {
		if p.Spec.Spec.Provider == Name {
			byName[p.Spec.Metadata.Name] = p.Spec
		}
	}
	nodes, err := view.ListNodes(ctx)
	if err != nil {
		return err
	}
	now := l.now()
	// Traced markets first; the nodes they evict are not drawn again.
	traced := map[string]bool{}
	for _, p := range pools {
		if p.Spec.Spec.Provider == Name && p.Spec.Spec.Priority == spec.PrioritySpot {
			evicted, err := l.replayMarket(ctx, sink, p, nodes, pools, now)
			if err != nil {
				return err
			}
			for _, n := range evicted {
				traced[n] = true
			}
		}
	}
	for _, n := range nodes {
		pool, ok := byName[n.Pool]
		if !ok || !store.Live(n.State) || traced[n.Name] {
			continue
		}
		// Registered at launch; Ensure only brings back the nodes a
		// restarted control plane has not served yet.
		l.metadata.Ensure(n.Name, noticeFormat(pool))
		switch {
		case !n.NoticeDeadline.IsZero() && !now.Before(n.NoticeDeadline):
			state, reason := store.NodePreempted, "SpotEviction: notice ran out, node taken back"
			if pool.Spec.EvictionPolicy == spec.EvictionDeallocate {
				state, reason = store.NodeDeallocated, "SpotEviction: notice ran out, node deallocated (disk kept)"
			}
			l.killNode(n)
			l.metadata.Remove(n.Name)
			if err := sink.Gone(ctx, n.Name, state, reason); err != nil {
				return err
			}
			l.log.Info("node evicted", "node", n.Name, "state", state)
		case !n.NoticeDeadline.IsZero():
			l.publish(n.Name, n.NoticeDeadline, pool)
		case pool.Spec.Priority == spec.PrioritySpot && n.State == store.NodeReady && pool.Spec.Market().EvictionRate > 0:
			if l.draw(pool.Spec.Market().EvictionRate * dt.Hours()) {
				if err := l.evict(ctx, sink, nodes, pools, n.Name, 0); err != nil {
					return err
				}
				l.log.Info("market evicts node", "node", n.Name, "notice", pool.Spec.Market().Notice.Duration)
			}
		}
	}
	return nil
}

// noticeFormat is the metadata format of a pool's nodes.
func noticeFormat(pool spec.Pool) string {
	if pool.Spec.Market().NoticeFormat == "" {
		return spec.NoticeAzure
	}
	return pool.Spec.Market().NoticeFormat
}
