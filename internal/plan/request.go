package plan

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/trace"
)

// Request is a service plan asked for: the specs, the markets and what
// the specs do not say. The CLI (spotml plan) and the server's
// POST /api/v1/plan both build one.
type Request struct {
	Service spec.Service
	// Pools are the pools the service may use; a spot pool's market is
	// its spec.local.market trace unless Traces names one.
	Pools []spec.Pool
	// Traces are trace names, one per spot pool in order; when Pools has
	// no spot pool, each makes one (spot-a, spot-b, …) of InstanceType.
	Traces       []string
	InstanceType string
	// Speedup is the replay speed of the pools Traces makes or overrides
	// (0: the pool's market.speedup, else 1).
	Speedup float64
	// Start is where in the traces the first run starts (trace time);
	// negative: each pool's market.start.
	Start time.Duration
	// Duration is how much of the market a run covers, in trace time
	// (0: a day, or what the shortest trace has from Start).
	Duration time.Duration
	// Offsets is how many start offsets, spread over the traces, the
	// probabilities are taken over (0: none, only the run from Start).
	Offsets int
	// Target is the availability an offset must reach to count as met
	// (default 0.999).
	Target float64
	// Boot is a new node's boot time, Load a replica's start on a node,
	// Notice a spot pool's notice where its spec says none (real time).
	Boot, Load, Notice time.Duration
	// QPS is the load; 0: the replicas.min count, with no requests.
	QPS float64
}

// Report is the plan: the service under each tier, on the same markets.
type Report struct {
	Service  string        `json:"service"`
	Tier     string        `json:"tier"`
	QPS      float64       `json:"qps,omitempty"`
	Start    time.Duration `json:"start"`
	Duration time.Duration `json:"duration"` // real time of a run
	Span     time.Duration `json:"span"`     // the same in the first traced pool's trace time
	Offsets  int           `json:"offsets"`
	Target   float64       `json:"target"`
	Pools    []PoolInfo    `json:"pools"`
	Tiers    []TierPlan    `json:"tiers"`
}

// PoolInfo says how a pool was simulated.
type PoolInfo struct {
	Name            string        `json:"name"`
	Priority        string        `json:"priority"`
	Trace           string        `json:"trace,omitempty"`
	Speedup         float64       `json:"speedup,omitempty"`
	Notice          time.Duration `json:"notice,omitempty"`
	Boot            time.Duration `json:"boot"`
	PricePerHour    float64       `json:"pricePerHour"`
	OnDemandPerHour float64       `json:"onDemandPerHour"`
}

// TierPlan is the service under one tier: the run from Start, and over
// the offsets.
type TierPlan struct {
	Tier string `json:"tier"`
	// Spec is true for the spec's own placement (its explicit fields
	// kept); the other tiers are the bare tier.
	Spec     bool `json:"spec"`
	Replicas int  `json:"replicas"`
	Run      Run  `json:"run"`
	// Over the offsets: mean and worst availability, requests answered
	// and cost ÷ all on-demand, and the share of offsets with
	// availability ≥ Target.
	MeanAvailability  float64       `json:"meanAvailability"`
	WorstAvailability float64       `json:"worstAvailability"`
	MeanAnswered      float64       `json:"meanAnswered"`
	WorstAnswered     float64       `json:"worstAnswered"`
	MeanFraction      float64       `json:"meanFraction"`
	WorstFraction     float64       `json:"worstFraction"`
	MetTarget         float64       `json:"metTarget"`
	Sweep             []OffsetPoint `json:"sweep,omitempty"`
}

// OffsetPoint is one offset's run, briefly.
type OffsetPoint struct {
	Offset       time.Duration `json:"offset"`
	Availability float64       `json:"availability"`
	Answered     float64       `json:"answered"`
	Fraction     float64       `json:"fraction"`
}

// Tiers are the tiers every plan compares.
var Tiers = []string{spec.TierDev, spec.TierProd, spec.TierStrict}

