package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

// Service is a stored inference service. The store keeps its spec as JSON
// and does not interpret it: the control plane does. Generation is the
// service's version: it goes up when an apply changes what its replicas run
// (RolloutKey), which starts a rolling update.
type Service struct {
	Name       string          `json:"name"`
	Model      string          `json:"model"` // model.uri of the current version, filled by the API
	Spec       json.RawMessage `json:"service"`
	RolloutKey string          `json:"-"`
	Generation int             `json:"generation"`
	Desired    int             `json:"desired"`         // replicas the autoscaler wants now
	ScaleState json.RawMessage `json:"-"`               // the autoscaler's memory, opaque here
	CreatedAt  time.Time       `json:"createdAt"`       //
	UpdatedAt  time.Time       `json:"updatedAt"`       //
	Replicas   []Replica       `json:"replicas"`        // live ones, filled by ListServices
	QPS        float64         `json:"qps"`             // as the gateways measure it, filled by ListServices
	Ready      map[string]int  `json:"readyByPriority"` // ready replicas by priority (spot, ondemand)
}

// ServiceDoc is one service to apply: its name, its spec as JSON, the key
// of what its replicas run, and the replica count to start with.
type ServiceDoc struct {
	Name       string
	Spec       []byte
	RolloutKey string
	Initial    int
}

// Replica states. pending: waiting for a node; starting: placed, not yet
// answering its readiness probe; ready: serving; stopping: the control
// plane wants it gone, it gets no new requests and its agent drains it;
// stopped and failed are ended.
const (
	ReplicaPending  = "pending"
	ReplicaStarting = "starting"
	ReplicaReady    = "ready"
	ReplicaStopping = "stopping"
	ReplicaStopped  = "stopped"
	ReplicaFailed   = "failed"
)

