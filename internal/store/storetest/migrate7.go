package storetest

import (
	"database/sql"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// DowngradeTo6 turns a fresh store's database back into what spotml left
// at schema version 6, holding a local spot pool with its market settings
// at the top of its spec, an on-demand pool, and a node with a process
// and a work directory. intType is the dialect's integer column type.
// CheckMigrated7 then checks what migration 7 made of it.
func DowngradeTo6(t *testing.T, db *sql.DB, intType string) {
	t.Helper()
	for _, q := range []string{
		`ALTER TABLE nodes ADD COLUMN pid ` + intType + ` NOT NULL DEFAULT 0`,
		`ALTER TABLE nodes ADD COLUMN workdir TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE nodes DROP COLUMN provider_id`,
		`ALTER TABLE nodes DROP COLUMN host`,
		`ALTER TABLE nodes DROP COLUMN notice_at`, // migration 10 undone
		// migration 11 undone (8 and 9 create only what is missing)
		`ALTER TABLE gateway_stats DROP COLUMN in_flight`,
		`ALTER TABLE gateway_stats DROP COLUMN in_flight_panic`,
		`ALTER TABLE gateway_stats DROP COLUMN in_flight_max`,
		`ALTER TABLE service_samples DROP COLUMN in_flight`,
		`ALTER TABLE service_samples DROP COLUMN in_flight_max`,
		`ALTER TABLE nodes DROP COLUMN at_risk`, // migration 12 undone
		`DROP INDEX batch_items_sent`,           // migration 13 undone
		`ALTER TABLE batch_items DROP COLUMN sent_at`,
		`ALTER TABLE attempts DROP COLUMN first_progress_at`, // migration 15 undone
		`ALTER TABLE batches DROP COLUMN listing`,            // migration 18 undone
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
}

// CheckMigrated7 checks a store opened over DowngradeTo6's database: the
// spot pool's market settings are in spec.local, the on-demand pool has
// none, and the node's work directory is its provider ID.
func CheckMigrated7(t *testing.T, st *sqlstore.Store) {
	t.Helper()
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
