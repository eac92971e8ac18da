// Package postgres opens the store over PostgreSQL, through pgx: for a
// control plane whose state must outlive its machine (a managed database,
// several instances).
//
// Every write transaction is SERIALIZABLE and is run again when PostgreSQL
// reports a serialization failure (40001) or a deadlock (40P01); the rows a
// transaction reads and then changes (a node, a task, a service) are read
// FOR UPDATE, so that two writers of the same row wait for each other
// instead of one of them failing. New rows get their IDs from RETURNING,
// and upserts are INSERT … ON CONFLICT.
package postgres

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// Dialect is PostgreSQL's.
var Dialect = sqlstore.Dialect{
	Name:      "postgres",
	Rebind:    sqlstore.Dollars,
	Isolation: sql.LevelSerializable,
	Retryable: Retryable,
	ForUpdate: " FOR UPDATE",
	ForShare:  " FOR SHARE",
	// A follower's lease try gives up after this rather than queue
	// behind a paused leader's open transaction (see Open's
	// idle_in_transaction_session_timeout).
	LeaseLockTimeout: `SET LOCAL lock_timeout = '500ms'`,
	NowMillis:        `(extract(epoch from clock_timestamp()) * 1000)::bigint`,
	Arrays:           true,
	Listen:           listen,
	Notify:           `SELECT pg_notify(?, '')`,
	NotAllDigits:     func(expr string) string { return expr + ` ~ '[^0-9]'` },
	// Any fixed key: instances started together migrate one at a time.
	LockMigrations: `SELECT pg_advisory_xact_lock(7316021195)`,
}

// MaxConns is the most connections one store opens.
const MaxConns = 16

// IsDSN reports whether a --store value names a PostgreSQL database.
func IsDSN(dsn string) bool {
	return strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://")
}

// Open connects to the database at dsn (postgres://user:pass@host/db?…,
// any form pgx reads) and migrates it. now is the store's clock (nil:
// time.Now).
func Open(ctx context.Context, dsn string, now func() time.Time) (*sqlstore.Store, error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", redact(dsn), err)
	}
	// A leader paused in the middle of a transaction (SIGSTOP, a long GC
	// pause, a partition) holds its rows, the lease row among them, until
	// PostgreSQL ends the session: it does after this much idle time, so
	// that a successor can take over. No transaction of spotml's waits on
	// its client for anywhere near as long.
	if _, ok := cfg.RuntimeParams["idle_in_transaction_session_timeout"]; !ok {
		cfg.RuntimeParams["idle_in_transaction_session_timeout"] = "5s"
	}
	db := stdlib.OpenDB(*cfg)
	db.SetMaxOpenConns(MaxConns)
	db.SetMaxIdleConns(MaxConns)
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("store %s: %w", redact(dsn), err)
	}
	s, err := sqlstore.New(ctx, db, nil, Dialect, now)
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", redact(dsn), err)
	}
	return s, nil
}

// Retryable reports a serialization failure or a deadlock: the transaction
// was rolled back and may be run again from the start.
func Retryable(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && (pe.Code == "40001" || pe.Code == "40P01")
}

// redact drops the password from a DSN for messages.
func redact(dsn string) string {
	cfg, err := pgconn.ParseConfig(dsn)
	if err != nil || cfg.Password == "" {
		if i := strings.Index(dsn, "@"); i >= 0 {
			if j := strings.Index(dsn, "://"); j >= 0 && j < i {
				return dsn[:j+3] + "…" + dsn[i:]
			}
		}
		return dsn
	}
	return strings.Replace(dsn, ":"+cfg.Password+"@", ":…@", 1)
}

// listen holds one connection of db and calls notify on every
// notification of channel until ctx ends or the connection fails.
func listen(ctx context.Context, db *sql.DB, channel string, notify func()) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		c := dc.(*stdlib.Conn).Conn()
		if _, err := c.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
			return err
		}
		for {
			if _, err := c.WaitForNotification(ctx); err != nil {
				return err
			}
			notify()
		}
	})
}
