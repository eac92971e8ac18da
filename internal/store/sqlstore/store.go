// Package sqlstore is the store over a SQL database through database/sql:
// every query, transaction and in-memory cache of spotml's state, written
// once for the databases it runs on (SQLite, PostgreSQL). What differs
// between them (placeholders, isolation, which errors mean "run the
// transaction again", schema types) is a Dialect, given by the package that
// opens the database (store/sqlite, store/postgres); this package imports
// no driver.
//
// Every state change is one transaction that also records its event, so a
// control plane killed at any point restarts over a consistent state.
//
// The caches (heartbeats, credentials, node work; see liveness.go and
// work.go) assume that this Store is the only writer of the database: one
// control plane per store.
package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/spotml/spotml/internal/store"
)

// Dialect is what one SQL database needs done its own way.
type Dialect struct {
	// Name picks each migration's SQL: "sqlite" or "postgres".
	Name string
	// Rebind turns a query written with ? placeholders into the
	// database's own; nil keeps ?.
	Rebind func(query string) string
	// Isolation is the level of every write transaction.
	Isolation sql.IsolationLevel
	// Retryable says whether a transaction that failed with err may be
	// run again from the start (a serialization failure, a deadlock).
	// nil: none is.
	Retryable func(err error) bool
	// ForUpdate ends a SELECT whose rows the transaction goes on to change
	// (" FOR UPDATE"): on PostgreSQL two transactions that read and then
	// write the same node wait for each other instead of one failing to
	// serialize. SQLite has one writer and no row locks: "".
	ForUpdate string
	// ForShare ends the SELECT that checks a write's fence (" FOR SHARE"):
	// the lease row stays as read until the write commits, so a takeover
	// waits for it rather than overlapping it. SQLite: "" (one writer).
	ForShare string
	// NowMillis is an expression for the database's clock in Unix
	// milliseconds, read afresh (not the transaction's start): leases
	// expire by it, so the instances' clocks never decide who leads.
	NowMillis string
	// LeaseLockTimeout, when set, is run first in a lease transaction, so
	// that a follower does not wait behind a paused leader's open write
	// (which holds the lease row) but tries again at its next beat.
	LeaseLockTimeout string
	// NotAllDigits is a condition that holds when the text expr has a
	// character that is not an ASCII digit.
	NotAllDigits func(expr string) string
	// LockMigrations, when set, is run first in the migration transaction,
	// so that control planes started together over one database migrate it
	// one after the other.
	LockMigrations string
	// Listen, when set, calls notify on each notification of channel
	// (LISTEN) over a connection of db of its own, until ctx ends or the
	// connection fails. nil: the database has no notifications (SQLite),
	// and readers poll.
	Listen func(ctx context.Context, db *sql.DB, channel string, notify func()) error
	// Notify is the statement that notifies the channel given as its
	// one parameter (when Listen is set).
	Notify string
	// Arrays: the database takes Go slices as array parameters and has
	// unnest, so that a plan of thousands of assignments is one statement
	// (one round trip) rather than two per assignment.
	Arrays bool
	// PrepareReads keeps a prepared statement per query on the read pool
	// (the driver does not cache them itself).
	PrepareReads bool
}

// Store is spotml's state in one SQL database.
type Store struct {
	db *handle
	// rdb is a pool for what agents' heartbeats read. On SQLite, read-only
	// connections: in WAL mode they read the last commit while db writes,
	// so a heartbeat is not held up behind a long assign or report
	// transaction. Elsewhere it is db.
	rdb *handle
	d   Dialect
	// rstmts are rdb's statements, prepared once each (readQuery): a
	// heartbeat's reads are small, and parsing their SQL cost more than
	// running it.
	rstmts sync.Map // query -> *sql.Stmt
	now    func() time.Time
	live   liveness
	work   workCache

	nodeRows atomic.Int64 // node rows the list queries returned, for Stats
	retries  atomic.Int64 // transactions run again (Dialect.Retryable)
	fenced   atomic.Int64 // fenced transactions refused (ErrFenced)
	leader   atomic.Int64 // fenced transactions committed
}

// New makes a store over db and migrates its schema. rdb is where
// heartbeats read (see Store.rdb); nil means db. The store closes both.
// now is the clock (nil: time.Now).
func New(ctx context.Context, db, rdb *sql.DB, d Dialect, now func() time.Time) (*Store, error) {
	if now == nil {
		now = time.Now
	}
	if d.Rebind == nil {
		d.Rebind = func(q string) string { return q }
	} else {
		d.Rebind = cached(d.Rebind)
	}
	if d.NowMillis == "" {
		d.NowMillis = sqliteNowMillis
	}
	if d.Retryable == nil {
		d.Retryable = func(error) bool { return false }
	}
	s := &Store{db: &handle{db, d.Rebind}, d: d, now: now}
	s.rdb = s.db
	if rdb != nil {
		s.rdb = &handle{rdb, d.Rebind}
	}
	if err := s.migrate(ctx); err != nil {
		return nil, errors.Join(err, s.closeDBs())
	}
	return s, nil
}

