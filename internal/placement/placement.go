// Package placement decides where one service's replicas run: which
// replicas to create, in which pool, and which to stop, so that the
// service has its desired count in the spot / on-demand mix its placement
// asks for, survives eviction notices, and rolls to a new version without
// dropping below what its update strategy allows.
//
// Decide is pure: a snapshot of the pools and of the service's replicas
// goes in, a Plan comes out. It reads no clock, store or network, so that
// every decision can be replayed in a test; one applier elsewhere carries
// the plan out, and the next pass sees the result. It is level-triggered:
// a plan that was only partly applied is simply planned again.
//
// The rules, in the order Decide applies them:
//
//   - A replica is live if it is not draining and its node got no eviction
//     notice. Only live replicas count. A noticed replica is not stopped
//     (it serves until its node dies, which ends it) but is replaced at
//     once. A replica still pending in a pool that is not Available (its
//     launches fail, or it is full) is stopped and replaced elsewhere,
//     unless a node is on the way for it (Launching).
//   - The current version's N = max(Desired, MinReplicas) replicas are
//     split by Placement.Mix into on-demand and spot. A spot slot takes a
//     spot replica in an Available spot pool; while there is none and
//     fallback is on, an on-demand stand-in. Once spot is back a spot
//     replica is created for each stand-in, and the stand-in is stopped
//     only when that spot replica is ready. With fallback on, a spot
//     replica that is Slow (not ready after Placement.StandInAfter: its
//     node still boots) also gets an on-demand stand-in beside it, as far
//     as the spot slots are short of ready replicas.
//   - Spare spot replicas (Input.Spare, see Spares) run beyond the spot
//     share, spread like the others, so that an eviction wave leaves the
//     service its count while replacements boot. They hold no stand-in:
//     on-demand stand-ins cover only the spot share.
//   - A rolling update creates replicas of the new version while the live
//     total stays under N + MaxSurge, and stops old ones (not ready ones
//     first) while the ready replicas left stay at least N −
//     MaxUnavailable. It never stops the last ready replica while no new
//     one is ready. If neither could move (MaxSurge 0 and nothing may be
//     stopped), one replica is created anyway so that the update cannot
//     stall.
//   - Replicas beyond the mix targets are stopped: not ready ones first,
//     then stand-ins, then spot, then on-demand; the on-demand base is
//     never touched. A ready one is stopped only while the ready replicas
//     left are still at least N, so that a scale down or a rebalance never
//     costs capacity that is still starting elsewhere.
package placement

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/spotml/spotml/internal/spec"
)

// States of a replica.
const (
	Pending  = "pending"  // waiting for a node
	Starting = "starting" // on a node, not yet passing its readiness probe
	Ready    = "ready"    // serving
	Draining = "draining" // being stopped
)

// Pool is a pool the service may run in.
type Pool struct {
	Name     string
	Priority string // spec.PrioritySpot or spec.PriorityOnDemand
	Zones    []string
	// Available is false while launches in the pool fail (a capacity
	// shortage) or it is at its max with no room.
	Available bool
}

// Replica is one replica of the service that has not been stopped yet.
type Replica struct {
	ID       string
	Version  int
	Pool     string
	Priority string
	State    string // Pending, Starting, Ready or Draining
	// StandIn marks an on-demand replica launched in place of a spot one
	// while spot was short.
	StandIn bool
	// Noticed is true once the replica's node got an eviction notice.
	Noticed bool
	// Slow is true when the replica has not been ready for longer than
	// Placement.StandInAfter (the caller, which has the clock, decides).
	Slow bool
	// Launching is true for a pending replica whose pool has a node on
	// the way for it: it is not stuck, even while that pool refuses
	// further launches, and replacing it would waste that node.
	Launching bool
}

// Input is the snapshot one decision sees.
type Input struct {
	// Desired is the replica count the autoscaler asks for; it is raised
	// to Placement.MinReplicas. 0 stops every replica.
	Desired int
	// Version is the service's current generation; replicas of a lower
	// one are old and are replaced by a rolling update.
	Version                  int
	Placement                spec.Placement
	MaxSurge, MaxUnavailable int
	Pools                    []Pool
	Replicas                 []Replica
	// Spare is how many spot replicas to run beyond the spot share
	// (Placement.SpareSpot, or what Spares sized from history); none
	// when the mix has no spot share.
	Spare int
}

