// Package agent is the spotml node agent: it joins the control plane,
// heartbeats, runs the task attempts the control plane assigns as child
// processes (each in its own process group, output captured), moves files
// to and from blob storage, keeps checkpoints there, and watches the
// instance metadata endpoint for an eviction notice. On a notice it tells
// the control plane at once, stops its tasks (SIGTERM, then SIGKILL just
// before the notice runs out), saves their checkpoints and takes no more
// work.
package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/client"
	"github.com/spotml/spotml/internal/notice"
	"github.com/spotml/spotml/internal/proc"
)

// Config says who the agent is and where things are.
type Config struct {
	// Server is the control plane's API URL, or a comma-separated list of
	// its instances' URLs: the agent uses one that answers, moves to the
	// next when it stops answering, and adds the instances the control
	// plane names in its heartbeat answers.
	Server string
	// Credential is the node's own credential (the provider made it at
	// launch). Without one the agent registers with JoinToken and gets
	// its credential back; it forgets the join token then.
	Credential  string
	JoinToken   string
	Node        string
	WorkDir     string
	MetadataURL string // base URL of the instance metadata endpoint
	// MetadataPath, instead of MetadataURL, is where every control-plane
	// instance serves this node's simulated metadata (the local
	// provider's): the agent reads it under each of its servers in turn
	// while one fails, and follows the server list as it changes.
	MetadataPath   string
	MetadataFormat string // azure, aws, gcp
	NoticePoll     time.Duration
	LogUpload      time.Duration // how often running logs go to blob storage; default 3s
	AdvertiseHost  string        // the host gateways reach this node's replicas on; default 127.0.0.1
	// BatchWorker is the command of a BatchInference's worker tasks;
	// default this binary's `spotml batch-worker`.
	BatchWorker []string
}

func (c Config) advertiseHost() string {
	if c.AdvertiseHost == "" {
		return "127.0.0.1"
	}
	return c.AdvertiseHost
}

// Agent runs one node.
type Agent struct {
	cfg   Config
	api   *client.Client
	log   *slog.Logger
	now   func() time.Time
	blobs *blob.Store

	mu      sync.Mutex
	pidsMu  sync.Mutex // one writePIDs at a time: one temporary file, the latest list last
	running map[int64]*attempt
	// ended holds, per task, the last attempt that ended here, until the
	// control plane stops listing the task: a heartbeat answered before
	// the attempt's report was applied still lists it, and must not start
	// the same attempt again.
	ended    map[int64]int
	replicas map[int64]*replica
	deadline time.Time // eviction deadline once a notice arrived
	drainCh  chan struct{}
	wg       sync.WaitGroup

	// metadata is the watcher of MetadataPath under every server, set
	// once Run starts it; the heartbeat gives it the servers as they change.
	metadata atomic.Pointer[notice.Failover]

	// terminate carries a notice from outside the metadata watcher (SIGTERM
	// to a pod's agent); after one, Run returns once the node is drained.
	terminate chan notice.Notice
}

// metadataURLs are MetadataPath under each server the agent knows.
func (a *Agent) metadataURLs() []string {
	servers := a.api.Servers()
	urls := make([]string, len(servers))
	for i, s := range servers {
		urls[i] = strings.TrimSuffix(s, "/") + a.cfg.MetadataPath
	}
	return urls
}

// New returns an agent.
func New(cfg Config, log *slog.Logger, now func() time.Time) *Agent {
	if log == nil {
		log = slog.New(slog.DiscardHandler) // as server.New and control.New
	}
	if cfg.NoticePoll == 0 {
		cfg.NoticePoll = time.Second
	}
	if cfg.LogUpload == 0 {
		cfg.LogUpload = 3 * time.Second
	}
	token := cfg.Credential
	if token == "" {
		token = cfg.JoinToken
	}
	return &Agent{cfg: cfg, api: client.New(cfg.Server, token, client.TryTimeout(tryTimeout)), log: log.With("node", cfg.Node), now: now,
		running: map[int64]*attempt{}, ended: map[int64]int{}, replicas: map[int64]*replica{}, drainCh: make(chan struct{}),
		terminate: make(chan notice.Notice, 1)}
}

// tryTimeout bounds one call to one control-plane instance: a hung one
// (paused, cut off) must not hold heartbeats up for longer than a few
// beats before the next instance is tried.
const tryTimeout = 5 * time.Second

