package store

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

// Pool is a stored pool.
type Pool struct {
	Spec       spec.Pool `json:"pool"`
	Generation int64     `json:"generation"`
	CreatedAt  time.Time `json:"createdAt"`
	UpdatedAt  time.Time `json:"updatedAt"`
}

// Job is a stored job with its tasks' counts.
type Job struct {
	ID          int64          `json:"id"`
	UID         string         `json:"uid"`
	Spec        spec.Job       `json:"job"`
	State       string         `json:"state"` // running, succeeded, failed
	SubmittedAt time.Time      `json:"submittedAt"`
	FinishedAt  time.Time      `json:"finishedAt,omitzero"`
	Counts      map[string]int `json:"counts"` // tasks by state
	Evictions   int            `json:"evictions"`
	Tasks       []Task         `json:"tasks,omitempty"`
}

// Task states.
const (
	TaskPending   = "pending"
	TaskRunning   = "running"
	TaskSucceeded = "succeeded"
	TaskFailed    = "failed"
)

// Job states.
const (
	JobRunning   = "running"
	JobSucceeded = "succeeded"
	JobFailed    = "failed"
)

// Task is one task of a job.
type Task struct {
	ID         int64          `json:"id"`
	JobID      int64          `json:"jobId"`
	Job        string         `json:"job"`
	JobUID     string         `json:"jobUid"`
	Name       string         `json:"name"`
	Index      int            `json:"index"`
	Spec       spec.TaskSpec  `json:"spec"`
	Pool       string         `json:"pool,omitempty"`
	Priority   string         `json:"priority,omitempty"`
	Req        spec.Resources `json:"resources"`
	MaxRetries int            `json:"maxRetries"`
	State      string         `json:"state"`
	Node       string         `json:"node,omitempty"`
	Attempt    int            `json:"attempt"`
	Failures   int            `json:"failures"`
	Evictions  int            `json:"evictions"`
	ExitCode   int            `json:"exitCode"`
	Message    string         `json:"message,omitempty"`
	StartedAt  time.Time      `json:"startedAt,omitzero"`
	FinishedAt time.Time      `json:"finishedAt,omitzero"`
	Attempts   []Attempt      `json:"attempts,omitempty"`
	// Progress is the fraction (0..1) the task last reported through
	// SPOTML_PROGRESS_FILE, nil when it never did; it is kept across a
	// requeue (the next attempt resumes from the checkpoint).
	Progress        *float64  `json:"progress,omitempty"`
	ProgressMessage string    `json:"progressMessage,omitempty"`
	ProgressAt      time.Time `json:"progressAt,omitzero"`
	Order           int64     `json:"-"`
	// Spread is set only on the stand-ins for service replicas that the
	// control plane hands the scheduler: same Spread, different nodes.
	Spread string `json:"-"`
}

// ApplyResult says what Apply did with one document.
type ApplyResult struct {
	Kind   string `json:"kind"`
	Name   string `json:"name"`
	Action string `json:"action"` // created, configured, unchanged
}