// Services plans req, loading traces with load.
func Services(req Request, load func(name string) (*trace.Trace, error)) (Report, error) {
	sv := req.Service
	sv.Default()
	if req.Target <= 0 {
		req.Target = 0.999
	}
	if req.Target > 1 {
		return Report{}, fmt.Errorf("target: %g is above 1; give an availability such as 0.999", req.Target)
	}
	if req.QPS < 0 || req.Speedup < 0 || req.Boot < 0 || req.Load < 0 || req.Notice < 0 || req.Duration < 0 || req.Offsets < 0 {
		return Report{}, errors.New("qps, speedup, boot, load, notice, duration and offsets must not be negative")
	}
	pools, infos, err := simPools(req, load)
	if err != nil {
		return Report{}, err
	}
	// The run's span, in real time: Duration of trace time at the first
	// traced pool's speed, cut to what every trace has left from Start.
	var traced *Pool
	room := time.Duration(math.MaxInt64)
	for i := range pools {
		p := &pools[i]
		if p.Trace == nil {
			continue
		}
		if traced == nil {
			traced = p
		}
		room = min(room, time.Duration(float64(p.Trace.Duration-p.Start)/p.Speedup))
	}
	if traced == nil {
		return Report{}, errors.New("no spot pool has a market: give a trace per spot pool (--trace, or the pool's spec.local.market.trace)")
	}
	span := req.Duration
	if span == 0 {
		span = 24 * time.Hour
	}
	dur := min(time.Duration(float64(span)/traced.Speedup), room)
	if dur <= 0 {
		return Report{}, fmt.Errorf("start: %s is past the end of a trace (%s); start earlier", traced.Start, traced.Trace.Duration)
	}
	rep := Report{Service: sv.Metadata.Name, Tier: sv.Spec.Placement.Tier, QPS: req.QPS, Start: traced.Start, Duration: dur,
		Span: time.Duration(float64(dur) * traced.Speedup), Offsets: req.Offsets, Target: req.Target, Pools: infos}

	// Offsets spread over where a run still fits in every trace.
	var offsets []time.Duration
	if req.Offsets > 0 {
		fit := time.Duration(math.MaxInt64)
		for _, p := range pools {
			if p.Trace != nil {
				fit = min(fit, p.Trace.Duration-time.Duration(float64(dur)*p.Speedup))
			}
		}
		fit = max(fit, 0)
		for i := range req.Offsets {
			if req.Offsets > 1 {
				offsets = append(offsets, fit*time.Duration(i)/time.Duration(req.Offsets-1))
			} else {
				offsets = append(offsets, traced.Start)
			}
		}
	}
	for _, tier := range Tiers {
		ps := spec.PlacementSpec{Tier: tier, Pools: sv.Spec.Placement.Pools}
		own := tier == sv.Spec.Placement.Tier
		if own {
			ps = sv.Spec.Placement
		}
		pl := ps.Resolve(sv.Spec.Replicas.Min)
		lo, hi := pl.MinReplicas, max(pl.MinReplicas, sv.Spec.Replicas.Max)
		n := lo
		if req.QPS > 0 {
			n = min(hi, max(lo, int(math.Ceil(req.QPS/sv.Spec.Replicas.TargetQPSPerReplica-1e-9))))
		}
		svc := Service{Name: sv.Metadata.Name, Placement: pl, Replicas: n, QPS: req.QPS,
			PerReplicaQPS: sv.Spec.Replicas.TargetQPSPerReplica, Load: req.Load}
		tp := TierPlan{Tier: tier, Spec: own, Replicas: n,
			Run: Simulate(svc, pools, traced.Start, Options{Duration: dur})}
		// The offsets' runs are independent: one per CPU at a time.
		runs := make([]Run, len(offsets))
		var wg sync.WaitGroup
		sem := make(chan struct{}, runtime.GOMAXPROCS(0))
		for i, off := range offsets {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				runs[i] = Simulate(svc, pools, off, Options{Duration: dur, Points: -1})
			})
		}
		wg.Wait()
		tp.WorstAvailability, tp.WorstAnswered = 1, 1
		met := 0
		for i, off := range offsets {
			r := runs[i]
			tp.Sweep = append(tp.Sweep, OffsetPoint{Offset: off, Availability: r.Availability, Answered: r.Answered, Fraction: r.Fraction})
			tp.MeanAvailability += r.Availability
			tp.WorstAvailability = min(tp.WorstAvailability, r.Availability)
			tp.MeanAnswered += r.Answered
			tp.WorstAnswered = min(tp.WorstAnswered, r.Answered)
			tp.MeanFraction += r.Fraction
			tp.WorstFraction = max(tp.WorstFraction, r.Fraction)
			if r.Availability >= req.Target {
				met++
			}
		}
		if k := float64(len(offsets)); k > 0 {
			tp.MeanAvailability /= k
			tp.MeanAnswered /= k
			tp.MeanFraction /= k
			tp.MetTarget = float64(met) / k
		} else {
			tp.MeanAvailability, tp.WorstAvailability = tp.Run.Availability, tp.Run.Availability
			tp.MeanAnswered, tp.WorstAnswered = tp.Run.Answered, tp.Run.Answered
			tp.MeanFraction, tp.WorstFraction = tp.Run.Fraction, tp.Run.Fraction
			if tp.Run.Availability >= req.Target {
				tp.MetTarget = 1
			}
		}
		rep.Tiers = append(rep.Tiers, tp)
	}
	return rep, nil
}

