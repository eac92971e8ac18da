// Package providertest is what the cloud providers' unit tests share: a
// Plane that stands in for the control plane as far as a provider sees
// it (a recording Sink and a View over its own pools and nodes). It is
// imported by tests only.
package providertest

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/store"
)

// Plane records what a provider reports, one line a call, and changes
// its nodes as the control plane would: Gone ends a live node, Shortage
// drops the node (the control plane stops it), Placed sets its zone.
type Plane struct {
	mu    sync.Mutex
	pools []store.Pool
	nodes map[string]*store.Node
	calls []string
}

// NewPlane returns a Plane with no pools and no nodes.
func NewPlane() *Plane { return &Plane{nodes: map[string]*store.Node{}} }

// SetPools replaces the pools the View lists.
func (p *Plane) SetPools(pools ...store.Pool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pools = slices.Clone(pools)
}

// AddPool adds a pool the View lists.
func (p *Plane) AddPool(pool store.Pool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.pools = append(p.pools, pool)
}

// AddNode adds (or replaces) a node the View lists.
func (p *Plane) AddNode(n store.Node) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.nodes[n.Name] = &n
}

// RemoveNode drops the node name.
func (p *Plane) RemoveNode(name string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.nodes, name)
}

// Set changes the node name in place (it must exist).
func (p *Plane) Set(name string, f func(*store.Node)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p.nodes[name])
}

// Node is the node name as the plane has it now (zero if it has none).
func (p *Plane) Node(name string) store.Node {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.nodes[name]; n != nil {
		return *n
	}
	return store.Node{}
}

// Took returns the calls recorded since the last Took, sorted (a
// provider's runner reports nodes in no particular order).
func (p *Plane) Took() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.calls
	p.calls = nil
	slices.Sort(c)
	return c
}

func (p *Plane) record(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, fmt.Sprintf(format, args...))
}

// Notice records "Notice NODE SOURCE".
func (p *Plane) Notice(_ context.Context, node string, _ time.Time, source string) error {
	p.record("Notice %s %s", node, source)
	return nil
}

// Gone records "Gone NODE STATE: REASON" and ends the node if it is live.
func (p *Plane) Gone(_ context.Context, node, state, reason string) error {
	p.record("Gone %s %s: %s", node, state, reason)
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.nodes[node]; n != nil && store.Live(n.State) {
		n.State, n.Reason = state, reason
	}
	return nil
}

// Shortage records "Shortage NODE: REASON" and drops the node.
func (p *Plane) Shortage(_ context.Context, node, reason string) error {
	p.record("Shortage %s: %s", node, reason)
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.nodes, node)
	return nil
}

// Placed records `Placed NODE zone "Z"`, with ` type "T"` when the
// provider chose the instance type, and sets the node's zone.
func (p *Plane) Placed(_ context.Context, node string, pl control.Placement) error {
	c := fmt.Sprintf("Placed %s zone %q", node, pl.Zone)
	if pl.InstanceType != "" {
		c += fmt.Sprintf(" type %q", pl.InstanceType)
	}
	p.record("%s", c)
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.nodes[node]; n != nil && pl.Zone != "" {
		n.Zone = pl.Zone
	}
	return nil
}

// ListPools is the View's.
func (p *Plane) ListPools(context.Context) ([]store.Pool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.pools), nil
}

// ListNodes is the View's.
func (p *Plane) ListNodes(context.Context) ([]store.Node, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]store.Node, 0, len(p.nodes))
	for _, n := range p.nodes {
		out = append(out, *n)
	}
	return out, nil
}

var (
	_ control.Sink = (*Plane)(nil)
	_ control.View = (*Plane)(nil)
)
