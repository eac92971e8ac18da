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
// disk sync for all of them), each fenced like Report, as if applied one
// after the other in the order given (a task reported twice takes the
// first report that fits). The work per report is a few rows of a few
// statements: on PostgreSQL (Dialect.Arrays) one statement reads and locks
// every reported task and one each writes the attempts, the tasks and the
// events, whatever the number of reports; elsewhere each of those is one
// statement prepared once per batch and run per row.
func (s *Store) ReportBatch(ctx context.Context, rs []store.Report) ([]bool, error) {
	for _, r := range rs {
		if !validOutcome(r.Outcome) {
			return nil, fmt.Errorf("report outcome %q: want succeeded, failed or preempted", r.Outcome)
		}
	}
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
		clear(oks)
		cur, err := s.reportedTasks(ctx, tx, rs)
		if err != nil {
			return err
		}
		now := s.now().UnixNano()
		var w reportWrites
		jobs := map[int64]string{}
		for i, r := range rs {
			t, found := cur[r.TaskID]
			if !found || t.state != store.TaskRunning || t.node != r.Node || t.attempt != r.Attempt {
				continue // job deleted meanwhile, or the attempt is no longer current
			}
			oks[i] = true
			jobs[t.jobID] = t.job
			gone[r.Node] = append(gone[r.Node], r.TaskID)
			w.add(r, t, now)
			cur[r.TaskID] = t.after(r, now) // as a later report in this batch finds it
		}
		if err := s.applyReports(ctx, tx, &w, now); err != nil {
			return err
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

// reportedTask is a reported task's row as the report reads it, and then
// as the report leaves it.
type reportedTask struct {
	jobID                                    int64
	job, task, state, node, message          string
	attempt, failures, maxRetries, evictions int
	exitCode                                 int
	finishedAt                               int64
}

// after is t once r is applied (r fits t): the row recorded.
func (t reportedTask) after(r store.Report, now int64) reportedTask {
	switch r.Outcome {
	case store.OutcomeSucceeded:
		t.state, t.exitCode, t.message, t.finishedAt = store.TaskSucceeded, 0, r.Message, now
	case store.OutcomePreempted:
		t.state, t.node, t.attempt, t.evictions, t.message = store.TaskPending, "", t.attempt+1, t.evictions+1,
			"requeued: eviction notice on "+r.Node
	case store.OutcomeFailed:
		t.failures++
		t.exitCode, t.message = r.ExitCode, r.Message
		if t.failures <= t.maxRetries {
			t.state, t.node, t.attempt = store.TaskPending, "", t.attempt+1
		} else {
			t.state, t.finishedAt = store.TaskFailed, now
		}
	}
	return t
}

// reportWrites are a batch's rows to write, column by column (the
// PostgreSQL statements take each column as one array).
type reportWrites struct {
	// attempts ended
	aTask           []int64
	aAttempt, aExit []int
	aOutcome        []string
	// tasks, every column a report may change
	tID                                        []int64
	tState, tNode, tMessage                    []string
	tAttempt, tFailures, tEvictions, tExitCode []int
	tFinished                                  []int64
	// events, in report order
	eKind, eObject, eReason, eMessage []string
}

func (w *reportWrites) add(r store.Report, t reportedTask, now int64) {
	w.aTask, w.aAttempt, w.aExit, w.aOutcome = append(w.aTask, r.TaskID), append(w.aAttempt, r.Attempt),
		append(w.aExit, r.ExitCode), append(w.aOutcome, r.Outcome)
	n := t.after(r, now)
	w.tID, w.tState, w.tNode, w.tMessage = append(w.tID, r.TaskID), append(w.tState, n.state), append(w.tNode, n.node),
		append(w.tMessage, n.message)
	w.tAttempt, w.tFailures, w.tEvictions, w.tExitCode, w.tFinished = append(w.tAttempt, n.attempt),
		append(w.tFailures, n.failures), append(w.tEvictions, n.evictions), append(w.tExitCode, n.exitCode),
		append(w.tFinished, n.finishedAt)
	obj := "task/" + t.job + "/" + t.task
	var kind, reason, msg string
	switch {
	case r.Outcome == store.OutcomeSucceeded:
		kind, reason, msg = "Succeeded", "Completed", fmt.Sprintf("attempt %d on %s", r.Attempt, r.Node)
	case r.Outcome == store.OutcomePreempted:
		kind, reason, msg = "Requeued", "Evicted", fmt.Sprintf("attempt %d ended by eviction (%s); attempt %d queued, retries not used",
			r.Attempt, "eviction notice on "+r.Node, r.Attempt+1)
	case n.state == store.TaskPending:
		kind, reason, msg = "Retrying", "Failed", fmt.Sprintf("attempt %d exited %d (%s); retry %d of %d",
			r.Attempt, r.ExitCode, r.Message, n.failures, t.maxRetries)
	default:
		kind, reason, msg = "Failed", "RetriesExhausted", fmt.Sprintf("attempt %d exited %d (%s) after %d retries",
			r.Attempt, r.ExitCode, r.Message, t.maxRetries)
	}
	w.eKind, w.eObject, w.eReason, w.eMessage = append(w.eKind, kind), append(w.eObject, obj), append(w.eReason, reason),
		append(w.eMessage, msg)
}

const reportedCols = `SELECT t.id, j.id, j.name, t.name, t.state, t.node, t.message, t.attempt, t.failures, t.max_retries,
	t.evictions, t.exit_code, t.finished_at FROM tasks t JOIN jobs j ON j.id = t.job_id`

// reportedTasks reads (on PostgreSQL: and locks, in ID order) the rows of
// the reported tasks that exist, by ID.
func (s *Store) reportedTasks(ctx context.Context, tx *txn, rs []store.Report) (map[int64]reportedTask, error) {
	out := make(map[int64]reportedTask, len(rs))
	scan := func(sc interface{ Scan(...any) error }) error {
		var id int64
		var t reportedTask
		if err := sc.Scan(&id, &t.jobID, &t.job, &t.task, &t.state, &t.node, &t.message, &t.attempt, &t.failures, &t.maxRetries,
			&t.evictions, &t.exitCode, &t.finishedAt); err != nil {
			return err
		}
		out[id] = t
		return nil
	}
	if s.d.Arrays {
		ids := make([]int64, 0, len(rs))
		for _, r := range rs {
			ids = append(ids, r.TaskID)
		}
		rows, err := tx.QueryContext(ctx, reportedCols+` WHERE t.id = ANY(?::bigint[]) ORDER BY t.id`+s.forUpdateOf("t"), ids)
		if err != nil {
			return nil, err
		}
		defer rows.Close()
		for rows.Next() {
			if err := scan(rows); err != nil {
				return nil, err
			}
		}
		return out, rows.Err()
	}
	st, err := tx.PrepareContext(ctx, reportedCols+` WHERE t.id = ?`)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	for _, r := range rs {
		if _, ok := out[r.TaskID]; ok {
			continue
		}
		if err := scan(st.QueryRowContext(ctx, r.TaskID)); err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, err
		}
	}
	return out, nil
}

// applyReports writes a batch's rows: three statements on PostgreSQL,
// three prepared statements run per row elsewhere.
func (s *Store) applyReports(ctx context.Context, tx *txn, w *reportWrites, now int64) error {
	if len(w.tID) == 0 {
		return nil
	}
	if s.d.Arrays {
		if _, err := tx.ExecContext(ctx, `UPDATE attempts a SET ended_at = ?, outcome = u.outcome, exit_code = u.exit_code
			FROM unnest(?::bigint[], ?::bigint[], ?::text[], ?::bigint[]) AS u(task_id, attempt, outcome, exit_code)
			WHERE a.task_id = u.task_id AND a.attempt = u.attempt AND a.ended_at = 0`,
			now, w.aTask, w.aAttempt, w.aOutcome, w.aExit); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE tasks t SET state = u.state, node = u.node, message = u.message, attempt = u.attempt,
				failures = u.failures, evictions = u.evictions, exit_code = u.exit_code, finished_at = u.finished_at
			FROM unnest(?::bigint[], ?::text[], ?::text[], ?::text[], ?::bigint[], ?::bigint[], ?::bigint[], ?::bigint[], ?::bigint[])
				AS u(id, state, node, message, attempt, failures, evictions, exit_code, finished_at)
			WHERE t.id = u.id`,
			w.tID, w.tState, w.tNode, w.tMessage, w.tAttempt, w.tFailures, w.tEvictions, w.tExitCode, w.tFinished); err != nil {
			return err
		}
		_, err := tx.ExecContext(ctx, `INSERT INTO events (time, kind, object, reason, message)
			SELECT ?, kind, object, reason, message FROM unnest(?::text[], ?::text[], ?::text[], ?::text[])
				WITH ORDINALITY AS u(kind, object, reason, message, n) ORDER BY n`,
			now, w.eKind, w.eObject, w.eReason, w.eMessage)
		return err
	}
	att, err := tx.PrepareContext(ctx, `UPDATE attempts SET ended_at = ?, outcome = ?, exit_code = ? WHERE task_id = ? AND attempt = ? AND ended_at = 0`)
	if err != nil {
		return err
	}
	defer att.Close()
	upd, err := tx.PrepareContext(ctx, `UPDATE tasks SET state = ?, node = ?, message = ?, attempt = ?, failures = ?, evictions = ?,
		exit_code = ?, finished_at = ? WHERE id = ?`)
	if err != nil {
		return err
	}
	defer upd.Close()
	ev, err := tx.PrepareContext(ctx, `INSERT INTO events (time, kind, object, reason, message) VALUES (?, ?, ?, ?, ?)`)
	if err != nil {
		return err
	}
	defer ev.Close()
	for i := range w.tID {
		if _, err := att.ExecContext(ctx, now, w.aOutcome[i], w.aExit[i], w.aTask[i], w.aAttempt[i]); err != nil {
			return err
		}
		if _, err := upd.ExecContext(ctx, w.tState[i], w.tNode[i], w.tMessage[i], w.tAttempt[i], w.tFailures[i], w.tEvictions[i],
			w.tExitCode[i], w.tFinished[i], w.tID[i]); err != nil {
			return err
		}
		if _, err := ev.ExecContext(ctx, now, w.eKind[i], w.eObject[i], w.eReason[i], w.eMessage[i]); err != nil {
			return err
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