// simPools turns the pool specs (and the traces) into simulated pools.
func simPools(req Request, load func(string) (*trace.Trace, error)) ([]Pool, []PoolInfo, error) {
	specs := slices.Clone(req.Pools)
	spot := 0
	for _, p := range specs {
		if p.Spec.Priority == spec.PrioritySpot {
			spot++
		}
	}
	if spot == 0 && len(req.Traces) > 0 {
		if req.InstanceType == "" {
			return nil, nil, errors.New("instanceType: the specs have no spot pool; give the instance type of the pools the traces make (e.g. m5.large), or add Pool specs")
		}
		for i := range req.Traces {
			specs = append(specs, spec.Pool{Metadata: spec.Metadata{Name: "spot-" + string(rune('a'+i))},
				Spec: spec.PoolSpec{Priority: spec.PrioritySpot, InstanceType: req.InstanceType, Max: 100, Zones: []string{fmt.Sprint(i + 1)}}})
		}
		spot = len(req.Traces)
	}
	if !slices.ContainsFunc(specs, func(p spec.Pool) bool { return p.Spec.Priority == spec.PriorityOnDemand }) {
		it := req.InstanceType
		for _, p := range specs {
			it = cmp.Or(it, p.Spec.InstanceType)
		}
		if it == "" {
			return nil, nil, errors.New("pools: no on-demand pool; add one (priority: ondemand), or give the instance type")
		}
		specs = append(specs, spec.Pool{Metadata: spec.Metadata{Name: "od"},
			Spec: spec.PoolSpec{Priority: spec.PriorityOnDemand, InstanceType: it, Max: 100}})
	}
	if len(req.Traces) > spot {
		return nil, nil, fmt.Errorf("traces: %d traces for %d spot pools; give one trace per spot pool", len(req.Traces), spot)
	}
	var out []Pool
	var infos []PoolInfo
	k := 0
	for _, ps := range specs {
		s := ps.Spec
		it, ok := cost.Lookup(s.InstanceType)
		if !ok && (s.PricePerHour == nil || s.OnDemandPricePerHour == nil) {
			return nil, nil, fmt.Errorf("pool %s: spec.instanceType %q is not in the price table (%v); set pricePerHour and onDemandPricePerHour", ps.Metadata.Name, s.InstanceType, cost.Types())
		}
		p := Pool{Name: ps.Metadata.Name, Priority: s.Priority, Zones: s.Zones, Min: s.Min, Max: s.Max,
			Boot: req.Boot, IdleTimeout: s.IdleTimeout.Duration, PricePerHour: it.SpotPerHour, OnDemandPerHour: it.OnDemandPerHour}
		if p.Max <= 0 {
			p.Max = 100
		}
		if p.IdleTimeout == 0 {
			p.IdleTimeout = time.Minute // the pool spec's default
		}
		if s.Priority == spec.PriorityOnDemand {
			p.PricePerHour = it.OnDemandPerHour
		}
		if s.PricePerHour != nil {
			p.PricePerHour = *s.PricePerHour
		}
		if s.OnDemandPricePerHour != nil {
			p.OnDemandPerHour = *s.OnDemandPricePerHour
		}
		info := PoolInfo{Name: p.Name, Priority: p.Priority, Boot: p.Boot, PricePerHour: p.PricePerHour, OnDemandPerHour: p.OnDemandPerHour}
		if s.Priority == spec.PrioritySpot {
			m := s.Market()
			p.Notice = cmp.Or(m.Notice.Duration, req.Notice, 30*time.Second)
			name, speedup, start := "", 1.0, time.Duration(0)
			if m.Market != nil {
				name, speedup, start = m.Market.Trace, cmp.Or(m.Market.Speedup, 1), m.Market.Start.Duration
			}
			if k < len(req.Traces) {
				name = req.Traces[k]
				k++
			}
			if req.Speedup > 0 {
				speedup = req.Speedup
			}
			if req.Start >= 0 {
				start = req.Start
			}
			if name == "" {
				return nil, nil, fmt.Errorf("pool %s: no trace for this spot pool; give one per spot pool (--trace) or set spec.local.market.trace", p.Name)
			}
			tr, err := load(name)
			if err != nil {
				return nil, nil, fmt.Errorf("pool %s: trace %s: %w", p.Name, name, err)
			}
			p.Trace, p.Speedup, p.Start = tr, speedup, start
			info.Trace, info.Speedup, info.Notice = name, speedup, p.Notice
		}
		out = append(out, p)
		infos = append(infos, info)
	}
	return out, infos, nil
}
