package gateway

import (
	"sync"
	"time"
)

// InFlight is how many requests a service had outstanding at once over a
// window: Avg is the time average (the integral of the outstanding count
// over the window, divided by its length), so that a request of 2 s counts
// twice as much as one of 1 s whenever the gateway looks; Max is the most
// at any moment of it.
type InFlight struct {
	Avg float64 `json:"avg"`
	Max int64   `json:"max"`
}

// InFlight returns, for every service of the routing table, its requests
// outstanding over the last window, in whole seconds of Config.Now before
// the current one, as QPS does (at least 1 s, at most 10 minutes). It is
// what the autoscaler's concurrency target is measured against; several
// gateways' averages add up.
func (g *Gateway) InFlight(window time.Duration) map[string]InFlight {
	secs := int((window + time.Second/2) / time.Second)
	secs = min(max(secs, 1), rateSeconds-1)
	t, now := g.table.Load(), g.now()
	out := make(map[string]InFlight, len(t.services))
	for _, s := range t.services {
		out[s.name] = s.state.conc.over(now.UnixNano(), secs)
	}
	return out
}

// concurrency integrates a service's outstanding request count over time,
// per second of Config.Now, for the last rateSeconds seconds: the area
// under the count (request-seconds) and its highest value in each second.
type concurrency struct {
	mu    sync.Mutex
	n     int64 // outstanding now
	last  int64 // Unix nanoseconds of the last change or read
	slots [rateSeconds]concSlot
}

type concSlot struct {
	sec  int64
	area float64 // request-seconds within the second
	max  int64
}

// change adds delta (+1 when a request starts, -1 when it ends) at now.
func (c *concurrency) change(now time.Time, delta int64) {
	ns := now.UnixNano()
	c.mu.Lock()
	c.advance(ns)
	c.n += delta
	sl := c.slot(ns / int64(time.Second))
	sl.max = max(sl.max, c.n)
	c.mu.Unlock()
}

// over averages the secs whole seconds before now's.
func (c *concurrency) over(now int64, secs int) InFlight {
	var out InFlight
	c.mu.Lock()
	c.advance(now)
	cur := now / int64(time.Second)
	for s := cur - int64(secs); s < cur; s++ {
		if sl := c.slots[uint64(s)%rateSeconds]; sl.sec == s {
			out.Avg += sl.area
			out.Max = max(out.Max, sl.max)
		}
	}
	c.mu.Unlock()
	out.Avg /= float64(secs)
	return out
}

// advance credits the count since the last change to the seconds it was
// held in. Callers hold mu.
func (c *concurrency) advance(now int64) {
	const sec = int64(time.Second)
	from := c.last
	if now <= from {
		return // no time passed, or the clock went back: nothing to credit
	}
	c.last = now
	if c.n == 0 {
		return
	}
	// Only the seconds the ring still holds matter.
	from = max(from, now-(rateSeconds-1)*sec)
	for from < now {
		s := from / sec
		end := min(now, (s+1)*sec)
		sl := c.slot(s)
		sl.area += float64(c.n) * float64(end-from) / float64(sec)
		sl.max = max(sl.max, c.n)
		from = end
	}
}

// slot returns second s's slot, emptied if it held an older second.
func (c *concurrency) slot(s int64) *concSlot {
	sl := &c.slots[uint64(s)%rateSeconds]
	if sl.sec != s {
		*sl = concSlot{sec: s}
	}
	return sl
}
