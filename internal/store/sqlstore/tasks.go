package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/spotml/spotml/internal/store"
)

// Assign applies a scheduling plan in one transaction. An assignment whose
// task is no longer pending or whose node no longer takes work (ended, or
// got a notice since the snapshot) is skipped. Returns how many were
// applied.
func (s *Store) Assign(ctx context.Context, plan []store.Assignment) (int, error) {
	applied := 0
	nodes := make([]string, 0, len(plan))
	for _, a := range plan {
		nodes = append(nodes, a.Node)
	}
	// It changes the running tasks of the plan's nodes only.
	err := s.txNodes(ctx, nodes, func(tx *txn) error {
		applied = 0
		now := s.now().UnixNano()
		if s.d.Arrays {
			var err error
			applied, err = s.assignArrays(ctx, tx, plan, now)
			return err
		}
		upd, err := tx.PrepareContext(ctx, `UPDATE tasks SET state = ?, node = ?, started_at = ?, message = ''
			WHERE id = ? AND state = ? AND EXISTS (SELECT 1 FROM nodes n WHERE n.name = ? AND n.state = ? AND n.notice_deadline = 0)`)
		if err != nil {
			return err
		}
		defer upd.Close()
		rec, err := tx.PrepareContext(ctx, `INSERT INTO attempts (task_id, attempt, node, started_at)
			SELECT id, attempt, node, started_at FROM tasks WHERE id = ?
			ON CONFLICT (task_id, attempt) DO UPDATE SET node = excluded.node, started_at = excluded.started_at,
				ended_at = 0, outcome = '', exit_code = 0`)
		if err != nil {
			return err
		}
		defer rec.Close()
		for _, a := range plan {
			res, err := upd.ExecContext(ctx, store.TaskRunning, a.Node, now, a.TaskID, store.TaskPending, a.Node, store.NodeReady)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 1 {
				applied++
				if _, err := rec.ExecContext(ctx, a.TaskID); err != nil {
					return err
				}
			}
		}
		if applied > 0 {
			_, err = tx.ExecContext(ctx, `UPDATE nodes SET idle_since = 0 WHERE name IN (SELECT DISTINCT node FROM tasks WHERE state = ? AND started_at = ?)`,
				store.TaskRunning, now)
		}
		return err
	})
	return applied, err
}

// assignArrays is Assign's transaction in one statement, for a database
// with arrays (Dialect.Arrays): the same checks, the same rows written.
func (s *Store) assignArrays(ctx context.Context, tx *txn, plan []store.Assignment, now int64) (int, error) {
	// A task named twice goes to its first node, as one by one.
	ids := make([]int64, 0, len(plan))
	nodes := make([]string, 0, len(plan))
	seen := make(map[int64]bool, len(plan))
	for _, a := range plan {
		if !seen[a.TaskID] {
			seen[a.TaskID] = true
			ids, nodes = append(ids, a.TaskID), append(nodes, a.Node)
		}
	}
	var applied int
	err := tx.QueryRowContext(ctx, `WITH p AS (SELECT * FROM unnest(?::bigint[], ?::text[]) AS p(id, node)),
		upd AS (UPDATE tasks t SET state = ?, node = p.node, started_at = ?, message = ''
			FROM p JOIN nodes n ON n.name = p.node AND n.state = ? AND n.notice_deadline = 0
			WHERE t.id = p.id AND t.state = ?
			RETURNING t.id, t.attempt, t.node, t.started_at),
		rec AS (INSERT INTO attempts (task_id, attempt, node, started_at) SELECT id, attempt, node, started_at FROM upd
			ON CONFLICT (task_id, attempt) DO UPDATE SET node = excluded.node, started_at = excluded.started_at,
				ended_at = 0, outcome = '', exit_code = 0),
		busy AS (UPDATE nodes SET idle_since = 0 WHERE name IN (SELECT node FROM upd))
		SELECT count(*) FROM upd`,
		ids, nodes, store.TaskRunning, now, store.NodeReady, store.TaskPending).Scan(&applied)
	return applied, err
}

// Report records how an attempt of a task ended. Reports are fenced: one
// for a task that is not running on that node at that attempt (already
// requeued, or a duplicate) is ignored and returns false.
func (s *Store) Report(ctx context.Context, taskID int64, node string, attempt int, outcome string, exitCode int, message string) (bool, error) {
	oks, err := s.ReportBatch(ctx, []store.Report{{TaskID: taskID, Node: node, Attempt: attempt, Outcome: outcome, ExitCode: exitCode, Message: message}})
	if err != nil {
		return false, err
	}
	return oks[0], nil
}

