// Package control runs the control plane's reconcilers: the batch
// scheduler, node liveness, and pool scaling. Each pass re-reads the whole
// state from the store and acts on the difference (level-triggered), so a
// restarted control plane simply carries on.
package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/placement"
	"github.com/spotml/spotml/internal/sched"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// Options tunes the control loops. Zero values get defaults.
type Options struct {
	Interval         time.Duration // between reconcile passes; default 500ms
	NodeTimeout      time.Duration // heartbeat silence before a node is lost; default 15s
	ProvisionTimeout time.Duration // provisioning before a node is lost; default 120s
	SampleEvery      time.Duration // between service samples (the console's history); default SampleEvery
	// Retention is how long ended nodes, node runs, attempts, replicas and
	// events are kept; older ones are pruned every PruneEvery in batches
	// of PruneBatch, node runs rolled up per pool and day first. Default
	// store.DefaultRetention; negative keeps everything.
	Retention  time.Duration
	PruneEvery time.Duration // default 1m
	PruneBatch int           // rows of each kind per transaction; default 500
	// BatchInputs lists a BatchInference's inputs (the blob store's
	// keys under input.uri matching input.pattern) in key order, a page at
	// a time, for the listing after an apply and for trigger: watch; nil:
	// batches queue only what their apply did.
	BatchInputs func(ctx context.Context, in spec.BatchInput, page func([]string) error) error
	// BatchPublisher sends the work of BatchInferences whose queue.uri
	// is a broker; nil: such batches get no work.
	BatchPublisher BatchPublisher
	// Instance is this control-plane process among those sharing the
	// store: its ID (default NewInstanceID()) holds the leader lease.
	Instance store.Instance
	// LeaseTTL is how long the leader lease lasts unrenewed; the leader
	// renews it every LeaseTTL/3. Default DefaultLeaseTTL.
	LeaseTTL time.Duration
	// RepriceEvery is how often nodes of pools on cloud prices are
	// priced again (see Reprice); default DefaultRepriceEvery.
	RepriceEvery time.Duration
}

// Plane is the control plane's set of reconcilers.
type Plane struct {
	store     *sqlstore.Store
	providers map[string]Provider
	log       *slog.Logger
	now       func() time.Time
	opt       Options
	kick      chan struct{}
	relay     chan struct{} // kicks for the leader, when another instance leads
	lead      leader
	servers   atomic.Pointer[[]string] // Servers: instances' API URLs
	// created is when this Plane was made: the liveness grace for passes
	// run outside Run (tests, tools), where no term has begun.
	created time.Time

	mu      sync.Mutex
	backoff map[string]time.Time // pool -> no launch before
	gens    map[string]int64     // pool -> generation its backoff is for
	fails   map[string]int
	// The spot preemptions of the last SpareWindow as last read, and the
	// spare spot replicas each service was last given (see spares.go).
	preempt   []placement.Preemption
	preemptAt time.Time
	spare     map[string]spareState
	probed    map[string]time.Time // pool -> last spot probe (deadline.go)
}

// New returns a control plane over st using the given providers by name.
// A nil log discards what it would log.
func New(st *sqlstore.Store, providers map[string]Provider, log *slog.Logger, now func() time.Time, opt Options) *Plane {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opt.Interval == 0 {
		opt.Interval = 500 * time.Millisecond
	}
	if opt.NodeTimeout == 0 {
		opt.NodeTimeout = 15 * time.Second
	}
	if opt.ProvisionTimeout == 0 {
		opt.ProvisionTimeout = 120 * time.Second
	}
	if opt.SampleEvery == 0 {
		opt.SampleEvery = SampleEvery
	}
	if opt.Retention == 0 {
		opt.Retention = store.DefaultRetention
	}
	if opt.PruneEvery == 0 {
		opt.PruneEvery = time.Minute
	}
	if opt.PruneBatch == 0 {
		opt.PruneBatch = 500
	}
	if opt.RepriceEvery <= 0 {
		opt.RepriceEvery = DefaultRepriceEvery
	}
	if opt.LeaseTTL == 0 {
		opt.LeaseTTL = DefaultLeaseTTL
	}
	if opt.Instance.ID == "" {
		opt.Instance.ID = NewInstanceID()
	}
	if opt.Instance.Started.IsZero() {
		opt.Instance.Started = now()
	}
	return &Plane{store: st, providers: providers, log: log, now: now, opt: opt, created: now(),
		kick: make(chan struct{}, 1), relay: make(chan struct{}, 1), backoff: map[string]time.Time{}, fails: map[string]int{}, gens: map[string]int64{}, spare: map[string]spareState{}}
}

