package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

const nodeCols = `name, pool, priority, zone, instance_type, state, cpu, memory, gpu, price, ondemand_price, provider_id, host,
	created_at, state_at, heartbeat_at, idle_since, notice_deadline, reason, incarnation, notice_at, at_risk`

func scanNode(sc interface{ Scan(...any) error }) (store.Node, error) {
	var n store.Node
	var mem, c, st, hb, idle, nd, na, risk int64
	err := sc.Scan(&n.Name, &n.Pool, &n.Priority, &n.Zone, &n.InstanceType, &n.State, &n.Capacity.CPU, &mem,
		&n.Capacity.GPU, &n.PricePerHour, &n.OnDemandPrice, &n.ProviderID, &n.Host, &c, &st, &hb, &idle, &nd, &n.Reason, &n.Incarnation, &na, &risk)
	n.Capacity.Memory = spec.Bytes(mem)
	n.CreatedAt, n.StateAt, n.HeartbeatAt, n.IdleSince, n.NoticeDeadline = fromNanos(c), fromNanos(st), fromNanos(hb), fromNanos(idle), fromNanos(nd)
	n.NoticeAt, n.AtRisk = fromNanos(na), fromNanos(risk)
	return n, err
}

// CreateNode records a node that a provider is launching, and opens its
// billing run.
func (s *Store) CreateNode(ctx context.Context, n store.Node) error {
	return s.tx(ctx, func(tx *txn) error {
		now := s.now().UnixNano()
		_, err := tx.ExecContext(ctx, `INSERT INTO nodes (`+nodeCols+`) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, 0, '', 1, 0, 0)`,
			n.Name, n.Pool, n.Priority, n.Zone, n.InstanceType, store.NodeProvisioning, n.Capacity.CPU, int64(n.Capacity.Memory),
			n.Capacity.GPU, n.PricePerHour, n.OnDemandPrice, n.ProviderID, n.Host, now, now, now)
		if err != nil {
			return fmt.Errorf("create node %s: %w", n.Name, err)
		}
		return s.openRun(ctx, tx, n, now)
	})
}

