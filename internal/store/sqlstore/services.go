package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

func (s *Store) applyService(ctx context.Context, tx *txn, d store.ServiceDoc, now int64) (store.ApplyResult, error) {
	var old, oldKey string
	err := tx.QueryRowContext(ctx, `SELECT spec, rollout_key FROM services WHERE name = ?`+s.d.ForUpdate, d.Name).Scan(&old, &oldKey)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := tx.ExecContext(ctx, `INSERT INTO services (name, spec, rollout_key, desired, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)`,
			d.Name, string(d.Spec), d.RolloutKey, d.Initial, now, now); err != nil {
			return store.ApplyResult{}, err
		}
		return store.ApplyResult{Kind: spec.KindService, Name: d.Name, Action: "created"}, s.event(ctx, tx, "Created", "service/"+d.Name, "Applied", "version 1")
	case err != nil:
		return store.ApplyResult{}, err
	case old == string(d.Spec):
		return store.ApplyResult{Kind: spec.KindService, Name: d.Name, Action: "unchanged"}, nil
	}
	bump := 0
	msg := "same version: replicas keep running"
	if oldKey != d.RolloutKey {
		bump = 1
		msg = "new version: rolling update"
	}
	if _, err := tx.ExecContext(ctx, `UPDATE services SET spec = ?, rollout_key = ?, generation = generation + ?, updated_at = ? WHERE name = ?`,
		string(d.Spec), d.RolloutKey, bump, now, d.Name); err != nil {
		return store.ApplyResult{}, err
	}
	return store.ApplyResult{Kind: spec.KindService, Name: d.Name, Action: "configured"}, s.event(ctx, tx, "Updated", "service/"+d.Name, "Applied", msg)
}

const serviceCols = `name, spec, rollout_key, generation, desired, scale_state, created_at, updated_at`

func scanService(sc interface{ Scan(...any) error }) (store.Service, error) {
	var v store.Service
	var sp, ss string
	var c, u int64
	err := sc.Scan(&v.Name, &sp, &v.RolloutKey, &v.Generation, &v.Desired, &ss, &c, &u)
	v.Spec = json.RawMessage(sp)
	if ss != "" {
		v.ScaleState = json.RawMessage(ss)
	}
	v.CreatedAt, v.UpdatedAt = fromNanos(c), fromNanos(u)
	return v, err
}

// ListServices returns every service by name with its live replicas, the
// QPS that gateways reported within the last qpsMaxAge, and its ready
// replicas by priority.
func (s *Store) ListServices(ctx context.Context, qpsMaxAge time.Duration) ([]store.Service, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+serviceCols+` FROM services ORDER BY name`)
	if err != nil {
		return nil, err
	}
	var out []store.Service
	for rows.Next() {
		v, err := scanService(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, v)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	reps, err := s.ListReplicas(ctx, "")
	if err != nil {
		return nil, err
	}
	traffic, err := s.ServiceTraffic(ctx, qpsMaxAge)
	if err != nil {
		return nil, err
	}
	idx := map[string]int{}
	for i := range out {
		idx[out[i].Name] = i
		out[i].QPS = traffic[out[i].Name].QPS
		out[i].Traffic = traffic[out[i].Name]
		out[i].Ready = map[string]int{spec.PrioritySpot: 0, spec.PriorityOnDemand: 0}
		out[i].Replicas = []store.Replica{}
	}
	for _, r := range reps {
		i, ok := idx[r.Service]
		if !ok {
			continue
		}
		out[i].Replicas = append(out[i].Replicas, r)
		if r.State == store.ReplicaReady && !r.Noticed {
			out[i].Ready[r.Priority]++
		}
	}
	return out, nil
}

// GetService returns one service, as ListServices does.
func (s *Store) GetService(ctx context.Context, name string, qpsMaxAge time.Duration) (store.Service, error) {
	all, err := s.ListServices(ctx, qpsMaxAge)
	if err != nil {
		return store.Service{}, err
	}
	for _, v := range all {
		if v.Name == name {
			return v, nil
		}
	}
	return store.Service{}, fmt.Errorf("service %q: %w", name, store.ErrNotFound)
}

