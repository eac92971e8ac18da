package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/autoscale"
	"github.com/spotml/spotml/internal/placement"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// QPSMaxAge is how fresh a gateway's QPS report must be to count.
const QPSMaxAge = 5 * time.Second

// ServiceDoc turns a Service spec into what the store keeps: the spec, the
// replica spec that a change of starts a rolling update, and the replica
// count to start with.
func ServiceDoc(svc spec.Service) (store.ServiceDoc, error) {
	b, err := json.Marshal(svc)
	if err != nil {
		return store.ServiceDoc{}, err
	}
	key, err := json.Marshal(struct {
		Replica   api.ReplicaSpec
		Resources spec.Resources
	}{ReplicaSpec(svc), svc.Spec.Resources})
	if err != nil {
		return store.ServiceDoc{}, err
	}
	lo, _ := svc.Spec.ReplicaRange()
	return store.ServiceDoc{Name: svc.Metadata.Name, Spec: b, RolloutKey: string(key), Initial: lo}, nil
}

// ReplicaSpec is what an agent needs to run a replica of svc.
func ReplicaSpec(svc spec.Service) api.ReplicaSpec {
	s := svc.Spec
	rs := api.ReplicaSpec{
		ModelURI:         s.Model.URI,
		Runtime:          s.Runtime.Type,
		ReadinessPath:    s.Readiness.Path,
		ReadinessPeriod:  s.Readiness.Period.Duration,
		ReadinessTimeout: s.Readiness.Timeout.Duration,
		InitialDelay:     s.Readiness.InitialDelay.Duration,
	}
	switch s.Runtime.Type {
	case spec.RuntimeCommand:
		rs.Command, rs.Env, rs.Port = s.Runtime.Command, s.Runtime.Env, s.Runtime.Port
	default:
		rs.MaxBatch, rs.MaxQueueDelay, rs.Threads = s.Runtime.MaxBatch, s.Runtime.MaxQueueDelay.Duration, s.Runtime.Threads
		rs.MaxRequestBytes = int64(s.Limits.MaxRequestBytes)
	}
	return rs
}

// reconcileServices scales and places every service's replicas.
func (p *Plane) reconcileServices(ctx context.Context, nodes []store.Node) error {
	svcs, err := p.store.ListServices(ctx, QPSMaxAge)
	if err != nil || len(svcs) == 0 {
		return err
	}
	pools, err := p.store.ListPools(ctx)
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
	now := p.now()
	fails, err := p.store.RecentReplicaFailures(ctx, now.Add(-5*time.Minute))
	if err != nil {
		return err
	}
	free := map[string]spec.Resources{}
	for _, n := range Snapshot(nil, nodes, append(running, replicaLoad(reps)...)).Nodes {
		free[n.Name] = n.Free
	}
	// hosts says which services have a replica on each node: a service's
	// replicas never share one.
	hosts := map[string]map[string]bool{}
	for _, r := range reps {
		if r.Node != "" {
			if hosts[r.Node] == nil {
				hosts[r.Node] = map[string]bool{}
			}
			hosts[r.Node][r.Service] = true
		}
	}
	var errs []error
	for _, svc := range svcs {
		errs = append(errs, p.reconcileService(ctx, svc, pools, nodes, free, hosts, fails[svc.Name], now))
	}
	return errors.Join(errs...)
}

