// Package sched decides which node each pending batch task runs on.
//
// Schedule is a pure function: a snapshot of pending tasks and of the nodes
// that accept work goes in, a plan comes out. It reads no clock, store or
// network, so every decision can be replayed from its input in a test, and
// one applier elsewhere carries the plan out.
package sched

import (
	"cmp"
	"math"
	"slices"

	"github.com/spotml/spotml/internal/spec"
)

// Task is a pending task waiting for a node.
type Task struct {
	ID int64
	// Order is the FIFO key: lower runs first (job submit sequence, then
	// task index). Ties go to the lower ID.
	Order    int64
	Pool     string // "" = any pool
	Priority string // "" = any priority, else spec.PrioritySpot or spec.PriorityOnDemand
	Req      spec.Resources
	// Spread, when set, keeps tasks with the same Spread on different
	// nodes: a service's replicas, so that one eviction takes one. Among
	// the nodes that qualify it prefers a zone holding the fewest of them,
	// so that one zone's outage takes few.
	Spread string
}

// Node is a node that accepts work: ready, and without an eviction notice.
type Node struct {
	Name     string
	Pool     string
	Priority string
	Zone     string
	Free     spec.Resources // capacity minus what its running tasks requested
	Running  int            // tasks on it now
	Spread   []string       // the Spread keys of the tasks on it
}

// Snapshot is the state one scheduling pass sees.
type Snapshot struct {
	Pending []Task
	Nodes   []Node // only nodes that accept work
}

// Assignment places one task on one node.
type Assignment struct {
	TaskID int64
	Node   string
}

// Plan is the outcome of one pass. Assignments are in FIFO order.
type Plan struct {
	Assignments []Assignment
	Unplaced    int // pending tasks that fit nowhere now
}

// Schedule places pending tasks on nodes, earliest task first.
//
// A task goes only to a node of its pool and priority (where it names them)
// whose free resources cover its request in CPU, memory and GPU. Among the
// nodes that fit it picks the one running the fewest tasks, then the one
// with the most free CPU, then the first by name, so that work spreads and
// the choice is deterministic. A task that fits nowhere does not hold up
// later, smaller tasks (backfill), but every task picks before all tasks
// that come after it.
//
// CPU is compared in whole millicores, so requests such as 0.1 add up
// exactly. The snapshot is not modified.
func Schedule(s Snapshot) Plan {
	if len(s.Pending) == 0 {
		return Plan{}
	}
	p := NewPlanner(s.Nodes)
	p.Add(fifo(s.Pending))
	return p.Plan()
}

// Planner is Schedule over a queue read a piece at a time: Add each piece
// in FIFO order, every task of it after all tasks added before. The plan
// is the one Schedule makes for the whole queue, as a task picks before
// every later task and never sees them; once Full, the queue's readers
// can stop reading tasks that ask for CPU (see Full), so a pass over a
// queue of 100,000 reads what the nodes can take, not all of it.
type Planner struct {
	st   *state
	plan Plan
}

// NewPlanner starts a plan over nodes (not modified).
func NewPlanner(nodes []Node) *Planner {
	return &Planner{st: newState(nodes)}
}

// Add places tasks, which come after every task added before, in the
// order given.
func (p *Planner) Add(tasks []Task) {
	st := p.st
	for _, t := range tasks {
		req := toReq(t.Req)
		if st.open == 0 && req.milli > 0 {
			// No node has any CPU left: only tasks that ask for none can
			// still be placed, so the rest of the queue is decided cheaply.
			p.plan.Unplaced++
			continue
		}
		var n *node
		if t.Spread != "" {
			n = st.pickApart(st.match(t.Pool, t.Priority), req, t.Spread)
		} else {
			n = st.pick(st.match(t.Pool, t.Priority), req)
		}
		if n == nil {
			p.plan.Unplaced++
			continue
		}
		st.place(n, req)
		if t.Spread != "" {
			if n.spread == nil {
				n.spread = map[string]bool{}
			}
			n.spread[t.Spread] = true
		}
		p.plan.Assignments = append(p.plan.Assignments, Assignment{TaskID: t.ID, Node: n.name})
	}
}

// Full reports that no node has CPU left: from now on only tasks that ask
// for no CPU can be placed, and every other task added counts as unplaced
// without a look. A reader may then skip the tasks that ask for CPU
// (Unplaced then counts only the tasks added).
func (p *Planner) Full() bool { return p.st.open == 0 }

// Plan returns the plan so far: the assignments in FIFO order, and the
// tasks added that fit nowhere.
func (p *Planner) Plan() Plan { return p.plan }