// blobCheckTimeout bounds the check that the blob store can be reached,
// retries included.
const blobCheckTimeout = 30 * time.Second

// errNodeEnded means the control plane says this node is gone.
var errNodeEnded = errors.New("node ended")

// Run joins and works until ctx ends or the control plane ends the node.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		a.wg.Wait()
	}()
	reg, err := a.register(ctx)
	if err != nil {
		return err
	}
	a.blobs, err = blob.NewStore(reg.BlobURL)
	if err != nil {
		return fmt.Errorf("blob store the control plane gave (its --blob-store): %w", err)
	}
	// The store stays open for the agent's life (its buckets are closed
	// with the process): tasks still uploading when Run returns use it.
	//
	// A node that cannot reach the store would lose every output and
	// checkpoint; say so at once, with this node's credentials named,
	// rather than fail each task.
	cctx, ccancel := context.WithTimeout(ctx, blobCheckTimeout)
	err = a.blobs.Check(cctx)
	ccancel()
	if err != nil {
		return fmt.Errorf("node %s cannot use the blob store the control plane gave (its --blob-store); give this node credentials for it: %w", a.cfg.Node, err)
	}
	if reg.StartTask != nil {
		if err := a.runStartTask(ctx, reg); err != nil {
			return err
		}
	}
	if a.cfg.MetadataURL != "" || a.cfg.MetadataPath != "" {
		var w notice.Watcher
		var err error
		hc := &http.Client{Timeout: 5 * time.Second}
		if a.cfg.MetadataPath != "" {
			var f notice.Failover
			if f, err = notice.NewWatchers(a.cfg.MetadataFormat, a.metadataURLs(), hc, a.now); err == nil {
				a.metadata.Store(&f)
				w = f
			}
		} else {
			w, err = notice.NewWatcher(a.cfg.MetadataFormat, a.cfg.MetadataURL, hc, a.now)
		}
		if err != nil {
			return err
		}
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			notice.Watch(ctx, w, a.cfg.NoticePoll, a.log, func(n notice.Notice) {
				a.onNotice(ctx, n)
				if ack, ok := w.(notice.Acknowledger); ok {
					a.acknowledgeWhenDrained(ctx, ack, n)
				}
			})
		}()
		if rw, ok := w.(notice.RiskWatcher); ok {
			a.wg.Add(1)
			go func() {
				defer a.wg.Done()
				notice.WatchRisk(ctx, rw, a.cfg.NoticePoll, a.log, func(r notice.Risk) { a.onRisk(ctx, r) })
			}()
		}
	}
	interval := reg.HeartbeatInterval
	if interval <= 0 {
		interval = time.Second
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	var terminating time.Time // the deadline of a Terminate
	for {
		err := a.heartbeat(ctx)
		if errors.Is(err, errNodeEnded) {
			a.log.Info("control plane ended this node; stopping")
			a.stopAll()
			return nil
		}
		if err != nil && ctx.Err() == nil {
			a.log.Warn("heartbeat failed; retrying", "err", err)
		}
		if !terminating.IsZero() && (a.drained() || !a.now().Before(terminating)) {
			// Every attempt has reported (checkpoint saved first) and the
			// replicas are down: nothing is left for the grace period.
			a.log.Info("drained after termination notice; exiting")
			a.stopAll()
			return nil
		}
		select {
		case <-ctx.Done():
			a.stopAll()
			return nil
		case n := <-a.terminate:
			terminating = n.Deadline
			// Reported before the next beat, so that the control plane
			// hears of the notice before the node drains and goes.
			a.onNotice(ctx, n)
		case <-t.C:
		}
	}
}

// Terminate is an eviction notice from outside the metadata watcher: the
// SIGTERM Kubernetes sends an agent pod's container when its pod is
// evicted or deleted, with the pod's grace period to go. The agent drains
// as on any notice (reports it, stops its tasks, saves their checkpoints,
// reports them preempted), and Run returns once it has drained or the
// deadline has passed. Only the first notice counts.
func (a *Agent) Terminate(n notice.Notice) {
	select {
	case a.terminate <- n:
	default:
	}
}