// DeleteService removes a service and its samples; its replicas are
// stopped (drained by their agents).
func (s *Store) DeleteService(ctx context.Context, name string) error {
	return s.tx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM services WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("service %q: %w", name, store.ErrNotFound)
		}
		if err := s.stopReplicas(ctx, tx, `service = ?`, []any{name}, "service deleted"); err != nil {
			return err
		}
		// A service of the same name applied later starts a history of its own.
		if _, err := tx.ExecContext(ctx, `DELETE FROM service_samples WHERE service = ?`, name); err != nil {
			return err
		}
		return s.event(ctx, tx, "Deleted", "service/"+name, "Deleted", "")
	})
}

// SetServiceScale records the autoscaler's decision and memory. reason,
// when set, is recorded as a Scaled event.
func (s *Store) SetServiceScale(ctx context.Context, name string, desired int, state []byte, reason string) error {
	return s.tx(ctx, func(tx *txn) error {
		var old int
		if err := tx.QueryRowContext(ctx, `SELECT desired FROM services WHERE name = ?`+s.d.ForUpdate, name).Scan(&old); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("service %q: %w", name, store.ErrNotFound)
			}
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE services SET desired = ?, scale_state = ? WHERE name = ?`, desired, string(state), name); err != nil {
			return err
		}
		if old == desired || reason == "" {
			return nil
		}
		return s.event(ctx, tx, "Scaled", "service/"+name, "Autoscaler", fmt.Sprintf("%d → %d replicas: %s", old, desired, reason))
	})
}

const replicaCols = `r.id, r.service, r.version, r.spec, r.pool, r.priority, r.stand_in, r.cpu, r.memory, r.gpu, r.state, r.node, r.addr,
	r.created_at, r.state_at, r.ready_at, r.ended_at, r.reason, COALESCE(n.notice_deadline, 0)`

func (s *Store) queryReplicas(ctx context.Context, q string, args ...any) ([]store.Replica, error) {
	return s.queryReplicasFrom(ctx, s.db, q, args...)
}

func (s *Store) queryReplicasFrom(ctx context.Context, db *handle, q string, args ...any) ([]store.Replica, error) {
	rows, err := s.readQuery(ctx, db, `SELECT `+replicaCols+` FROM replicas r LEFT JOIN nodes n ON n.name = r.node AND r.node != '' `+q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Replica
	for rows.Next() {
		var r store.Replica
		var sp string
		var mem, c, st, rd, end, notice int64
		if err := rows.Scan(&r.ID, &r.Service, &r.Version, &sp, &r.Pool, &r.Priority, &r.StandIn, &r.Req.CPU, &mem, &r.Req.GPU,
			&r.State, &r.Node, &r.Addr, &c, &st, &rd, &end, &r.Reason, &notice); err != nil {
			return nil, err
		}
		r.Name = store.ReplicaName(r.Service, r.ID)
		r.Spec = json.RawMessage(sp)
		r.Req.Memory = spec.Bytes(mem)
		r.CreatedAt, r.StateAt, r.ReadyAt, r.EndedAt = fromNanos(c), fromNanos(st), fromNanos(rd), fromNanos(end)
		r.Noticed = notice != 0
		out = append(out, r)
	}
	return out, rows.Err()
}

// ListReplicas returns the live (not ended) replicas, of one service or of
// all when service is "", by ID.
func (s *Store) ListReplicas(ctx context.Context, service string) ([]store.Replica, error) {
	if service == "" {
		return s.queryReplicas(ctx, `WHERE r.ended_at = 0 ORDER BY r.id`)
	}
	return s.queryReplicas(ctx, `WHERE r.ended_at = 0 AND r.service = ? ORDER BY r.id`, service)
}

// CreateReplicas records new pending replicas of a service, with the
// reason of each as its event, and returns their IDs. A service deleted
// meanwhile is ErrNotFound and nothing is created.
func (s *Store) CreateReplicas(ctx context.Context, rs []store.Replica) ([]int64, error) {
	var ids []int64
	err := s.tx(ctx, func(tx *txn) error {
		ids = ids[:0]
		now := s.now().UnixNano()
		for _, r := range rs {
			var one int
			if err := tx.QueryRowContext(ctx, `SELECT 1 FROM services WHERE name = ?`, r.Service).Scan(&one); err != nil {
				if errors.Is(err, sql.ErrNoRows) {
					return fmt.Errorf("service %q: %w", r.Service, store.ErrNotFound)
				}
				return err
			}
			var id int64
			if err := tx.QueryRowContext(ctx, `INSERT INTO replicas (service, version, spec, pool, priority, stand_in, cpu, memory, gpu, state, created_at, state_at, reason)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id`,
				r.Service, r.Version, string(r.Spec), r.Pool, r.Priority, r.StandIn, r.Req.CPU, int64(r.Req.Memory), r.Req.GPU, store.ReplicaPending, now, now, r.Reason).
				Scan(&id); err != nil {
				return err
			}
			ids = append(ids, id)
			what := fmt.Sprintf("version %d on a %s node of pool %s", r.Version, r.Priority, r.Pool)
			if r.StandIn {
				what += " (on-demand stand-in)"
			}
			if r.Reason != "" {
				what += ": " + r.Reason
			}
			if err := s.event(ctx, tx, "ReplicaCreated", "replica/"+store.ReplicaName(r.Service, id), "Placement", what); err != nil {
				return err
			}
		}
		return nil
	})
	return ids, err
}

// StopReplicas asks for replicas to go: a placed one becomes stopping (its
// agent drains and stops it), a pending one ends at once.
func (s *Store) StopReplicas(ctx context.Context, stops []store.ReplicaStop) error {
	return s.tx(ctx, func(tx *txn) error {
		for _, st := range stops {
			if err := s.stopReplicas(ctx, tx, `id = ?`, []any{st.ID}, st.Reason); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *Store) stopReplicas(ctx context.Context, tx *txn, where string, args []any, reason string) error {
	rows, err := tx.QueryContext(ctx, `SELECT id, service, state FROM replicas WHERE ended_at = 0 AND state != ? AND `+where,
		append([]any{store.ReplicaStopping}, args...)...)
	if err != nil {
		return err
	}
	type ref struct {
		id             int64
		service, state string
	}
	var refs []ref
	for rows.Next() {
		var r ref
		if err := rows.Scan(&r.id, &r.service, &r.state); err != nil {
			rows.Close()
			return err
		}
		refs = append(refs, r)
	}
	rows.Close()
	now := s.now().UnixNano()
	for _, r := range refs {
		if r.state == store.ReplicaPending {
			if err := s.endReplica(ctx, tx, r.id, r.service, store.ReplicaStopped, reason, now); err != nil {
				return err
			}
			continue
		}
		if _, err := tx.ExecContext(ctx, `UPDATE replicas SET state = ?, state_at = ?, reason = ? WHERE id = ?`, store.ReplicaStopping, now, reason, r.id); err != nil {
			return err
		}
		if err := s.event(ctx, tx, "ReplicaStopping", "replica/"+store.ReplicaName(r.service, r.id), "Placement", reason); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) endReplica(ctx context.Context, tx *txn, id int64, service, state, reason string, now int64) error {
	if _, err := tx.ExecContext(ctx, `UPDATE replicas SET state = ?, state_at = ?, ended_at = ?, reason = ? WHERE id = ?`, state, now, now, reason, id); err != nil {
		return err
	}
	kind := "ReplicaStopped"
	if state == store.ReplicaFailed {
		kind = "ReplicaFailed"
	}
	return s.event(ctx, tx, kind, "replica/"+store.ReplicaName(service, id), "", reason)
}

// endNodeReplicas ends every replica of a node that has ended.
func (s *Store) endNodeReplicas(ctx context.Context, tx *txn, node, why string) error {
	rows, err := tx.QueryContext(ctx, `SELECT id, service FROM replicas WHERE node = ? AND ended_at = 0`+s.d.ForUpdate, node)
	if err != nil {
		return err
	}
	type ref struct {
		id      int64
		service string
	}
	var refs []ref
	for rows.Next() {
		var r ref
		if err := rows.Scan(&r.id, &r.service); err != nil {
			rows.Close()
			return err
		}
		refs = append(refs, r)
	}
	rows.Close()
	now := s.now().UnixNano()
	for _, r := range refs {
		if err := s.endReplica(ctx, tx, r.id, r.service, store.ReplicaStopped, why, now); err != nil {
			return err
		}
	}
	return nil
}

// AssignReplicas places pending replicas on nodes (pending → starting).
// One whose replica is no longer pending or whose node no longer takes
// work is skipped. It returns how many were placed.
func (s *Store) AssignReplicas(ctx context.Context, as []store.ReplicaAssignment) (int, error) {
	n := 0
	err := s.tx(ctx, func(tx *txn) error {
		n = 0
		now := s.now().UnixNano()
		for _, a := range as {
			res, err := tx.ExecContext(ctx, `UPDATE replicas SET state = ?, node = ?, state_at = ?
				WHERE id = ? AND state = ? AND ended_at = 0
				AND EXISTS (SELECT 1 FROM nodes WHERE name = ? AND state = ? AND notice_deadline = 0)`,
				store.ReplicaStarting, a.Node, now, a.ID, store.ReplicaPending, a.Node, store.NodeReady)
			if err != nil {
				return err
			}
			if c, _ := res.RowsAffected(); c == 0 {
				continue
			}
			n++
			if _, err := tx.ExecContext(ctx, `UPDATE nodes SET idle_since = 0 WHERE name = ?`, a.Node); err != nil {
				return err
			}
			var service string
			if err := tx.QueryRowContext(ctx, `SELECT service FROM replicas WHERE id = ?`, a.ID).Scan(&service); err != nil {
				return err
			}
			if err := s.event(ctx, tx, "ReplicaPlaced", "replica/"+store.ReplicaName(service, a.ID), "Scheduled", "on node "+a.Node); err != nil {
				return err
			}
		}
		return nil
	})
	return n, err
}

// ReportReplicas records what a node's agent says of its replicas: ready
// ones become ready (or starting again when their probe fails), exited
// ones fail, and stopping ones the agent no longer runs end as stopped.
func (s *Store) ReportReplicas(ctx context.Context, node string, sts []store.ReplicaStatus) error {
	if len(sts) == 0 {
		// Most heartbeats come from batch nodes: no write transaction
		// unless the node has replicas.
		w, err := s.NodeWork(ctx, node)
		if err != nil || w.LiveReplicas == 0 {
			return err
		}
	}
	// It changes the replicas of this node only.
	return s.txNodes(ctx, []string{node}, func(tx *txn) error {
		rows, err := tx.QueryContext(ctx, `SELECT id, service, state, addr FROM replicas WHERE node = ? AND ended_at = 0`+s.d.ForUpdate, node)
		if err != nil {
			return err
		}
		type ref struct {
			id                   int64
			service, state, addr string
		}
		var refs []ref
		for rows.Next() {
			var r ref
			if err := rows.Scan(&r.id, &r.service, &r.state, &r.addr); err != nil {
				rows.Close()
				return err
			}
			refs = append(refs, r)
		}
		rows.Close()
		byID := map[int64]store.ReplicaStatus{}
		for _, st := range sts {
			byID[st.ID] = st
		}
		// On a node with an eviction notice the agent stops its replicas
		// itself a second before the deadline: that is the eviction, not
		// a failure of the replica, and must not feed the crash backoff.
		var notice int64
		if err := tx.QueryRowContext(ctx, `SELECT notice_deadline FROM nodes WHERE name = ?`, node).Scan(&notice); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		now := s.now().UnixNano()
		for _, r := range refs {
			st, reported := byID[r.id]
			name := store.ReplicaName(r.service, r.id)
			switch {
			case reported && st.Exited:
				why := "process exited"
				if st.Message != "" {
					why = st.Message
				}
				if r.state == store.ReplicaStopping {
					if err := s.endReplica(ctx, tx, r.id, r.service, store.ReplicaStopped, "stopped", now); err != nil {
						return err
					}
					continue
				}
				if notice != 0 {
					if err := s.endReplica(ctx, tx, r.id, r.service, store.ReplicaStopped, "stopped for the node's eviction notice: "+why, now); err != nil {
						return err
					}
					continue
				}
				if err := s.endReplica(ctx, tx, r.id, r.service, store.ReplicaFailed, why, now); err != nil {
					return err
				}
			case !reported && r.state == store.ReplicaStopping:
				if err := s.endReplica(ctx, tx, r.id, r.service, store.ReplicaStopped, "drained and stopped", now); err != nil {
					return err
				}
			case reported && st.Ready && r.state == store.ReplicaStarting:
				if _, err := tx.ExecContext(ctx, `UPDATE replicas SET state = ?, addr = ?, state_at = ?, ready_at = ? WHERE id = ?`,
					store.ReplicaReady, st.Addr, now, now, r.id); err != nil {
					return err
				}
				if err := s.event(ctx, tx, "ReplicaReady", "replica/"+name, "ReadinessProbe", "serving on "+st.Addr); err != nil {
					return err
				}
			case reported && !st.Ready && r.state == store.ReplicaReady:
				if _, err := tx.ExecContext(ctx, `UPDATE replicas SET state = ?, state_at = ? WHERE id = ?`, store.ReplicaStarting, now, r.id); err != nil {
					return err
				}
				if err := s.event(ctx, tx, "ReplicaUnready", "replica/"+name, "ReadinessProbe", st.Message); err != nil {
					return err
				}
			case reported && st.Addr != "" && st.Addr != r.addr:
				if _, err := tx.ExecContext(ctx, `UPDATE replicas SET addr = ? WHERE id = ?`, st.Addr, r.id); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// PutGatewayStats records what one gateway measured per service, replacing
// its previous report.
func (s *Store) PutGatewayStats(ctx context.Context, gateway string, stats map[string]store.GatewayStat) error {
	// It changes no node's work.
	return s.txNodes(ctx, []string{}, func(tx *txn) error {
		now := s.now().UnixNano()
		if _, err := tx.ExecContext(ctx, `DELETE FROM gateway_stats WHERE gateway = ?`, gateway); err != nil {
			return err
		}
		for svc, st := range stats {
			if _, err := tx.ExecContext(ctx, `INSERT INTO gateway_stats (gateway, service, qps, p50, p99, requests, errors,
				in_flight, in_flight_panic, in_flight_max, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				gateway, svc, st.QPS, st.P50, st.P99, st.Requests, st.Errors, st.InFlight, st.InFlightPanic, st.InFlightMax, now); err != nil {
				return err
			}
		}
		return nil
	})
}

