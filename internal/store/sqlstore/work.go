package sqlstore

import (
	"context"
	"slices"
	"sync"

	"github.com/spotml/spotml/internal/store"
)

// workCache keeps each node's NodeWork as read at a write generation:
// every node heartbeats every second, and between two writes that may
// change a node's work its answer cannot change, so a heartbeat costs no
// database read unless such a write came since the node's last one.
//
// A write transaction (Store.tx) bumps the generation of all nodes after
// it ends; the two frequent ones, Assign and ReportBatch, change the
// running tasks of the nodes they name only (txNodes), and bump just
// theirs. An entry read at an older generation is read again.
type workCache struct {
	mu    sync.Mutex
	all   uint64            // bumped after every other write transaction
	seq   uint64            // source of the per-node generations, so that none repeats
	node  map[string]uint64 // the generation of each node's own writes
	nodes map[string]workEntry
}

type workGen struct{ all, node uint64 }

type workEntry struct {
	gen  workGen
	work store.NodeWork
}

// get returns a node's kept work if nothing changed it since, and the
// generation to keep a fresh read at.
func (c *workCache) get(node string) (store.NodeWork, workGen, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	gen := workGen{c.all, c.node[node]}
	e, ok := c.nodes[node]
	return e.work, gen, ok && e.gen == gen
}

func (c *workCache) put(node string, gen workGen, w store.NodeWork) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != (workGen{c.all, c.node[node]}) {
		return // written since: what was read may be old
	}
	if c.nodes == nil {
		c.nodes = map[string]workEntry{}
	}
	c.nodes[node] = workEntry{gen: gen, work: w}
}

// wrote is called after a write transaction ends (committed or not):
// nodes are the only nodes whose work it may have changed, or nil for
// any.
func (c *workCache) wrote(nodes []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if nodes == nil {
		c.all++
		return
	}
	if c.node == nil {
		c.node = map[string]uint64{}
	}
	for _, n := range nodes {
		c.seq++
		c.node[n] = c.seq
	}
}

// reported is wrote for ReportBatch: it bumps the named nodes, and a kept
// entry that nothing else changed since it was read loses the tasks that
// ended (gone: task IDs by node), instead of being read again. That is
// all a report changes in a node's work, and taking a task out twice is
// harmless, so the entry is right whether it was read before or after
// the report's commit.
func (c *workCache) reported(nodes []string, gone map[string][]int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.node == nil {
		c.node = map[string]uint64{}
	}
	for _, n := range nodes {
		e, ok := c.nodes[n]
		current := ok && e.gen == (workGen{c.all, c.node[n]})
		c.seq++
		c.node[n] = c.seq
		if !current {
			continue
		}
		if ids := gone[n]; len(ids) > 0 {
			left := make([]store.Task, 0, len(e.work.Tasks))
			for _, t := range e.work.Tasks {
				if !slices.Contains(ids, t.ID) {
					left = append(left, t)
				}
			}
			e.work.Tasks = left // a new slice: callers may be reading the old one
		}
		e.gen = workGen{c.all, c.seq}
		c.nodes[n] = e
	}
}

// drop forgets a node (it ended or changed state); it counts as a write
// to all nodes, so no read from before it is kept.
func (c *workCache) drop(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.nodes, node)
	delete(c.node, node)
	c.all++
}

// NodeWork returns what node should run now. The slices are shared with
// later callers: read them, do not change them.
func (s *Store) NodeWork(ctx context.Context, node string) (store.NodeWork, error) {
	// The generation is read before the database: a write that commits
	// meanwhile bumps it after its commit, so put keeps nothing that
	// may be older than the database.
	w, gen, ok := s.work.get(node)
	if ok {
		return w, nil
	}
	tasks, err := s.NodeTasks(ctx, node)
	if err != nil {
		return store.NodeWork{}, err
	}
	reps, err := s.queryReplicasFrom(ctx, s.rdb, `WHERE r.node = ? AND r.ended_at = 0 ORDER BY r.id`, node)
	if err != nil {
		return store.NodeWork{}, err
	}
	w = store.NodeWork{Tasks: tasks, LiveReplicas: len(reps)}
	for _, r := range reps {
		if r.State == store.ReplicaStarting || r.State == store.ReplicaReady {
			w.Replicas = append(w.Replicas, r)
		}
	}
	s.work.put(node, gen, w)
	return w, nil
}
