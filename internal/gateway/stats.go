package gateway

import (
	"cmp"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ServiceStats is what the gateway measured of one service and its
// replicas, for `spotml get services` and the web console.
type ServiceStats struct {
	Service  string `json:"service"`
	InFlight int64  `json:"inFlight"`
	// Requests completed in the last minute, answered or not; Errors are
	// those that got a 5xx or an answer that broke off.
	Requests int64          `json:"requests"`
	Errors   int64          `json:"errors"`
	P50      time.Duration  `json:"p50"` // as the clients saw it, retries included
	P99      time.Duration  `json:"p99"`
	Replicas []ReplicaStats `json:"replicas"`
}

// ReplicaStats is one replica's share. Requests counts attempts, so a
// retried request counts on each replica it was tried on.
type ReplicaStats struct {
	ID       string        `json:"id"`
	Addr     string        `json:"addr"`
	Node     string        `json:"node,omitempty"`
	Priority string        `json:"priority,omitempty"`
	Version  int           `json:"version"`
	Draining bool          `json:"draining,omitempty"`
	Ejected  time.Duration `json:"ejected,omitempty"` // how long it is still avoided
	InFlight int64         `json:"inFlight"`
	Requests int64         `json:"requests"`
	Errors   int64         `json:"errors"`
	P50      time.Duration `json:"p50"`
	P99      time.Duration `json:"p99"`
}

// Stats returns every service of the routing table, sorted by name, with
// its replicas sorted by ID.
func (g *Gateway) Stats() []ServiceStats {
	t, now := g.table.Load(), g.now()
	out := make([]ServiceStats, 0, len(t.services))
	for _, s := range t.services {
		ss := ServiceStats{Service: s.name, InFlight: s.state.inflight.Load(), Replicas: make([]ReplicaStats, 0, len(s.replicas))}
		ss.Requests, ss.Errors, ss.P50, ss.P99 = s.state.lat.summary(now.Unix())
		for _, e := range s.replicas {
			rs := ReplicaStats{
				ID: e.ID, Addr: e.Addr, Node: e.Node, Priority: e.Priority, Version: e.Version,
				Draining: e.Draining, Ejected: e.b.ejectedFor(now), InFlight: e.b.inflight.Load(),
			}
			rs.Requests, rs.Errors, rs.P50, rs.P99 = e.b.lat.summary(now.Unix())
			ss.Replicas = append(ss.Replicas, rs)
		}
		slices.SortFunc(ss.Replicas, func(a, b ReplicaStats) int { return cmp.Compare(a.ID, b.ID) })
		out = append(out, ss)
	}
	slices.SortFunc(out, func(a, b ServiceStats) int { return cmp.Compare(a.Service, b.Service) })
	return out
}

// QPS returns, for every service of the routing table, the requests it
// completed per second over the last window: whole seconds of Config.Now
// before the current (partial) one, so that a rate is never diluted by a
// second that has only begun. The window is rounded to whole seconds, at
// least 1 and at most 10 minutes. Every request that passed the API-key
// check counts, answered or not, so that demand on a service with no
// replica shows.
func (g *Gateway) QPS(window time.Duration) map[string]float64 {
	secs := int((window + time.Second/2) / time.Second)
	secs = min(max(secs, 1), rateSeconds-1)
	t, now := g.table.Load(), g.now().Unix()
	out := make(map[string]float64, len(t.services))
	for _, s := range t.services {
		out[s.name] = s.state.rate.perSecond(now, secs)
	}
	return out
}

// finish accounts for one request that reached a service's replicas (or
// found none): QPS, the last minute's latencies, metrics.
func (g *Gateway) finish(s *service, last *backend, status int, broken bool, d time.Duration) {
	now := g.now().Unix()
	s.state.rate.add(now)
	s.state.lat.add(now, d, broken || status >= 500)
	s.state.duration.Observe(d.Seconds())
	if last != nil {
		last.codes.add(status)
	} else {
		s.state.codes.add(status)
	}
}

// serviceState is what the gateway keeps of a service across Updates.
type serviceState struct {
	name      string
	inflight  atomic.Int64
	retries   atomic.Uint64
	noReplica atomic.Uint64
	duration  prometheus.Observer
	// codes counts the gateway's own answers, given before any replica
	// was involved (401, 503 with no replica).
	codes codeCounts
	rate  rateRing
	lat   latencyWindow
	conc  concurrency // requests outstanding over time, for the autoscaler
}

func newServiceState(name string, duration prometheus.Observer) *serviceState {
	return &serviceState{name: name, duration: duration}
}

func (st *serviceState) answered(code int) { st.codes.add(code) }

// codeCounts counts answers by status code.
type codeCounts struct {
	mu sync.Mutex
	m  map[int]uint64
}

func (c *codeCounts) add(code int) {
	c.mu.Lock()
	if c.m == nil {
		c.m = map[int]uint64{}
	}
	c.m[code]++
	c.mu.Unlock()
}

func (c *codeCounts) snapshot() map[int]uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[int]uint64, len(c.m))
	for k, v := range c.m {
		out[k] = v
	}
	return out
}