// Kick asks for a reconcile pass soon (after a submit, a report, a notice).
// The leader runs it: an instance that does not lead passes the kick on
// through the store (a notification the leader listens for), where the
// store has notifications; on one SQLite store the one instance leads.
func (p *Plane) Kick() {
	ch := p.kick
	if p.store.Notifies() && !p.Leadership().Leading {
		ch = p.relay
	}
	select {
	case ch <- struct{}{}:
	default:
	}
}

// kickLocal asks this instance's leader loop for a pass soon.
func (p *Plane) kickLocal() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Reconcile runs one pass of every loop. It reads the live nodes once
// (never the ended ones, which are history) and hands them to each loop;
// the queue and the replicas, which the loops change, each re-reads.
func (p *Plane) Reconcile(ctx context.Context) error {
	nodes, err := p.store.LiveNodes(ctx)
	if err != nil {
		return err
	}
	nodes, lerr := p.checkLiveness(ctx, nodes)
	return errors.Join(lerr, p.reconcileServices(ctx, nodes), p.reconcileBatches(ctx), p.steerJobs(ctx), p.schedule(ctx, nodes), p.scalePools(ctx, nodes))
}

// checkLiveness ends nodes whose agent went silent; their tasks requeue.
// It returns the nodes still live.
func (p *Plane) checkLiveness(ctx context.Context, nodes []store.Node) ([]store.Node, error) {
	now := p.now()
	var errs []error
	kept := nodes[:0:0]
	for _, n := range nodes {
		var why string
		// Heartbeats are kept in memory by whichever instance heard them
		// and flushed every few seconds, so a node gets a full
		// NodeTimeout from when this instance began leading (not from its
		// last stored heartbeat) before it is called lost.
		last := n.HeartbeatAt
		since := p.Leadership().Since
		if since.IsZero() {
			since = p.created
		}
		if last.Before(since) {
			last = since
		}
		switch {
		case n.State == store.NodeProvisioning && n.HeartbeatAt.IsZero() && now.Sub(n.StateAt) > p.opt.ProvisionTimeout:
			why = fmt.Sprintf("agent did not join within %s", p.opt.ProvisionTimeout)
		case store.Live(n.State) && !n.HeartbeatAt.IsZero() && now.Sub(last) > p.opt.NodeTimeout:
			why = fmt.Sprintf("no heartbeat for %s", now.Sub(n.HeartbeatAt).Round(time.Second))
		default:
			kept = append(kept, n)
			continue
		}
		p.log.Warn("node lost", "node", n.Name, "why", why)
		if err := p.store.EndNode(ctx, n.Name, store.NodeLost, why); err != nil {
			errs = append(errs, err)
			kept = append(kept, n)
			continue
		}
		errs = append(errs, p.stop(ctx, n))
	}
	return kept, errors.Join(errs...)
}

// runFlusher writes the heartbeats the store keeps in memory every
// store.HeartbeatFlushEvery, until ctx ends.
func (p *Plane) runFlusher(ctx context.Context) {
	t := time.NewTicker(store.HeartbeatFlushEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := p.store.FlushHeartbeats(ctx); err != nil && ctx.Err() == nil {
			p.log.Error("flush heartbeats failed", "err", err)
		}
	}
}

