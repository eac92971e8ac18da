package sqlstore

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// Apply stores pools, jobs and services in one transaction: all or
// nothing. A job is immutable once submitted: applying a different spec
// under an existing name is ErrConflict.
func (s *Store) Apply(ctx context.Context, pools []spec.Pool, jobs []spec.Job, services ...store.ServiceDoc) ([]store.ApplyResult, error) {
	var out []store.ApplyResult
	err := s.tx(ctx, func(tx *txn) error {
		out = out[:0]
		now := s.now().UnixNano()
		for _, p := range pools {
			b, err := json.Marshal(p)
			if err != nil {
				return err
			}
			var old string
			err = tx.QueryRowContext(ctx, `SELECT spec FROM pools WHERE name = ?`+s.d.ForUpdate, p.Metadata.Name).Scan(&old)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				if _, err := tx.ExecContext(ctx, `INSERT INTO pools (name, spec, created_at, updated_at) VALUES (?, ?, ?, ?)`,
					p.Metadata.Name, string(b), now, now); err != nil {
					return err
				}
				out = append(out, store.ApplyResult{Kind: spec.KindPool, Name: p.Metadata.Name, Action: "created"})
				if err := s.event(ctx, tx, "Created", "pool/"+p.Metadata.Name, "Applied", ""); err != nil {
					return err
				}
			case err != nil:
				return err
			case old == string(b):
				out = append(out, store.ApplyResult{Kind: spec.KindPool, Name: p.Metadata.Name, Action: "unchanged"})
			default:
				if _, err := tx.ExecContext(ctx, `UPDATE pools SET spec = ?, generation = generation + 1, updated_at = ? WHERE name = ?`,
					string(b), now, p.Metadata.Name); err != nil {
					return err
				}
				out = append(out, store.ApplyResult{Kind: spec.KindPool, Name: p.Metadata.Name, Action: "configured"})
				if err := s.event(ctx, tx, "Updated", "pool/"+p.Metadata.Name, "Applied", ""); err != nil {
					return err
				}
			}
		}
		for _, j := range jobs {
			r, err := s.insertJob(ctx, tx, j, now)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		for _, d := range services {
			r, err := s.applyService(ctx, tx, d, now)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

func (s *Store) insertJob(ctx context.Context, tx *txn, j spec.Job, now int64) (store.ApplyResult, error) {
	b, err := json.Marshal(j)
	if err != nil {
		return store.ApplyResult{}, err
	}
	var old string
	err = tx.QueryRowContext(ctx, `SELECT spec FROM jobs WHERE name = ?`, j.Metadata.Name).Scan(&old)
	switch {
	case err == nil && old == string(b):
		return store.ApplyResult{Kind: spec.KindJob, Name: j.Metadata.Name, Action: "unchanged"}, nil
	case err == nil:
		return store.ApplyResult{}, store.Conflict("job %q already exists with a different spec; jobs cannot be changed once submitted: delete it first (spotml delete job %s) or use another metadata.name", j.Metadata.Name, j.Metadata.Name)
	case !errors.Is(err, sql.ErrNoRows):
		return store.ApplyResult{}, err
	}
	var jobID int64
	if err := tx.QueryRowContext(ctx, `INSERT INTO jobs (name, uid, spec, state, submitted_at) VALUES (?, ?, ?, ?, ?) RETURNING id`,
		j.Metadata.Name, store.RandomHex(4), string(b), store.JobRunning, now).Scan(&jobID); err != nil {
		return store.ApplyResult{}, err
	}
	tasks := j.ExpandTasks()
	if s.d.Arrays {
		if err := s.insertTasksArrays(ctx, tx, jobID, tasks); err != nil {
			return store.ApplyResult{}, err
		}
	} else {
		ins, err := tx.PrepareContext(ctx, `INSERT INTO tasks (job_id, name, idx, spec, pool, priority, cpu, memory, gpu, max_retries, state)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
		if err != nil {
			return store.ApplyResult{}, err
		}
		defer ins.Close()
		for i, t := range tasks {
			tb, err := json.Marshal(t)
			if err != nil {
				return store.ApplyResult{}, err
			}
			if _, err := ins.ExecContext(ctx, jobID, t.Name, i, string(tb), t.Pool, t.Priority,
				t.Resources.CPU, int64(t.Resources.Memory), t.Resources.GPU, t.MaxRetries, store.TaskPending); err != nil {
				return store.ApplyResult{}, err
			}
		}
	}
	if err := s.event(ctx, tx, "Submitted", "job/"+j.Metadata.Name, "Applied", fmt.Sprintf("%d tasks", len(tasks))); err != nil {
		return store.ApplyResult{}, err
	}
	return store.ApplyResult{Kind: spec.KindJob, Name: j.Metadata.Name, Action: "created"}, nil
}

// insertTasksArrays inserts a job's tasks in one statement, for a database
// with arrays (Dialect.Arrays): a job of 100,000 tasks is one round trip,
// not 100,000.
func (s *Store) insertTasksArrays(ctx context.Context, tx *txn, jobID int64, tasks []spec.TaskSpec) error {
	n := len(tasks)
	names, specs, pools, prios := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	idx, mems, gpus, retries := make([]int64, n), make([]int64, n), make([]int64, n), make([]int64, n)
	cpus := make([]float64, n)
	for i, t := range tasks {
		tb, err := json.Marshal(t)
		if err != nil {
			return err
		}
		names[i], specs[i], pools[i], prios[i] = t.Name, string(tb), t.Pool, t.Priority
		idx[i], mems[i], gpus[i], retries[i] = int64(i), int64(t.Resources.Memory), int64(t.Resources.GPU), int64(t.MaxRetries)
		cpus[i] = t.Resources.CPU
	}
	_, err := tx.ExecContext(ctx, `INSERT INTO tasks (job_id, name, idx, spec, pool, priority, cpu, memory, gpu, max_retries, state)
		SELECT ?::bigint, u.name, u.idx, u.spec, u.pool, u.priority, u.cpu, u.memory, u.gpu, u.max_retries, ?::text
		FROM unnest(?::text[], ?::bigint[], ?::text[], ?::text[], ?::text[], ?::float8[], ?::bigint[], ?::bigint[], ?::bigint[])
			AS u(name, idx, spec, pool, priority, cpu, memory, gpu, max_retries)`,
		jobID, store.TaskPending, names, idx, specs, pools, prios, cpus, mems, gpus, retries)
	return err
}

// ListPools returns all pools by name.
func (s *Store) ListPools(ctx context.Context) ([]store.Pool, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT spec, generation, created_at, updated_at FROM pools ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Pool
	for rows.Next() {
		var p store.Pool
		var b string
		var c, u int64
		if err := rows.Scan(&b, &p.Generation, &c, &u); err != nil {
			return nil, err
		}
		if err := json.Unmarshal([]byte(b), &p.Spec); err != nil {
			return nil, fmt.Errorf("stored pool: %w", err)
		}
		p.CreatedAt, p.UpdatedAt = fromNanos(c), fromNanos(u)
		out = append(out, p)
	}
	return out, rows.Err()
}

// GetPool returns one pool.
func (s *Store) GetPool(ctx context.Context, name string) (store.Pool, error) {
	ps, err := s.ListPools(ctx)
	if err != nil {
		return store.Pool{}, err
	}
	for _, p := range ps {
		if p.Spec.Metadata.Name == name {
			return p, nil
		}
	}
	return store.Pool{}, fmt.Errorf("pool %q: %w", name, store.ErrNotFound)
}

// DeletePool removes a pool; its nodes are then terminated by the pool
// reconciler because they belong to no pool.
func (s *Store) DeletePool(ctx context.Context, name string) error {
	return s.tx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM pools WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("pool %q: %w", name, store.ErrNotFound)
		}
		return s.event(ctx, tx, "Deleted", "pool/"+name, "Deleted", "")
	})
}

// DeleteJob removes a job and its tasks; agents stop the tasks at their
// next heartbeat because the tasks are no longer assigned to them.
func (s *Store) DeleteJob(ctx context.Context, name string) error {
	return s.tx(ctx, func(tx *txn) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM jobs WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("job %q: %w", name, store.ErrNotFound)
		}
		return s.event(ctx, tx, "Deleted", "job/"+name, "Deleted", "")
	})
}

const jobCols = `j.id, j.uid, j.spec, j.state, j.submitted_at, j.finished_at`

func scanJob(sc interface{ Scan(...any) error }) (store.Job, error) {
	var j store.Job
	var b string
	var sub, fin int64
	if err := sc.Scan(&j.ID, &j.UID, &b, &j.State, &sub, &fin); err != nil {
		return j, err
	}
	if err := json.Unmarshal([]byte(b), &j.Spec); err != nil {
		return j, fmt.Errorf("stored job: %w", err)
	}
	j.SubmittedAt, j.FinishedAt = fromNanos(sub), fromNanos(fin)
	return j, nil
}

// ListJobs returns all jobs, oldest first, with task counts.
func (s *Store) ListJobs(ctx context.Context) ([]store.Job, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+jobCols+` FROM jobs j ORDER BY j.id`)
	if err != nil {
		return nil, err
	}
	var out []store.Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			rows.Close()
			return nil, err
		}
		out = append(out, j)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	counts, err := s.db.QueryContext(ctx, `SELECT job_id, state, count(*), CAST(sum(evictions) AS BIGINT), CAST(sum(failures) AS BIGINT) FROM tasks GROUP BY job_id, state`)
	if err != nil {
		return nil, err
	}
	defer counts.Close()
	byID := map[int64]*store.Job{}
	for i := range out {
		out[i].Counts = map[string]int{}
		byID[out[i].ID] = &out[i]
	}
	for counts.Next() {
		var id int64
		var st string
		var n, ev, fails int
		if err := counts.Scan(&id, &st, &n, &ev, &fails); err != nil {
			return nil, err
		}
		if j := byID[id]; j != nil {
			j.Counts[st] = n
			j.Evictions += ev
			j.Failures += fails
		}
	}
	return out, counts.Err()
}

// GetJob returns one job with all its tasks.
func (s *Store) GetJob(ctx context.Context, name string) (store.Job, error) {
	j, err := scanJob(s.db.QueryRowContext(ctx, `SELECT `+jobCols+` FROM jobs j WHERE j.name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return store.Job{}, fmt.Errorf("job %q: %w", name, store.ErrNotFound)
	}
	if err != nil {
		return store.Job{}, err
	}
	j.Tasks, err = s.queryTasks(ctx, `WHERE t.job_id = ? ORDER BY t.idx`, j.ID)
	if err != nil {
		return store.Job{}, err
	}
	attempts, err := s.attemptsOf(ctx, j.ID)
	if err != nil {
		return store.Job{}, err
	}
	j.Counts = map[string]int{}
	for i, t := range j.Tasks {
		j.Tasks[i].Attempts = attempts[t.ID]
		j.Counts[t.State]++
		j.Evictions += t.Evictions
		j.Failures += t.Failures
	}
	return j, nil
}

const taskCols = `t.id, t.job_id, j.name, j.uid, t.name, t.idx, t.spec, t.pool, t.priority, t.cpu, t.memory, t.gpu,
	t.max_retries, t.state, t.node, t.attempt, t.failures, t.evictions, t.exit_code, t.message, t.started_at, t.finished_at, j.submitted_at,
	t.progress, t.progress_message, t.progress_at`

// queryTasks returns tasks with their specs; queue reads them without
// (the scheduler needs only resources and selectors, and decoding 100,000
// specs every pass would dominate it).
func (s *Store) queryTasks(ctx context.Context, where string, args ...any) ([]store.Task, error) {
	return s.scanTasks(ctx, taskCols, where, args...)
}

func (s *Store) queue(ctx context.Context, where string, args ...any) ([]store.Task, error) {
	return s.scanTasks(ctx, strings.Replace(taskCols, "t.spec", "''", 1), where, args...)
}

func (s *Store) scanTasks(ctx context.Context, cols, where string, args ...any) ([]store.Task, error) {
	return s.scanTasksFrom(ctx, s.db, cols, where, args...)
}

func (s *Store) scanTasksFrom(ctx context.Context, db *handle, cols, where string, args ...any) ([]store.Task, error) {
	rows, err := s.readQuery(ctx, db, `SELECT `+cols+` FROM tasks t JOIN jobs j ON j.id = t.job_id `+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Task
	for rows.Next() {
		var t store.Task
		var b string
		var mem, st, fin, sub, pat int64
		var progress float64
		if err := rows.Scan(&t.ID, &t.JobID, &t.Job, &t.JobUID, &t.Name, &t.Index, &b, &t.Pool, &t.Priority,
			&t.Req.CPU, &mem, &t.Req.GPU, &t.MaxRetries, &t.State, &t.Node, &t.Attempt, &t.Failures,
			&t.Evictions, &t.ExitCode, &t.Message, &st, &fin, &sub, &progress, &t.ProgressMessage, &pat); err != nil {
			return nil, err
		}
		if progress >= 0 {
			t.Progress = &progress
		}
		t.ProgressAt = fromNanos(pat)
		t.Req.Memory = spec.Bytes(mem)
		if b != "" {
			if err := json.Unmarshal([]byte(b), &t.Spec); err != nil {
				return nil, fmt.Errorf("stored task: %w", err)
			}
		}
		t.StartedAt, t.FinishedAt = fromNanos(st), fromNanos(fin)
		// FIFO: job submit time, then task index; tasks ids break ties.
		t.Order = sub
		out = append(out, t)
	}
	return out, rows.Err()
}

// PendingTasks returns the queue, oldest job first, without task specs.
func (s *Store) PendingTasks(ctx context.Context) ([]store.Task, error) {
	return s.queue(ctx, `WHERE t.state = ? ORDER BY j.submitted_at, j.id, t.idx`, store.TaskPending)
}

// RunningTasks returns tasks that are assigned to a node, without specs.
func (s *Store) RunningTasks(ctx context.Context) ([]store.Task, error) {
	return s.queue(ctx, `WHERE t.state = ? ORDER BY t.id`, store.TaskRunning)
}

// NodeTasks returns the tasks assigned to one node.
func (s *Store) NodeTasks(ctx context.Context, node string) ([]store.Task, error) {
	return s.scanTasksFrom(ctx, s.rdb, taskCols, `WHERE t.node = ? AND t.state = ? ORDER BY t.id`, node, store.TaskRunning)
}

// GetTask returns one task of a job.
func (s *Store) GetTask(ctx context.Context, job, task string) (store.Task, error) {
	ts, err := s.queryTasks(ctx, `WHERE j.name = ? AND t.name = ?`, job, task)
	if err != nil {
		return store.Task{}, err
	}
	if len(ts) == 0 {
		return store.Task{}, fmt.Errorf("task %s/%s: %w", job, task, store.ErrNotFound)
	}
	return ts[0], nil
}
