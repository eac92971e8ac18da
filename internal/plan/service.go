// Package plan predicts, without launching anything, what a service would
// cost and how available it would be on recorded spot markets: it replays
// one trace per spot pool and runs the control plane's own pure decisions
// (placement.Decide for which replicas to create and stop, stand-ins and
// spares; placement.Spares to size the spares from the preemptions it has
// seen) on a simulated fleet of nodes, event by event.
//
// What it models of the rest of the system, and how:
//
//   - One replica of a service per node, as the control plane places them
//     (a node never hosts two replicas of one service). A new replica goes
//     to an idle node of its pool if one is ready, and is ready Load after;
//     else a node is launched for it and it is ready Boot after.
//   - A spot launch beyond the trace's capacity (the pool's nodes without a
//     notice fill it) is refused, and the pool backs off as the control
//     plane does (1 s doubling up to 30 s); placement then sees the pool
//     unavailable and replaces the replica elsewhere.
//   - The market replays as the local provider's does: a trace step that
//     removes nodes, or a capacity below the pool's nodes without a notice,
//     gives the newest of them a notice; a noticed node (and its replica)
//     is gone Notice later. Spare sizing counts that as a preemption.
//   - An idle node is removed IdleTimeout after its replica stopped, down
//     to the pool's Min; until then it costs, as a real one does.
//   - The replica count is fixed (Service.Replicas): no autoscaling.
//
// Time: the simulation runs in the pools' own (real) time; a pool replays
// its trace Speedup times faster, from Start, as spec.local.market does.
package plan

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/spotml/spotml/internal/placement"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/trace"
)

// Pool is a pool the service may use.
type Pool struct {
	Name     string
	Priority string // spec.PrioritySpot or spec.PriorityOnDemand
	Zones    []string
	Min, Max int
	// Trace is a spot pool's market; nil: capacity is always there.
	Trace *trace.Trace
	// Speedup and Start place the pool in its trace: at simulated time t
	// it is at Start + t × Speedup. Start is replaced by each offset of a
	// sweep.
	Speedup float64
	Start   time.Duration
	// Notice is how long a noticed node lives on.
	Notice time.Duration
	// Boot is how long a launched node takes to take a replica (launch,
	// boot, start task); the replica's Load comes on top.
	Boot time.Duration
	// IdleTimeout is how long an idle node is kept.
	IdleTimeout time.Duration
	// PricePerHour is what a node costs; OnDemandPerHour what the same
	// node costs on demand.
	PricePerHour, OnDemandPerHour float64
}

// Service is what is simulated.
type Service struct {
	Name      string
	Placement spec.Placement // resolved
	// Replicas is the count the service runs (raised to
	// Placement.MinReplicas).
	Replicas int
	// QPS is the load; 0: none given (requests are not counted).
	// PerReplicaQPS is what one replica answers (replicas.targetQPSPerReplica).
	QPS, PerReplicaQPS float64
	// Load is how long a replica takes to be ready on a node that is up.
	Load time.Duration
}

// Options bound a run.
type Options struct {
	// Duration is the simulated (real) time.
	Duration time.Duration
	// Reconcile is the control plane's pass interval: how soon it acts
	// again after it changed something. Default 1s.
	Reconcile time.Duration
	// Points is the most timeline points kept (default 300; -1: no
	// timeline).
	Points int
}

// Run is one simulated run.
type Run struct {
	// Offset is where in the traces the run started (each pool's Start).
	Offset time.Duration `json:"offset"`
	// Availability is the fraction of the time with at least Needed
	// ready replicas without a notice.
	Availability float64 `json:"availability"`
	Needed       int     `json:"needed"`
	// Answered is the fraction of requests answered, at Service.QPS with
	// each ready replica answering PerReplicaQPS (-1 without a QPS).
	Answered float64 `json:"answered"`
	// NoneReady is the time without any ready replica.
	NoneReady time.Duration `json:"noneReady"`
	// HeadroomP99 is the capacity over the load (ready replicas ×
	// PerReplicaQPS ÷ QPS, or ready ÷ needed without a QPS) that the
	// service had at least 99 % of the time: below 1 it was short.
	HeadroomP99 float64 `json:"headroomP99"`
	// Cost is the node time spent, AllOnDemand what Needed on-demand
	// replicas would have cost for the same time.
	Cost          float64 `json:"cost"`
	AllOnDemand   float64 `json:"allOnDemand"`
	Fraction      float64 `json:"fraction"`
	SpotHours     float64 `json:"spotHours"`
	OnDemandHours float64 `json:"onDemandHours"`
	Notices       int     `json:"notices"`
	Launches      int     `json:"launches"`
	StandIns      int     `json:"standIns"`
	// Timeline samples the run, for curves.
	Timeline []Point `json:"timeline,omitempty"`
}