// fifo returns a copy of tasks in the order they get to pick.
func fifo(pending []Task) []Task {
	tasks := slices.Clone(pending)
	byOrder := func(a, b Task) int {
		if c := cmp.Compare(a.Order, b.Order); c != 0 {
			return c
		}
		return cmp.Compare(a.ID, b.ID)
	}
	// The queue usually arrives in order already; checking is cheaper
	// than sorting 100k tasks again.
	if !slices.IsSortedFunc(tasks, byOrder) {
		slices.SortStableFunc(tasks, byOrder)
	}
	return tasks
}

// res is a resource vector in exact integer units.
type res struct {
	milli int64 // CPU in millicores
	mem   int64 // bytes
	gpu   int
}

func toRes(r spec.Resources) res {
	return res{milli: int64(math.Round(r.CPU * 1000)), mem: int64(r.Memory), gpu: r.GPU}
}

// toReq is toRes for a request. A negative request is invalid and counts
// as zero: placing a task never gives a node more room.
func toReq(r spec.Resources) res {
	q := toRes(r)
	return res{milli: max(q.milli, 0), mem: max(q.mem, 0), gpu: max(q.gpu, 0)}
}

// covers reports whether a holds at least b in every dimension.
func (a res) covers(b res) bool {
	return a.milli >= b.milli && a.mem >= b.mem && a.gpu >= b.gpu
}

// node is the scheduler's working copy of a Node.
type node struct {
	name    string
	zone    string
	index   int // position in Snapshot.Nodes: the last tie-break, should names repeat
	free    res
	running int
	spread  map[string]bool // Spread keys on it
	heap    *nodeHeap       // the heap that holds it
	pos     int             // its position there
}

// before is the spread order: fewest running tasks, then most free CPU,
// then name.
func (a *node) before(b *node) bool {
	if a.running != b.running {
		return a.running < b.running
	}
	if a.free.milli != b.free.milli {
		return a.free.milli > b.free.milli
	}
	if a.name != b.name {
		return a.name < b.name
	}
	return a.index < b.index
}

// group holds the nodes of one (pool, priority). Nodes with CPU left are
// in open; the others wait in closed, where only tasks asking for no CPU
// look, so that full nodes are not searched again for every task.
type group struct {
	pool, priority string
	open, closed   nodeHeap
}

type selector struct{ pool, priority string }

// state is one pass's working copy of the nodes.
type state struct {
	all     []*node // every node, for zone counts
	groups  []*group
	open    int // nodes in open heaps, across groups
	matched map[selector][]*group
	last    selector
	lastGs  []*group
	scratch []int // frontier for nodeHeap.best
}

func newState(nodes []Node) *state {
	st := &state{matched: make(map[selector][]*group)}
	byKey := make(map[selector]*group)
	for i, in := range nodes {
		k := selector{in.Pool, in.Priority}
		g := byKey[k]
		if g == nil {
			g = &group{pool: in.Pool, priority: in.Priority}
			byKey[k] = g
			st.groups = append(st.groups, g)
		}
		n := &node{name: in.Name, zone: in.Zone, index: i, free: toRes(in.Free), running: in.Running}
		st.all = append(st.all, n)
		for _, k := range in.Spread {
			if n.spread == nil {
				n.spread = map[string]bool{}
			}
			n.spread[k] = true
		}
		if n.free.milli > 0 {
			g.open.nodes = append(g.open.nodes, n)
			st.open++
		} else {
			g.closed.nodes = append(g.closed.nodes, n)
		}
	}
	for _, g := range st.groups {
		g.open.init(g)
		g.closed.init(g)
	}
	st.last = selector{"\x00", "\x00"} // matches no real selector
	return st
}

// match returns the groups a task with this pool and priority may use.
func (st *state) match(pool, priority string) []*group {
	k := selector{pool, priority}
	if k == st.last {
		return st.lastGs
	}
	gs, ok := st.matched[k]
	if !ok {
		for _, g := range st.groups {
			if (pool == "" || pool == g.pool) && (priority == "" || priority == g.priority) {
				gs = append(gs, g)
			}
		}
		st.matched[k] = gs
	}
	st.last, st.lastGs = k, gs
	return gs
}

// pick returns the node, among the groups, that fits req and comes first
// in spread order, or nil.
func (st *state) pick(gs []*group, req res) *node {
	var best *node
	consider := func(h *nodeHeap) {
		if n := h.best(req, &st.scratch); n != nil && (best == nil || n.before(best)) {
			best = n
		}
	}
	for _, g := range gs {
		consider(&g.open)
		if req.milli <= 0 {
			consider(&g.closed)
		}
	}
	return best
}

// pickApart is pick for a task that must not share a node with its
// Spread key, preferring the zone with the fewest nodes that hold the key.
// Such tasks are few (service replicas), so it scans.
func (st *state) pickApart(gs []*group, req res, key string) *node {
	inZone := map[string]int{}
	for _, n := range st.all {
		if n.spread[key] {
			inZone[n.zone]++
		}
	}
	var best *node
	scan := func(h *nodeHeap) {
		for _, n := range h.nodes {
			if !n.free.covers(req) || n.spread[key] {
				continue
			}
			if best == nil || inZone[n.zone] < inZone[best.zone] || inZone[n.zone] == inZone[best.zone] && n.before(best) {
				best = n
			}
		}
	}
	for _, g := range gs {
		scan(&g.open)
		if req.milli <= 0 {
			scan(&g.closed)
		}
	}
	return best
}