func (p *Plane) reconcileService(ctx context.Context, svc store.Service, pools []store.Pool, nodes []store.Node,
	free map[string]spec.Resources, hosts map[string]map[string]bool, failures store.ReplicaFailures, now time.Time) error {
	var sp spec.Service
	if err := json.Unmarshal(svc.Spec, &sp); err != nil {
		return fmt.Errorf("service %s: stored spec: %w", svc.Name, err)
	}
	pl := sp.Spec.ResolvedPlacement()

	// Autoscaling on what the gateways measured.
	current := 0
	for _, r := range svc.Replicas {
		if r.Version == svc.Generation && r.State == store.ReplicaReady && !r.Noticed {
			current++
		}
	}
	var st autoscale.State
	if len(svc.ScaleState) > 0 {
		if err := json.Unmarshal(svc.ScaleState, &st); err != nil {
			st = autoscale.State{} // an unreadable memory only costs a delay
		}
	}
	in0 := autoscale.PolicyOf(&sp.Spec)
	tr := svc.Traffic
	in0.Current, in0.Ready, in0.Measured, in0.QPS = svc.Desired, current, tr.Gateways > 0, tr.QPS
	in0.InFlight, in0.InFlightPanic = tr.InFlight, tr.InFlightPanic
	in0.P99, in0.Requests = time.Duration(tr.P99*float64(time.Second)), tr.Requests
	dec, st := autoscale.Decide(in0, st, now)
	desired := dec.Replicas
	stb, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if desired != svc.Desired || string(stb) != string(svc.ScaleState) {
		if err := p.store.SetServiceScale(ctx, svc.Name, desired, stb, dec.Reason); err != nil {
			return err
		}
		if desired != svc.Desired {
			p.log.Info("service scaled", "service", svc.Name, "from", svc.Desired, "to", desired, "why", dec.Reason)
		}
	}

	// Placement: which replicas to add and which to stop.
	in := placement.Input{
		Desired:        desired,
		Version:        svc.Generation,
		Placement:      pl,
		MaxSurge:       *sp.Spec.Update.MaxSurge,
		MaxUnavailable: sp.Spec.Update.MaxUnavailable,
		Pools:          p.placementPools(svc.Name, pools, nodes, free, hosts, sp.Spec.Resources, now),
	}
	if in.Spare, err = p.spares(ctx, svc, desired, pl, in.Pools, now); err != nil {
		return err
	}
	avail := map[string]bool{}
	for _, pp := range in.Pools {
		avail[pp.Name] = pp.Available
	}
	// Nodes on the way (provisioning, no notice) per pool: as many of the
	// oldest pending replicas there are not stuck, whatever the pool's
	// later launches do.
	coming := map[string]int{}
	for _, n := range nodes {
		if n.State == store.NodeProvisioning && n.NoticeDeadline.IsZero() {
			coming[n.Pool]++
		}
	}
	var stuck []store.ReplicaStop
	for _, r := range svc.Replicas {
		if r.State == store.ReplicaStopping {
			continue
		}
		launching := false
		if r.State == store.ReplicaPending && !avail[r.Pool] && coming[r.Pool] > 0 {
			coming[r.Pool]--
			launching = true
		}
		if r.State == store.ReplicaPending && !avail[r.Pool] && !launching {
			// Its pool cannot take it now (launches refused, or full):
			// give it up so that placement can put it elsewhere, on an
			// on-demand stand-in if allowed.
			stuck = append(stuck, store.ReplicaStop{ID: r.ID, Reason: "pool " + r.Pool + " has no capacity now"})
			continue
		}
		state := map[string]string{store.ReplicaPending: placement.Pending, store.ReplicaStarting: placement.Starting, store.ReplicaReady: placement.Ready}[r.State]
		// Slow: not ready this long after it was created (its node still
		// boots, its model still loads); placement may start a stand-in.
		slow := state != placement.Ready && now.Sub(r.CreatedAt) >= pl.StandInAfter.Duration
		in.Replicas = append(in.Replicas, placement.Replica{ID: strconv.FormatInt(r.ID, 10), Version: r.Version, Pool: r.Pool,
			Priority: r.Priority, State: state, StandIn: r.StandIn, Noticed: r.Noticed, Slow: slow, Launching: launching})
	}
	plan := placement.Decide(in)
	if len(plan.Stop) > 0 || len(stuck) > 0 {
		stops := stuck
		for _, s := range plan.Stop {
			id, err := strconv.ParseInt(s.ID, 10, 64)
			if err != nil {
				return fmt.Errorf("service %s: placement stops unknown replica %q", svc.Name, s.ID)
			}
			stops = append(stops, store.ReplicaStop{ID: id, Reason: s.Reason})
		}
		if err := p.store.StopReplicas(ctx, stops); err != nil {
			return err
		}
	}
	if len(plan.Create) == 0 {
		return nil
	}
	if wait := replicaBackoff(failures, now); wait > 0 {
		p.log.Debug("replicas keep failing; waiting", "service", svc.Name, "failures", failures.Count, "wait", wait)
		return nil
	}
	b, err := json.Marshal(ReplicaSpec(sp))
	if err != nil {
		return err
	}
	var rs []store.Replica
	for _, c := range plan.Create {
		rs = append(rs, store.Replica{Service: svc.Name, Version: c.Version, Spec: b, Pool: c.Pool, Priority: c.Priority,
			StandIn: c.StandIn, Req: sp.Spec.Resources, Reason: c.Reason})
	}
	_, err = p.store.CreateReplicas(ctx, rs)
	return err
}