// Point is the state at one time of a run.
type Point struct {
	T           time.Duration `json:"t"`
	Ready       int           `json:"ready"`
	Spot        int           `json:"spot"`     // spot nodes
	OnDemand    int           `json:"onDemand"` // on-demand nodes
	Cost        float64       `json:"cost"`     // spent so far
	AllOnDemand float64       `json:"allOnDemand"`
}

// Simulate runs svc on pools from offset (each traced pool's Start) for
// o.Duration.
func Simulate(svc Service, pools []Pool, offset time.Duration, o Options) Run {
	s := newSim(svc, pools, offset, o)
	s.run()
	return s.result()
}

// sim is one run's state.
type sim struct {
	svc    Service
	o      Options
	pools  []*pool
	byName map[string]*pool
	n      int // needed replicas
	now    time.Duration

	nodes    []*node
	replicas []*replica
	nextID   int

	preempt []placement.Preemption
	spare   int
	raised  time.Duration // when spare was last raised
	known   bool

	// Integrals.
	last                  time.Duration
	upTime, noneTime      time.Duration
	answered              float64 // request-seconds answered
	headroom              []weighted
	spotSecs, odSecs      float64
	spent                 float64
	notices, launches, si int
	timeline              []Point
}

type pool struct {
	Pool
	pos     time.Duration // trace position applied
	fails   int
	backoff time.Duration // no launch before
}

// at is the pool's trace position at simulated time t: held at Start
// while the service deploys (t < 0).
func (p *pool) at(t time.Duration) time.Duration {
	return p.Start + time.Duration(float64(max(t, 0))*p.Speedup)
}

type node struct {
	id       int
	pool     *pool
	launched time.Duration
	up       time.Duration // booted (ready for a replica)
	noticed  bool
	noticeAt time.Duration // when the notice came
	gone     time.Duration // notice deadline
	replica  *replica
	idle     time.Duration // since when idle
	ended    bool
}

type replica struct {
	id       int
	pool     *pool
	standIn  bool
	created  time.Duration
	node     *node
	readyAt  time.Duration
	launched bool // a node is on the way for it
}

type weighted struct {
	v float64
	w time.Duration
}

// epoch anchors simulated time for placement.Spares, which reads times.
var epoch = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

func newSim(svc Service, pools []Pool, offset time.Duration, o Options) *sim {
	if o.Reconcile <= 0 {
		o.Reconcile = time.Second
	}
	if o.Points <= 0 {
		o.Points = 300
	}
	s := &sim{svc: svc, o: o, byName: map[string]*pool{}}
	s.n = max(svc.Replicas, svc.Placement.MinReplicas)
	for _, p := range pools {
		pp := &pool{Pool: p, backoff: math.MinInt64}
		if pp.Speedup <= 0 {
			pp.Speedup = 1
		}
		if pp.Trace != nil {
			pp.Start = offset
		}
		pp.pos = pp.Start
		s.pools = append(s.pools, pp)
		s.byName[p.Name] = pp
	}
	slices.SortFunc(s.pools, func(a, b *pool) int { return cmp.Compare(a.Name, b.Name) })
	return s
}

