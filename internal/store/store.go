// Package store is spotml's one source of truth: pools, nodes, jobs, tasks,
// events and node runs (for cost), kept in SQLite through a pure-Go driver.
// Every state change is one transaction that also records its event, so a
// control plane killed at any point restarts over a consistent state.
package store

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// Sentinel errors; the HTTP layer maps them to status codes.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

// Conflict returns an error that reads as the message alone and matches
// ErrConflict (409 in the API).
func Conflict(format string, args ...any) error {
	return &kindError{msg: fmt.Sprintf(format, args...), kind: ErrConflict}
}

type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

// Store is the SQLite-backed state of one control plane.
type Store struct {
	db *sql.DB
	// rdb is a pool of read-only connections for what agents' heartbeats
	// read: in WAL mode they read the last commit while db writes, so a
	// heartbeat is not held up behind a long assign or report transaction.
	rdb *sql.DB
	// rstmts are rdb's statements, prepared once each (readQuery): a
	// heartbeat's reads are small, and parsing their SQL cost more than
	// running it.
	rstmts sync.Map // query -> *sql.Stmt
	now    func() time.Time
	live   liveness
	work   workCache

	nodeRows atomic.Int64 // node rows the list queries returned, for Stats
}

// Open opens (creating if needed) the database at path and migrates it.
func Open(ctx context.Context, path string, now func() time.Time) (*Store, error) {
	dsn := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=foreign_keys(1)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// One connection: SQLite has one writer anyway, and this rules out
	// SQLITE_BUSY between our own connections.
	db.SetMaxOpenConns(1)
	if now == nil {
		now = time.Now
	}
	s := &Store{db: db, now: now}
	if err := s.migrate(ctx); err != nil {
		db.Close()
		return nil, err
	}
	rdb, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=query_only(1)")
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s for reading: %w", path, err)
	}
	rdb.SetMaxOpenConns(4)
	s.rdb = rdb
	return s, nil
}

// Close writes the heartbeats kept in memory and closes the database.
func (s *Store) Close() error {
	errs := []error{s.FlushHeartbeats(context.Background())}
	s.rstmts.Range(func(_, st any) bool {
		errs = append(errs, st.(*sql.Stmt).Close())
		return true
	})
	return errors.Join(append(errs, s.rdb.Close(), s.db.Close())...)
}

// readQuery runs a query on db; on the read pool, through a statement
// prepared once.
func (s *Store) readQuery(ctx context.Context, db *sql.DB, query string, args ...any) (*sql.Rows, error) {
	if db != s.rdb {
		return db.QueryContext(ctx, query, args...)
	}
	st, ok := s.rstmts.Load(query)
	if !ok {
		prep, err := s.rdb.PrepareContext(ctx, query)
		if err != nil {
			return nil, err
		}
		var loaded bool
		if st, loaded = s.rstmts.LoadOrStore(query, prep); loaded {
			prep.Close()
		}
	}
	return st.(*sql.Stmt).QueryContext(ctx, args...)
}

// Stats are counters of what the store has done since it was opened.
type Stats struct {
	// NodeRowsRead counts the node rows that ListNodes, LiveNodes and
	// RecentNodes returned: what a reconcile pass costs grows with it.
	NodeRowsRead int64
}

// Stats returns the store's counters.
func (s *Store) Stats() Stats { return Stats{NodeRowsRead: s.nodeRows.Load()} }

