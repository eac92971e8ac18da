package sqlstore

import (
	"context"
	"database/sql"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// Chunks of the queue EachPending reads: the first as large as the room
// the reader expects but at least firstChunk; then doubling up to the
// most.
const (
	firstChunk = 1024
	maxChunk   = 16384
)

// EachPending hands fn the queue in FIFO order (the job submitted first,
// then by task index), without specs, a chunk at a time, each chunk
// after the ones before it. fn returns whether only tasks that ask for no
// CPU can still be placed (sched.Planner.Full; it stays so for the rest
// of the read): from then on only those are read, through the partial
// index tasks_nocpu, so that a pass reads as much of a 100,000-task
// queue as its nodes can take, not all of it. The chunk is reused: fn
// must not keep it.
//
// The chunks are separate statements, not one snapshot: a task that
// becomes pending meanwhile may be missed until the next pass, and one
// that stops being pending may still be handed over (Assign checks).
//
// room is how many tasks the reader expects to place (a hint: the first
// chunk's size, within bounds), so that a pass with room for 16,000 reads
// about that many in one round trip rather than in five growing ones.
func (s *Store) EachPending(ctx context.Context, room int, fn func([]store.QueuedTask) (full bool)) error {
	type job struct{ id, submitted int64 }
	var jobs []job
	rows, err := s.db.QueryContext(ctx, `SELECT j.id, j.submitted_at FROM jobs j
		WHERE EXISTS (SELECT 1 FROM tasks t WHERE t.state = 'pending' AND t.job_id = j.id) ORDER BY j.submitted_at, j.id`)
	if err != nil {
		return err
	}
	for rows.Next() {
		var j job
		if err := rows.Scan(&j.id, &j.submitted); err != nil {
			rows.Close()
			return err
		}
		jobs = append(jobs, j)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	const cols = `SELECT id, idx, pool, priority, cpu, memory, gpu FROM tasks`
	all := cols + ` WHERE state = 'pending' AND job_id = ? AND idx > ? ORDER BY idx LIMIT ?`
	// Literals, not parameters, so that the planners can use the partial
	// index; SQLite is told to, as it prefers tasks_state otherwise.
	indexed := ""
	if s.d.Name == "sqlite" {
		indexed = " INDEXED BY tasks_nocpu"
	}
	noCPU := cols + indexed + ` WHERE state = 'pending' AND cpu <= 0 AND job_id = ? AND idx > ? ORDER BY idx LIMIT ?`
	var (
		full       bool
		chunk      = firstChunk
		buf        []store.QueuedTask
		pool, prio sql.RawBytes
		names      = map[string]string{}
		intern     = func(b []byte) string {
			if n, ok := names[string(b)]; ok {
				return n
			}
			n := string(b)
			names[n] = n
			return n
		}
	)
	for _, j := range jobs {
		after := -1
		for {
			q := all
			if full {
				q = noCPU
			}
			rows, err := s.db.QueryContext(ctx, q, j.id, after, chunk)
			if err != nil {
				return err
			}
			buf = buf[:0]
			for rows.Next() {
				t := store.QueuedTask{JobID: j.id, Order: j.submitted}
				var mem int64
				if err := rows.Scan(&t.ID, &t.Index, &pool, &prio, &t.Req.CPU, &mem, &t.Req.GPU); err != nil {
					rows.Close()
					return err
				}
				t.Req.Memory = spec.Bytes(mem)
				t.Pool, t.Priority = intern(pool), intern(prio)
				buf = append(buf, t)
			}
			rows.Close()
			if err := rows.Err(); err != nil {
				return err
			}
			if len(buf) == 0 {
				break
			}
			after = buf[len(buf)-1].Index
			if fn(buf) {
				full = true
			}
			if len(buf) < chunk {
				break
			}
			chunk = min(2*chunk, maxChunk)
		}
	}
	return nil
}

// PendingDemand returns the queue as the pool scaler counts it: the
// requests of tasks that name a pool summed per pool in the database,
// and the few that name none one by one (see store.Demand).
func (s *Store) PendingDemand(ctx context.Context) (store.Demand, error) {
	d := store.Demand{Pinned: map[string]spec.Resources{}}
	rows, err := s.db.QueryContext(ctx, `SELECT pool, sum(cpu), CAST(sum(memory) AS BIGINT), CAST(sum(gpu) AS BIGINT)
		FROM tasks WHERE state = 'pending' AND pool <> '' GROUP BY pool`)
	if err != nil {
		return d, err
	}
	for rows.Next() {
		var pool string
		var r spec.Resources
		var mem int64
		if err := rows.Scan(&pool, &r.CPU, &mem, &r.GPU); err != nil {
			rows.Close()
			return d, err
		}
		r.Memory = spec.Bytes(mem)
		d.Pinned[pool] = r
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return d, err
	}
	rows, err = s.db.QueryContext(ctx, `SELECT t.id, t.job_id, t.idx, j.submitted_at, t.priority, t.cpu, t.memory, t.gpu
		FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE t.state = 'pending' AND t.pool = '' ORDER BY j.submitted_at, j.id, t.idx`)
	if err != nil {
		return d, err
	}
	defer rows.Close()
	for rows.Next() {
		var t store.QueuedTask
		var mem int64
		if err := rows.Scan(&t.ID, &t.JobID, &t.Index, &t.Order, &t.Priority, &t.Req.CPU, &mem, &t.Req.GPU); err != nil {
			return d, err
		}
		t.Req.Memory = spec.Bytes(mem)
		d.Loose = append(d.Loose, t)
	}
	return d, rows.Err()
}

// RunningJobs returns the jobs still running, with their specs but
// without counts or tasks (ListJobs counts every task of every job; a
// reconcile pass that looks for the jobs it steers needs none of that).
func (s *Store) RunningJobs(ctx context.Context) ([]store.Job, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT `+jobCols+` FROM jobs j WHERE j.state = ? ORDER BY j.id`, store.JobRunning)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Job
	for rows.Next() {
		j, err := scanJob(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, j)
	}
	return out, rows.Err()
}

// RunningLoad returns the running tasks as the scheduler and the scaler
// count them: ID, node and request only (RunningTasks reads every column;
// a pass reads this twice, for 16,000 running tasks on 1,000 nodes). In
// no particular order.
func (s *Store) RunningLoad(ctx context.Context) ([]store.Task, error) {
	rows, err := s.db.QueryContext(ctx, `SELECT id, node, cpu, memory, gpu FROM tasks WHERE state = ?`, store.TaskRunning)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	// Read small, then made into Tasks once: a store.Task is large, and
	// growing a slice of 16,000 of them by appends copied them over and
	// over (most of this read's time in a profile).
	type load struct {
		id   int64
		node string
		req  spec.Resources
	}
	var ls []load
	var node sql.RawBytes
	names := map[string]string{} // node names, one string each
	for rows.Next() {
		var l load
		var mem int64
		if err := rows.Scan(&l.id, &node, &l.req.CPU, &mem, &l.req.GPU); err != nil {
			return nil, err
		}
		l.req.Memory = spec.Bytes(mem)
		n, ok := names[string(node)]
		if !ok {
			n = string(node)
			names[n] = n
		}
		l.node = n
		ls = append(ls, l)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	// Room for the replicas' load that callers append.
	out := make([]store.Task, len(ls), len(ls)+64)
	for i, l := range ls {
		out[i] = store.Task{ID: l.id, Node: l.node, Req: l.req, State: store.TaskRunning}
	}
	return out, nil
}