// place puts a task asking for req on n.
func (st *state) place(n *node, req res) {
	n.free.milli -= req.milli
	n.free.mem -= req.mem
	n.free.gpu -= req.gpu
	n.running++
	h := n.heap
	g := h.owner
	if h == &g.open && n.free.milli <= 0 {
		h.remove(n)
		g.closed.push(n)
		st.open--
		return
	}
	// n only got worse in spread order: more running, no more free CPU.
	h.down(n.pos)
}

// nodeHeap is a binary min-heap of nodes in spread order.
type nodeHeap struct {
	owner *group
	nodes []*node
	// failed holds requests that no node here fits. Free space only
	// shrinks during a pass, so a request at least as large fails too and
	// need not be searched for. A heap that gains a node forgets them.
	failed []res
}

// maxFailed bounds the failure memo; past it, searches are only slower.
const maxFailed = 32

func (h *nodeHeap) init(owner *group) {
	h.owner = owner
	for i, n := range h.nodes {
		n.heap, n.pos = h, i
	}
	for i := len(h.nodes)/2 - 1; i >= 0; i-- {
		h.down(i)
	}
}

// best returns the first node in spread order that fits req, or nil. It
// walks the heap best-first from the root without changing it, so it
// looks only at the nodes that come before the answer and their children.
func (h *nodeHeap) best(req res, frontier *[]int) *node {
	if len(h.nodes) == 0 {
		return nil
	}
	if root := h.nodes[0]; root.free.covers(req) {
		return root
	}
	for _, f := range h.failed {
		if req.covers(f) {
			return nil
		}
	}
	// frontier is a min-heap of positions in h, by their nodes' order.
	fr := append((*frontier)[:0], 0)
	less := func(i, j int) bool { return h.nodes[fr[i]].before(h.nodes[fr[j]]) }
	var found *node
	for len(fr) > 0 {
		p := fr[0]
		last := len(fr) - 1
		fr[0] = fr[last]
		fr = fr[:last]
		siftDown(len(fr), 0, less, func(i, j int) { fr[i], fr[j] = fr[j], fr[i] })
		if n := h.nodes[p]; n.free.covers(req) {
			found = n
			break
		}
		for c := 2*p + 1; c <= 2*p+2 && c < len(h.nodes); c++ {
			fr = append(fr, c)
			siftUp(len(fr)-1, less, func(i, j int) { fr[i], fr[j] = fr[j], fr[i] })
		}
	}
	*frontier = fr
	if found == nil {
		h.rememberFailed(req)
	}
	return found
}

func (h *nodeHeap) rememberFailed(req res) {
	kept := h.failed[:0]
	for _, f := range h.failed {
		if !f.covers(req) { // f is implied by req from now on
			kept = append(kept, f)
		}
	}
	h.failed = kept
	if len(h.failed) < maxFailed {
		h.failed = append(h.failed, req)
	}
}

func (h *nodeHeap) push(n *node) {
	n.heap, n.pos = h, len(h.nodes)
	h.nodes = append(h.nodes, n)
	h.up(n.pos)
	h.failed = h.failed[:0]
}

func (h *nodeHeap) remove(n *node) {
	i, last := n.pos, len(h.nodes)-1
	if i != last {
		h.swap(i, last)
	}
	h.nodes[last] = nil
	h.nodes = h.nodes[:last]
	if i != last {
		h.down(i)
		h.up(i)
	}
}

func (h *nodeHeap) less(i, j int) bool { return h.nodes[i].before(h.nodes[j]) }

func (h *nodeHeap) swap(i, j int) {
	h.nodes[i], h.nodes[j] = h.nodes[j], h.nodes[i]
	h.nodes[i].pos = i
	h.nodes[j].pos = j
}

func (h *nodeHeap) up(i int)   { siftUp(i, h.less, h.swap) }
func (h *nodeHeap) down(i int) { siftDown(len(h.nodes), i, h.less, h.swap) }

func siftUp(i int, less func(i, j int) bool, swap func(i, j int)) {
	for i > 0 {
		p := (i - 1) / 2
		if !less(i, p) {
			return
		}
		swap(i, p)
		i = p
	}
}

func siftDown(n, i int, less func(i, j int) bool, swap func(i, j int)) {
	for {
		c := 2*i + 1
		if c >= n {
			return
		}
		if r := c + 1; r < n && less(r, c) {
			c = r
		}
		if !less(c, i) {
			return
		}
		swap(i, c)
		i = c
	}
}