func (a *Agent) register(ctx context.Context) (api.RegisterResponse, error) {
	var resp api.RegisterResponse
	for {
		err := a.api.Do(ctx, http.MethodPost, api.Prefix+"/agent/register", api.RegisterRequest{Node: a.cfg.Node, PID: os.Getpid()}, &resp)
		if err == nil {
			if resp.Credential != "" {
				// Joined with the join token: from now on this node speaks
				// with its own credential only.
				a.api = a.api.WithToken(resp.Credential)
				a.cfg.JoinToken, a.cfg.Credential = "", resp.Credential
			}
			if a.cfg.Credential == "" {
				return resp, errors.New("join: the control plane gave this node no credential; is it an older spotml?")
			}
			a.log.Info("joined", "blob", resp.BlobURL, "heartbeat", resp.HeartbeatInterval)
			return resp, nil
		}
		if c := client.Code(err); c == http.StatusConflict || c == http.StatusNotFound || c == http.StatusUnauthorized || c == http.StatusForbidden {
			return resp, fmt.Errorf("join refused: %w", err)
		}
		a.log.Warn("cannot join yet; retrying", "err", err)
		select {
		case <-ctx.Done():
			return resp, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

func (a *Agent) runStartTask(ctx context.Context, reg api.RegisterResponse) error {
	st := reg.StartTask
	if len(st.Command) == 0 {
		return nil
	}
	dir := filepath.Join(a.cfg.WorkDir, "starttask")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, st.Command[0], st.Command[1:]...)
	cmd.Dir = dir
	cmd.Env = append(Environ(os.Environ()), "SPOTML_NODE="+a.cfg.Node)
	for k, v := range st.Env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	out, err := cmd.CombinedOutput()
	os.WriteFile(filepath.Join(dir, "output.log"), out, 0o644)
	if err != nil {
		return fmt.Errorf("start task %q failed: %w (output in %s)", strings.Join(st.Command, " "), err, filepath.Join(dir, "output.log"))
	}
	return nil
}

// heartbeat reports what runs and reconciles with what should run.
func (a *Agent) heartbeat(ctx context.Context) error {
	a.mu.Lock()
	req := api.HeartbeatRequest{Node: a.cfg.Node, Ready: true}
	sentProgress := map[*attempt]api.Progress{}
	for id, at := range a.running {
		rt := api.RunningTask{TaskID: id, Attempt: at.as.Attempt, Progress: at.progress.changed()}
		if rt.Progress != nil {
			sentProgress[at] = *rt.Progress
		}
		req.Running = append(req.Running, rt)
	}
	for _, rp := range a.replicas {
		req.Replicas = append(req.Replicas, rp.status())
	}
	a.mu.Unlock()
	var resp api.HeartbeatResponse
	err := a.api.Do(ctx, http.MethodPost, api.Prefix+"/agent/heartbeat", req, &resp)
	// 401: this node's credential stopped working because the node ended
	// (409 and 404 are what an older control plane says).
	if c := client.Code(err); c == http.StatusConflict || c == http.StatusNotFound || c == http.StatusUnauthorized || c == http.StatusForbidden {
		a.log.Warn("control plane refuses this node", "err", err)
		return errNodeEnded
	}
	if err != nil {
		return err
	}
	for at, p := range sentProgress {
		at.progress.ack(p)
	}
	if len(resp.Servers) > 0 {
		// The instances up now, then the ones this agent was started
		// with (one may come back on its old address).
		given := client.ParseServers(a.cfg.Server)
		a.api.SetServers(append(reachable(resp.Servers, given), given...))
		if f := a.metadata.Load(); f != nil {
			(*f).SetBaseURLs(a.metadataURLs())
		}
	}
	want := map[int64]api.Assignment{}
	for _, as := range resp.Tasks {
		want[as.TaskID] = as
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for id, at := range a.running {
		if as, ok := want[id]; !ok || as.Attempt != at.as.Attempt {
			if !at.reporting() {
				a.log.Info("attempt no longer assigned; stopping it", "task", at.as.Job+"/"+at.as.Task, "attempt", at.as.Attempt)
				at.cancel()
			}
		}
	}
	for id := range a.ended {
		if _, ok := want[id]; !ok {
			delete(a.ended, id) // the control plane has seen the end
		}
	}
	a.syncReplicas(ctx, resp.Replicas)
	if !a.deadline.IsZero() {
		return nil // draining: no new work
	}
	ids := make([]int64, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	for _, id := range ids {
		if _, ok := a.running[id]; ok {
			continue // running, or the old attempt is still stopping: start at the next beat
		}
		if a.ended[id] >= want[id].Attempt {
			continue // ran here already; its report is not applied yet
		}
		at := newAttempt(a, want[id])
		a.running[id] = at
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			at.run(ctx)
			a.mu.Lock()
			if a.running[id] == at {
				delete(a.running, id)
				a.ended[id] = max(a.ended[id], at.as.Attempt)
			}
			a.mu.Unlock()
			a.writePIDs()
		}()
	}
	return nil
}

// syncReplicas starts the replicas the control plane wants here and
// drains the rest. A replica that ended is forgotten once the control
// plane no longer lists it (it has seen the end). Called with a.mu held.
func (a *Agent) syncReplicas(ctx context.Context, want []api.ReplicaAssignment) {
	wanted := map[int64]api.ReplicaAssignment{}
	for _, as := range want {
		wanted[as.ID] = as
	}
	for id, rp := range a.replicas {
		if _, ok := wanted[id]; ok {
			continue
		}
		if rp.isExited() {
			delete(a.replicas, id)
			continue
		}
		rp.stop()
	}
	if !a.deadline.IsZero() {
		return
	}
	for _, as := range want {
		if _, ok := a.replicas[as.ID]; ok {
			continue
		}
		rp := newReplica(a, as)
		a.replicas[as.ID] = rp
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			rp.run(ctx)
		}()
	}
}

// onNotice is called once when the watcher sees an eviction notice.
func (a *Agent) onNotice(ctx context.Context, n notice.Notice) {
	a.mu.Lock()
	if !a.deadline.IsZero() {
		a.mu.Unlock()
		return
	}
	a.deadline = n.Deadline
	close(a.drainCh)
	a.mu.Unlock()
	a.log.Warn("eviction notice", "deadline", n.Deadline, "format", n.Format, "detail", n.Detail)
	// Tell the control plane first: it stops placing work here and can
	// launch a replacement while we drain.
	for i := 0; i < 5; i++ {
		err := a.api.Do(ctx, http.MethodPost, api.Prefix+"/agent/notice",
			api.NoticeRequest{Node: a.cfg.Node, Deadline: n.Deadline, Format: n.Format, Detail: n.Detail}, nil)
		if err == nil || ctx.Err() != nil {
			break
		}
		a.log.Warn("cannot report notice; retrying", "err", err)
		time.Sleep(200 * time.Millisecond)
	}
}

// onRisk is called once when the watcher sees an early warning (AWS's
// rebalance recommendation). The agent only passes it on: the control
// plane launches a replacement, and this node keeps working until a
// notice comes, if one does.
func (a *Agent) onRisk(ctx context.Context, r notice.Risk) {
	a.mu.Lock()
	draining := !a.deadline.IsZero()
	a.mu.Unlock()
	if draining {
		return // the notice came first: the replacement is on its way
	}
	a.log.Warn("at risk of eviction", "since", r.Since, "format", r.Format, "detail", r.Detail)
	for i := 0; i < 5; i++ {
		err := a.api.Do(ctx, http.MethodPost, api.Prefix+"/agent/at-risk",
			api.AtRiskRequest{Node: a.cfg.Node, Since: r.Since, Format: r.Format, Detail: r.Detail}, nil)
		if err == nil || ctx.Err() != nil {
			break
		}
		a.log.Warn("cannot report the early warning; retrying", "err", err)
		time.Sleep(200 * time.Millisecond)
	}
}

// acknowledgeWhenDrained tells the cloud the node is ready for the eviction
// once its tasks have ended and its replicas stopped, as Microsoft documents
// for Scheduled Events; the cloud may then evict it sooner. Past the
// deadline there is nothing left to approve.
func (a *Agent) acknowledgeWhenDrained(ctx context.Context, ack notice.Acknowledger, n notice.Notice) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for !a.drained() {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !a.now().Before(n.Deadline) {
			return
		}
	}
	if err := ack.Acknowledge(ctx, n); err != nil {
		a.log.Warn("cannot acknowledge the eviction notice", "detail", n.Detail, "err", err)
		return
	}
	a.log.Info("eviction notice acknowledged", "detail", n.Detail)
}

// drained reports whether no task runs and no replica is left running.
func (a *Agent) drained() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.running) > 0 {
		return false
	}
	for _, rp := range a.replicas {
		if !rp.isExited() {
			return false
		}
	}
	return true
}