// migrations are applied in order, each once, recorded in schema_version.
var migrations = []string{
	`CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
	CREATE TABLE pools (
		name TEXT PRIMARY KEY,
		spec TEXT NOT NULL,
		generation INTEGER NOT NULL DEFAULT 1,
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL
	);
	CREATE TABLE nodes (
		name TEXT PRIMARY KEY,
		pool TEXT NOT NULL,
		priority TEXT NOT NULL,
		zone TEXT NOT NULL DEFAULT '',
		instance_type TEXT NOT NULL,
		state TEXT NOT NULL,
		cpu REAL NOT NULL, memory INTEGER NOT NULL, gpu INTEGER NOT NULL,
		price REAL NOT NULL, ondemand_price REAL NOT NULL,
		pid INTEGER NOT NULL DEFAULT 0,
		workdir TEXT NOT NULL DEFAULT '',
		created_at INTEGER NOT NULL,
		state_at INTEGER NOT NULL,
		heartbeat_at INTEGER NOT NULL DEFAULT 0,
		idle_since INTEGER NOT NULL DEFAULT 0,
		notice_deadline INTEGER NOT NULL DEFAULT 0,
		reason TEXT NOT NULL DEFAULT '',
		incarnation INTEGER NOT NULL DEFAULT 1
	);
	CREATE INDEX nodes_pool ON nodes(pool, state);
	CREATE TABLE node_runs (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		node TEXT NOT NULL, pool TEXT NOT NULL, priority TEXT NOT NULL,
		started_at INTEGER NOT NULL, ended_at INTEGER NOT NULL DEFAULT 0,
		price REAL NOT NULL, ondemand_price REAL NOT NULL
	);
	CREATE INDEX node_runs_open ON node_runs(node, ended_at);
	CREATE TABLE jobs (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		name TEXT NOT NULL UNIQUE,
		uid TEXT NOT NULL,
		spec TEXT NOT NULL,
		state TEXT NOT NULL,
		submitted_at INTEGER NOT NULL,
		finished_at INTEGER NOT NULL DEFAULT 0
	);
	CREATE TABLE tasks (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
		name TEXT NOT NULL,
		idx INTEGER NOT NULL,
		spec TEXT NOT NULL,
		pool TEXT NOT NULL DEFAULT '',
		priority TEXT NOT NULL DEFAULT '',
		cpu REAL NOT NULL, memory INTEGER NOT NULL, gpu INTEGER NOT NULL,
		max_retries INTEGER NOT NULL,
		state TEXT NOT NULL,
		node TEXT NOT NULL DEFAULT '',
		attempt INTEGER NOT NULL DEFAULT 1,
		failures INTEGER NOT NULL DEFAULT 0,
		evictions INTEGER NOT NULL DEFAULT 0,
		exit_code INTEGER NOT NULL DEFAULT 0,
		message TEXT NOT NULL DEFAULT '',
		started_at INTEGER NOT NULL DEFAULT 0,
		finished_at INTEGER NOT NULL DEFAULT 0,
		UNIQUE(job_id, name)
	);
	CREATE INDEX tasks_state ON tasks(state, job_id, idx);
	CREATE INDEX tasks_node ON tasks(node, state);
	CREATE TABLE attempts (
		task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
		attempt INTEGER NOT NULL,
		node TEXT NOT NULL,
		started_at INTEGER NOT NULL,
		ended_at INTEGER NOT NULL DEFAULT 0,
		outcome TEXT NOT NULL DEFAULT '',
		exit_code INTEGER NOT NULL DEFAULT 0,
		PRIMARY KEY (task_id, attempt)
	);
	CREATE TABLE events (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		time INTEGER NOT NULL,
		kind TEXT NOT NULL,
		object TEXT NOT NULL,
		reason TEXT NOT NULL,
		message TEXT NOT NULL DEFAULT ''
	);
	CREATE INDEX events_object ON events(object);`,
	// 2: serving.
	`CREATE TABLE services (
		name TEXT PRIMARY KEY,
		spec TEXT NOT NULL,
		rollout_key TEXT NOT NULL,
		generation INTEGER NOT NULL DEFAULT 1,
		desired INTEGER NOT NULL,
		scale_state TEXT NOT NULL DEFAULT '',
		created_at INTEGER NOT NULL,
		updated_at INTEGER NOT NULL
	);
	CREATE TABLE replicas (
		id INTEGER PRIMARY KEY AUTOINCREMENT,
		service TEXT NOT NULL,
		version INTEGER NOT NULL,
		spec TEXT NOT NULL,
		pool TEXT NOT NULL,
		priority TEXT NOT NULL,
		stand_in INTEGER NOT NULL DEFAULT 0,
		cpu REAL NOT NULL, memory INTEGER NOT NULL, gpu INTEGER NOT NULL,
		state TEXT NOT NULL,
		node TEXT NOT NULL DEFAULT '',
		addr TEXT NOT NULL DEFAULT '',
		created_at INTEGER NOT NULL,
		state_at INTEGER NOT NULL,
		ready_at INTEGER NOT NULL DEFAULT 0,
		ended_at INTEGER NOT NULL DEFAULT 0,
		reason TEXT NOT NULL DEFAULT ''
	);
	CREATE INDEX replicas_live ON replicas(ended_at, service);
	CREATE INDEX replicas_node ON replicas(node, ended_at);
	CREATE TABLE gateway_stats (
		gateway TEXT NOT NULL,
		service TEXT NOT NULL,
		qps REAL NOT NULL,
		updated_at INTEGER NOT NULL,
		PRIMARY KEY (gateway, service)
	);`,
	// 3: the console's history: latency beside QPS, and samples per service.
	`ALTER TABLE gateway_stats ADD COLUMN p50 REAL NOT NULL DEFAULT 0;
	ALTER TABLE gateway_stats ADD COLUMN p99 REAL NOT NULL DEFAULT 0;
	ALTER TABLE gateway_stats ADD COLUMN requests INTEGER NOT NULL DEFAULT 0;
	ALTER TABLE gateway_stats ADD COLUMN errors INTEGER NOT NULL DEFAULT 0;
	CREATE TABLE service_samples (
		service TEXT NOT NULL,
		time INTEGER NOT NULL,
		qps REAL NOT NULL,
		p50 REAL NOT NULL,
		p99 REAL NOT NULL,
		requests INTEGER NOT NULL,
		errors INTEGER NOT NULL,
		ready INTEGER NOT NULL,
		desired INTEGER NOT NULL,
		spot INTEGER NOT NULL,
		ondemand INTEGER NOT NULL,
		PRIMARY KEY (service, time)
	);
	CREATE INDEX service_samples_time ON service_samples(time);`,
	// 4: progress that running tasks report (SPOTML_PROGRESS_FILE).
	`ALTER TABLE tasks ADD COLUMN progress REAL NOT NULL DEFAULT -1;
	ALTER TABLE tasks ADD COLUMN progress_message TEXT NOT NULL DEFAULT '';
	ALTER TABLE tasks ADD COLUMN progress_at INTEGER NOT NULL DEFAULT 0;`,
	// 5: least privilege. A credential per node, bound to its name and
	// incarnation; named API tokens with a role. Only SHA-256 hashes of
	// the secrets are kept.
	`CREATE TABLE IF NOT EXISTS node_credentials (
		hash TEXT PRIMARY KEY,
		node TEXT NOT NULL,
		incarnation INTEGER NOT NULL,
		created_at INTEGER NOT NULL
	);
	CREATE INDEX IF NOT EXISTS node_credentials_node ON node_credentials(node);
	CREATE TABLE IF NOT EXISTS api_tokens (
		name TEXT PRIMARY KEY,
		role TEXT NOT NULL,
		hash TEXT NOT NULL UNIQUE,
		created_at INTEGER NOT NULL
	);`,
	// 6: bounded history: indexes that let the reconcile pass read live nodes
	// only and let Prune find old ended rows, and the per-pool, per-day
	// cost of pruned node runs. Self-contained (IF NOT EXISTS), so it may
	// run in any order with the migrations beside it.
	`CREATE INDEX IF NOT EXISTS nodes_state ON nodes(state, state_at);
	CREATE INDEX IF NOT EXISTS node_runs_ended ON node_runs(ended_at);
	CREATE INDEX IF NOT EXISTS attempts_ended ON attempts(ended_at);
	CREATE INDEX IF NOT EXISTS events_time ON events(time);
	CREATE TABLE IF NOT EXISTS cost_days (
		pool TEXT NOT NULL,
		priority TEXT NOT NULL,
		day INTEGER NOT NULL,
		first_at INTEGER NOT NULL,
		last_at INTEGER NOT NULL,
		node_seconds REAL NOT NULL,
		spent REAL NOT NULL,
		ondemand REAL NOT NULL,
		PRIMARY KEY (pool, priority, day)
	);`,
	// 7: the provider seam: a provider's opaque ID for a node replaces the
	// local provider's process and work directory; host is the platform's
	// machine under the node (a Kubernetes node). A local node's ID is its
	// work directory. A local spot pool's market settings move into the
	// pool's spec.local block (json_patch drops the ones not set).
	`ALTER TABLE nodes ADD COLUMN provider_id TEXT NOT NULL DEFAULT '';
	ALTER TABLE nodes ADD COLUMN host TEXT NOT NULL DEFAULT '';
	UPDATE nodes SET provider_id = workdir;
	ALTER TABLE nodes DROP COLUMN pid;
	ALTER TABLE nodes DROP COLUMN workdir;
	UPDATE pools SET spec = json_set(
		json_remove(spec, '$.spec.evictionRate', '$.spec.notice', '$.spec.capacityShortage', '$.spec.noticeFormat'),
		'$.spec.local', json_patch('{}', json_object(
			'evictionRate', json_extract(spec, '$.spec.evictionRate'),
			'notice', json_extract(spec, '$.spec.notice'),
			'capacityShortage', json_extract(spec, '$.spec.capacityShortage'),
			'noticeFormat', json_extract(spec, '$.spec.noticeFormat'))))
	WHERE json_extract(spec, '$.spec.provider') = 'local' AND json_extract(spec, '$.spec.priority') = 'spot';`,
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return s.tx(ctx, func(tx *sql.Tx) error {
		var v int
		err := tx.QueryRowContext(ctx, `SELECT version FROM schema_version`).Scan(&v)
		switch {
		case errors.Is(err, sql.ErrNoRows):
			if _, err := tx.ExecContext(ctx, `INSERT INTO schema_version VALUES (0)`); err != nil {
				return err
			}
		case err != nil:
			return err
		}
		if v > len(migrations) {
			return fmt.Errorf("store schema version %d is newer than this spotml (%d); upgrade spotml", v, len(migrations))
		}
		for i := v; i < len(migrations); i++ {
			if _, err := tx.ExecContext(ctx, migrations[i]); err != nil {
				return fmt.Errorf("migration %d: %w", i+1, err)
			}
		}
		_, err = tx.ExecContext(ctx, `UPDATE schema_version SET version = ?`, len(migrations))
		return err
	})
}