// placementPools says, for placement, which pools can take a replica of
// service of size req now: not backing off after a refused launch, and
// with room (a node with that much free and no replica of the service yet,
// or fewer live nodes than its max).
func (p *Plane) placementPools(service string, pools []store.Pool, nodes []store.Node, free map[string]spec.Resources,
	hosts map[string]map[string]bool, req spec.Resources, now time.Time) []placement.Pool {
	live := map[string]int{}
	room := map[string]bool{}
	for _, n := range nodes {
		if !store.Live(n.State) || !n.NoticeDeadline.IsZero() {
			continue
		}
		live[n.Pool]++
		if f, ok := free[n.Name]; ok && fits(req, f) && !hosts[n.Name][service] {
			room[n.Pool] = true
		}
	}
	var out []placement.Pool
	for _, pl := range pools {
		s := pl.Spec
		name := s.Metadata.Name
		out = append(out, placement.Pool{Name: name, Priority: s.Spec.Priority, Zones: s.Spec.Zones,
			Available: !p.inBackoff(name, now) && (room[name] || live[name] < s.Spec.Max)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

func fits(req, free spec.Resources) bool {
	return req.CPU <= free.CPU+1e-9 && req.Memory <= free.Memory && req.GPU <= free.GPU
}

// replicaBackoff says how long new replicas of a service wait because its
// replicas keep failing (a broken model or command): 1s after the first
// failure in the last five minutes, doubling up to a minute.
func replicaBackoff(f store.ReplicaFailures, now time.Time) time.Duration {
	if f.Count == 0 {
		return 0
	}
	d := time.Duration(math.Min(float64(time.Second)*math.Pow(2, float64(f.Count-1)), float64(time.Minute)))
	return max(f.Last.Add(d).Sub(now), 0)
}

// replicaLoad presents placed replicas (but those on noticed nodes) as
// running tasks, so that the scheduler and the pool scaler count the room
// they take.
func replicaLoad(reps []store.Replica) []store.Task {
	var out []store.Task
	for _, r := range reps {
		// A noticed replica's node is going, and its replacement is a
		// pending replica of its own, possibly in another pool: counting
		// it too would launch a node nothing uses.
		if r.Node != "" && !r.Noticed {
			out = append(out, store.Task{ID: -r.ID, Node: r.Node, Pool: r.Pool, Req: r.Req, State: store.TaskRunning, Spread: r.Service})
		}
	}
	return out
}

// replicaQueue presents pending replicas as pending tasks that go before
// every batch task (an always-on service outranks the batch queue). Their
// IDs are negated replica IDs, so the scheduler's plan tells them apart,
// and a service's replicas never share a node (Spread), so that one
// eviction takes one replica, not all.
func replicaQueue(reps []store.Replica) []store.Task {
	var out []store.Task
	for _, r := range reps {
		if r.State == store.ReplicaPending {
			out = append(out, store.Task{ID: -r.ID, Order: math.MinInt64 + r.ID, Pool: r.Pool, Priority: r.Priority, Req: r.Req,
				State: store.TaskPending, Spread: r.Service})
		}
	}
	return out
}
