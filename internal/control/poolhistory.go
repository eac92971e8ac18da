package control

import (
	"slices"
	"time"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// A refused launch is recorded as an event of kind EventLaunchFailed on
// pool/NAME, with reason ReasonNoCapacity when the platform had no
// capacity (PoolHistory's shortages).
const (
	EventLaunchFailed = "LaunchFailed"
	ReasonNoCapacity  = "NoCapacity"
)

// PoolHistory reads what a pool lived through as the spot capacity of its
// market: one count per tick of gap from `from` to `to` (the data of a
// trace in the Can't Be Late JSON format, which spotml plan and a pool's
// market.trace replay). nodes are the pool's nodes live in or ended since
// `from`; refused are the times its launches were refused for lack of
// capacity.
//
// The market is taken to give what the pool asked for (its max, at least
// its live nodes) except while it is known short: from an eviction (a
// node's notice, else its end as preempted or deallocated) or a refused
// launch until the pool's next launch the market took, the capacity is the
// nodes still live. A tick holds the lowest capacity within it, so an
// eviction whose replacement launched at once still shows, a tick long.
func PoolHistory(pool spec.Pool, nodes []store.Node, refused []time.Time, from, to time.Time, gap time.Duration) []int {
	if gap <= 0 || !to.After(from) {
		return nil
	}
	const (
		evict = iota // sorted first at one instant: a drop before its replacement
		leave
		refuse
		launch
	)
	type change struct {
		at   time.Time
		kind int
	}
	var cs []change
	for _, n := range nodes {
		if n.Pool != pool.Metadata.Name {
			continue
		}
		cs = append(cs, change{n.CreatedAt, launch})
		switch {
		case !n.NoticeAt.IsZero():
			// Taken at its notice: its replacement is launched then.
			cs = append(cs, change{n.NoticeAt, evict})
		case n.State == store.NodePreempted || n.State == store.NodeDeallocated:
			cs = append(cs, change{n.StateAt, evict})
		case !store.Live(n.State):
			cs = append(cs, change{n.StateAt, leave})
		}
	}
	for _, at := range refused {
		cs = append(cs, change{at, refuse})
	}
	slices.SortStableFunc(cs, func(a, b change) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.kind - b.kind
	})

	live, short := 0, false
	capacity := func() int {
		if short {
			return live
		}
		return max(pool.Spec.Max, live)
	}
	apply := func(c change) {
		switch c.kind {
		case launch:
			live++
			short = false
		case evict:
			live = max(live-1, 0)
			short = true
		case leave:
			live = max(live-1, 0)
		case refuse:
			short = true
		}
	}
	i := 0
	for ; i < len(cs) && cs[i].at.Before(from); i++ {
		apply(cs[i])
	}
	// What came before is known in part (nodes that ended before from are
	// not read): the window starts with the market taken to be there.
	short = false
	ticks := int((to.Sub(from) + gap - 1) / gap)
	data := make([]int, ticks)
	for k := range data {
		end := from.Add(time.Duration(k+1) * gap)
		low := capacity()
		for ; i < len(cs) && cs[i].at.Before(end); i++ {
			apply(cs[i])
			low = min(low, capacity())
		}
		data[k] = low
	}
	return data
}
