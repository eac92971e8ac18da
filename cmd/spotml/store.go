package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/store/postgres"
	"github.com/spotml/spotml/internal/store/sqlite"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// storeUsage is the --store flag's help.
const storeUsage = "the store: postgres://USER:PASSWORD@HOST:5432/DB?sslmode=… for PostgreSQL, sqlite:PATH for a SQLite file; default: the SQLite file spotml.db in --data"

// openStore opens the store that --store names; "" is the SQLite file in
// the data directory. It returns the store's online backups too, nil for
// PostgreSQL (pg_dump backs it up).
func openStore(ctx context.Context, dsn, data string) (*sqlstore.Store, server.Backuper, error) {
	path := filepath.Join(data, storeFile)
	switch {
	case postgres.IsDSN(dsn):
		st, err := postgres.Open(ctx, dsn, time.Now)
		if err != nil {
			return nil, nil, fmt.Errorf("--store: %w; check that PostgreSQL runs there and that the URL's host, port, user, password and database are right", err)
		}
		return st, nil, nil
	case strings.HasPrefix(dsn, "sqlite:"):
		path = strings.TrimPrefix(strings.TrimPrefix(dsn, "sqlite:"), "//")
		if path == "" {
			return nil, nil, fmt.Errorf("--store %q: no file after sqlite:; use sqlite:/PATH/TO/spotml.db", dsn)
		}
	case dsn != "":
		return nil, nil, fmt.Errorf("--store %q: not a store; use postgres://USER:PASSWORD@HOST:5432/DB for PostgreSQL, sqlite:PATH for a SQLite file, or leave --store out for spotml.db in --data", redactDSN(dsn))
	}
	st, err := sqlite.Open(ctx, path, time.Now)
	if err != nil {
		return nil, nil, err
	}
	return st, sqlite.NewBackups(st), nil
}

// redactDSN hides what looks like a password in a DSN that is echoed back.
func redactDSN(dsn string) string {
	scheme, rest, ok := strings.Cut(dsn, "://")
	if !ok {
		return dsn
	}
	userinfo, host, ok := strings.Cut(rest, "@")
	if !ok {
		return dsn
	}
	if u, _, ok := strings.Cut(userinfo, ":"); ok {
		return scheme + "://" + u + ":…@" + host
	}
	return dsn
}