func (s *Store) openRun(ctx context.Context, tx *txn, n store.Node, now int64) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO node_runs (node, pool, priority, started_at, price, ondemand_price) VALUES (?, ?, ?, ?, ?, ?)`,
		n.Name, n.Pool, n.Priority, now, n.PricePerHour, n.OnDemandPrice)
	return err
}

// RestartNode brings a deallocated node back with the same name and disk
// (its provider ID is kept) as a new incarnation.
func (s *Store) RestartNode(ctx context.Context, name string) error {
	defer s.forget(name) // its state changes: the next heartbeat reads it
	return s.tx(ctx, func(tx *txn) error {
		n, err := scanNode(tx.QueryRowContext(ctx, `SELECT `+nodeCols+` FROM nodes WHERE name = ?`+s.d.ForUpdate, name))
		if err != nil {
			return fmt.Errorf("restart node %s: %w", name, err)
		}
		if n.State != store.NodeDeallocated {
			return store.Conflict("restart node %s in state %s", name, n.State)
		}
		now := s.now().UnixNano()
		if _, err := tx.ExecContext(ctx, `UPDATE nodes SET state = ?, state_at = ?, heartbeat_at = 0, idle_since = ?,
			notice_deadline = 0, notice_at = 0, at_risk = 0, reason = '', incarnation = incarnation + 1 WHERE name = ?`, store.NodeProvisioning, now, now, name); err != nil {
			return err
		}
		if err := s.openRun(ctx, tx, n, now); err != nil {
			return err
		}
		return s.event(ctx, tx, "Restarted", "node/"+name, "Reallocated", "deallocated node started again with its disk")
	})
}

// SetNodeLaunched records that a provider launched a node, under the
// provider's own ID for it.
func (s *Store) SetNodeLaunched(ctx context.Context, name, providerID string) error {
	return s.tx(ctx, func(tx *txn) error {
		n, err := scanNode(tx.QueryRowContext(ctx, `SELECT `+nodeCols+` FROM nodes WHERE name = ?`+s.d.ForUpdate, name))
		if err != nil {
			return fmt.Errorf("node %s: %w", name, err)
		}
		if _, err := tx.ExecContext(ctx, `UPDATE nodes SET provider_id = ? WHERE name = ?`, providerID, name); err != nil {
			return err
		}
		if n.Incarnation > 1 {
			return nil // RestartNode recorded it
		}
		return s.event(ctx, tx, "Launched", "node/"+name, "ScaleUp", fmt.Sprintf("%s %s in zone %q", n.Priority, n.InstanceType, n.Zone))
	})
}

// SetNodePlacement records where a node landed. A changed price applies
// from now: the node's billing run is closed and a new one opened.
func (s *Store) SetNodePlacement(ctx context.Context, name string, pl store.Placement) error {
	defer s.forget(name)
	return s.tx(ctx, func(tx *txn) error {
		n, err := scanNode(tx.QueryRowContext(ctx, `SELECT `+nodeCols+` FROM nodes WHERE name = ?`+s.d.ForUpdate, name))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("node %q: %w", name, store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		was := n
		if pl.Zone != "" {
			n.Zone = pl.Zone
		}
		if pl.InstanceType != "" {
			n.InstanceType = pl.InstanceType
		}
		if pl.Host != "" {
			n.Host = pl.Host
		}
		if pl.Capacity != (spec.Resources{}) {
			n.Capacity = pl.Capacity
		}
		if pl.PricePerHour > 0 {
			n.PricePerHour = pl.PricePerHour
		}
		if pl.OnDemandPrice > 0 {
			n.OnDemandPrice = pl.OnDemandPrice
		}
		if n == was {
			return nil
		}
		if _, err := tx.ExecContext(ctx, `UPDATE nodes SET zone = ?, instance_type = ?, host = ?, cpu = ?, memory = ?, gpu = ?,
			price = ?, ondemand_price = ? WHERE name = ?`, n.Zone, n.InstanceType, n.Host, n.Capacity.CPU, int64(n.Capacity.Memory),
			n.Capacity.GPU, n.PricePerHour, n.OnDemandPrice, name); err != nil {
			return err
		}
		if store.Live(n.State) && (n.PricePerHour != was.PricePerHour || n.OnDemandPrice != was.OnDemandPrice) {
			now := s.now().UnixNano()
			if _, err := tx.ExecContext(ctx, `UPDATE node_runs SET ended_at = ? WHERE node = ? AND ended_at = 0`, now, name); err != nil {
				return err
			}
			if err := s.openRun(ctx, tx, n, now); err != nil {
				return err
			}
		}
		return s.event(ctx, tx, "Placed", "node/"+name, "Scheduled",
			fmt.Sprintf("%s %s in zone %q on %s", n.Priority, n.InstanceType, n.Zone, n.Host))
	})
}

// ListNodes returns all nodes (live and ended) by name with their running
// task counts.
func (s *Store) ListNodes(ctx context.Context) ([]store.Node, error) {
	return s.listNodes(ctx, "")
}

// LiveNodes lists the nodes that run or may run again: provisioning,
// ready and draining ones, and deallocated ones a pool may restart, with
// ListNodes' counts. It is what the reconcile pass reads: ended nodes are
// history, and however many there are they cost it nothing.
func (s *Store) LiveNodes(ctx context.Context) ([]store.Node, error) {
	return s.listNodes(ctx, `WHERE state IN (?, ?, ?, ?)`, store.NodeProvisioning, store.NodeReady, store.NodeDraining, store.NodeDeallocated)
}

// RecentNodes lists the live nodes and those that ended at or after since
// (what the console's fleet view shows), with ListNodes' counts.
func (s *Store) RecentNodes(ctx context.Context, since time.Time) ([]store.Node, error) {
	return s.listNodes(ctx, `WHERE state IN (?, ?, ?) OR state_at >= ?`, store.NodeProvisioning, store.NodeReady, store.NodeDraining, nanos(since))
}

func (s *Store) listNodes(ctx context.Context, where string, args ...any) ([]store.Node, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+nodeCols+`, (SELECT count(*) FROM tasks t WHERE t.node = nodes.name AND t.state = 'running'),
		(SELECT count(*) FROM replicas r WHERE r.node = nodes.name AND r.ended_at = 0)
		FROM nodes `+where+` ORDER BY name`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Node
	for rows.Next() {
		var tasks, replicas int
		n, err := scanNode(scanExtra{rows, []any{&tasks, &replicas}})
		if err != nil {
			return nil, err
		}
		n.Tasks, n.Replicas = tasks, replicas
		out = append(out, s.withHeartbeat(n))
		s.nodeRows.Add(1)
	}
	return out, rows.Err()
}

type scanExtra struct {
	rows  *sql.Rows
	extra []any
}

func (s scanExtra) Scan(dest ...any) error { return s.rows.Scan(append(dest, s.extra...)...) }

// GetNode returns one node.
func (s *Store) GetNode(ctx context.Context, name string) (store.Node, error) {
	n, err := scanNode(s.db.QueryRowContext(ctx, `SELECT `+nodeCols+` FROM nodes WHERE name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Node{}, fmt.Errorf("node %q: %w", name, store.ErrNotFound)
	}
	return s.withHeartbeat(n), err
}

