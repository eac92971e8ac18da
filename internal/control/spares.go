package control

import (
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/spotml/spotml/internal/placement"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// SpareWindow is how far back the spot pools' preemptions are read to
// size a service's spare spot replicas (placement.Spares), and
// spareRefresh how often that history is read again: it changes on the
// scale of preemptions, not of reconcile passes.
// A lower count waits spareHold after the last raise, so that a
// measurement that wobbles (the time to ready, a wave at the window's
// edge) does not start and stop replicas.
const (
	SpareWindow  = 6 * time.Hour
	spareRefresh = 10 * time.Second
	spareHold    = 5 * time.Minute
)

// spareState is a service's spare count and when it was last raised.
type spareState struct {
	n      int
	raised time.Time
}

// preemptions returns the spot preemptions of the last SpareWindow, read
// at most every spareRefresh.
func (p *Plane) preemptions(ctx context.Context, now time.Time) ([]placement.Preemption, error) {
	p.mu.Lock()
	if !p.preemptAt.IsZero() && now.Sub(p.preemptAt) < spareRefresh {
		defer p.mu.Unlock()
		return p.preempt, nil
	}
	p.mu.Unlock()
	nodes, err := p.store.RecentNodes(ctx, now.Add(-SpareWindow))
	if err != nil {
		return nil, err
	}
	var out []placement.Preemption
	for _, n := range nodes {
		if n.Priority == spec.PrioritySpot && (n.State == store.NodePreempted || n.State == store.NodeDeallocated) {
			e := placement.Preemption{Pool: n.Pool, At: n.StateAt, Age: n.StateAt.Sub(n.CreatedAt)}
			if !n.NoticeAt.IsZero() {
				e.Warning, e.Age = n.StateAt.Sub(n.NoticeAt), n.NoticeAt.Sub(n.CreatedAt)
			}
			out = append(out, e)
		}
	}
	p.mu.Lock()
	p.preempt, p.preemptAt = out, now
	p.mu.Unlock()
	return out, nil
}

// spares sizes a service's spare spot replicas: fixed by its placement,
// or from its spot pools' recent preemptions and its replicas' measured
// time to ready. A change is recorded as an event with its reason.
func (p *Plane) spares(ctx context.Context, svc store.Service, desired int, pl spec.Placement, pools []placement.Pool, now time.Time) (int, error) {
	_, spot := pl.Mix(max(desired, pl.MinReplicas))
	if !pl.AutoSpare || spot == 0 {
		return pl.SpareSpot, nil
	}
	pre, err := p.preemptions(ctx, now)
	if err != nil {
		return 0, err
	}
	var names []string
	for _, pool := range pools {
		if pool.Priority == spec.PrioritySpot && (len(pl.Pools) == 0 || slices.Contains(pl.Pools, pool.Name)) {
			names = append(names, pool.Name)
		}
	}
	n, why := placement.Spares(spot, names, pl.SpreadZones,
		placement.History{Preemptions: pre, Window: SpareWindow, Replace: replaceTime(svc.Replicas, pl.StandInAfter.Duration)})
	p.mu.Lock()
	st, known := p.spare[svc.Name]
	was := st.n
	switch {
	case n > was || !known:
		st = spareState{n, now}
	case n < was && now.Sub(st.raised) < spareHold:
		n = was // not yet
	default:
		st.n = n
	}
	p.spare[svc.Name] = st
	p.mu.Unlock()
	if !known && n == 0 || was == n && known {
		return n, nil
	}
	p.log.Info("spare spot replicas", "service", svc.Name, "from", was, "to", n, "why", why)
	return n, p.store.AddEvent(ctx, "Spares", "service/"+svc.Name, "SpareSpot", spareMessage(n, why))
}

func spareMessage(n int, why string) string {
	if n == 0 {
		return "no spare spot replicas: " + why
	}
	if n == 1 {
		return "1 spare spot replica: " + why
	}
	return strconv.Itoa(n) + " spare spot replicas: " + why
}

// replaceTime is how long the service's replicas took from creation to
// ready: the 90th percentile over its live ones that got there (a
// replacement that must boot a node, not one that found room on a
// running one); def while none has.
func replaceTime(reps []store.Replica, def time.Duration) time.Duration {
	var ds []time.Duration
	for _, r := range reps {
		if !r.ReadyAt.IsZero() && r.ReadyAt.After(r.CreatedAt) {
			ds = append(ds, r.ReadyAt.Sub(r.CreatedAt))
		}
	}
	if len(ds) == 0 {
		return def
	}
	slices.Sort(ds)
	return ds[(len(ds)*9)/10]
}