// ReportBatch records many reports in one transaction (group commit: one
// disk sync for all of them), each fenced like Report.
func (s *Store) ReportBatch(ctx context.Context, rs []store.Report) ([]bool, error) {
	oks := make([]bool, len(rs))
	nodes := make([]string, 0, len(rs))
	for _, r := range rs {
		nodes = append(nodes, r.Node)
	}
	// A report ends or requeues a task of its own node only (and may end
	// its job, which is not part of any node's work): the nodes' kept work
	// loses the tasks reported, after the commit.
	gone := map[string][]int64{}
	err := s.txNodes(ctx, []string{}, func(tx *txn) error {
		clear(gone)
		jobs := map[int64]string{}
		for i, r := range rs {
			if !validOutcome(r.Outcome) {
				return fmt.Errorf("report outcome %q: want succeeded, failed or preempted", r.Outcome)
			}
			ok, jobID, job, err := s.report(ctx, tx, r)
			if err != nil {
				return err
			}
			oks[i] = ok
			if ok {
				jobs[jobID] = job
				gone[r.Node] = append(gone[r.Node], r.TaskID)
			}
		}
		for id, name := range jobs {
			if err := s.settleJob(ctx, tx, id, name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		clear(gone) // rolled back: read them again
	}
	s.work.reported(nodes, gone)
	if err != nil {
		return nil, err
	}
	return oks, nil
}

func validOutcome(o string) bool {
	return o == store.OutcomeSucceeded || o == store.OutcomeFailed || o == store.OutcomePreempted
}

func (s *Store) report(ctx context.Context, tx *txn, r store.Report) (bool, int64, string, error) {
	taskID, node, attempt, outcome, exitCode, message := r.TaskID, r.Node, r.Attempt, r.Outcome, r.ExitCode, r.Message
	var job, task, state, curNode string
	var curAttempt, failures, maxRetries int
	var jobID int64
	err := tx.QueryRowContext(ctx, `SELECT j.id, j.name, t.name, t.state, t.node, t.attempt, t.failures, t.max_retries
		FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.id = ?`+s.forUpdateOf("t"), taskID).
		Scan(&jobID, &job, &task, &state, &curNode, &curAttempt, &failures, &maxRetries)
	if errors.Is(err, sql.ErrNoRows) {
		return false, 0, "", nil // job deleted meanwhile
	}
	if err != nil {
		return false, 0, "", err
	}
	if state != store.TaskRunning || curNode != node || curAttempt != attempt {
		return false, 0, "", nil
	}
	return true, jobID, job, s.recordOutcome(ctx, tx, taskID, job, task, node, attempt, failures, maxRetries, outcome, exitCode, message)
}

func (s *Store) recordOutcome(ctx context.Context, tx *txn, taskID int64, job, task, node string, attempt, failures, maxRetries int, outcome string, exitCode int, message string) error {
	now := s.now().UnixNano()
	obj := "task/" + job + "/" + task
	if err := s.endAttempt(ctx, tx, taskID, attempt, outcome, exitCode); err != nil {
		return err
	}
	switch outcome {
	case store.OutcomeSucceeded:
		if _, err := tx.ExecContext(ctx, `UPDATE tasks SET state = ?, exit_code = 0, message = ?, finished_at = ? WHERE id = ?`,
			store.TaskSucceeded, message, now, taskID); err != nil {
			return err
		}
		if err := s.event(ctx, tx, "Succeeded", obj, "Completed", fmt.Sprintf("attempt %d on %s", attempt, node)); err != nil {
			return err
		}
	case store.OutcomePreempted:
		if err := s.requeue(ctx, tx, taskID, job, task, attempt, "eviction notice on "+node); err != nil {
			return err
		}
	case store.OutcomeFailed:
		failures++
		if failures <= maxRetries {
			if _, err := tx.ExecContext(ctx, `UPDATE tasks SET state = ?, node = '', attempt = attempt + 1, failures = ?, exit_code = ?, message = ?
				WHERE id = ?`, store.TaskPending, failures, exitCode, message, taskID); err != nil {
				return err
			}
			if err := s.event(ctx, tx, "Retrying", obj, "Failed", fmt.Sprintf("attempt %d exited %d (%s); retry %d of %d",
				attempt, exitCode, message, failures, maxRetries)); err != nil {
				return err
			}
		} else {
			if _, err := tx.ExecContext(ctx, `UPDATE tasks SET state = ?, failures = ?, exit_code = ?, message = ?, finished_at = ? WHERE id = ?`,
				store.TaskFailed, failures, exitCode, message, now, taskID); err != nil {
				return err
			}
			if err := s.event(ctx, tx, "Failed", obj, "RetriesExhausted", fmt.Sprintf("attempt %d exited %d (%s) after %d retries",
				attempt, exitCode, message, maxRetries)); err != nil {
				return err
			}
		}
	}
	return nil
}

// settleJob ends a job once none of its tasks can run any more.
func (s *Store) settleJob(ctx context.Context, tx *txn, jobID int64, job string) error {
	// Both lookups use the (state, job_id) index: no scan of a big job.
	var open bool
	if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM tasks WHERE state IN ('pending', 'running') AND job_id = ?)`, jobID).
		Scan(&open); err != nil {
		return err
	}
	if open {
		return nil
	}
	var failed int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM tasks WHERE state = 'failed' AND job_id = ?`, jobID).Scan(&failed); err != nil {
		return err
	}
	state := store.JobSucceeded
	if failed > 0 {
		state = store.JobFailed
	}
	res, err := tx.ExecContext(ctx, `UPDATE jobs SET state = ?, finished_at = ? WHERE id = ? AND state = ?`,
		state, s.now().UnixNano(), jobID, store.JobRunning)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 1 {
		return s.event(ctx, tx, map[string]string{store.JobSucceeded: "Succeeded", store.JobFailed: "Failed"}[state], "job/"+job, "AllTasksDone",
			fmt.Sprintf("%d failed", failed))
	}
	return nil
}

// endAttempt closes an attempt's record.
func (s *Store) endAttempt(ctx context.Context, tx *txn, taskID int64, attempt int, outcome string, exitCode int) error {
	_, err := tx.ExecContext(ctx, `UPDATE attempts SET ended_at = ?, outcome = ?, exit_code = ? WHERE task_id = ? AND attempt = ? AND ended_at = 0`,
		s.now().UnixNano(), outcome, exitCode, taskID, attempt)
	return err
}

// attemptsOf returns the attempts of a job's tasks by task id.
func (s *Store) attemptsOf(ctx context.Context, jobID int64) (map[int64][]store.Attempt, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT a.task_id, a.attempt, a.node, a.started_at, a.ended_at, a.outcome, a.exit_code, a.first_progress_at
		FROM attempts a JOIN tasks t ON t.id = a.task_id WHERE t.job_id = ? ORDER BY a.task_id, a.attempt`, jobID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[int64][]store.Attempt{}
	for rows.Next() {
		var id, st, en, fp int64
		var a store.Attempt
		if err := rows.Scan(&id, &a.Attempt, &a.Node, &st, &en, &a.Outcome, &a.ExitCode, &fp); err != nil {
			return nil, err
		}
		a.StartedAt, a.EndedAt, a.FirstProgressAt = fromNanos(st), fromNanos(en), fromNanos(fp)
		out[id] = append(out[id], a)
	}
	return out, rows.Err()
}

// SetProgress records the progress a node's agent reports for the
// attempts it runs. A report for an attempt that is no longer the task's
// current one on that node (requeued, finished, moved) is ignored, as
// reports are. No event: progress changes too often for the timeline.
// An attempt's first report is kept on the attempt (FirstProgressAt): the
// end of its changeover.
func (s *Store) SetProgress(ctx context.Context, node string, ps []store.Progress) error {
	if len(ps) == 0 {
		return nil
	}
	// It changes tasks of this node only.
	return s.txNodes(ctx, []string{node}, func(tx *txn) error {
		now := nanos(s.now())
		for _, p := range ps {
			res, err := tx.ExecContext(ctx, `UPDATE tasks SET progress = ?, progress_message = ?, progress_at = ?
				WHERE id = ? AND attempt = ? AND node = ? AND state = ?`,
				p.Fraction, p.Message, now, p.TaskID, p.Attempt, node, store.TaskRunning)
			if err != nil {
				return err
			}
			if n, _ := res.RowsAffected(); n == 0 {
				continue
			}
			if _, err := tx.ExecContext(ctx, `UPDATE attempts SET first_progress_at = ?
				WHERE task_id = ? AND attempt = ? AND first_progress_at = 0 AND ended_at = 0`,
				now, p.TaskID, p.Attempt); err != nil {
				return err
			}
		}
		return nil
	})
}
