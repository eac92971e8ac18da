// Package sqlite opens the store over a SQLite file, through the pure-Go
// modernc.org/sqlite driver: spotml's default, with nothing to install.
package sqlite

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/spotml/spotml/internal/store/sqlstore"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver
)

// Dialect is SQLite's: ? placeholders, one writer (so no row locks and no
// transaction to run again), GLOB for patterns.
var Dialect = sqlstore.Dialect{
	Name:         "sqlite",
	NotAllDigits: func(expr string) string { return expr + ` GLOB '*[^0-9]*'` },
	PrepareReads: true,
}

// Open opens (creating if needed) the database at path and migrates it.
// now is the store's clock (nil: time.Now).
func Open(ctx context.Context, path string, now func() time.Time) (*sqlstore.Store, error) {
	dsn := "file:" + path + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(FULL)&_pragma=foreign_keys(1)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// One connection: SQLite has one writer anyway, and this rules out
	// SQLITE_BUSY between our own connections.
	db.SetMaxOpenConns(1)
	// Heartbeats read from read-only connections (see sqlstore.Store).
	rdb, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=query_only(1)")
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s for reading: %w", path, err)
	}
	rdb.SetMaxOpenConns(4)
	s, err := sqlstore.New(ctx, db, rdb, Dialect, now)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return s, nil
}