// Replica is one running copy of one version of a service.
type Replica struct {
	ID       int64           `json:"id"`
	Name     string          `json:"name"` // service-ID
	Service  string          `json:"service"`
	Version  int             `json:"version"`
	Spec     json.RawMessage `json:"spec"` // what the agent runs (api.ReplicaSpec)
	Pool     string          `json:"pool"`
	Priority string          `json:"priority"`
	StandIn  bool            `json:"standIn,omitempty"` // on-demand while spot is short
	Req      spec.Resources  `json:"resources"`
	State    string          `json:"state"`
	Node     string          `json:"node,omitempty"`
	Addr     string          `json:"addr,omitempty"`
	// Noticed is set by ListReplicas when the replica's node has an
	// eviction notice: it must get no new requests.
	Noticed   bool      `json:"noticed,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
	StateAt   time.Time `json:"stateAt"`
	ReadyAt   time.Time `json:"readyAt,omitzero"`
	EndedAt   time.Time `json:"endedAt,omitzero"`
	Reason    string    `json:"reason,omitempty"`
}

// ReplicaName is how a replica is named: its service and its ID.
func ReplicaName(service string, id int64) string { return service + "-" + strconv.FormatInt(id, 10) }

func (s *Store) applyService(ctx context.Context, tx *sql.Tx, d ServiceDoc, now int64) (ApplyResult, error) {
	var old, oldKey string
	err := tx.QueryRowContext(ctx, `SELECT spec, rollout_key FROM services WHERE name = ?`, d.Name).Scan(&old, &oldKey)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		if _, err := tx.ExecContext(ctx, `INSERT INTO services (name, spec, rollout_key, desired, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)`,
			d.Name, string(d.Spec), d.RolloutKey, d.Initial, now, now); err != nil {
			return ApplyResult{}, err
		}
		return ApplyResult{spec.KindService, d.Name, "created"}, s.event(ctx, tx, "Created", "service/"+d.Name, "Applied", "version 1")
	case err != nil:
		return ApplyResult{}, err
	case old == string(d.Spec):
		return ApplyResult{spec.KindService, d.Name, "unchanged"}, nil
	}
	bump := 0
	msg := "same version: replicas keep running"
	if oldKey != d.RolloutKey {
		bump = 1
		msg = "new version: rolling update"
	}
	if _, err := tx.ExecContext(ctx, `UPDATE services SET spec = ?, rollout_key = ?, generation = generation + ?, updated_at = ? WHERE name = ?`,
		string(d.Spec), d.RolloutKey, bump, now, d.Name); err != nil {
		return ApplyResult{}, err
	}
	return ApplyResult{spec.KindService, d.Name, "configured"}, s.event(ctx, tx, "Updated", "service/"+d.Name, "Applied", msg)
}

const serviceCols = `name, spec, rollout_key, generation, desired, scale_state, created_at, updated_at`

func scanService(sc interface{ Scan(...any) error }) (Service, error) {
	var v Service
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
func (s *Store) ListServices(ctx context.Context, qpsMaxAge time.Duration) ([]Service, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+serviceCols+` FROM services ORDER BY name`)
	if err != nil {
		return nil, err
	}
	var out []Service
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
		out[i].Ready = map[string]int{spec.PrioritySpot: 0, spec.PriorityOnDemand: 0}
		out[i].Replicas = []Replica{}
	}
	for _, r := range reps {
		i, ok := idx[r.Service]
		if !ok {
			continue
		}
		out[i].Replicas = append(out[i].Replicas, r)
		if r.State == ReplicaReady && !r.Noticed {
			out[i].Ready[r.Priority]++
		}
	}
	return out, nil
}

// GetService returns one service, as ListServices does.
func (s *Store) GetService(ctx context.Context, name string, qpsMaxAge time.Duration) (Service, error) {
	all, err := s.ListServices(ctx, qpsMaxAge)
	if err != nil {
		return Service{}, err
	}
	for _, v := range all {
		if v.Name == name {
			return v, nil
		}
	}
	return Service{}, fmt.Errorf("service %q: %w", name, ErrNotFound)
}

// DeleteService removes a service and its samples; its replicas are
// stopped (drained by their agents).
func (s *Store) DeleteService(ctx context.Context, name string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM services WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("service %q: %w", name, ErrNotFound)
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
	return s.tx(ctx, func(tx *sql.Tx) error {
		var old int
		if err := tx.QueryRowContext(ctx, `SELECT desired FROM services WHERE name = ?`, name).Scan(&old); err != nil {
			if errors.Is(err, sql.ErrNoRows) {
				return fmt.Errorf("service %q: %w", name, ErrNotFound)
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

func (s *Store) queryReplicas(ctx context.Context, q string, args ...any) ([]Replica, error) {
	return s.queryReplicasFrom(ctx, s.db, q, args...)
}

func (s *Store) queryReplicasFrom(ctx context.Context, db *sql.DB, q string, args ...any) ([]Replica, error) {
	rows, err := s.readQuery(ctx, db, `SELECT `+replicaCols+` FROM replicas r LEFT JOIN nodes n ON n.name = r.node AND r.node != '' `+q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Replica
	for rows.Next() {
		var r Replica
		var sp string
		var mem, c, st, rd, end, notice int64
		if err := rows.Scan(&r.ID, &r.Service, &r.Version, &sp, &r.Pool, &r.Priority, &r.StandIn, &r.Req.CPU, &mem, &r.Req.GPU,
			&r.State, &r.Node, &r.Addr, &c, &st, &rd, &end, &r.Reason, &notice); err != nil {
			return nil, err
		}
		r.Name = ReplicaName(r.Service, r.ID)
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
func (s *Store) ListReplicas(ctx context.Context, service string) ([]Replica, error) {
	if service == "" {
		return s.queryReplicas(ctx, `WHERE r.ended_at = 0 ORDER BY r.id`)
	}
	return s.queryReplicas(ctx, `WHERE r.ended_at = 0 AND r.service = ? ORDER BY r.id`, service)
}

// CreateReplicas records new pending replicas of a service, with the
// reason of each as its event, and returns their IDs. A service deleted
// meanwhile is ErrNotFound and nothing is created.
func (s *Store) CreateReplicas(ctx context.Context, rs []Replica) ([]int64, error) {
	var ids []int64
	err := s.tx(ctx, func(tx *sql.Tx) error {
		ids = ids[:0]
		now := s.now().UnixNano()
		for _, r := range rs {
			var one int
			if err := tx.QueryRowContext(ctx, `SELECT 1 FROM services WHERE name = ?`, r.Service).Scan(&one); err != nil {
				if errors.Is(err, sql.ErrNoRows) {
					return fmt.Errorf("service %q: %w", r.Service, ErrNotFound)
				}
				return err
			}
			res, err := tx.ExecContext(ctx, `INSERT INTO replicas (service, version, spec, pool, priority, stand_in, cpu, memory, gpu, state, created_at, state_at, reason)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
				r.Service, r.Version, string(r.Spec), r.Pool, r.Priority, r.StandIn, r.Req.CPU, int64(r.Req.Memory), r.Req.GPU, ReplicaPending, now, now, r.Reason)
			if err != nil {
				return err
			}
			id, err := res.LastInsertId()
			if err != nil {
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
			if err := s.event(ctx, tx, "ReplicaCreated", "replica/"+ReplicaName(r.Service, id), "Placement", what); err != nil {
				return err
			}
		}
		return nil
	})
	return ids, err
}

// ReplicaStop names a replica to stop and why.
type ReplicaStop struct {
	ID     int64
	Reason string
}

