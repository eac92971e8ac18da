package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spotml/spotml/internal/store"
)

// liveness keeps agents' heartbeats in memory. A heartbeat is the store's
// most frequent write (every node, every second) and carries nothing that
// must survive a crash: losing the last few seconds of it only makes a
// restarted control plane wait its node timeout again before it calls a
// silent node lost (control.Plane counts heartbeats from its own start).
// So a heartbeat from a node whose state is known costs no transaction and
// never waits for the database; the times are flushed every
// HeartbeatFlushEvery, and the store's node reads show the newest time,
// from memory or disk.
type liveness struct {
	mu       sync.Mutex
	nodes    map[string]*heard
	gen      uint64 // bumped by forget: a slower heartbeat read before it must not cache its stale node
	flushing bool

	// Node credentials found valid, so that the agent API does not ask
	// the database who sends each heartbeat: hash -> node, and node -> hash to
	// forget them. forget drops a node's entry, so a credential read
	// again from the database after its node ended, restarted or got a
	// new credential.
	credNode map[string]string
	nodeCred map[string]string
}

type heard struct {
	node  store.Node // as last read from the database, HeartbeatAt aside
	at    time.Time
	dirty bool // at is not yet in the database
	// stale: another instance may have changed the node since it was
	// read (ExpireCaches); the next heartbeat reads it again.
	stale bool
}

// ExpireCaches makes everything the store keeps in memory of nodes (their
// states, credentials and work) be read again from the database before it
// is used, keeping the heartbeat times not yet flushed. The caches are
// invalidated by this Store's own writes; when another control-plane
// instance writes the same database, the control plane calls this every
// beat so that nothing kept is older than one beat.
func (s *Store) ExpireCaches() {
	l := &s.live
	l.mu.Lock()
	for _, h := range l.nodes {
		h.stale = true
	}
	clear(l.credNode)
	clear(l.nodeCred)
	l.gen++
	l.mu.Unlock()
	s.work.wrote(nil)
}

// forget drops a node's cached state after a transaction changed it (an
// end, a notice, a restart), so its next heartbeat reads the database.
func (l *liveness) forget(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.nodes, name)
	l.dropCredential(name)
	l.gen++
}

// forgetCredential drops the credential kept for a node (it got a new
// one), and nothing else: its heartbeats stay in memory.
func (l *liveness) forgetCredential(name string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dropCredential(name)
	l.gen++
}

// dropCredential deletes a node's kept credential; l.mu is held.
func (l *liveness) dropCredential(name string) {
	if h, ok := l.nodeCred[name]; ok {
		delete(l.credNode, h)
		delete(l.nodeCred, name)
	}
}

// credential returns the node of a credential hash found valid before.
func (l *liveness) credential(hash string) (string, uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	node, ok := l.credNode[hash]
	return node, l.gen, ok
}

// keepCredential remembers that hash opens node, unless a node was
// forgotten since gen (the database read may be older than that change).
func (l *liveness) keepCredential(hash, node string, gen uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.gen != gen {
		return
	}
	if l.credNode == nil {
		l.credNode, l.nodeCred = map[string]string{}, map[string]string{}
	}
	l.dropCredential(node)
	l.credNode[hash], l.nodeCred[node] = node, hash
}

// forget drops what the store keeps in memory of a node after a
// transaction changed its state.
func (s *Store) forget(name string) {
	s.live.forget(name)
	s.work.drop(name)
}

// heardAt returns the newest heartbeat of a node kept in memory.
func (l *liveness) heardAt(name string) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if h, ok := l.nodes[name]; ok {
		return h.at
	}
	return time.Time{}
}

// withHeartbeat sets n.HeartbeatAt to the newest time known for it.
func (s *Store) withHeartbeat(n store.Node) store.Node {
	if at := s.live.heardAt(n.Name); at.After(n.HeartbeatAt) {
		n.HeartbeatAt = at
	}
	return n
}