// Create asks for a new replica of Version in Pool.
type Create struct {
	Pool     string
	Priority string
	Version  int
	StandIn  bool
	Reason   string
}

// Stop asks for a replica to be stopped.
type Stop struct {
	ID     string
	Reason string
}

// Plan is what to do now. Create is sorted by pool then reason, Stop by
// ID. Blocked says what was wanted but could not be placed.
type Plan struct {
	Create  []Create
	Stop    []Stop
	Blocked []string
}

// Decide plans one step towards the service's desired state.
func Decide(in Input) Plan {
	p := newPlanner(in)
	if p.n == 0 {
		for _, r := range p.live() {
			p.stop(r, "the service is scaled to 0 replicas")
		}
		return p.result()
	}
	p.update()
	p.trim()
	p.fill()
	return p.result()
}

// planner holds one decision's working state.
type planner struct {
	in       Input
	n        int // desired replicas
	od, spot int // mix targets; spot counts the spares
	spare    int // spare spot replicas within spot
	base     int // spot - spare: the spot share stand-ins cover

	pools   []Pool         // in order of preference
	pref    map[string]int // pool name -> rank in pools
	count   map[string]int // pool -> live current replicas there, for spreading
	noticed map[string]int // pool -> noticed replicas there

	old, cur []*Replica        // live replicas, by version, in ID order
	stopped  map[string]bool   // replica IDs stopped by this plan
	gone     map[role][]string // replaced replicas of the current version, by role, for reasons
	plan     Plan
}

// role is the part a current replica plays in the mix.
type role int

const (
	roleOnDemand role = iota
	roleSpot
	roleStandIn
)

func roleOf(r *Replica) role {
	switch {
	case r.StandIn:
		return roleStandIn
	case r.Priority == spec.PriorityOnDemand:
		return roleOnDemand
	}
	return roleSpot
}

func newPlanner(in Input) *planner {
	p := &planner{
		in:      in,
		pref:    map[string]int{},
		count:   map[string]int{},
		noticed: map[string]int{},
		stopped: map[string]bool{},
		gone:    map[role][]string{},
	}
	if in.Desired > 0 {
		p.n = max(in.Desired, in.Placement.MinReplicas)
	}
	p.od, p.spot = in.Placement.Mix(p.n)
	p.base = p.spot
	if p.spot > 0 {
		p.spare = max(0, in.Spare)
		p.spot += p.spare
	}

	// Pools in order of preference: as listed in placement.pools when it
	// restricts them, else by name. Pools it leaves out are never used.
	allowed := func(string) int { return 0 }
	if len(in.Placement.Pools) > 0 {
		allowed = func(name string) int { return slices.Index(in.Placement.Pools, name) }
	}
	for _, pool := range in.Pools {
		if allowed(pool.Name) >= 0 {
			p.pools = append(p.pools, pool)
		}
	}
	slices.SortStableFunc(p.pools, func(a, b Pool) int {
		return cmp.Or(cmp.Compare(allowed(a.Name), allowed(b.Name)), strings.Compare(a.Name, b.Name))
	})
	for i, pool := range p.pools {
		p.pref[pool.Name] = i
	}
	available := map[string]bool{}
	for _, pool := range in.Pools {
		available[pool.Name] = pool.Available
	}

	replicas := make([]*Replica, len(in.Replicas))
	for i := range in.Replicas {
		r := in.Replicas[i]
		replicas[i] = &r
	}
	slices.SortFunc(replicas, func(a, b *Replica) int { return strings.Compare(a.ID, b.ID) })
	for _, r := range replicas {
		current := r.Version >= in.Version
		switch {
		case r.State == Draining:
			continue
		case r.Noticed:
			p.noticed[r.Pool]++
			if current {
				p.gone[slotOf(r)] = append(p.gone[slotOf(r)], r.ID+", which got an eviction notice")
			}
			continue
		case r.State == Pending && !available[r.Pool] && !r.Launching:
			// It will not get a node there; another pool may have one.
			p.record(r, fmt.Sprintf("pending in pool %s, which has no capacity now; replaced", r.Pool))
			if current {
				p.gone[slotOf(r)] = append(p.gone[slotOf(r)], r.ID+", stuck pending in pool "+r.Pool)
			}
			continue
		}
		if current {
			p.count[r.Pool]++
			p.cur = append(p.cur, r)
		} else {
			p.old = append(p.old, r)
		}
	}
	return p
}