// StopReplicas asks for replicas to go: a placed one becomes stopping (its
// agent drains and stops it), a pending one ends at once.
func (s *Store) StopReplicas(ctx context.Context, stops []ReplicaStop) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		for _, st := range stops {
			if err := s.stopReplicas(ctx, tx, `id = ?`, []any{st.ID}, st.Reason); err != nil {
				return err
			}
		}
		return nil
	})
}

func (s *Store) stopReplicas(ctx context.Context, tx *sql.Tx, where string, args []any, reason string) error {
	rows, err := tx.QueryContext(ctx, `SELECT id, service, state FROM replicas WHERE ended_at = 0 AND state != ? AND `+where,
		append([]any{ReplicaStopping}, args...)...)
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
		if r.state == ReplicaPending {
			if err := s.endReplica(ctx, tx, r.id, r.service, ReplicaStopped, reason, now); err != nil {
				return err
			}
			continue
		}
		if _, err := tx.ExecContext(ctx, `UPDATE replicas SET state = ?, state_at = ?, reason = ? WHERE id = ?`, ReplicaStopping, now, reason, r.id); err != nil {
			return err
		}
		if err := s.event(ctx, tx, "ReplicaStopping", "replica/"+ReplicaName(r.service, r.id), "Placement", reason); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) endReplica(ctx context.Context, tx *sql.Tx, id int64, service, state, reason string, now int64) error {
	if _, err := tx.ExecContext(ctx, `UPDATE replicas SET state = ?, state_at = ?, ended_at = ?, reason = ? WHERE id = ?`, state, now, now, reason, id); err != nil {
		return err
	}
	kind := "ReplicaStopped"
	if state == ReplicaFailed {
		kind = "ReplicaFailed"
	}
	return s.event(ctx, tx, kind, "replica/"+ReplicaName(service, id), "", reason)
}

// endNodeReplicas ends every replica of a node that has ended.
func (s *Store) endNodeReplicas(ctx context.Context, tx *sql.Tx, node, why string) error {
	rows, err := tx.QueryContext(ctx, `SELECT id, service FROM replicas WHERE node = ? AND ended_at = 0`, node)
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
		if err := s.endReplica(ctx, tx, r.id, r.service, ReplicaStopped, why, now); err != nil {
			return err
		}
	}
	return nil
}

// ReplicaAssignment places one pending replica on a node.
type ReplicaAssignment struct {
	ID   int64
	Node string
}

// AssignReplicas places pending replicas on nodes (pending → starting).
// One whose replica is no longer pending or whose node no longer takes
// work is skipped. It returns how many were placed.
func (s *Store) AssignReplicas(ctx context.Context, as []ReplicaAssignment) (int, error) {
	n := 0
	err := s.tx(ctx, func(tx *sql.Tx) error {
		n = 0
		now := s.now().UnixNano()
		for _, a := range as {
			res, err := tx.ExecContext(ctx, `UPDATE replicas SET state = ?, node = ?, state_at = ?
				WHERE id = ? AND state = ? AND ended_at = 0
				AND EXISTS (SELECT 1 FROM nodes WHERE name = ? AND state = ? AND notice_deadline = 0)`,
				ReplicaStarting, a.Node, now, a.ID, ReplicaPending, a.Node, NodeReady)
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
			if err := s.event(ctx, tx, "ReplicaPlaced", "replica/"+ReplicaName(service, a.ID), "Scheduled", "on node "+a.Node); err != nil {
				return err
			}
		}
		return nil
	})
	return n, err
}

// ReplicaStatus is what an agent says of one replica it runs.
type ReplicaStatus struct {
	ID      int64
	Ready   bool   // answers its readiness probe
	Addr    string // host:port it serves on
	Exited  bool   // its process ended on its own
	Message string // why it exited, or why it is not ready
}