func (s *sim) run() {
	// The service is deployed before 0 on empty pools (and their minimum
	// nodes), as `spotml apply` would, with the markets held at their
	// start, so that at 0 it serves as it would once deployed; the
	// figures count from 0.
	warm := 30*time.Second + 2*s.svc.Placement.StandInAfter.Duration
	for _, p := range s.pools {
		warm += 3 * (p.Boot + s.svc.Load)
	}
	s.now = -warm
	for {
		changed := s.pass()
		s.sample()
		next := s.next(changed)
		if next > s.o.Duration {
			s.advance(s.o.Duration)
			return
		}
		s.advance(next)
	}
}

// pass is one control-plane pass at s.now: the market, the nodes' ends,
// then placement and its launches. It says whether anything changed.
func (s *sim) pass() bool {
	changed := s.market()
	for _, nd := range s.nodes {
		if nd.ended {
			continue
		}
		switch {
		case nd.noticed && nd.gone <= s.now:
			s.end(nd)
			// As control reads its nodes: how long the notice gave, and
			// how old the node was when it came.
			s.preempt = append(s.preempt, placement.Preemption{Pool: nd.pool.Name, At: epoch.Add(s.now),
				Warning: s.now - nd.noticeAt, Age: nd.noticeAt - nd.launched})
			changed = true
		case !nd.noticed && nd.replica == nil && nd.up <= s.now && s.now-nd.idle >= nd.pool.IdleTimeout && s.unnoticed(nd.pool) > nd.pool.Min:
			s.end(nd)
			changed = true
		}
	}
	s.nodes = slices.DeleteFunc(s.nodes, func(nd *node) bool { return nd.ended })
	s.preempt = slices.DeleteFunc(s.preempt, func(e placement.Preemption) bool { return epoch.Add(s.now).Sub(e.At) > spareWindow })
	if s.decide() {
		changed = true
	}
	for _, p := range s.pools {
		for s.unnoticed(p) < p.Min && s.now >= p.backoff {
			if s.launch(p) == nil {
				break
			}
			changed = true
		}
	}
	return changed
}

// market applies each traced pool's steps up to now.
func (s *sim) market() bool {
	changed := false
	for _, p := range s.pools {
		if p.Trace == nil {
			continue
		}
		pos := p.at(s.now)
		for _, st := range p.Trace.Between(p.pos, pos) {
			changed = s.take(p, st.Removed) || changed
			changed = s.take(p, s.unnoticed(p)-st.Capacity) || changed
		}
		p.pos = pos
		changed = s.take(p, s.unnoticed(p)-p.Trace.CapacityAt(pos)) || changed
	}
	return changed
}

// take gives k of the pool's nodes without a notice a notice, newest
// first, as the local provider's replay does.
func (s *sim) take(p *pool, k int) bool {
	took := false
	for i := len(s.nodes) - 1; i >= 0 && k > 0; i-- {
		nd := s.nodes[i]
		if nd.pool != p || nd.ended || nd.noticed {
			continue
		}
		nd.noticed, nd.noticeAt, nd.gone = true, s.now, s.now+p.Notice
		s.notices++
		k--
		took = true
	}
	return took
}

func (s *sim) unnoticed(p *pool) int {
	k := 0
	for _, nd := range s.nodes {
		if nd.pool == p && !nd.ended && !nd.noticed {
			k++
		}
	}
	return k
}

func (s *sim) live(p *pool) int { return s.unnoticed(p) }

// end removes a node and the replica on it.
func (s *sim) end(nd *node) {
	nd.ended = true
	s.bill(nd, s.now)
	if r := nd.replica; r != nil {
		s.replicas = slices.DeleteFunc(s.replicas, func(x *replica) bool { return x == r })
	}
}

// bill adds a node's time from its launch (or 0) to end.
func (s *sim) bill(nd *node, end time.Duration) {
	secs := max(0, end-max(nd.launched, 0)).Seconds()
	s.spent += secs * nd.pool.PricePerHour / 3600
	if nd.pool.Priority == spec.PrioritySpot {
		s.spotSecs += secs
	} else {
		s.odSecs += secs
	}
}