// draining returns the eviction deadline, zero if none.
func (a *Agent) draining() time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.deadline
}

func (a *Agent) stopAll() {
	a.mu.Lock()
	for _, at := range a.running {
		at.cancel()
	}
	for _, rp := range a.replicas {
		rp.stop()
	}
	a.mu.Unlock()
}

// writePIDs records the task process groups, each with its leader's start
// time, so that whoever kills this node (the local provider) can kill its
// tasks too, and only them (proc.KillGroup). Attempts that end together (a
// notice stops them all) call it at once: each writes the list it read
// while no other writes.
func (a *Agent) writePIDs() {
	a.pidsMu.Lock()
	defer a.pidsMu.Unlock()
	a.mu.Lock()
	var groups []proc.ID
	for _, at := range a.running {
		if g := at.processGroup(); g.PID > 0 {
			groups = append(groups, g)
		}
	}
	for _, rp := range a.replicas {
		if g := rp.processGroup(); g.PID > 0 {
			groups = append(groups, g)
		}
	}
	a.mu.Unlock()
	if err := proc.WriteFile(filepath.Join(a.cfg.WorkDir, "tasks.pids"), groups); err != nil {
		a.log.Warn("cannot record task process groups", "err", err)
	}
}

// identify names a child just started, before it can be reaped. Without
// a start time (not Linux) the group is recorded with none, and is not
// killed by its PID later.
func identify(pid int) proc.ID {
	id, err := proc.Identify(pid)
	if err != nil {
		return proc.ID{PID: pid}
	}
	return id
}