// slotOf is the kind of slot a replica fills: a stand-in fills a spot one.
func slotOf(r *Replica) role {
	if roleOf(r) == roleOnDemand {
		return roleOnDemand
	}
	return roleSpot
}

// update stops old replicas as far as the update strategy allows.
func (p *planner) update() {
	v := p.in.Version
	for _, r := range p.old {
		if r.State != Ready {
			p.stop(r, fmt.Sprintf("version %d, not ready; rolling update to version %d", r.Version, v))
		}
	}
	oldReady := p.liveReady(p.old)
	// Stand-ins first, then spot, then on-demand: the reliable ones last.
	slices.SortStableFunc(oldReady, func(a, b *Replica) int { return cmp.Compare(-roleOf(a), -roleOf(b)) })
	newReady := len(p.liveReady(p.cur))
	floor := p.n - p.in.MaxUnavailable
	left := len(oldReady)
	for _, r := range oldReady {
		if newReady+left-1 < floor || newReady == 0 && left == 1 {
			break
		}
		p.stop(r, fmt.Sprintf("version %d; rolling update to version %d (%d of %d new replicas ready)",
			r.Version, v, newReady, p.n))
		left--
	}
}

// trim stops current replicas beyond the mix targets.
func (p *planner) trim() {
	byRole := p.byRole()
	od, spot, standIns := byRole[roleOnDemand], byRole[roleSpot], byRole[roleStandIn]

	var extra []*Replica
	extra = append(extra, p.pick(od, len(od)-p.od)...)
	extra = append(extra, p.pick(spot, len(spot)-p.spot)...)
	// A stand-in holds a slot of the spot share until a spot replica in
	// it is ready; spares have none.
	readySpot := min(p.spot, countReady(spot))
	extra = append(extra, p.pick(standIns, len(standIns)-max(0, p.base-readySpot))...)

	// Not ready ones first; then the order above (stand-ins before spot
	// before on-demand), as far as the ready replicas left stay at N.
	slices.SortStableFunc(extra, func(a, b *Replica) int {
		return cmp.Or(
			cmp.Compare(stateRank(a), stateRank(b)),
			cmp.Compare(-roleOf(a), -roleOf(b)))
	})
	ready := len(p.liveReady(p.old)) + len(p.liveReady(p.cur))
	for _, r := range extra {
		if r.State == Ready {
			if ready-1 < p.n {
				continue
			}
			ready--
		}
		switch roleOf(r) {
		case roleStandIn:
			p.stop(r, fmt.Sprintf("stand-in no longer needed: %d of %d spot replicas ready", readySpot, p.base))
		case roleSpot:
			p.stop(r, "scale down to "+p.spotCount())
		default:
			p.stop(r, fmt.Sprintf("scale down to %d replicas (%d on demand)", p.n, p.od))
		}
	}
}

// pick returns the k replicas of rs to stop first: not ready before ready,
// and when spreading, from the pool with the most replicas of the service.
func (p *planner) pick(rs []*Replica, k int) []*Replica {
	if k <= 0 {
		return nil
	}
	left := slices.Clone(rs)
	counts := map[string]int{}
	for _, r := range rs {
		counts[r.Pool]++
	}
	var out []*Replica
	for range k {
		i := 0
		for j := 1; j < len(left); j++ {
			a, b := left[j], left[i]
			c := cmp.Compare(stateRank(a), stateRank(b))
			if c == 0 && p.in.Placement.SpreadZones {
				c = -cmp.Compare(counts[a.Pool], counts[b.Pool])
			}
			if c == 0 {
				c = -strings.Compare(a.ID, b.ID) // newest first, where IDs grow
			}
			if c < 0 {
				i = j
			}
		}
		out = append(out, left[i])
		counts[left[i].Pool]--
		left = slices.Delete(left, i, i+1)
	}
	return out
}

