package postgres_test

import (
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/spec"
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
	for _, q := range []string{
		`ALTER TABLE nodes ADD COLUMN pid BIGINT NOT NULL DEFAULT 0`,
		`ALTER TABLE nodes ADD COLUMN workdir TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE nodes DROP COLUMN provider_id`,
		`ALTER TABLE nodes DROP COLUMN host`,
		`UPDATE schema_version SET version = 6`,
		`INSERT INTO nodes (name, pool, priority, zone, instance_type, state, cpu, memory, gpu, price, ondemand_price, pid, workdir,
			created_at, state_at, heartbeat_at, idle_since, notice_deadline, reason, incarnation)
			VALUES ('spot-a-1', 'spot-a', 'spot', '', 'local-small', 'ready', 2, 0, 0, 0, 0, 42, '/data/nodes/spot-a-1', 1, 1, 0, 0, 0, '', 1)`,
		`INSERT INTO pools (name, spec, created_at, updated_at) VALUES ('spot-a', '{"apiVersion":"spotml/v1","kind":"Pool","metadata":{"name":"spot-a"},
			"spec":{"provider":"local","priority":"spot","instanceType":"local-small","max":2,"evictionRate":6,"notice":"15s","noticeFormat":"aws"}}', 1, 1)`,
		`INSERT INTO pools (name, spec, created_at, updated_at) VALUES ('od', '{"apiVersion":"spotml/v1","kind":"Pool","metadata":{"name":"od"},
			"spec":{"provider":"local","priority":"ondemand","instanceType":"local-small","max":2}}', 1, 1)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	st.Close()

	st, err = postgres.Open(t.Context(), dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	pools, err := st.ListPools(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(pools) != 2 {
		t.Fatalf("%d pools after migrating, want 2", len(pools))
	}
	want := spec.LocalPool{EvictionRate: 6, Notice: spec.Duration{Duration: 15 * time.Second}, NoticeFormat: "aws"}
	if got := pools[1].Spec.Spec.Local; pools[1].Spec.Metadata.Name != "spot-a" || got == nil || *got != want {
		t.Errorf("spot-a's market after migrating: %+v, want %+v", got, want)
	}
	if got := pools[0].Spec.Spec.Local; got != nil {
		t.Errorf("od's market after migrating: %+v, want none", got)
	}
	n, err := st.GetNode(t.Context(), "spot-a-1")
	if err != nil {
		t.Fatal(err)
	}
	if n.ProviderID != "/data/nodes/spot-a-1" {
		t.Errorf("node's provider ID after migrating: %q, want its work directory", n.ProviderID)
	}
}

// TestDollars: placeholders become $n, except inside quotes.
func TestDollars(t *testing.T) {
	got := sqlstore.Dollars(`SELECT '?', "a?" FROM t WHERE a = ? AND b ~ '[^?]' AND c IN (?, ?)`)
	want := `SELECT '?', "a?" FROM t WHERE a = $1 AND b ~ '[^?]' AND c IN ($2, $3)`
	if got != want {
		t.Errorf("Dollars = %s, want %s", got, want)
	}
}
