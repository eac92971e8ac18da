package control

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"sync"
	"time"

	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// Several control-plane instances may share one store. Every instance
// serves the API and the console, accepts agents' heartbeats and reports
// (and flushes the heartbeats it heard), and keeps its row in the
// instances table fresh; exactly one, the holder of the leader lease, runs
// the reconcilers: the reconcile passes (liveness, scheduling, services,
// pool scaling and launches), the service sampler (two samplers would
// record every sample twice), the pruner, and the providers' Runners (a
// spot market or a platform watcher reports each notice once, and launches
// and stops must come from one decider).
//
// The lease lives in the store with its expiry on the database's clock.
// The leader renews it every LeaseTTL/3; followers try to take it every
// LeaseTTL/6 (at most 500ms), so a dead leader is replaced at most about
// LeaseTTL + LeaseTTL/6 + one pass after its last renewal. Every write
// of the leader's loops is fenced (sqlstore.WithFence): it checks the
// lease term in its own transaction, and a leader that was paused past
// its lease gets store.ErrFenced and steps down at once.

// DefaultLeaseTTL is the leader lease's default time to live.
const DefaultLeaseTTL = 3 * time.Second

// Leadership is what an instance knows of its own role.
type Leadership struct {
	Instance  string
	Leading   bool
	Term      int64     // the term it leads (or last led); 0: never
	Since     time.Time // when it began leading
	FirstPass time.Time // when its first reconcile pass of this term ended
}

// leader is the plane's leadership state.
type leader struct {
	mu       sync.Mutex
	state    Leadership
	stepDown context.CancelCauseFunc // ends the current term's loops; nil when following
}

// NewInstanceID makes an instance ID: the host name and a random suffix,
// new on every start (a restarted process is a new holder, so its first
// term is a new term).
func NewInstanceID() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "spotml"
	}
	b := make([]byte, 4)
	rand.Read(b)
	return host + "-" + hex.EncodeToString(b)
}

// Leadership returns this instance's role now.
func (p *Plane) Leadership() Leadership {
	p.lead.mu.Lock()
	defer p.lead.mu.Unlock()
	st := p.lead.state
	st.Instance = p.opt.Instance.ID
	return st
}

// ControlPlane returns the instances seen within three lease TTLs and the
// leader lease.
func (p *Plane) ControlPlane(ctx context.Context) (store.ControlPlane, error) {
	return p.store.ControlPlane(ctx, 3*p.opt.LeaseTTL)
}

// Servers returns the API URLs of the instances seen lately (their
// advertised addresses), as of this instance's last presence beat; nil
// before the first. Agents learn them from their heartbeats.
func (p *Plane) Servers() []string {
	if s := p.servers.Load(); s != nil {
		return *s
	}
	return nil
}

// fenced steps down when err says that a write was fenced; it returns err.
func (p *Plane) fenced(err error) error {
	if errors.Is(err, store.ErrFenced) {
		p.lead.mu.Lock()
		stop := p.lead.stepDown
		p.lead.mu.Unlock()
		if stop != nil {
			stop(err)
		}
	}
	return err
}

// Run serves as one instance until ctx ends: it keeps its presence and
// heartbeats written, and leads whenever it holds the lease.
func (p *Plane) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { p.runFlusher(ctx) })
	wg.Go(func() { p.runPresence(ctx) })
	wg.Go(func() { p.runRelay(ctx) })
	p.campaign(ctx)
	// Stopping on purpose: hand the lease over now rather than after its
	// TTL, and leave the instance list.
	sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := p.store.ReleaseLease(sctx, p.opt.Instance.ID); err != nil {
		p.log.Warn("release leader lease", "err", err)
	}
	if err := p.store.RemoveInstance(sctx, p.opt.Instance.ID, time.Hour); err != nil {
		p.log.Warn("leave instance list", "err", err)
	}
	return nil
}