// report sends an attempt's end until the control plane takes it (it may
// be restarting) or ctx ends.
func (a *Agent) report(ctx context.Context, as api.Assignment, outcome string, code int, msg string) {
	req := api.ReportRequest{Node: a.cfg.Node, Attempt: as.Attempt, Outcome: outcome, ExitCode: code, Message: msg}
	path := fmt.Sprintf("%s/agent/tasks/%d/report", api.Prefix, as.TaskID)
	for delay := 200 * time.Millisecond; ; delay = min(delay*2, 5*time.Second) {
		err := a.api.Do(ctx, http.MethodPost, path, req, nil)
		if err == nil {
			a.log.Info("attempt reported", "task", as.Job+"/"+as.Task, "attempt", as.Attempt, "outcome", outcome, "exit", code)
			return
		}
		if c := client.Code(err); c >= 400 && c < 500 && c != http.StatusTooManyRequests {
			a.log.Error("report refused", "task", as.Job+"/"+as.Task, "err", err)
			return
		}
		a.log.Warn("cannot report; retrying", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(delay):
		}
	}
}

// reachable drops from learned the URLs that name this machine (loopback,
// or an unspecified address such as an instance's default 0.0.0.0) unless
// the agent was itself given such a URL: on another machine they would
// name a port of this node, where a task may listen, and the agent would
// hand it its credential.
func reachable(learned, given []string) []string {
	local := func(u string) bool {
		pu, err := url.Parse(u)
		if err != nil {
			return true
		}
		h := pu.Hostname()
		if h == "localhost" {
			return true
		}
		ip := net.ParseIP(h)
		return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
	}
	if slices.ContainsFunc(given, local) {
		return learned
	}
	var out []string
	for _, u := range learned {
		if !local(u) {
			out = append(out, u)
		}
	}
	return out
}

// Environ returns env without spotml's secrets: whatever spotml starts
// (agents, start tasks, tasks, replicas) inherits the rest of its
// environment, never a token or credential, so that a task cannot act as
// its node, another node or an admin. A secret is any SPOTML_ variable
// whose name holds TOKEN or CREDENTIAL (SPOTML_TOKEN, SPOTML_JOIN_TOKEN,
// SPOTML_NODE_CREDENTIAL).
func Environ(env []string) []string {
	out := make([]string, 0, len(env))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(name, "SPOTML_") && (strings.Contains(name, "TOKEN") || strings.Contains(name, "CREDENTIAL")) {
			continue
		}
		out = append(out, kv)
	}
	return out
}