// ServiceTraffic combines, per service, what the gateways reported within
// maxAge (a gateway that stopped reporting stops counting): QPS, requests,
// errors and requests in flight summed over gateways (the most in flight
// at once so summed is an upper bound: the gateways' peaks need not meet). P50 and P99 are the highest any gateway
// reported: quantiles of separate windows cannot be merged from the
// quantiles alone, and the maximum is an upper bound that never hides a
// slow gateway behind fast ones.
func (s *Store) ServiceTraffic(ctx context.Context, maxAge time.Duration) (map[string]store.GatewayStat, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT service, sum(qps), max(p50), max(p99), CAST(sum(requests) AS BIGINT), CAST(sum(errors) AS BIGINT),
		sum(in_flight), sum(in_flight_panic), CAST(sum(in_flight_max) AS BIGINT), count(*)
		FROM gateway_stats WHERE updated_at >= ? GROUP BY service`,
		s.now().Add(-maxAge).UnixNano())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]store.GatewayStat{}
	for rows.Next() {
		var svc string
		var st store.GatewayStat
		if err := rows.Scan(&svc, &st.QPS, &st.P50, &st.P99, &st.Requests, &st.Errors,
			&st.InFlight, &st.InFlightPanic, &st.InFlightMax, &st.Gateways); err != nil {
			return nil, err
		}
		out[svc] = st
	}
	return out, rows.Err()
}

// RecentReplicaFailures returns, per service, the replicas that failed
// (their process exited on its own) since the given time without ever
// having been ready: a crash loop, a model or command that does not start.
// A replica that served and then died (killed, out of memory) proved the
// model works; counting it would hold back the replacements of a service
// that may have no replica left.
func (s *Store) RecentReplicaFailures(ctx context.Context, since time.Time) (map[string]store.ReplicaFailures, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT service, count(*), max(ended_at) FROM replicas WHERE state = ? AND ended_at >= ? AND ready_at = 0 GROUP BY service`,
		store.ReplicaFailed, nanos(since))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]store.ReplicaFailures{}
	for rows.Next() {
		var svc string
		var f store.ReplicaFailures
		var last int64
		if err := rows.Scan(&svc, &f.Count, &last); err != nil {
			return nil, err
		}
		f.Last = fromNanos(last)
		out[svc] = f
	}
	return out, rows.Err()
}