// fill creates the current version's missing replicas.
func (p *planner) fill() {
	byRole := p.byRole()
	od, spot, standIns := byRole[roleOnDemand], byRole[roleSpot], byRole[roleStandIn]

	// During an update every new replica counts against the surge.
	budget := -1 // unlimited
	oldLeft := len(p.liveNotStopped(p.old))
	if oldLeft > 0 {
		live := oldLeft + len(p.liveNotStopped(p.cur))
		budget = max(0, p.n+p.in.MaxSurge-live)
		inFlight := len(p.liveNotStopped(p.cur)) - len(p.liveReady(p.cur))
		if budget == 0 && len(p.plan.Stop) == 0 && inFlight == 0 {
			budget = 1 // MaxSurge 0 and nothing may stop: move anyway
		}
	}
	take := func() bool {
		if budget == 0 {
			return false
		}
		if budget > 0 {
			budget--
		}
		return true
	}
	reason := func(slot role, fallback string) string {
		if q := p.gone[slot]; len(q) > 0 {
			p.gone[slot] = q[1:]
			return "replaces " + q[0]
		}
		if len(p.old) > 0 {
			return fmt.Sprintf("rolling update to version %d", p.in.Version)
		}
		return fallback
	}

	for range p.od - len(od) {
		pool, ok := p.choose(spec.PriorityOnDemand)
		if !ok {
			p.block("no on-demand pool has capacity for an on-demand replica (%d wanted of %d)", p.od, p.n)
			break
		}
		if !take() {
			break
		}
		p.create(pool, false, reason(roleOnDemand, fmt.Sprintf("scale up to %d replicas (%d on demand)", p.n, p.od)))
	}

	// Stand-ins beside slow spot replicas hold no slot of their own.
	wantCover := p.wantCover(spot)
	holders := standIns[min(len(standIns), wantCover):]
	missing := p.spot - len(spot)
	if missing <= 0 {
		p.cover(wantCover-len(standIns), take)
		return
	}
	if _, ok := p.choose(spec.PrioritySpot); ok {
		// Empty slots first, then one for each stand-in.
		empty := max(0, missing-len(holders))
		for i := range missing {
			if !take() {
				return
			}
			pool, _ := p.choose(spec.PrioritySpot)
			var why string
			if i < empty {
				why = reason(roleSpot, "scale up to "+p.spotCount())
			} else {
				why = fmt.Sprintf("replaces stand-in %s: spot capacity is back", holders[i-empty].ID)
			}
			p.create(pool, false, why)
		}
		return
	}
	// Stand-ins only for the spot share: a spare is not worth on-demand.
	empty := p.base - len(spot) - min(len(holders), max(0, p.base-countReady(spot)))
	if empty <= 0 {
		return
	}
	if !p.in.Placement.FallbackToOnDemand {
		p.block("%d spot replicas wanted, but no spot pool has capacity and fallbackToOnDemand is off", empty)
		return
	}
	for range empty {
		pool, ok := p.choose(spec.PriorityOnDemand)
		if !ok {
			p.block("spot is short and no on-demand pool has capacity for a stand-in (%d wanted)", empty)
			return
		}
		if !take() {
			return
		}
		p.create(pool, true, "stand-in for a spot replica: no spot pool has capacity; "+
			reason(roleSpot, "scale up to "+p.spotCount()))
	}
}

// wantCover is how many stand-ins the slow spot replicas call for: one
// for each spot replica that is slow to become ready, as far as the spot
// slots are short of ready replicas.
func (p *planner) wantCover(spot []*Replica) int {
	if !p.in.Placement.FallbackToOnDemand {
		return 0
	}
	slow := 0
	for _, r := range spot {
		if r.Slow && r.State != Ready {
			slow++
		}
	}
	return min(slow, max(0, p.base-countReady(spot)))
}

// spotCount says how many replicas the service runs and how many of them
// on spot, for reasons.
func (p *planner) spotCount() string {
	if p.spare > 0 {
		return fmt.Sprintf("%d replicas (%d on spot) and %d spare spot", p.n, p.base, p.spare)
	}
	return fmt.Sprintf("%d replicas (%d on spot)", p.n, p.spot)
}

