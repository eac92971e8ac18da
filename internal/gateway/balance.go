package gateway

import (
	"sync"
	"sync/atomic"
	"time"
)

// table is one routing table. It is never changed after Update stores it;
// what changes while it is in use (counters, ejections) lives in the
// backends and service states it points to.
type table struct {
	services map[string]*service
}

// service is one route in a table.
type service struct {
	name     string
	keys     map[[32]byte]bool // SHA-256 of the API keys; nil: open
	replicas []*entry
	state    *serviceState // survives Updates
	// maxBody and maxInFlight are the route's limits, defaults applied.
	maxBody, maxInFlight int64
}

// entry is a replica as this table sees it (Draining may differ from one
// table to the next) together with its long-lived state.
type entry struct {
	Replica
	b *backend
}

// backendKey names a replica's long-lived state.
type backendKey struct{ service, id string }

// backend is what the gateway knows of one replica across Updates:
// outstanding requests, passive health and statistics.
type backend struct {
	service, id, addr string

	inflight atomic.Int64
	// ejectedUntil (Unix ns by Config.Now) is when the replica may get
	// requests again after a connection error.
	ejectedUntil atomic.Int64
	// strikes counts ejections without a success in between; the next
	// ejection lasts EjectFor << strikes.
	strikes atomic.Int32
	ejectMu sync.Mutex

	errs [numReasons]atomic.Uint64
	// codes counts the answers clients got from (or about) this replica.
	codes codeCounts
	lat   latencyWindow

	conns connPool // keep-alive connections to it
	h2    h2Hop    // its HTTP/2 client, for gRPC (grpc.go)
}

func newBackend(service, id, addr string) *backend {
	b := &backend{service: service, id: id, addr: addr}
	b.conns.addr = addr
	return b
}

func (b *backend) ejected(now int64) bool { return b.ejectedUntil.Load() > now }

// tier orders the replicas a request may go to: the first tier that has a
// replica not yet tried wins.
type tier int

const (
	tierReady    tier = iota // neither draining nor ejected
	tierDraining             // draining: answers until its node dies
	tierAny                  // panic mode: every replica is ejected
	numTiers
)

func (e *entry) in(t tier, now int64) bool {
	switch t {
	case tierReady:
		return !e.Draining && !e.b.ejected(now)
	case tierDraining:
		return e.Draining && !e.b.ejected(now)
	default:
		return true
	}
}

// pick chooses a replica for a request by least outstanding requests with
// power-of-two random choices: two distinct random candidates, the less
// loaded wins. Compared with scanning for the global minimum it avoids
// herding every concurrent request onto the same momentarily idle replica.
// Replicas in tried are skipped; nil means no replica is left.
func (s *service) pick(now int64, tried []*backend, intn func(int) int) *entry {
	for t := range numTiers {
		n := 0
		for _, e := range s.replicas {
			if e.in(t, now) && !contains(tried, e.b) {
				n++
			}
		}
		switch n {
		case 0:
			continue
		case 1:
			return s.nth(t, now, tried, 0)
		}
		i, j := intn(n), intn(n-1)
		if j >= i {
			j++
		}
		a, b := s.nth(t, now, tried, i), s.nth(t, now, tried, j)
		if b.b.inflight.Load() < a.b.inflight.Load() {
			return b
		}
		return a
	}
	return nil
}

// nth returns the i-th candidate of a tier. Routes have few replicas, so
// scanning again beats allocating a candidate list per request.
func (s *service) nth(t tier, now int64, tried []*backend, i int) *entry {
	for _, e := range s.replicas {
		if e.in(t, now) && !contains(tried, e.b) {
			if i == 0 {
				return e
			}
			i--
		}
	}
	return nil
}

func contains(bs []*backend, b *backend) bool {
	for _, x := range bs {
		if x == b {
			return true
		}
	}
	return false
}

// ready reports whether any service has a replica that is neither draining
// nor ejected.
func (t *table) ready(now int64) bool {
	for _, s := range t.services {
		for _, e := range s.replicas {
			if e.in(tierReady, now) {
				return true
			}
		}
	}
	return false
}

// vanished reports whether a replica has left the current table or is
// draining there: a 502/503 from it is then about the replica going away,
// not about the request, and another replica should have the request.
func (g *Gateway) vanished(b *backend) bool {
	s := g.table.Load().services[b.service]
	if s == nil {
		return true
	}
	for _, e := range s.replicas {
		if e.b == b {
			return e.Draining
		}
	}
	return true
}

// eject keeps new requests away from a replica that gave a connection
// error, for EjectFor doubled on every repeat up to EjectMax. Requests that
// fail together while it is already ejected do not lengthen it.
func (g *Gateway) eject(b *backend, err error) {
	now := g.now()
	b.ejectMu.Lock()
	if b.ejected(now.UnixNano()) {
		b.ejectMu.Unlock()
		return
	}
	strikes := b.strikes.Load()
	d := g.ejectFor
	for i := int32(0); i < strikes && d < g.ejectMax; i++ {
		d *= 2
	}
	d = min(d, g.ejectMax)
	b.strikes.Store(strikes + 1)
	b.ejectedUntil.Store(now.Add(d).UnixNano())
	b.ejectMu.Unlock()
	g.log.Warn("gateway: replica ejected after a connection error", "service", b.service, "replica", b.id, "addr", b.addr, "for", d, "err", err)
}

// answered clears a replica's strikes: it answered, so its connection is
// fine whatever the status.
func (b *backend) answered() {
	if b.strikes.Load() != 0 {
		b.strikes.Store(0)
	}
}

// ejectedFor is how long a replica stays ejected, for Stats.
func (b *backend) ejectedFor(now time.Time) time.Duration {
	return max(0, time.Duration(b.ejectedUntil.Load()-now.UnixNano()))
}
