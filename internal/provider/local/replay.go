package local

import (
	"context"
	"fmt"
	"os"
	"sort"
	"sync"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/trace"
)

// A pool with spec.local.market replays a recorded spot market: its
// position in the trace is start + (now - the pool's creation) × speedup,
// so a restarted control plane carries on where the market is, not where
// it stopped. Each tick applies the trace's steps since the last tick in
// order: a step that removes nodes (an event log's preemption) evicts that
// many live nodes, and a capacity below the live spot nodes without a
// notice evicts the surplus, newest node first. A launch while the live
// nodes fill the capacity is refused, as a cloud refuses a spot request.
// Notices last the pool's notice in real time, not compressed: they are
// for the agent to checkpoint.

// replays holds the loaded traces and each pool's position.
type replays struct {
	mu     sync.Mutex
	traces map[string]loadedTrace
	last   map[string]time.Duration // pool -> trace position applied
}

type loadedTrace struct {
	mod time.Time
	t   *trace.Trace
}

// load returns a trace file, read again when it changed.
func (r *replays) load(path string) (*trace.Trace, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if lt, ok := r.traces[path]; ok && lt.mod.Equal(fi.ModTime()) {
		return lt.t, nil
	}
	t, err := trace.Load(path)
	if err != nil {
		return nil, err
	}
	if r.traces == nil {
		r.traces = map[string]loadedTrace{}
	}
	r.traces[path] = loadedTrace{fi.ModTime(), t}
	return t, nil
}

// position is where in its trace a pool's market is at now.
func position(p store.Pool, m *spec.Market, now time.Time) time.Duration {
	speedup := m.Speedup
	if speedup <= 0 {
		speedup = 1
	}
	return m.Start.Duration + time.Duration(float64(now.Sub(p.CreatedAt))*speedup)
}

// replayMarket applies a pool's trace up to now: the evictions of the
// steps since the last tick, and the surplus over the capacity now. It
// returns the nodes it evicted.
func (l *Local) replayMarket(ctx context.Context, sink control.Sink, p store.Pool, nodes []store.Node, pools []store.Pool, now time.Time) (evicted []string, err error) {
	m := p.Spec.Spec.Market().Market
	if m == nil {
		return nil, nil
	}
	tr, err := l.replay.load(m.Trace)
	if err != nil {
		return nil, fmt.Errorf("pool %s: spec.local.market.trace: %w", p.Spec.Metadata.Name, err)
	}
	pos := position(p, m, now)
	name := p.Spec.Metadata.Name
	l.replay.mu.Lock()
	if l.replay.last == nil {
		l.replay.last = map[string]time.Duration{}
	}
	last, seen := l.replay.last[name]
	l.replay.last[name] = pos
	l.replay.mu.Unlock()
	if !seen || last > pos {
		last = pos // first look (or the pool was made again): no history to replay
	}
	running := unnoticed(name, nodes)
	take := func(k int, why string) error {
		for ; k > 0 && len(running) > 0; k-- {
			n := running[len(running)-1]
			running = running[:len(running)-1]
			if err := l.evict(ctx, sink, nodes, pools, n.Name, 0); err != nil {
				return err
			}
			evicted = append(evicted, n.Name)
			l.log.Info("traced market evicts node", "node", n.Name, "why", why, "trace", m.Trace)
		}
		return nil
	}
	for _, s := range tr.Between(last, pos) {
		if err := take(s.Removed, fmt.Sprintf("the trace preempts a node at %s", s.At)); err != nil {
			return evicted, err
		}
		if err := take(len(running)-s.Capacity, fmt.Sprintf("the trace's capacity is %d at %s", s.Capacity, s.At)); err != nil {
			return evicted, err
		}
	}
	c := tr.CapacityAt(pos)
	err = take(len(running)-c, fmt.Sprintf("the trace's capacity is %d at %s", c, pos))
	return evicted, err
}

// unnoticed are a pool's live nodes without a notice, oldest first.
func unnoticed(pool string, nodes []store.Node) []store.Node {
	var out []store.Node
	for _, n := range nodes {
		if n.Pool == pool && store.Live(n.State) && n.NoticeDeadline.IsZero() {
			out = append(out, n)
		}
	}
	sort.SliceStable(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// traceRefuses says why a traced pool has no capacity for one more node
// now, or "" if it has.
func (l *Local) traceRefuses(ctx context.Context, pool spec.Pool, node string) (string, error) {
	m := pool.Spec.Market().Market
	if m == nil {
		return "", nil
	}
	_, view := l.market()
	if view == nil {
		return "", nil
	}
	pools, err := view.ListPools(ctx)
	if err != nil {
		return "", err
	}
	var p *store.Pool
	for i := range pools {
		if pools[i].Spec.Metadata.Name == pool.Metadata.Name {
			p = &pools[i]
		}
	}
	if p == nil {
		return "", nil
	}
	tr, err := l.replay.load(m.Trace)
	if err != nil {
		return "", fmt.Errorf("spec.local.market.trace: %w", err)
	}
	nodes, err := view.ListNodes(ctx)
	if err != nil {
		return "", err
	}
	pos := position(*p, m, l.now())
	c := tr.CapacityAt(pos)
	running := 0
	for _, n := range unnoticed(pool.Metadata.Name, nodes) {
		if n.Name != node {
			running++
		}
	}
	if running < c {
		return "", nil
	}
	return fmt.Sprintf("the trace %s has capacity %d at %s and %d nodes hold it", m.Trace, c, pos.Round(time.Second), running), nil
}
