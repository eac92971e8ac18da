package storetest

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/store/postgres"
	"github.com/spotml/spotml/internal/store/postgres/pgtest"
	"github.com/spotml/spotml/internal/store/sqlite"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// OpenBackend opens an empty store on a backend for a benchmark: a SQLite
// file ("sqlite"), or a fresh database of the cluster pg ("postgres").
func OpenBackend(tb testing.TB, backend string, pg *pgtest.Cluster) *sqlstore.Store {
	tb.Helper()
	var st *sqlstore.Store
	var err error
	switch backend {
	case "sqlite":
		st, err = sqlite.Open(tb.Context(), filepath.Join(tb.TempDir(), "spotml.db"), time.Now)
	case "postgres":
		st, err = postgres.Open(tb.Context(), pg.DB(tb), time.Now)
	default:
		tb.Fatalf("no backend %q", backend)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return st
}