// ReportReplicas records what a node's agent says of its replicas: ready
// ones become ready (or starting again when their probe fails), exited
// ones fail, and stopping ones the agent no longer runs end as stopped.
func (s *Store) ReportReplicas(ctx context.Context, node string, sts []ReplicaStatus) error {
	if len(sts) == 0 {
		// Most heartbeats come from batch nodes: no write transaction
		// unless the node has replicas.
		w, err := s.NodeWork(ctx, node)
		if err != nil || w.LiveReplicas == 0 {
			return err
		}
	}
	// It changes the replicas of this node only.
	return s.txNodes(ctx, []string{node}, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `SELECT id, service, state, addr FROM replicas WHERE node = ? AND ended_at = 0`, node)
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
		byID := map[int64]ReplicaStatus{}
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
			name := ReplicaName(r.service, r.id)
			switch {
			case reported && st.Exited:
				why := "process exited"
				if st.Message != "" {
					why = st.Message
				}
				if r.state == ReplicaStopping {
					if err := s.endReplica(ctx, tx, r.id, r.service, ReplicaStopped, "stopped", now); err != nil {
						return err
					}
					continue
				}
				if notice != 0 {
					if err := s.endReplica(ctx, tx, r.id, r.service, ReplicaStopped, "stopped for the node's eviction notice: "+why, now); err != nil {
						return err
					}
					continue
				}
				if err := s.endReplica(ctx, tx, r.id, r.service, ReplicaFailed, why, now); err != nil {
					return err
				}
			case !reported && r.state == ReplicaStopping:
				if err := s.endReplica(ctx, tx, r.id, r.service, ReplicaStopped, "drained and stopped", now); err != nil {
					return err
				}
			case reported && st.Ready && r.state == ReplicaStarting:
				if _, err := tx.ExecContext(ctx, `UPDATE replicas SET state = ?, addr = ?, state_at = ?, ready_at = ? WHERE id = ?`,
					ReplicaReady, st.Addr, now, now, r.id); err != nil {
					return err
				}
				if err := s.event(ctx, tx, "ReplicaReady", "replica/"+name, "ReadinessProbe", "serving on "+st.Addr); err != nil {
					return err
				}
			case reported && !st.Ready && r.state == ReplicaReady:
				if _, err := tx.ExecContext(ctx, `UPDATE replicas SET state = ?, state_at = ? WHERE id = ?`, ReplicaStarting, now, r.id); err != nil {
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

// GatewayStat is what one gateway measured of one service, or, from
// ServiceTraffic, what the gateways measured together.
type GatewayStat struct {
	QPS float64 // requests completed per second over the gateway's QPS window
	// P50 and P99 are the latencies, in seconds, that clients saw over the
	// last minute.
	P50, P99 float64
	// Requests completed in the last minute, answered or not; Errors are
	// those that got a 5xx or an answer that broke off.
	Requests, Errors int64
}

// PutGatewayStats records what one gateway measured per service, replacing
// its previous report.
func (s *Store) PutGatewayStats(ctx context.Context, gateway string, stats map[string]GatewayStat) error {
	// It changes no node's work.
	return s.txNodes(ctx, []string{}, func(tx *sql.Tx) error {
		now := s.now().UnixNano()
		if _, err := tx.ExecContext(ctx, `DELETE FROM gateway_stats WHERE gateway = ?`, gateway); err != nil {
			return err
		}
		for svc, st := range stats {
			if _, err := tx.ExecContext(ctx, `INSERT INTO gateway_stats (gateway, service, qps, p50, p99, requests, errors, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
				gateway, svc, st.QPS, st.P50, st.P99, st.Requests, st.Errors, now); err != nil {
				return err
			}
		}
		return nil
	})
}

// ServiceTraffic combines, per service, what the gateways reported within
// maxAge (a gateway that stopped reporting stops counting): QPS, requests
// and errors summed over gateways. P50 and P99 are the highest any gateway
// reported: quantiles of separate windows cannot be merged from the
// quantiles alone, and the maximum is an upper bound that never hides a
// slow gateway behind fast ones.
func (s *Store) ServiceTraffic(ctx context.Context, maxAge time.Duration) (map[string]GatewayStat, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT service, sum(qps), max(p50), max(p99), sum(requests), sum(errors)
		FROM gateway_stats WHERE updated_at >= ? GROUP BY service`,
		s.now().Add(-maxAge).UnixNano())
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]GatewayStat{}
	for rows.Next() {
		var svc string
		var st GatewayStat
		if err := rows.Scan(&svc, &st.QPS, &st.P50, &st.P99, &st.Requests, &st.Errors); err != nil {
			return nil, err
		}
		out[svc] = st
	}
	return out, rows.Err()
}

// ReplicaFailures counts a service's replicas that failed recently.
type ReplicaFailures struct {
	Count int
	Last  time.Time
}

// RecentReplicaFailures returns, per service, the replicas that failed
// (their process exited on its own) since the given time without ever
// having been ready: a crash loop, a model or command that does not start.
// A replica that served and then died (killed, out of memory) proved the
// model works; counting it would hold back the replacements of a service
// that may have no replica left.
func (s *Store) RecentReplicaFailures(ctx context.Context, since time.Time) (map[string]ReplicaFailures, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT service, count(*), max(ended_at) FROM replicas WHERE state = ? AND ended_at >= ? AND ready_at = 0 GROUP BY service`,
		ReplicaFailed, nanos(since))
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]ReplicaFailures{}
	for rows.Next() {
		var svc string
		var f ReplicaFailures
		var last int64
		if err := rows.Scan(&svc, &f.Count, &last); err != nil {
			return nil, err
		}
		f.Last = fromNanos(last)
		out[svc] = f
	}
	return out, rows.Err()
}
