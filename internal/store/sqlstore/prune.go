package sqlstore

import (
	"context"
	"fmt"
	"time"

	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/store"
)

// Prune removes, in one transaction, up to batch rows of each kind that
// ended before before: node runs (their cost folded into cost_days first,
// per pool and UTC day, so cost totals stay the same), preempted, lost and
// terminated nodes (a deallocated node may start again and stays),
// attempts, replicas and events. Call it until it removes nothing; small
// batches keep each write transaction short.
func (s *Store) Prune(ctx context.Context, before time.Time, batch int) (store.PruneStats, error) {
	if batch <= 0 {
		return store.PruneStats{}, fmt.Errorf("prune: batch %d must be positive", batch)
	}
	var st store.PruneStats
	err := s.tx(ctx, func(tx *txn) error {
		st = store.PruneStats{}
		cut := before.UnixNano()
		var err error
		if st.Runs, err = s.pruneRuns(ctx, tx, cut, batch); err != nil {
			return fmt.Errorf("prune node runs: %w", err)
		}
		for _, d := range []struct {
			n   *int
			sql string
			arg []any
		}{
			{&st.Nodes, `DELETE FROM nodes WHERE name IN (SELECT name FROM nodes WHERE state IN (?, ?, ?) AND state_at < ? LIMIT ?)`,
				[]any{store.NodePreempted, store.NodeLost, store.NodeTerminated, cut, batch}},
			{&st.Attempts, `DELETE FROM attempts WHERE (task_id, attempt) IN (SELECT task_id, attempt FROM attempts WHERE ended_at > 0 AND ended_at < ? LIMIT ?)`,
				[]any{cut, batch}},
			{&st.Replicas, `DELETE FROM replicas WHERE id IN (SELECT id FROM replicas WHERE ended_at > 0 AND ended_at < ? LIMIT ?)`,
				[]any{cut, batch}},
			{&st.Events, `DELETE FROM events WHERE id IN (SELECT id FROM events WHERE time < ? LIMIT ?)`,
				[]any{cut, batch}},
		} {
			res, err := tx.ExecContext(ctx, d.sql, d.arg...)
			if err != nil {
				return fmt.Errorf("prune: %w", err)
			}
			n, _ := res.RowsAffected()
			*d.n = int(n)
		}
		return nil
	})
	return st, err
}

// pruneRuns folds up to batch node runs that ended before cut into
// cost_days and deletes them.
func (s *Store) pruneRuns(ctx context.Context, tx *txn, cut int64, batch int) (int, error) {
	rows, err := tx.QueryContext(ctx, `SELECT id, node, pool, priority, started_at, ended_at, price, ondemand_price FROM node_runs
		WHERE ended_at > 0 AND ended_at < ? ORDER BY ended_at LIMIT ?`, cut, batch)
	if err != nil {
		return 0, err
	}
	var ids []int64
	var days []cost.DayTotal
	for rows.Next() {
		var id, st, en int64
		var u cost.Usage
		if err := rows.Scan(&id, &u.Node, &u.Pool, &u.Priority, &st, &en, &u.PricePerHour, &u.OnDemandPerHour); err != nil {
			rows.Close()
			return 0, err
		}
		u.Start, u.End = fromNanos(st), fromNanos(en)
		ids = append(ids, id)
		days = append(days, cost.ByDay(u)...)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, err
	}
	for _, d := range days {
		if _, err := tx.ExecContext(ctx, `INSERT INTO cost_days (pool, priority, day, first_at, last_at, node_seconds, spent, ondemand)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT (pool, priority, day) DO UPDATE SET
				first_at = CASE WHEN excluded.first_at < cost_days.first_at THEN excluded.first_at ELSE cost_days.first_at END,
				last_at = CASE WHEN excluded.last_at > cost_days.last_at THEN excluded.last_at ELSE cost_days.last_at END,
				node_seconds = cost_days.node_seconds + excluded.node_seconds, spent = cost_days.spent + excluded.spent,
				ondemand = cost_days.ondemand + excluded.ondemand`,
			d.Pool, d.Priority, d.Day.UnixNano(), d.First.UnixNano(), d.Last.UnixNano(), d.NodeSeconds, d.Spent, d.OnDemand); err != nil {
			return 0, err
		}
	}
	for _, id := range ids {
		if _, err := tx.ExecContext(ctx, `DELETE FROM node_runs WHERE id = ?`, id); err != nil {
			return 0, err
		}
	}
	return len(ids), nil
}

// CostDays returns the cost of pruned node runs, per pool and UTC day, by
// day.
func (s *Store) CostDays(ctx context.Context) ([]cost.DayTotal, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT pool, priority, day, first_at, last_at, node_seconds, spent, ondemand
		FROM cost_days ORDER BY day, pool, priority`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []cost.DayTotal
	for rows.Next() {
		var d cost.DayTotal
		var day, first, last int64
		if err := rows.Scan(&d.Pool, &d.Priority, &day, &first, &last, &d.NodeSeconds, &d.Spent, &d.OnDemand); err != nil {
			return nil, err
		}
		d.Day, d.First, d.Last = fromNanos(day), fromNanos(first), fromNanos(last)
		out = append(out, d)
	}
	return out, rows.Err()
}