// campaign tries for the lease every LeaseTTL/6 (at most 500ms) and leads
// while it holds it, until ctx ends.
func (p *Plane) campaign(ctx context.Context) {
	every := min(p.opt.LeaseTTL/6, 500*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	for ctx.Err() == nil {
		asked := time.Now()
		l, err := p.store.AcquireLease(ctx, p.opt.Instance.ID, p.opt.LeaseTTL)
		switch {
		case err != nil && ctx.Err() == nil:
			p.log.Warn("leader lease", "err", err)
		case err == nil && l.Held:
			p.leadTerm(ctx, l, asked)
		}
		select {
		case <-ctx.Done():
		case <-t.C:
		}
	}
}

// leadTerm runs the leader's loops for lease term l, renewing it, until
// it is lost (not renewed in time, taken over, a write fenced) or ctx
// ends. asked is when the lease was asked for: by the instance's own
// (monotonic) clock, the lease is held at most until asked + LeaseTTL.
func (p *Plane) leadTerm(ctx context.Context, l store.Lease, asked time.Time) {
	id := p.opt.Instance.ID
	lctx, stop := context.WithCancelCause(sqlstore.WithFence(ctx, sqlstore.Fence{Holder: id, Term: l.Term}))
	defer stop(nil)
	p.lead.mu.Lock()
	p.lead.state = Leadership{Instance: id, Leading: true, Term: l.Term, Since: p.now()}
	p.lead.stepDown = stop
	p.lead.mu.Unlock()
	p.log.Info("leading", "instance", id, "term", l.Term)

	var wg sync.WaitGroup
	wg.Go(func() { p.runLeader(lctx, l.Term) })
	deadline := asked.Add(p.opt.LeaseTTL)
	renew := time.NewTicker(p.opt.LeaseTTL / 3)
	defer renew.Stop()
	var why error
	for why == nil {
		select {
		case <-lctx.Done():
			why = context.Cause(lctx)
			continue
		case <-renew.C:
		}
		asked := time.Now()
		rctx, cancel := context.WithDeadline(ctx, deadline)
		nl, err := p.store.AcquireLease(rctx, id, p.opt.LeaseTTL)
		cancel()
		switch {
		case err != nil && time.Now().After(deadline):
			why = errors.Join(errors.New("lease not renewed in time"), err)
		case err != nil:
			p.log.Warn("renew leader lease", "err", err)
		case !nl.Held:
			why = errors.New("lease taken over by " + nl.Holder)
		case nl.Term != l.Term:
			// Lapsed and taken again by this instance: a new term, and
			// its writes carry the new fence.
			why = errors.New("lease lapsed; taken again at a new term")
		default:
			deadline = asked.Add(p.opt.LeaseTTL)
		}
	}
	stop(why)
	wg.Wait()
	p.lead.mu.Lock()
	p.lead.state.Leading = false
	p.lead.stepDown = nil
	p.lead.mu.Unlock()
	if ctx.Err() == nil {
		p.log.Warn("stepped down", "instance", id, "term", l.Term, "why", why)
	}
}

// runLeader runs the leader's loops until ctx ends.
func (p *Plane) runLeader(ctx context.Context, term int64) {
	var wg sync.WaitGroup
	defer wg.Wait()
	// Sampling keeps its own beat: a slow reconcile pass must not leave
	// gaps in the history.
	wg.Go(func() { p.runSampler(ctx) })
	// The other instances' kicks (API writes they took).
	p.store.Watch(ctx, sqlstore.KickChannel, p.kickLocal)
	if p.opt.Retention > 0 {
		wg.Go(func() { p.runPruner(ctx) })
	}
	// Cloud prices move: running nodes follow them (see Reprice).
	wg.Go(func() { p.runRepricer(ctx) })
	for name, prov := range p.providers {
		if r, ok := prov.(Runner); ok {
			wg.Go(func() {
				if err := r.Run(ctx, p, p); err != nil && ctx.Err() == nil {
					p.log.Error("provider stopped", "provider", name, "err", err)
				}
			})
		}
	}
	wg.Go(func() { p.runBatchLister(ctx) })
	t := time.NewTicker(p.opt.Interval)
	defer t.Stop()
	first := true
	for {
		err := p.fenced(p.Reconcile(ctx))
		if err != nil && ctx.Err() == nil {
			p.log.Error("reconcile failed", "err", err)
		}
		if first && ctx.Err() == nil {
			first = false
			p.lead.mu.Lock()
			p.lead.state.FirstPass = p.now()
			p.lead.mu.Unlock()
			p.log.Info("first reconcile pass", "term", term)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.kick:
		}
	}
}

// runRelay passes this instance's kicks on to the leader while it
// follows, one notification at a time: kicks that come while one is being
// sent are one more notification, not one each.
func (p *Plane) runRelay(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.relay:
		}
		if err := p.store.Notify(ctx, sqlstore.KickChannel); err != nil && ctx.Err() == nil {
			p.log.Warn("pass a kick on to the leader", "err", err)
		}
	}
}

// runPresence keeps this instance's row fresh every LeaseTTL/3 and, while
// other instances serve agents from the same store, expires what the
// store keeps in memory (node states, credentials, node work) once a beat:
// those caches are invalidated by this process's own writes only, so with
// another writer they may be up to one beat old, never more.
func (p *Plane) runPresence(ctx context.Context) {
	t := time.NewTicker(p.opt.LeaseTTL / 3)
	defer t.Stop()
	for {
		if err := p.store.TouchInstance(ctx, p.opt.Instance); err != nil && ctx.Err() == nil {
			p.log.Warn("instance presence", "err", err)
		}
		if cp, err := p.store.ControlPlane(ctx, 3*p.opt.LeaseTTL); err == nil {
			others := 0
			var servers []string
			for _, in := range cp.Instances {
				if in.ID != p.opt.Instance.ID {
					others++
				}
				if in.Address != "" {
					servers = append(servers, in.Address)
				}
			}
			p.servers.Store(&servers)
			if others > 0 {
				p.store.ExpireCaches()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