// tx runs fn in one transaction, committing when fn returns nil.
func (s *Store) tx(ctx context.Context, fn func(*sql.Tx) error) error {
	return s.txNodes(ctx, nil, fn)
}

// txNodes is tx for a transaction that changes the work (NodeWork) of
// the named nodes only; nil means it may change any node's.
func (s *Store) txNodes(ctx context.Context, nodes []string, fn func(*sql.Tx) error) error {
	defer s.work.wrote(nodes) // after the commit or rollback
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback()
		return err
	}
	return tx.Commit()
}

// RandomHex returns n random bytes as hex.
func RandomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

// Event is one entry of the timeline.
type Event struct {
	ID      int64     `json:"id"`
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"`   // Notice, Evicted, Requeued, Launched, ...
	Object  string    `json:"object"` // node/NAME, task/JOB/TASK, pool/NAME, job/NAME
	Reason  string    `json:"reason"`
	Message string    `json:"message,omitempty"`
}

// AddEvent records an event on its own.
func (s *Store) AddEvent(ctx context.Context, kind, object, reason, message string) error {
	return s.tx(ctx, func(tx *sql.Tx) error { return s.event(ctx, tx, kind, object, reason, message) })
}

func (s *Store) event(ctx context.Context, tx *sql.Tx, kind, object, reason, message string) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO events (time, kind, object, reason, message) VALUES (?, ?, ?, ?, ?)`,
		s.now().UnixNano(), kind, object, reason, message)
	return err
}

// EventFilter narrows ListEvents. Zero values match everything.
type EventFilter struct {
	Kind   string
	Object string // prefix match: "node/" or "task/job1/"
	// Of is one object, "KIND/NAME", and for a job its tasks, for a
	// service its replicas: what `spotml describe` shows. Unlike a prefix
	// it does not take in job/NAME2 or another job's tasks, and it is
	// answered from the events_object index.
	Of      string
	AfterID int64
	Limit   int
}

// ListEvents returns events oldest first.
func (s *Store) ListEvents(ctx context.Context, f EventFilter) ([]Event, error) {
	q := `SELECT id, time, kind, object, reason, message FROM events WHERE id > ?`
	args := []any{f.AfterID}
	if f.Kind != "" {
		q += ` AND kind = ?`
		args = append(args, f.Kind)
	}
	if f.Object != "" {
		// Not LIKE: SQLite's LIKE ignores case, and a prefix is exact.
		q += ` AND substr(object, 1, length(?)) = ?`
		args = append(args, f.Object, f.Object)
	}
	if f.Of != "" {
		// Ranges rather than substr, so that the index on object serves
		// them: "task/j/" <= object < "task/j0" is every task of job j.
		kind, name, _ := strings.Cut(f.Of, "/")
		switch kind {
		case "job":
			q += ` AND (object = ? OR (object >= ? AND object < ?))`
			args = append(args, f.Of, "task/"+name+"/", "task/"+name+"0")
		case "service":
			// replica/NAME-ID, where ID is all digits: replica/NAME-x-1 is
			// a replica of service NAME-x.
			p := "replica/" + name + "-"
			q += ` AND (object = ? OR (object > ? AND object < ? AND substr(object, length(?) + 1) NOT GLOB '*[^0-9]*'))`
			args = append(args, f.Of, p, "replica/"+name+".", p)
		default:
			q += ` AND object = ?`
			args = append(args, f.Of)
		}
	}
	if f.Limit > 0 {
		// The newest Limit events, still returned oldest first.
		q = `SELECT * FROM (` + q + ` ORDER BY id DESC LIMIT ?) ORDER BY id`
		args = append(args, f.Limit)
	} else {
		q += ` ORDER BY id`
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Event
	for rows.Next() {
		var e Event
		var t int64
		if err := rows.Scan(&e.ID, &t, &e.Kind, &e.Object, &e.Reason, &e.Message); err != nil {
			return nil, err
		}
		e.Time = fromNanos(t)
		out = append(out, e)
	}
	return out, rows.Err()
}

func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}