// Close writes the heartbeats kept in memory and closes the database.
func (s *Store) Close() error {
	errs := []error{s.FlushHeartbeats(context.Background())}
	s.rstmts.Range(func(_, st any) bool {
		errs = append(errs, st.(*sql.Stmt).Close())
		return true
	})
	return errors.Join(append(errs, s.closeDBs())...)
}

func (s *Store) closeDBs() error {
	if s.rdb != s.db {
		return errors.Join(s.rdb.Close(), s.db.Close())
	}
	return s.db.Close()
}

// DB is the database under the store, for its backend's own tests and
// tools (a schema check, a backup): spotml itself goes through the Store.
func (s *Store) DB() *sql.DB { return s.db.DB }

// readQuery runs a query on db; on the read pool, through a statement
// prepared once where the dialect asks for it.
func (s *Store) readQuery(ctx context.Context, db *handle, query string, args ...any) (*sql.Rows, error) {
	if db != s.rdb || !s.d.PrepareReads {
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

// Stats returns the store's counters.
func (s *Store) Stats() store.Stats {
	return store.Stats{NodeRowsRead: s.nodeRows.Load(), Retries: s.retries.Load(), LeaderWrites: s.leader.Load(), FencedWrites: s.fenced.Load()}
}

// forUpdateOf is Dialect.ForUpdate for a join that changes rows of one of
// its tables only (named by its alias): the others stay unlocked.
func (s *Store) forUpdateOf(alias string) string {
	if s.d.ForUpdate == "" {
		return ""
	}
	return s.d.ForUpdate + " OF " + alias
}

// handle is a database whose queries are written with ? placeholders.
type handle struct {
	*sql.DB
	rebind func(string) string
}

func (h *handle) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return h.DB.ExecContext(ctx, h.rebind(q), args...)
}

func (h *handle) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return h.DB.QueryContext(ctx, h.rebind(q), args...)
}

func (h *handle) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	return h.DB.QueryRowContext(ctx, h.rebind(q), args...)
}

func (h *handle) PrepareContext(ctx context.Context, q string) (*sql.Stmt, error) {
	return h.DB.PrepareContext(ctx, h.rebind(q))
}

// txn is a transaction whose queries are written with ? placeholders.
type txn struct {
	*sql.Tx
	rebind func(string) string
}

func (t *txn) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return t.Tx.ExecContext(ctx, t.rebind(q), args...)
}

func (t *txn) QueryContext(ctx context.Context, q string, args ...any) (*sql.Rows, error) {
	return t.Tx.QueryContext(ctx, t.rebind(q), args...)
}

func (t *txn) QueryRowContext(ctx context.Context, q string, args ...any) *sql.Row {
	return t.Tx.QueryRowContext(ctx, t.rebind(q), args...)
}

func (t *txn) PrepareContext(ctx context.Context, q string) (*sql.Stmt, error) {
	return t.Tx.PrepareContext(ctx, t.rebind(q))
}

// cached remembers rebind's answers: the store's queries are a few hundred
// strings, each rebound on every call.
func cached(rebind func(string) string) func(string) string {
	var m sync.Map
	return func(q string) string {
		if r, ok := m.Load(q); ok {
			return r.(string)
		}
		r := rebind(q)
		m.Store(q, r)
		return r
	}
}

// Dollars rebinds ? placeholders as $1, $2, … (PostgreSQL). A ? inside a
// quoted string or identifier is kept.
func Dollars(q string) string {
	var b strings.Builder
	n := 0
	var quote byte
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			}
		case c == '\'' || c == '"':
			quote = c
		case c == '?':
			n++
			fmt.Fprintf(&b, "$%d", n)
			continue
		}
		b.WriteByte(c)
	}
	return b.String()
}

func (s *Store) migrate(ctx context.Context) error {
	if _, err := s.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	return s.tx(ctx, func(tx *txn) error {
		if s.d.LockMigrations != "" {
			if _, err := tx.ExecContext(ctx, s.d.LockMigrations); err != nil {
				return fmt.Errorf("migrate: %w", err)
			}
		}
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
			q, err := migrations[i].sql(s.d.Name)
			if err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("migration %d: %w", i+1, err)
			}
		}
		_, err = tx.ExecContext(ctx, `UPDATE schema_version SET version = ?`, len(migrations))
		return err
	})
}

// SchemaVersion is the number of migrations this store applies: the schema
// version of a database it opened.
func SchemaVersion() int { return len(migrations) }

// maxTries bounds how often a transaction is run again after a retryable
// failure (Dialect.Retryable) before its error is returned.
const maxTries = 20

// tx runs fn in one transaction, committing when fn returns nil.
func (s *Store) tx(ctx context.Context, fn func(*txn) error) error {
	return s.txNodes(ctx, nil, fn)
}