// runPruner removes history older than the retention every PruneEvery,
// one small transaction at a time, until ctx ends.
func (p *Plane) runPruner(ctx context.Context) {
	t := time.NewTicker(p.opt.PruneEvery)
	defer t.Stop()
	for {
		if _, err := p.Prune(ctx); p.fenced(err) != nil && ctx.Err() == nil {
			p.log.Error("prune failed", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Prune removes ended nodes, node runs, attempts, replicas and events older
// than the retention, in batches, and returns how many rows went.
func (p *Plane) Prune(ctx context.Context) (store.PruneStats, error) {
	var sum store.PruneStats
	if p.opt.Retention <= 0 {
		return sum, nil
	}
	before := p.now().Add(-p.opt.Retention)
	for ctx.Err() == nil {
		st, err := p.store.Prune(ctx, before, p.opt.PruneBatch)
		if err != nil {
			return sum, err
		}
		sum = sum.Add(st)
		if st.Total() == 0 {
			break
		}
	}
	if sum.Total() > 0 {
		p.log.Info("pruned history", "before", before, "nodes", sum.Nodes, "runs", sum.Runs, "attempts", sum.Attempts,
			"replicas", sum.Replicas, "events", sum.Events)
	}
	return sum, nil
}

// schedule assigns pending replicas, then pending tasks, to nodes with
// room. The queue is read in FIFO order a chunk at a time into the
// planner, and once no node has CPU left only the tasks that ask for none
// are read (store.EachPending): a pass reads what the nodes can take, not
// the whole queue.
func (p *Plane) schedule(ctx context.Context, nodes []store.Node) error {
	reps, err := p.store.ListReplicas(ctx, "")
	if err != nil {
		return err
	}
	running, err := p.store.RunningLoad(ctx)
	if err != nil {
		return err
	}
	snap := Snapshot(replicaQueue(reps), nodes, append(running, replicaLoad(reps)...))
	pl := sched.NewPlanner(snap.Nodes)
	// Replicas come first (their Order is below every task's), in ID order.
	pl.Add(snap.Pending)
	// Room for how many 1-cpu tasks: the first chunk of the queue to read.
	room := 0
	for _, n := range snap.Nodes {
		room += int(max(n.Free.CPU, 0))
	}
	var buf []sched.Task
	err = p.store.EachPending(ctx, room, func(ts []store.QueuedTask) bool {
		buf = buf[:0]
		for _, t := range ts {
			buf = append(buf, sched.Task{ID: t.ID, Order: t.Order, Pool: t.Pool, Priority: t.Priority, Req: t.Req})
		}
		pl.Add(buf)
		return pl.Full()
	})
	if err != nil {
		return err
	}
	plan := pl.Plan()
	if len(plan.Assignments) == 0 {
		return nil
	}
	var as []store.Assignment
	var ras []store.ReplicaAssignment
	for _, a := range plan.Assignments {
		if a.TaskID < 0 {
			ras = append(ras, store.ReplicaAssignment{ID: -a.TaskID, Node: a.Node})
			continue
		}
		as = append(as, store.Assignment{TaskID: a.TaskID, Node: a.Node})
	}
	if len(ras) > 0 {
		if _, err := p.store.AssignReplicas(ctx, ras); err != nil {
			return err
		}
	}
	if len(as) == 0 {
		return nil
	}
	n, err := p.store.Assign(ctx, as)
	if err != nil {
		return err
	}
	p.log.Debug("scheduled", "assigned", n, "planned", len(as), "unplaced", plan.Unplaced)
	return nil
}

// Snapshot builds the scheduler's input: the queue and the free room of
// every ready node without a notice.
func Snapshot(pending []store.Task, nodes []store.Node, running []store.Task) sched.Snapshot {
	used := map[string]spec.Resources{}
	count := map[string]int{}
	spread := map[string][]string{}
	for _, t := range running {
		if t.Spread != "" {
			spread[t.Node] = append(spread[t.Node], t.Spread)
		}
		u := used[t.Node]
		u.CPU += t.Req.CPU
		u.Memory += t.Req.Memory
		u.GPU += t.Req.GPU
		used[t.Node] = u
		count[t.Node]++
	}
	var s sched.Snapshot
	for _, n := range nodes {
		if n.State != store.NodeReady || !n.NoticeDeadline.IsZero() {
			continue
		}
		u := used[n.Name]
		s.Nodes = append(s.Nodes, sched.Node{Name: n.Name, Pool: n.Pool, Priority: n.Priority, Zone: n.Zone, Running: count[n.Name], Spread: spread[n.Name],
			Free: spec.Resources{CPU: n.Capacity.CPU - u.CPU, Memory: n.Capacity.Memory - u.Memory, GPU: n.Capacity.GPU - u.GPU}})
	}
	for _, t := range pending {
		s.Pending = append(s.Pending, sched.Task{ID: t.ID, Order: t.Order, Pool: t.Pool, Priority: t.Priority, Req: t.Req, Spread: t.Spread})
	}
	return s
}

// scalePools keeps every pool at the size its tasks need.
func (p *Plane) scalePools(ctx context.Context, live []store.Node) error {
	pools, err := p.store.ListPools(ctx)
	if err != nil {
		return err
	}
	demand, err := p.store.PendingDemand(ctx)
	if err != nil {
		return err
	}
	running, err := p.store.RunningLoad(ctx)
	if err != nil {
		return err
	}
	reps, err := p.store.ListReplicas(ctx, "")
	if err != nil {
		return err
	}
	pending := demandTasks(demand)
	nodes := withLoad(live, running, reps)
	pending = append(replicaQueue(reps), pending...)
	running = append(running, replicaLoad(reps)...)
	now := p.now()
	var errs []error

	// Idle bookkeeping for scale-down, and nodes of deleted pools.
	byName := map[string]spec.Pool{}
	specs := make([]spec.Pool, 0, len(pools))
	caps := map[string]spec.Resources{}
	p.mu.Lock()
	for _, pl := range pools {
		// A changed pool (more capacity, another zone) gets a fresh try.
		if name := pl.Spec.Metadata.Name; p.gens[name] != pl.Generation {
			p.gens[name] = pl.Generation
			delete(p.backoff, name)
			p.fails[name] = 0
		}
	}
	p.mu.Unlock()
	for _, pl := range pools {
		byName[pl.Spec.Metadata.Name] = pl.Spec
		specs = append(specs, pl.Spec)
		c, err := NodeCapacity(pl.Spec)
		if err != nil {
			errs = append(errs, err)
		}
		caps[pl.Spec.Metadata.Name] = c
	}
	for i, n := range nodes {
		if _, ok := byName[n.Pool]; !ok && store.Live(n.State) {
			errs = append(errs, p.terminate(ctx, n, "pool deleted"))
			continue
		}
		if n.State == store.NodeReady && n.Tasks == 0 && n.Replicas == 0 && n.IdleSince.IsZero() {
			nodes[i].IdleSince = now
			errs = append(errs, p.store.SetIdle(ctx, n.Name, now))
		}
	}

	nodeByName := map[string]store.Node{}
	for _, n := range nodes {
		nodeByName[n.Name] = n
	}
	for _, plan := range PlanPools(specs, caps, nodes, pending, running, now) {
		pool := byName[plan.Pool]
		for _, name := range plan.Terminate {
			errs = append(errs, p.terminate(ctx, nodeByName[name], "idle for "+pool.Spec.IdleTimeout.String()))
		}
		if plan.Launch == 0 && len(plan.Restart) == 0 {
			continue
		}
		// A refused launch backs the pool off: no more tries in this pass.
		for _, name := range plan.Restart {
			if p.inBackoff(plan.Pool, now) {
				break
			}
			errs = append(errs, p.launch(ctx, pool, nodeByName[name], true))
		}
		zones := zoneCounts(pool, nodes)
		for range min(plan.Launch, 10) {
			if p.inBackoff(plan.Pool, now) {
				break
			}
			n := p.newNode(pool, caps[plan.Pool], zones)
			if err := p.launch(ctx, pool, n, false); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	return errors.Join(errs...)
}

// demandTasks is the queue as PlanPools counts it: one task per pool that
// tasks name, asking for their sum (demand adds up), then the tasks that
// name no pool one by one in FIFO order.
func demandTasks(d store.Demand) []store.Task {
	out := make([]store.Task, 0, len(d.Pinned)+len(d.Loose))
	for _, pool := range slices.Sorted(maps.Keys(d.Pinned)) {
		out = append(out, store.Task{Pool: pool, Req: d.Pinned[pool], State: store.TaskPending})
	}
	for _, t := range d.Loose {
		out = append(out, store.Task{ID: t.ID, JobID: t.JobID, Index: t.Index, Order: t.Order, Priority: t.Priority, Req: t.Req,
			State: store.TaskPending})
	}
	return out
}

// withLoad returns a copy of the pass's nodes with their task and replica
// counts taken from running and reps, read after this pass scheduled: a
// node that just got work is not idle.
func withLoad(nodes []store.Node, running []store.Task, reps []store.Replica) []store.Node {
	tasks, replicas := map[string]int{}, map[string]int{}
	for _, t := range running {
		tasks[t.Node]++
	}
	for _, r := range reps {
		if r.Node != "" {
			replicas[r.Node]++
		}
	}
	out := make([]store.Node, len(nodes))
	for i, n := range nodes {
		n.Tasks, n.Replicas = tasks[n.Name], replicas[n.Name]
		if n.Tasks > 0 || n.Replicas > 0 {
			n.IdleSince = time.Time{} // as Assign and AssignReplicas stored it
		}
		out[i] = n
	}
	return out
}

func (p *Plane) inBackoff(pool string, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return now.Before(p.backoff[pool])
}

// launch starts a new node (or restarts a deallocated one). A launch the
// platform refuses backs the pool off exponentially.
func (p *Plane) launch(ctx context.Context, pool spec.Pool, n store.Node, restart bool) error {
	prov, ok := p.providers[pool.Spec.Provider]
	if !ok {
		return fmt.Errorf("pool %s: provider %q is not running in this control plane", pool.Metadata.Name, pool.Spec.Provider)
	}
	if restart {
		if err := p.store.RestartNode(ctx, n.Name); err != nil {
			return err
		}
	} else {
		n.PricePerHour = p.cloudPrice(ctx, prov, pool, n)
		if err := p.store.CreateNode(ctx, n); err != nil {
			return err
		}
	}
	// The node's own credential, bound to its name and this incarnation;
	// the provider hands it to the agent.
	cred, err := p.store.IssueNodeCredential(ctx, n.Name)
	if err != nil {
		return err
	}
	at, err := prov.Launch(ctx, LaunchRequest{Pool: pool, Node: n, Credential: cred, Restart: restart})
	if err != nil {
		return p.launchFailed(ctx, pool.Metadata.Name, n.Name, restart, err)
	}
	p.mu.Lock()
	p.fails[pool.Metadata.Name] = 0
	p.mu.Unlock()
	// The machine exists now: record it even if this pass is being
	// cancelled, or nothing would know to stop it.
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	return p.store.SetNodeLaunched(sctx, n.Name, at.ProviderID)
}

// cloudPrice is a new node's price per hour: the cloud's current Spot
// price where its pool asks for cloud prices and the provider can tell
// it, else the node's table price. The node's billing run opens at it, so
// the cost report bills the price that was in effect. A failure is an
// event, never a failed launch.
func (p *Plane) cloudPrice(ctx context.Context, prov Provider, pool spec.Pool, n store.Node) float64 {
	if !cloudPrices(pool) {
		return n.PricePerHour
	}
	pr, ok := prov.(Pricer)
	err := fmt.Errorf("provider %s does not tell cloud prices", pool.Spec.Provider)
	if ok {
		var price float64
		price, err = pr.SpotPrice(ctx, pool, n.Zone)
		if err == nil && price > 0 {
			return price
		}
		if err == nil {
			err = fmt.Errorf("the cloud has no Spot price for %s", pool.Spec.InstanceType)
		}
	}
	p.log.Warn("cloud price unavailable; using the price table", "pool", pool.Metadata.Name, "err", err)
	if eerr := p.store.AddEvent(ctx, "PriceFallback", "pool/"+pool.Metadata.Name, "CloudPriceUnavailable",
		fmt.Sprintf("node %s priced from the price table at $%.4f/h: %v", n.Name, n.PricePerHour, err)); eerr != nil {
		p.log.Warn("cannot record the price fallback", "err", eerr)
	}
	return n.PricePerHour
}

// launchFailed backs the pool off after a refused launch, so a broken
// provider is not hammered every pass. A new node is forgotten; a
// restarted one keeps its name, disk and billing history and waits
// deallocated. A refusal for lack of capacity is expected, not an error.
func (p *Plane) launchFailed(ctx context.Context, pool, node string, restart bool, err error) error {
	p.mu.Lock()
	p.fails[pool]++
	delay := min(time.Second<<min(p.fails[pool]-1, 5), 30*time.Second)
	p.backoff[pool] = p.now().Add(delay)
	p.mu.Unlock()
	end := p.store.DeleteNode(ctx, node)
	if restart {
		end = p.store.EndNode(ctx, node, store.NodeDeallocated, "restart refused: "+err.Error())
	}
	if end != nil {
		return end
	}
	reason := ReasonNoCapacity
	if !errors.Is(err, ErrNoCapacity) {
		reason = "ProviderError"
	}
	if err := p.store.AddEvent(ctx, EventLaunchFailed, "pool/"+pool, reason,
		fmt.Sprintf("%s; retrying in %s", err, delay)); err != nil {
		return err
	}
	if reason == ReasonNoCapacity {
		return nil
	}
	return fmt.Errorf("launch %s: %w", node, err)
}

func (p *Plane) terminate(ctx context.Context, n store.Node, why string) error {
	if err := p.store.EndNode(ctx, n.Name, store.NodeTerminated, why); err != nil {
		return err
	}
	return p.stop(ctx, n)
}

func (p *Plane) stop(ctx context.Context, n store.Node) error {
	prov, err := p.providerOf(ctx, n)
	if err != nil || prov == nil {
		return err
	}
	return prov.Stop(ctx, n)
}

// providerOf returns the provider of a node's pool; nil when that provider
// does not run in this control plane. A node whose pool is gone is taken to
// be local, the one provider that ran before pools could name another.
func (p *Plane) providerOf(ctx context.Context, n store.Node) (Provider, error) {
	pools, err := p.store.ListPools(ctx)
	if err != nil {
		return nil, err
	}
	provider := "local"
	for _, pl := range pools {
		if pl.Spec.Metadata.Name == n.Pool {
			provider = pl.Spec.Spec.Provider
		}
	}
	return p.providers[provider], nil
}

func (p *Plane) newNode(pool spec.Pool, capacity spec.Resources, zones map[string]int) store.Node {
	zone := ""
	for _, z := range pool.Spec.Zones { // the zone with fewest live nodes
		if zone == "" || zones[z] < zones[zone] {
			zone = z
		}
	}
	zones[zone]++
	price, onDemand := Prices(pool)
	return store.Node{
		Name:          pool.Metadata.Name + "-" + suffix(),
		Pool:          pool.Metadata.Name,
		Priority:      pool.Spec.Priority,
		Zone:          zone,
		InstanceType:  pool.Spec.InstanceType,
		Capacity:      capacity,
		PricePerHour:  price,
		OnDemandPrice: onDemand,
	}
}

func zoneCounts(pool spec.Pool, nodes []store.Node) map[string]int {
	m := map[string]int{}
	for _, n := range nodes {
		if n.Pool == pool.Metadata.Name && store.Live(n.State) {
			m[n.Zone]++
		}
	}
	return m
}

func suffix() string {
	const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
	var b strings.Builder
	for range 4 {
		b.WriteByte(alphabet[rand.IntN(len(alphabet))])
	}
	return b.String()
}

// NodeCapacity is what one node of the pool offers: the pool's capacity
// override, else its instance type's.
func NodeCapacity(p spec.Pool) (spec.Resources, error) {
	if p.Spec.Capacity != nil {
		return *p.Spec.Capacity, nil
	}
	it, ok := cost.Lookup(p.Spec.InstanceType)
	if !ok {
		return spec.Resources{}, fmt.Errorf("pool %s: spec.instanceType %q is not in the price table (%s); set spec.capacity and spec.pricePerHour for it",
			p.Metadata.Name, p.Spec.InstanceType, strings.Join(sortedTypes(), ", "))
	}
	return spec.Resources{CPU: it.CPU, Memory: it.Memory, GPU: it.GPU}, nil
}

// Prices are the pool's price per node-hour and the on-demand price of the
// same node, for the saving comparison.
func Prices(p spec.Pool) (price, onDemand float64) {
	it, _ := cost.Lookup(p.Spec.InstanceType)
	onDemand = it.OnDemandPerHour
	price = it.SpotPerHour
	if p.Spec.Priority == spec.PriorityOnDemand {
		price = it.OnDemandPerHour
	}
	if p.Spec.OnDemandPricePerHour != nil {
		onDemand = *p.Spec.OnDemandPricePerHour
	}
	if p.Spec.PricePerHour != nil {
		price = *p.Spec.PricePerHour
		if p.Spec.Priority == spec.PriorityOnDemand && p.Spec.OnDemandPricePerHour == nil {
			onDemand = price
		}
	}
	return price, onDemand
}

func sortedTypes() []string {
	t := cost.Types()
	sort.Strings(t)
	return t
}
