package postgres_test

import (
	"os"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/store/postgres"
	"github.com/spotml/spotml/internal/store/postgres/pgtest"
	"github.com/spotml/spotml/internal/store/sqlstore"
	"github.com/spotml/spotml/internal/store/storetest"
)

var cluster *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m, &cluster)) }

func pgDB(t *testing.T) storetest.Opener {
	dsn := cluster.DB(t)
	return func(now func() time.Time) (*sqlstore.Store, error) {
		return postgres.Open(t.Context(), dsn, now)
	}
}

// TestPostgres runs the conformance suite against PostgreSQL.
func TestPostgres(t *testing.T) {
	storetest.Run(t, pgDB)
}