// Apply stores pools, jobs and services in one transaction: all or
// nothing. A job is immutable once submitted: applying a different spec
// under an existing name is ErrConflict.
func (s *Store) Apply(ctx context.Context, pools []spec.Pool, jobs []spec.Job, services ...ServiceDoc) ([]ApplyResult, error) {
	var out []ApplyResult
	err := s.tx(ctx, func(tx *sql.Tx) error {
		out = out[:0]
		now := s.now().UnixNano()
		for _, p := range pools {
			b, err := json.Marshal(p)
			if err != nil {
				return err
			}
			var old string
			err = tx.QueryRowContext(ctx, `SELECT spec FROM pools WHERE name = ?`, p.Metadata.Name).Scan(&old)
			switch {
			case errors.Is(err, sql.ErrNoRows):
				if _, err := tx.ExecContext(ctx, `INSERT INTO pools (name, spec, created_at, updated_at) VALUES (?, ?, ?, ?)`,
					p.Metadata.Name, string(b), now, now); err != nil {
					return err
				}
				out = append(out, ApplyResult{spec.KindPool, p.Metadata.Name, "created"})
				if err := s.event(ctx, tx, "Created", "pool/"+p.Metadata.Name, "Applied", ""); err != nil {
					return err
				}
			case err != nil:
				return err
			case old == string(b):
				out = append(out, ApplyResult{spec.KindPool, p.Metadata.Name, "unchanged"})
			default:
				if _, err := tx.ExecContext(ctx, `UPDATE pools SET spec = ?, generation = generation + 1, updated_at = ? WHERE name = ?`,
					string(b), now, p.Metadata.Name); err != nil {
					return err
				}
				out = append(out, ApplyResult{spec.KindPool, p.Metadata.Name, "configured"})
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

func (s *Store) insertJob(ctx context.Context, tx *sql.Tx, j spec.Job, now int64) (ApplyResult, error) {
	b, err := json.Marshal(j)
	if err != nil {
		return ApplyResult{}, err
	}
	var old string
	err = tx.QueryRowContext(ctx, `SELECT spec FROM jobs WHERE name = ?`, j.Metadata.Name).Scan(&old)
	switch {
	case err == nil && old == string(b):
		return ApplyResult{spec.KindJob, j.Metadata.Name, "unchanged"}, nil
	case err == nil:
		return ApplyResult{}, Conflict("job %q already exists with a different spec; jobs cannot be changed once submitted: delete it first (spotml delete job %s) or use another metadata.name", j.Metadata.Name, j.Metadata.Name)
	case !errors.Is(err, sql.ErrNoRows):
		return ApplyResult{}, err
	}
	res, err := tx.ExecContext(ctx, `INSERT INTO jobs (name, uid, spec, state, submitted_at) VALUES (?, ?, ?, ?, ?)`,
		j.Metadata.Name, RandomHex(4), string(b), JobRunning, now)
	if err != nil {
		return ApplyResult{}, err
	}
	jobID, _ := res.LastInsertId()
	ins, err := tx.PrepareContext(ctx, `INSERT INTO tasks (job_id, name, idx, spec, pool, priority, cpu, memory, gpu, max_retries, state)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`)
	if err != nil {
		return ApplyResult{}, err
	}
	defer ins.Close()
	for i, t := range j.ExpandTasks() {
		tb, err := json.Marshal(t)
		if err != nil {
			return ApplyResult{}, err
		}
		if _, err := ins.ExecContext(ctx, jobID, t.Name, i, string(tb), t.Pool, t.Priority,
			t.Resources.CPU, int64(t.Resources.Memory), t.Resources.GPU, t.MaxRetries, TaskPending); err != nil {
			return ApplyResult{}, err
		}
	}
	if err := s.event(ctx, tx, "Submitted", "job/"+j.Metadata.Name, "Applied", fmt.Sprintf("%d tasks", len(j.ExpandTasks()))); err != nil {
		return ApplyResult{}, err
	}
	return ApplyResult{spec.KindJob, j.Metadata.Name, "created"}, nil
}

// ListPools returns all pools by name.
func (s *Store) ListPools(ctx context.Context) ([]Pool, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT spec, generation, created_at, updated_at FROM pools ORDER BY name`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Pool
	for rows.Next() {
		var p Pool
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
func (s *Store) GetPool(ctx context.Context, name string) (Pool, error) {
	ps, err := s.ListPools(ctx)
	if err != nil {
		return Pool{}, err
	}
	for _, p := range ps {
		if p.Spec.Metadata.Name == name {
			return p, nil
		}
	}
	return Pool{}, fmt.Errorf("pool %q: %w", name, ErrNotFound)
}

// DeletePool removes a pool; its nodes are then terminated by the pool
// reconciler because they belong to no pool.
func (s *Store) DeletePool(ctx context.Context, name string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM pools WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("pool %q: %w", name, ErrNotFound)
		}
		return s.event(ctx, tx, "Deleted", "pool/"+name, "Deleted", "")
	})
}

// DeleteJob removes a job and its tasks; agents stop the tasks at their
// next heartbeat because the tasks are no longer assigned to them.
func (s *Store) DeleteJob(ctx context.Context, name string) error {
	return s.tx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM jobs WHERE name = ?`, name)
		if err != nil {
			return err
		}
		if n, _ := res.RowsAffected(); n == 0 {
			return fmt.Errorf("job %q: %w", name, ErrNotFound)
		}
		return s.event(ctx, tx, "Deleted", "job/"+name, "Deleted", "")
	})
}

const jobCols = `j.id, j.uid, j.spec, j.state, j.submitted_at, j.finished_at`

func scanJob(sc interface{ Scan(...any) error }) (Job, error) {
	var j Job
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
func (s *Store) ListJobs(ctx context.Context) ([]Job, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+jobCols+` FROM jobs j ORDER BY j.id`)
	if err != nil {
		return nil, err
	}
	var out []Job
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
	counts, err := s.db.QueryContext(ctx, `SELECT job_id, state, count(*), sum(evictions) FROM tasks GROUP BY job_id, state`)
	if err != nil {
		return nil, err
	}
	defer counts.Close()
	byID := map[int64]*Job{}
	for i := range out {
		out[i].Counts = map[string]int{}
		byID[out[i].ID] = &out[i]
	}
	for counts.Next() {
		var id int64
		var st string
		var n, ev int
		if err := counts.Scan(&id, &st, &n, &ev); err != nil {
			return nil, err
		}
		if j := byID[id]; j != nil {
			j.Counts[st] = n
			j.Evictions += ev
		}
	}
	return out, counts.Err()
}

// GetJob returns one job with all its tasks.
func (s *Store) GetJob(ctx context.Context, name string) (Job, error) {
	j, err := scanJob(s.db.QueryRowContext(ctx, `SELECT `+jobCols+` FROM jobs j WHERE j.name = ?`, name))
	if errors.Is(err, sql.ErrNoRows) {
		return Job{}, fmt.Errorf("job %q: %w", name, ErrNotFound)
	}
	if err != nil {
		return Job{}, err
	}
	j.Tasks, err = s.queryTasks(ctx, `WHERE t.job_id = ? ORDER BY t.idx`, j.ID)
	if err != nil {
		return Job{}, err
	}
	attempts, err := s.attemptsOf(ctx, j.ID)
	if err != nil {
		return Job{}, err
	}
	j.Counts = map[string]int{}
	for i, t := range j.Tasks {
		j.Tasks[i].Attempts = attempts[t.ID]
		j.Counts[t.State]++
		j.Evictions += t.Evictions
	}
	return j, nil
}

const taskCols = `t.id, t.job_id, j.name, j.uid, t.name, t.idx, t.spec, t.pool, t.priority, t.cpu, t.memory, t.gpu,
	t.max_retries, t.state, t.node, t.attempt, t.failures, t.evictions, t.exit_code, t.message, t.started_at, t.finished_at, j.submitted_at,
	t.progress, t.progress_message, t.progress_at`

// queryTasks returns tasks with their specs; queue reads them without
// (the scheduler needs only resources and selectors, and decoding 100,000
// specs every pass would dominate it).
func (s *Store) queryTasks(ctx context.Context, where string, args ...any) ([]Task, error) {
	return s.scanTasks(ctx, taskCols, where, args...)
}

func (s *Store) queue(ctx context.Context, where string, args ...any) ([]Task, error) {
	return s.scanTasks(ctx, strings.Replace(taskCols, "t.spec", "''", 1), where, args...)
}

func (s *Store) scanTasks(ctx context.Context, cols, where string, args ...any) ([]Task, error) {
	return s.scanTasksFrom(ctx, s.db, cols, where, args...)
}

func (s *Store) scanTasksFrom(ctx context.Context, db *sql.DB, cols, where string, args ...any) ([]Task, error) {
	rows, err := s.readQuery(ctx, db, `SELECT `+cols+` FROM tasks t JOIN jobs j ON j.id = t.job_id `+where, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Task
	for rows.Next() {
		var t Task
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
func (s *Store) PendingTasks(ctx context.Context) ([]Task, error) {
	return s.queue(ctx, `WHERE t.state = ? ORDER BY j.submitted_at, j.id, t.idx`, TaskPending)
}

// RunningTasks returns tasks that are assigned to a node, without specs.
func (s *Store) RunningTasks(ctx context.Context) ([]Task, error) {
	return s.queue(ctx, `WHERE t.state = ? ORDER BY t.id`, TaskRunning)
}

// NodeTasks returns the tasks assigned to one node.
func (s *Store) NodeTasks(ctx context.Context, node string) ([]Task, error) {
	return s.scanTasksFrom(ctx, s.rdb, taskCols, `WHERE t.node = ? AND t.state = ? ORDER BY t.id`, node, TaskRunning)
}

// GetTask returns one task of a job.
func (s *Store) GetTask(ctx context.Context, job, task string) (Task, error) {
	ts, err := s.queryTasks(ctx, `WHERE j.name = ? AND t.name = ?`, job, task)
	if err != nil {
		return Task{}, err
	}
	if len(ts) == 0 {
		return Task{}, fmt.Errorf("task %s/%s: %w", job, task, ErrNotFound)
	}
	return ts[0], nil
}