// Heartbeat records that a node's agent is alive. ready marks a
// provisioning node ready (its start task has finished). A node that has
// ended gets ErrConflict: it must stop; an unknown node ErrNotFound.
//
// The first heartbeat of a node, one after its state changed, and one that
// makes it ready, is a transaction; the others only update memory (see
// liveness) until FlushHeartbeats writes them all in one.
func (s *Store) Heartbeat(ctx context.Context, name string, ready bool) (store.Node, error) {
	now := s.now()
	l := &s.live
	l.mu.Lock()
	if h, ok := l.nodes[name]; ok && !h.stale && !(ready && h.node.State == store.NodeProvisioning) {
		if now.After(h.at) {
			h.at = now
		}
		h.dirty = true
		n := h.node
		n.HeartbeatAt = now
		l.mu.Unlock()
		return n, nil
	}
	gen := l.gen
	l.mu.Unlock()

	n, err := s.heartbeatTx(ctx, name, ready, now)
	if err != nil {
		return n, err
	}
	l.mu.Lock()
	if l.gen == gen {
		if l.nodes == nil {
			l.nodes = map[string]*heard{}
		}
		l.nodes[name] = &heard{node: n, at: now}
	}
	l.mu.Unlock()
	return n, nil
}

func (s *Store) heartbeatTx(ctx context.Context, name string, ready bool, now time.Time) (store.Node, error) {
	var n store.Node
	err := s.tx(ctx, func(tx *txn) error {
		var err error
		n, err = scanNode(tx.QueryRowContext(ctx, `SELECT `+nodeCols+` FROM nodes WHERE name = ?`+s.d.ForUpdate, name))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("node %q: %w", name, store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		if !store.Live(n.State) {
			return store.Conflict("node %s is %s", name, n.State)
		}
		n.HeartbeatAt = now
		if ready && n.State == store.NodeProvisioning {
			n.State, n.StateAt = store.NodeReady, now
			if err := s.event(ctx, tx, "Ready", "node/"+name, "AgentReady", ""); err != nil {
				return err
			}
		}
		_, err = tx.ExecContext(ctx, `UPDATE nodes SET heartbeat_at = ?, state = ?, state_at = ? WHERE name = ?`,
			now.UnixNano(), n.State, n.StateAt.UnixNano(), name)
		return err
	})
	return n, err
}

// FlushHeartbeats writes the heartbeat times kept in memory to the
// database in one transaction. The control plane calls it every
// HeartbeatFlushEvery, and Close once more.
func (s *Store) FlushHeartbeats(ctx context.Context) error {
	s.live.mu.Lock()
	if s.live.flushing {
		s.live.mu.Unlock()
		return nil
	}
	s.live.flushing = true
	s.live.mu.Unlock()
	return s.flushHeartbeats(ctx)
}

// flushHeartbeats runs with l.flushing set, and clears it.
func (s *Store) flushHeartbeats(ctx context.Context) error {
	l := &s.live
	type beat struct {
		name string
		at   time.Time
	}
	l.mu.Lock()
	var beats []beat
	for name, h := range l.nodes {
		if h.dirty {
			beats = append(beats, beat{name, h.at})
			h.dirty = false
		}
	}
	l.mu.Unlock()
	var err error
	if len(beats) > 0 {
		err = s.tx(ctx, func(tx *txn) error {
			if s.d.Arrays {
				// One statement: the node rows are locked for one round
				// trip, not a thousand, so an assign pass that waits for
				// them waits little.
				names, ats := make([]string, len(beats)), make([]int64, len(beats))
				for i, b := range beats {
					names[i], ats[i] = b.name, b.at.UnixNano()
				}
				_, err := tx.ExecContext(ctx, `UPDATE nodes AS n SET heartbeat_at = b.at FROM unnest(?::text[], ?::bigint[]) AS b(name, at)
					WHERE n.name = b.name AND n.heartbeat_at < b.at AND n.state IN (?, ?, ?)`,
					names, ats, store.NodeProvisioning, store.NodeReady, store.NodeDraining)
				return err
			}
			upd, err := tx.PrepareContext(ctx, `UPDATE nodes SET heartbeat_at = ? WHERE name = ? AND heartbeat_at < ? AND state IN (?, ?, ?)`)
			if err != nil {
				return err
			}
			defer upd.Close()
			for _, b := range beats {
				at := b.at.UnixNano()
				if _, err := upd.ExecContext(ctx, at, b.name, at, store.NodeProvisioning, store.NodeReady, store.NodeDraining); err != nil {
					return err
				}
			}
			return nil
		})
	}
	l.mu.Lock()
	if err != nil {
		for _, b := range beats { // try again next time
			if h, ok := l.nodes[b.name]; ok {
				h.dirty = true
			}
		}
	}
	l.flushing = false
	l.mu.Unlock()
	if err != nil {
		return fmt.Errorf("flush heartbeats: %w", err)
	}
	return nil
}
