package store

import (
	"context"
	"sync"
)

// NodeWork is what a node's agent should run, as its heartbeat answers it.
type NodeWork struct {
	Tasks    []Task    // running on the node (NodeTasks)
	Replicas []Replica // placed there, not ended and not being stopped (NodeReplicas)
	// LiveReplicas counts the node's replicas that have not ended,
	// stopping ones included: ReportReplicas has work only if it is > 0.
	LiveReplicas int
}

// workCache keeps each node's NodeWork as read at a write generation of
// the store (Store.writes): every node heartbeats every second, and
// between two write transactions their answers cannot change, so a
// heartbeat costs no SQLite read unless something was written since the
// node's last one. An entry read at an older generation is read again.
type workCache struct {
	mu    sync.Mutex
	nodes map[string]workEntry
}

type workEntry struct {
	gen  uint64
	work NodeWork
}

func (c *workCache) get(node string, gen uint64) (NodeWork, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.nodes[node]
	if !ok || e.gen != gen {
		return NodeWork{}, false
	}
	return e.work, true
}

func (c *workCache) put(node string, gen uint64, w NodeWork) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.nodes == nil {
		c.nodes = map[string]workEntry{}
	}
	if e, ok := c.nodes[node]; ok && e.gen > gen {
		return // a newer read got there first
	}
	c.nodes[node] = workEntry{gen: gen, work: w}
}

func (c *workCache) drop(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.nodes, node)
}

// NodeWork returns what node should run now. The slices are shared with
// later callers: read them, do not change them.
func (s *Store) NodeWork(ctx context.Context, node string) (NodeWork, error) {
	// The generation is read before the database: a write that commits
	// meanwhile bumps it after its commit, so what is kept below is
	// either up to date or already older than the current generation.
	gen := s.writes.Load()
	if w, ok := s.work.get(node, gen); ok {
		return w, nil
	}
	tasks, err := s.NodeTasks(ctx, node)
	if err != nil {
		return NodeWork{}, err
	}
	reps, err := s.queryReplicasFrom(ctx, s.rdb, `WHERE r.node = ? AND r.ended_at = 0 ORDER BY r.id`, node)
	if err != nil {
		return NodeWork{}, err
	}
	w := NodeWork{Tasks: tasks, LiveReplicas: len(reps)}
	for _, r := range reps {
		if r.State == ReplicaStarting || r.State == ReplicaReady {
			w.Replicas = append(w.Replicas, r)
		}
	}
	s.work.put(node, gen, w)
	return w, nil
}