// rateSeconds is how far back QPS can look.
const rateSeconds = 601

// rateRing counts completions per second of the injected clock.
type rateRing struct {
	mu    sync.Mutex
	slots [rateSeconds]struct{ sec, n int64 }
}

func (r *rateRing) add(sec int64) {
	r.mu.Lock()
	sl := &r.slots[uint64(sec)%rateSeconds]
	if sl.sec != sec {
		sl.sec, sl.n = sec, 0
	}
	sl.n++
	r.mu.Unlock()
}

// perSecond averages the secs whole seconds before now.
func (r *rateRing) perSecond(now int64, secs int) float64 {
	var n int64
	r.mu.Lock()
	for s := now - int64(secs); s < now; s++ {
		if sl := r.slots[uint64(s)%rateSeconds]; sl.sec == s {
			n += sl.n
		}
	}
	r.mu.Unlock()
	return float64(n) / float64(secs)
}

// Latencies are kept per second for the last minute in log-scale
// histograms, four buckets an octave from 50 µs up (about ±9 % on a
// quantile), so that p50/p99 cost no sorting and bounded memory.
const (
	statSeconds  = 60
	latBuckets   = 96 // up to about 12 minutes
	latMin       = 50 * time.Microsecond
	latPerOctave = 4
)

type latencyWindow struct {
	mu    sync.Mutex
	slots [statSeconds]latSlot
}

type latSlot struct {
	sec     int64
	n, errs uint32
	hist    [latBuckets]uint32
}

func (w *latencyWindow) add(sec int64, d time.Duration, failed bool) {
	i := latBucket(d)
	w.mu.Lock()
	sl := &w.slots[uint64(sec)%statSeconds]
	if sl.sec != sec {
		*sl = latSlot{sec: sec}
	}
	sl.n++
	if failed {
		sl.errs++
	}
	sl.hist[i]++
	w.mu.Unlock()
}

// summary covers the minute up to and including the current second.
func (w *latencyWindow) summary(now int64) (n, errs int64, p50, p99 time.Duration) {
	var hist [latBuckets]int64
	w.mu.Lock()
	for i := range w.slots {
		sl := &w.slots[i]
		if sl.sec <= now-statSeconds || sl.sec > now || sl.n == 0 {
			continue
		}
		n += int64(sl.n)
		errs += int64(sl.errs)
		for b, c := range sl.hist {
			hist[b] += int64(c)
		}
	}
	w.mu.Unlock()
	return n, errs, quantile(&hist, n, 0.50), quantile(&hist, n, 0.99)
}

// latBucket is the first bucket whose upper bound, latMin·2^(i/4), is at
// least d.
func latBucket(d time.Duration) int {
	if d <= latMin {
		return 0
	}
	i := int(math.Ceil(latPerOctave * math.Log2(float64(d)/float64(latMin))))
	return min(i, latBuckets-1)
}

// quantile returns the geometric middle of the bucket holding rank q·n.
func quantile(hist *[latBuckets]int64, n int64, q float64) time.Duration {
	if n == 0 {
		return 0
	}
	rank := max(int64(math.Ceil(q*float64(n))), 1)
	var cum int64
	for i, c := range hist {
		if cum += c; cum >= rank {
			if i == 0 {
				return latMin
			}
			return time.Duration(float64(latMin) * math.Exp2((float64(i)-0.5)/latPerOctave))
		}
	}
	return 0
}