// SetNotice records an eviction notice for a node: it takes no new work
// from now on and will be gone at deadline. source says who saw it first
// (the provider publishing it or the agent reading it). Returns false if
// the node already had a notice.
func (s *Store) SetNotice(ctx context.Context, name string, deadline time.Time, source string) (bool, error) {
	defer s.forget(name) // its state changes: the next heartbeat reads it
	changed := false
	err := s.tx(ctx, func(tx *txn) error {
		changed = false // a retried run starts again
		n, err := scanNode(tx.QueryRowContext(ctx, `SELECT `+nodeCols+` FROM nodes WHERE name = ?`+s.d.ForUpdate, name))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("node %q: %w", name, store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		if !store.Live(n.State) {
			return store.Conflict("node %s is %s", name, n.State)
		}
		if !n.NoticeDeadline.IsZero() {
			if n.State != store.NodeDraining && source == "agent" {
				_, err := tx.ExecContext(ctx, `UPDATE nodes SET state = ?, state_at = ? WHERE name = ?`, store.NodeDraining, s.now().UnixNano(), name)
				if err != nil {
					return err
				}
				return s.event(ctx, tx, "Draining", "node/"+name, "NoticeReceived", "agent read the eviction notice")
			}
			return nil
		}
		changed = true
		state := n.State
		if source == "agent" {
			state = store.NodeDraining
		}
		if _, err := tx.ExecContext(ctx, `UPDATE nodes SET notice_deadline = ?, notice_at = ?, state = ?, state_at = ? WHERE name = ?`,
			deadline.UnixNano(), s.now().UnixNano(), state, s.now().UnixNano(), name); err != nil {
			return err
		}
		return s.event(ctx, tx, "Notice", "node/"+name, "EvictionNotice",
			fmt.Sprintf("evicted in %s (by %s), seen by %s", deadline.Sub(s.now()).Round(time.Second), deadline.UTC().Format(time.RFC3339), source))
	})
	return changed, err
}

// SetAtRisk records that the platform warned a live node is at elevated
// risk of being taken (AWS's rebalance recommendation), at at, as source
// saw it. It reports whether that changed anything: a node already at
// risk, or already given its notice, is left as it is. The node keeps its
// state and its work; the pool scaler launches a replacement beside it.
func (s *Store) SetAtRisk(ctx context.Context, name string, at time.Time, source string) (bool, error) {
	defer s.forget(name)
	changed := false
	err := s.tx(ctx, func(tx *txn) error {
		changed = false
		n, err := scanNode(tx.QueryRowContext(ctx, `SELECT `+nodeCols+` FROM nodes WHERE name = ?`+s.d.ForUpdate, name))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("node %q: %w", name, store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		if !store.Live(n.State) {
			return store.Conflict("node %s is %s", name, n.State)
		}
		if !n.AtRisk.IsZero() || !n.NoticeDeadline.IsZero() {
			return nil
		}
		if at.IsZero() {
			at = s.now()
		}
		changed = true
		if _, err := tx.ExecContext(ctx, `UPDATE nodes SET at_risk = ? WHERE name = ?`, at.UnixNano(), name); err != nil {
			return err
		}
		return s.event(ctx, tx, "AtRisk", "node/"+name, "RebalanceRecommendation",
			fmt.Sprintf("at elevated risk of interruption since %s (seen by %s): a replacement is launched; the node keeps its work until a notice", at.UTC().Format(time.RFC3339), source))
	})
	return changed, err
}

// EndNode moves a node to an ended state (preempted, deallocated, lost,
// terminated), closes its billing run and puts its running tasks back in
// the queue with attempt+1, without counting a failure.
func (s *Store) EndNode(ctx context.Context, name, state, reason string) error {
	if store.Live(state) {
		return fmt.Errorf("end node %s: %q is not an end state", name, state)
	}
	defer s.forget(name) // its state changes: the next heartbeat reads it
	return s.tx(ctx, func(tx *txn) error {
		n, err := scanNode(tx.QueryRowContext(ctx, `SELECT `+nodeCols+` FROM nodes WHERE name = ?`+s.d.ForUpdate, name))
		if errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("node %q: %w", name, store.ErrNotFound)
		}
		if err != nil {
			return err
		}
		if !store.Live(n.State) {
			return nil // already ended
		}
		now := s.now().UnixNano()
		if _, err := tx.ExecContext(ctx, `UPDATE nodes SET state = ?, state_at = ?, reason = ?, notice_deadline = 0 WHERE name = ?`,
			state, now, reason, name); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE node_runs SET ended_at = ? WHERE node = ? AND ended_at = 0`, now, name); err != nil {
			return err
		}
		kind := map[string]string{store.NodePreempted: "Evicted", store.NodeDeallocated: "Evicted", store.NodeLost: "Lost", store.NodeTerminated: "Terminated"}[state]
		if err := s.event(ctx, tx, kind, "node/"+name, reason, ""); err != nil {
			return err
		}
		if err := s.dropNodeCredentials(ctx, tx, name); err != nil {
			return err
		}
		if err := s.endNodeReplicas(ctx, tx, name, "node "+name+" "+state); err != nil {
			return err
		}
		return s.requeueNodeTasks(ctx, tx, name, state, "node "+name+" "+state)
	})
}

func (s *Store) requeueNodeTasks(ctx context.Context, tx *txn, node, outcome, why string) error {
	rows, err := tx.QueryContext(ctx, `SELECT t.id, j.name, t.name, t.attempt FROM tasks t JOIN jobs j ON j.id = t.job_id
		WHERE t.node = ? AND t.state = ?`+s.forUpdateOf("t"), node, store.TaskRunning)
	if err != nil {
		return err
	}
	type ref struct {
		id        int64
		job, task string
		attempt   int
	}
	var refs []ref
	for rows.Next() {
		var r ref
		if err := rows.Scan(&r.id, &r.job, &r.task, &r.attempt); err != nil {
			rows.Close()
			return err
		}
		refs = append(refs, r)
	}
	rows.Close()
	for _, r := range refs {
		if err := s.endAttempt(ctx, tx, r.id, r.attempt, outcome, -1); err != nil {
			return err
		}
		if err := s.requeue(ctx, tx, r.id, r.job, r.task, r.attempt, why); err != nil {
			return err
		}
	}
	return nil
}

// requeue puts a running task back in the queue after an eviction; it does
// not count against maxRetries.
func (s *Store) requeue(ctx context.Context, tx *txn, id int64, job, task string, attempt int, why string) error {
	if _, err := tx.ExecContext(ctx, `UPDATE tasks SET state = ?, node = '', attempt = attempt + 1, evictions = evictions + 1,
		message = ? WHERE id = ?`, store.TaskPending, "requeued: "+why, id); err != nil {
		return err
	}
	return s.event(ctx, tx, "Requeued", "task/"+job+"/"+task, "Evicted",
		fmt.Sprintf("attempt %d ended by eviction (%s); attempt %d queued, retries not used", attempt, why, attempt+1))
}

// SetIdle records whether a node has no tasks (idleSince) for the scaler.
func (s *Store) SetIdle(ctx context.Context, name string, since time.Time) error {
	// In a transaction, so that a fenced reconciler's write is checked;
	// it changes no node's work ([]string{}: no cache entry is dropped).
	err := s.txNodes(ctx, []string{}, func(tx *txn) error {
		_, err := tx.ExecContext(ctx, `UPDATE nodes SET idle_since = ? WHERE name = ?`, nanos(since), name)
		return err
	})
	return err
}

// Runs returns every billing run.
func (s *Store) Runs(ctx context.Context) ([]store.Run, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT node, pool, priority, started_at, ended_at, price, ondemand_price FROM node_runs ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Run
	for rows.Next() {
		var r store.Run
		var st, en int64
		if err := rows.Scan(&r.Node, &r.Pool, &r.Priority, &st, &en, &r.PricePerHour, &r.OnDemandPerHour); err != nil {
			return nil, err
		}
		r.Start, r.End = fromNanos(st), fromNanos(en)
		out = append(out, r)
	}
	return out, rows.Err()
}

// DeleteNode forgets a node that never started (its launch was refused),
// with its billing run. Any other node, and its billing history, stays.
func (s *Store) DeleteNode(ctx context.Context, name string) error {
	defer s.forget(name) // its state changes: the next heartbeat reads it
	return s.tx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM nodes WHERE name = ? AND state = ? AND incarnation = 1`, name, store.NodeProvisioning)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return nil
		}
		if _, err = tx.ExecContext(ctx, `DELETE FROM node_runs WHERE node = ?`, name); err != nil {
			return err
		}
		return s.dropNodeCredentials(ctx, tx, name)
	})
}
