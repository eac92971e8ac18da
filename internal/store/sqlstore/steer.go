package sqlstore

import (
	"context"
	"fmt"

	"github.com/spotml/spotml/internal/store"
)

// SteerTasks applies the control plane's choice of spot or on-demand for
// tasks (store.Steer), in one transaction. A pending task is re-labelled;
// a running one is moved only when its steer says Move and it still runs
// on the node the caller saw. Returns how many tasks changed.
func (s *Store) SteerTasks(ctx context.Context, steers []store.Steer) (int, error) {
	if len(steers) == 0 {
		return 0, nil
	}
	changed := 0
	// Any node's work may change (tx forgets every node's cached work).
	err := s.tx(ctx, func(tx *txn) error {
		changed = 0
		for _, st := range steers {
			var job, task, state, node, prio string
			var attempt int
			err := tx.QueryRowContext(ctx, `SELECT j.name, t.name, t.state, t.node, t.priority, t.attempt
				FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.id = ?`+s.forUpdateOf("t"), st.TaskID).
				Scan(&job, &task, &state, &node, &prio, &attempt)
			if err != nil {
				return fmt.Errorf("steer task %d: %w", st.TaskID, err)
			}
			switch {
			case state == store.TaskPending && prio != st.Priority:
				if _, err := tx.ExecContext(ctx, `UPDATE tasks SET priority = ?, pool = '' WHERE id = ?`, st.Priority, st.TaskID); err != nil {
					return err
				}
			case state == store.TaskRunning && st.Move:
				if err := s.endAttempt(ctx, tx, st.TaskID, attempt, store.OutcomeMoved, -1); err != nil {
					return err
				}
				if _, err := tx.ExecContext(ctx, `UPDATE tasks SET state = ?, node = '', attempt = attempt + 1, priority = ?, pool = '',
					message = ? WHERE id = ?`, store.TaskPending, st.Priority, "moved: "+st.Why, st.TaskID); err != nil {
					return err
				}
			default:
				continue
			}
			changed++
			if err := s.event(ctx, tx, "Steered", "task/"+job+"/"+task, "Deadline",
				fmt.Sprintf("attempt %d: runs on %s next (%s)", attempt, st.Priority, st.Why)); err != nil {
				return err
			}
		}
		return nil
	})
	return changed, err
}

// ServiceReplicaHistory lists every replica of a service the store still
// keeps, ended ones included (for its cost).
func (s *Store) ServiceReplicaHistory(ctx context.Context, service string) ([]store.Replica, error) {
	return s.queryReplicas(ctx, `WHERE r.service = ? ORDER BY r.id`, service)
}