// decide runs placement on the state now and applies its plan.
func (s *sim) decide() bool {
	pl := s.svc.Placement
	in := placement.Input{Desired: s.n, Version: 1, Placement: pl, MaxSurge: 1}
	for _, p := range s.pools {
		in.Pools = append(in.Pools, placement.Pool{Name: p.Name, Priority: p.Priority, Zones: p.Zones,
			Available: s.now >= p.backoff && (s.idleNode(p) != nil || s.live(p) < p.Max)})
	}
	in.Spare = s.spares(in.Pools)
	byID := map[string]*replica{}
	for _, r := range s.replicas {
		id := fmt.Sprintf("%09d", r.id)
		byID[id] = r
		state := placement.Pending
		if r.node != nil {
			state = placement.Starting
			if r.readyAt <= s.now {
				state = placement.Ready
			}
		}
		in.Replicas = append(in.Replicas, placement.Replica{ID: id, Version: 1, Pool: r.pool.Name, Priority: r.pool.Priority,
			State: state, StandIn: r.standIn, Noticed: r.node != nil && r.node.noticed,
			Slow:      state != placement.Ready && s.now-r.created >= pl.StandInAfter.Duration,
			Launching: r.launched && r.node == nil})
	}
	plan := placement.Decide(in)
	for _, st := range plan.Stop {
		r := byID[st.ID]
		if nd := r.node; nd != nil {
			nd.replica, nd.idle = nil, s.now
		}
		s.replicas = slices.DeleteFunc(s.replicas, func(x *replica) bool { return x == r })
	}
	for _, c := range plan.Create {
		p := s.byName[c.Pool]
		s.nextID++
		r := &replica{id: s.nextID, pool: p, standIn: c.StandIn, created: s.now}
		if c.StandIn {
			s.si++
		}
		s.replicas = append(s.replicas, r)
	}
	// The pool autoscaler: a pending replica gets an idle node of its
	// pool, or a new one; a refused launch leaves it pending and backs
	// the pool off, and the next pass sees its pool unavailable and
	// replaces it.
	for _, r := range s.replicas {
		if r.node != nil || s.now < r.pool.backoff {
			continue
		}
		if nd := s.idleNode(r.pool); nd != nil {
			s.place(r, nd)
		} else if nd := s.launch(r.pool); nd != nil {
			s.place(r, nd)
		}
	}
	return len(plan.Create) > 0 || len(plan.Stop) > 0
}

// spares sizes the spare spot replicas as the control plane does:
// placement.Spares over the preemptions of the last 6 h (control's
// SpareWindow), with the replicas' measured time to ready; a raise at
// once, a lower count only 5 min after the last raise.
func (s *sim) spares(pools []placement.Pool) int {
	pl := s.svc.Placement
	_, spot := pl.Mix(s.n)
	if !pl.AutoSpare || spot == 0 {
		return pl.SpareSpot
	}
	var names []string
	for _, p := range pools {
		if p.Priority == spec.PrioritySpot && (len(pl.Pools) == 0 || slices.Contains(pl.Pools, p.Name)) {
			names = append(names, p.Name)
		}
	}
	var recent []placement.Preemption
	for _, e := range s.preempt {
		if epoch.Add(s.now).Sub(e.At) <= spareWindow {
			recent = append(recent, e)
		}
	}
	n, _ := placement.Spares(spot, names, pl.SpreadZones,
		placement.History{Preemptions: recent, Window: spareWindow, Replace: s.replaceTime()})
	switch {
	case n > s.spare || !s.known:
		s.spare, s.raised, s.known = n, s.now, true
	case n < s.spare && s.now-s.raised < spareHold:
	default:
		s.spare = n
	}
	return s.spare
}

// The control plane's spare sizing constants (internal/control/spares.go).
const (
	spareWindow = 6 * time.Hour
	spareHold   = 5 * time.Minute
)

// replaceTime is the 90th percentile of the live replicas' creation to
// ready, or standInAfter while none is ready (control's replaceTime).
func (s *sim) replaceTime() time.Duration {
	var ds []time.Duration
	for _, r := range s.replicas {
		if r.node != nil && r.readyAt <= s.now && r.readyAt > r.created {
			ds = append(ds, r.readyAt-r.created)
		}
	}
	if len(ds) == 0 {
		return s.svc.Placement.StandInAfter.Duration
	}
	slices.Sort(ds)
	return ds[(len(ds)*9)/10]
}