// txNodes is tx for a transaction that changes the work (NodeWork) of
// the named nodes only; nil means it may change any node's.
//
// A transaction that fails with a retryable error (a serialization
// failure or deadlock on PostgreSQL) is run again from the start, so fn
// must set everything it reports afresh on each run.
func (s *Store) txNodes(ctx context.Context, nodes []string, fn func(*txn) error) error {
	return s.txAt(ctx, nodes, s.d.Isolation, fn)
}

// txQueue is a transaction that takes rows off a queue with
// skipLocked: where the database has row locks it runs at READ COMMITTED,
// so that takers racing for the same queue each lock other rows and go on,
// where SERIALIZABLE's predicate checks would fail all but one of them
// (six workers leasing from one batch at once on a loaded machine ran out
// of retries). Its statements must lock every row they decide on.
func (s *Store) txQueue(ctx context.Context, fn func(*txn) error) error {
	iso := s.d.Isolation
	if s.d.ForUpdate != "" {
		iso = sql.LevelReadCommitted
	}
	return s.txAt(ctx, noNodes, iso, fn)
}

// skipLocked ends a queue's SELECT of rows to take (alias names their
// table): rows another transaction holds are passed over, not waited for.
// SQLite (one writer) needs nothing.
func (s *Store) skipLocked(alias string) string {
	if s.d.ForUpdate == "" {
		return ""
	}
	return s.forUpdateOf(alias) + " SKIP LOCKED"
}

func (s *Store) txAt(ctx context.Context, nodes []string, iso sql.IsolationLevel, fn func(*txn) error) error {
	defer s.work.wrote(nodes) // after the commit or rollback
	for try := 1; ; try++ {
		err := s.txOnce(ctx, iso, fn)
		if err == nil || try == maxTries || !s.d.Retryable(err) {
			return err
		}
		s.retries.Add(1)
		// A short random wait, growing with the tries, so that the
		// transactions that collided do not collide again.
		wait := time.Duration(rand.Int64N(int64(time.Millisecond) << min(try, 6)))
		select {
		case <-ctx.Done():
			return errors.Join(err, ctx.Err())
		case <-time.After(wait):
		}
	}
}

func (s *Store) txOnce(ctx context.Context, iso sql.IsolationLevel, fn func(*txn) error) error {
	var opts *sql.TxOptions
	if iso != sql.LevelDefault {
		opts = &sql.TxOptions{Isolation: iso}
	}
	tx, err := s.db.BeginTx(ctx, opts)
	if err != nil {
		return err
	}
	t := &txn{tx, s.d.Rebind}
	f, fenced := FenceFrom(ctx)
	if fenced {
		if err := s.checkFence(ctx, t, f); err != nil {
			tx.Rollback()
			return err
		}
	}
	if err := fn(t); err != nil {
		tx.Rollback()
		return err
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if fenced {
		s.leader.Add(1)
	}
	return nil
}

// AddEvent records an event on its own.
func (s *Store) AddEvent(ctx context.Context, kind, object, reason, message string) error {
	return s.tx(ctx, func(tx *txn) error { return s.event(ctx, tx, kind, object, reason, message) })
}

func (s *Store) event(ctx context.Context, tx *txn, kind, object, reason, message string) error {
	_, err := tx.ExecContext(ctx, `INSERT INTO events (time, kind, object, reason, message) VALUES (?, ?, ?, ?, ?)`,
		s.now().UnixNano(), kind, object, reason, message)
	return err
}

// ListEvents returns events oldest first.
func (s *Store) ListEvents(ctx context.Context, f store.EventFilter) ([]store.Event, error) {
	q := `SELECT id, time, kind, object, reason, message FROM events WHERE id > ?`
	args := []any{f.AfterID}
	if f.Kind != "" {
		q += ` AND kind = ?`
		args = append(args, f.Kind)
	}
	if f.Object != "" {
		// Not LIKE: SQLite's LIKE ignores case, and a prefix is exact.
		q += ` AND substr(object, 1, ?) = ?`
		args = append(args, utf8.RuneCountInString(f.Object), f.Object)
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
			q += ` AND (object = ? OR (object > ? AND object < ? AND NOT (` + s.d.NotAllDigits(`substr(object, ?)`) + `)))`
			args = append(args, f.Of, p, "replica/"+name+".", utf8.RuneCountInString(p)+1)
		default:
			q += ` AND object = ?`
			args = append(args, f.Of)
		}
	}
	if f.Limit > 0 {
		// The newest Limit events, still returned oldest first.
		q = `SELECT * FROM (` + q + ` ORDER BY id DESC LIMIT ?) AS newest ORDER BY id`
		args = append(args, f.Limit)
	} else {
		q += ` ORDER BY id`
	}
	rows, err := s.db.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []store.Event
	for rows.Next() {
		var e store.Event
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