// cover starts n on-demand stand-ins beside spot replicas that are slow to
// become ready (their node is still booting after an eviction, say), so
// that the service does not wait out a spot boot below its count. trim
// stops them once the spot replicas are ready.
func (p *planner) cover(n int, take func() bool) {
	for range n {
		pool, ok := p.choose(spec.PriorityOnDemand)
		if !ok {
			p.block("spot replicas are slow to start and no on-demand pool has capacity for a stand-in")
			return
		}
		if !take() {
			return
		}
		p.create(pool, true, fmt.Sprintf("stand-in while spot replicas are not ready after %s", p.in.Placement.StandInAfter))
	}
}

// choose returns the pool of priority where the next replica goes: an
// Available one; when spreading, the one with the fewest live replicas of
// the current version (old ones are going); then one whose nodes are not
// getting eviction notices; then, when spreading, the one with more zones;
// then the preferred one.
func (p *planner) choose(priority string) (Pool, bool) {
	var best *Pool
	for i := range p.pools {
		c := &p.pools[i]
		if c.Priority != priority || !c.Available {
			continue
		}
		if best == nil || p.better(c, best) {
			best = c
		}
	}
	if best == nil {
		return Pool{}, false
	}
	return *best, true
}

func (p *planner) better(a, b *Pool) bool {
	// Spreading comes first: a replacement goes back to the pool its
	// noticed replica leaves, so that one pool's next eviction wave still
	// takes one replica, not all (the live count there has dropped).
	c := 0
	if p.in.Placement.SpreadZones {
		c = cmp.Compare(p.count[a.Name], p.count[b.Name])
	}
	if c == 0 {
		c = cmp.Compare(min(1, p.noticed[a.Name]), min(1, p.noticed[b.Name]))
	}
	if c == 0 && p.in.Placement.SpreadZones {
		c = -cmp.Compare(len(a.Zones), len(b.Zones))
	}
	if c == 0 {
		c = cmp.Compare(p.pref[a.Name], p.pref[b.Name])
	}
	return c < 0
}

func (p *planner) create(pool Pool, standIn bool, reason string) {
	p.count[pool.Name]++
	p.plan.Create = append(p.plan.Create, Create{
		Pool: pool.Name, Priority: pool.Priority, Version: p.in.Version, StandIn: standIn, Reason: reason,
	})
}

// stop stops a live replica.
func (p *planner) stop(r *Replica, reason string) {
	if p.stopped[r.ID] {
		return
	}
	if r.Version >= p.in.Version {
		p.count[r.Pool]--
	}
	p.record(r, reason)
}

// record adds a Stop to the plan.
func (p *planner) record(r *Replica, reason string) {
	p.stopped[r.ID] = true
	p.plan.Stop = append(p.plan.Stop, Stop{ID: r.ID, Reason: reason})
}

func (p *planner) block(format string, args ...any) {
	p.plan.Blocked = append(p.plan.Blocked, fmt.Sprintf(format, args...))
}

// byRole groups the current replicas not stopped by this plan.
func (p *planner) byRole() map[role][]*Replica {
	m := map[role][]*Replica{}
	for _, r := range p.liveNotStopped(p.cur) {
		m[roleOf(r)] = append(m[roleOf(r)], r)
	}
	return m
}

func (p *planner) live() []*Replica { return append(slices.Clone(p.old), p.cur...) }

func (p *planner) liveNotStopped(rs []*Replica) []*Replica {
	var out []*Replica
	for _, r := range rs {
		if !p.stopped[r.ID] {
			out = append(out, r)
		}
	}
	return out
}

func (p *planner) liveReady(rs []*Replica) []*Replica {
	var out []*Replica
	for _, r := range p.liveNotStopped(rs) {
		if r.State == Ready {
			out = append(out, r)
		}
	}
	return out
}

func (p *planner) result() Plan {
	slices.SortStableFunc(p.plan.Create, func(a, b Create) int {
		return cmp.Or(strings.Compare(a.Pool, b.Pool), strings.Compare(a.Reason, b.Reason))
	})
	slices.SortFunc(p.plan.Stop, func(a, b Stop) int { return strings.Compare(a.ID, b.ID) })
	return p.plan
}

func countReady(rs []*Replica) int {
	n := 0
	for _, r := range rs {
		if r.State == Ready {
			n++
		}
	}
	return n
}

// stateRank orders replicas from the cheapest to stop to the dearest.
func stateRank(r *Replica) int {
	switch r.State {
	case Pending:
		return 0
	case Starting:
		return 1
	}
	return 2
}