// idleNode is a node of p that is up, has no notice and no replica.
func (s *sim) idleNode(p *pool) *node {
	for _, nd := range s.nodes {
		if nd.pool == p && !nd.ended && !nd.noticed && nd.replica == nil && nd.up <= s.now {
			return nd
		}
	}
	return nil
}

// launch starts a node in p, or backs p off if its market refuses.
func (s *sim) launch(p *pool) *node {
	full := s.live(p) >= p.Max
	if p.Trace != nil {
		pos := p.at(s.now)
		full = full || s.unnoticed(p) >= p.Trace.CapacityAt(pos)
	}
	if full {
		p.fails++
		p.backoff = s.now + min(time.Second<<min(p.fails-1, 5), 30*time.Second)
		return nil
	}
	p.fails = 0
	s.nextID++
	nd := &node{id: s.nextID, pool: p, launched: s.now, up: s.now + p.Boot, idle: s.now + p.Boot}
	s.nodes = append(s.nodes, nd)
	s.launches++
	return nd
}

// place puts r on nd: ready Load after nd is up.
func (s *sim) place(r *replica, nd *node) {
	r.node, r.launched = nd, true
	nd.replica = r
	r.readyAt = max(nd.up, s.now) + s.svc.Load
}

// serving counts the ready replicas without a notice.
func (s *sim) serving() int {
	k := 0
	for _, r := range s.replicas {
		if r.node != nil && r.readyAt <= s.now && !r.node.noticed {
			k++
		}
	}
	return k
}

// next is the time of the next thing that can change the state.
func (s *sim) next(changed bool) time.Duration {
	t := time.Duration(math.MaxInt64)
	at := func(d time.Duration) {
		if d > s.now && d < t {
			t = d
		}
	}
	if changed {
		at(s.now + s.o.Reconcile)
	}
	at(0)
	for _, p := range s.pools {
		at(p.backoff)
		if p.Trace != nil {
			if st := p.Trace.Between(p.pos, p.Trace.Duration+time.Hour); len(st) > 0 {
				at(time.Duration(math.Ceil(float64(st[0].At-p.Start) / p.Speedup)))
			}
		}
	}
	for _, nd := range s.nodes {
		if nd.ended {
			continue
		}
		at(nd.up)
		if nd.noticed {
			at(nd.gone)
		} else if nd.replica == nil {
			at(nd.idle + nd.pool.IdleTimeout)
		}
	}
	for _, r := range s.replicas {
		at(r.readyAt)
		at(r.created + s.svc.Placement.StandInAfter.Duration)
	}
	for _, e := range s.preempt {
		at(e.At.Sub(epoch) + spareWindow + time.Nanosecond)
	}
	at(s.raised + spareHold)
	return t
}

// advance integrates the state since the last sample up to t.
func (s *sim) advance(t time.Duration) {
	dt := t - max(s.now, 0)
	if dt > 0 {
		ready := s.serving()
		if ready >= s.n {
			s.upTime += dt
		}
		if ready == 0 {
			s.noneTime += dt
		}
		h := float64(ready) / float64(s.n)
		if s.svc.QPS > 0 {
			capacity := float64(ready) * s.svc.PerReplicaQPS
			h = capacity / s.svc.QPS
			s.answered += min(capacity, s.svc.QPS) * dt.Seconds()
		}
		s.headroom = append(s.headroom, weighted{h, dt})
	}
	s.now = t
}

// sample records a timeline point (thinned to o.Points at the end).
func (s *sim) sample() {
	if s.now < 0 {
		return
	}
	pt := Point{T: s.now, Ready: s.serving(), Cost: s.spentBy(s.now), AllOnDemand: s.allOnDemand(s.now)}
	for _, nd := range s.nodes {
		if nd.ended {
			continue
		}
		if nd.pool.Priority == spec.PrioritySpot {
			pt.Spot++
		} else {
			pt.OnDemand++
		}
	}
	if s.o.Points < 0 {
		return
	}
	if k := len(s.timeline); k > 0 && s.timeline[k-1].T == pt.T {
		s.timeline[k-1] = pt
		return
	}
	s.timeline = append(s.timeline, pt)
}

