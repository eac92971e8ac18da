package postgres_test

import (
	"os"
	"strings"
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

// TestNewerSchema: a database that a newer spotml migrated is refused, with
// the fix, rather than run over a schema this one does not know.
func TestNewerSchema(t *testing.T) {
	dsn := cluster.DB(t)
	st, err := postgres.Open(t.Context(), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.DB().Exec(`UPDATE schema_version SET version = 99`); err != nil {
		t.Fatal(err)
	}
	st.Close()
	if st, err := postgres.Open(t.Context(), dsn, nil); err == nil || !strings.Contains(err.Error(), "upgrade spotml") {
		if st != nil {
			st.Close()
		}
		t.Errorf("open of a newer schema: %v, want an error that says to upgrade", err)
	}
}

// TestMigrate7 opens a database as spotml left it at schema version 6 with
// a local spot pool's market settings at the top of its spec and a node
// with a work directory: migration 7 moves the settings into spec.local
// and the work directory into the provider ID, as on SQLite.
func TestMigrate7(t *testing.T) {
	dsn := cluster.DB(t)
	st, err := postgres.Open(t.Context(), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	db := st.DB()
	storetest.DowngradeTo6(t, db, "BIGINT")
	st.Close()

	st, err = postgres.Open(t.Context(), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	storetest.CheckMigrated7(t, st)
}

// TestDollars: placeholders become $n, except inside quotes.
func TestDollars(t *testing.T) {
	got := sqlstore.Dollars(`SELECT '?', "a?" FROM t WHERE a = ? AND b ~ '[^?]' AND c IN (?, ?)`)
	want := `SELECT '?', "a?" FROM t WHERE a = $1 AND b ~ '[^?]' AND c IN ($2, $3)`
	if got != want {
		t.Errorf("Dollars = %s, want %s", got, want)
	}
}