// spentBy is what was spent by t: ended nodes plus the running ones.
func (s *sim) spentBy(t time.Duration) float64 {
	c := s.spent
	for _, nd := range s.nodes {
		if !nd.ended {
			c += max(0, t-max(nd.launched, 0)).Seconds() * nd.pool.PricePerHour / 3600
		}
	}
	return c
}

// allOnDemand is what Needed replicas on the cheapest on-demand price
// would have cost by t.
func (s *sim) allOnDemand(t time.Duration) float64 {
	return float64(s.n) * t.Hours() * s.onDemandPrice()
}

func (s *sim) onDemandPrice() float64 {
	price := 0.0
	for _, p := range s.pools {
		od := p.OnDemandPerHour
		if p.Priority == spec.PriorityOnDemand {
			od = p.PricePerHour
		}
		if od > 0 && (price == 0 || od < price) {
			price = od
		}
	}
	return price
}

func (s *sim) result() Run {
	end := s.o.Duration
	for _, nd := range s.nodes {
		if !nd.ended {
			s.bill(nd, end)
		}
	}
	r := Run{Offset: -1, Needed: s.n, Answered: -1, NoneReady: s.noneTime, Cost: s.spent, AllOnDemand: s.allOnDemand(end),
		SpotHours: s.spotSecs / 3600, OnDemandHours: s.odSecs / 3600, Notices: s.notices, Launches: s.launches, StandIns: s.si}
	for _, p := range s.pools {
		if p.Trace != nil {
			r.Offset = p.Start
		}
	}
	if end > 0 {
		r.Availability = s.upTime.Seconds() / end.Seconds()
		if s.svc.QPS > 0 {
			r.Answered = s.answered / (s.svc.QPS * end.Seconds())
		}
	}
	if r.AllOnDemand > 0 {
		r.Fraction = r.Cost / r.AllOnDemand
	}
	r.HeadroomP99 = percentile(s.headroom, 0.01)
	r.Timeline = thin(s.timeline, max(s.o.Points, 2))
	if k := len(r.Timeline); k > 0 && r.Timeline[k-1].T < end {
		last := r.Timeline[k-1]
		last.T, last.Cost, last.AllOnDemand = end, r.Cost, r.AllOnDemand
		r.Timeline = append(r.Timeline, last)
	}
	return r
}

// percentile is the value v such that a q share of the (time-weighted)
// values are below it.
func percentile(ws []weighted, q float64) float64 {
	if len(ws) == 0 {
		return 0
	}
	ws = slices.Clone(ws)
	slices.SortFunc(ws, func(a, b weighted) int { return cmp.Compare(a.v, b.v) })
	var total time.Duration
	for _, w := range ws {
		total += w.w
	}
	var acc time.Duration
	for _, w := range ws {
		acc += w.w
		if float64(acc) > q*float64(total) {
			return w.v
		}
	}
	return ws[len(ws)-1].v
}

// thin keeps at most n points, evenly spaced in time, always with the
// first and the last, and every point that is the lowest Ready of its
// stretch (an outage must not vanish from a curve).
func thin(pts []Point, n int) []Point {
	if len(pts) <= n {
		return pts
	}
	span := pts[len(pts)-1].T - pts[0].T
	bucket := span / time.Duration(n-1)
	var out []Point
	for i := 0; i < len(pts); {
		j := i
		low := i
		for j < len(pts) && (bucket == 0 || pts[j].T-pts[i].T < bucket) {
			if pts[j].Ready < pts[low].Ready {
				low = j
			}
			j++
		}
		if j == i {
			j = i + 1
		}
		out = append(out, pts[low])
		i = j
	}
	return out
}

// String names a run briefly, for logs.
func (r Run) String() string {
	return "offset " + r.Offset.String() + ": available " + strconv.FormatFloat(100*r.Availability, 'f', 2, 64) +
		" %, cost " + strconv.FormatFloat(r.Fraction, 'f', 2, 64) + "× all on-demand"
}
