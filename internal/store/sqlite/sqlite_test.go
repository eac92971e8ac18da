package sqlite_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
	"github.com/spotml/spotml/internal/store/sqlstore"
	"github.com/spotml/spotml/internal/store/storetest"
)

func sqliteDB(t *testing.T) storetest.Opener {
	path := filepath.Join(t.TempDir(), "spotml.db")
	return func(now func() time.Time) (*sqlstore.Store, error) {
		return sqlite.Open(t.Context(), path, now)
	}
}

func TestSQLite(t *testing.T) {
	storetest.Run(t, sqliteDB)
}

// rawCount counts rows of a table of a closed store's file.
func rawCount(t *testing.T, path, table string) int {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM ` + table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestSQLiteSchema checks what only the SQLite file shows: one schema
// version row however often the store is opened, and rows of a deleted job
// gone from every table (foreign keys are on).
func TestSQLiteSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spotml.db")
	h := storetest.NewHarness(t, func(now func() time.Time) (*sqlstore.Store, error) { return sqlite.Open(t.Context(), path, now) })
	h.Reopen()
	h.Apply(storetest.PoolCPU + "---" + storetest.JobYAML("gone", 3, 0))
	h.Node("n1", true)
	h.Assign(1, store.Assignment{TaskID: h.Task("gone", "task-0").ID, Node: "n1"})
	if err := h.St.DeleteJob(h.Ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	h.Reopen()
	h.St.Close()
	for table, want := range map[string]int{"schema_version": 1, "jobs": 0, "tasks": 0, "attempts": 0, "nodes": 1} {
		if got := rawCount(t, path, table); got != want {
			t.Errorf("%s has %d rows, want %d", table, got, want)
		}
	}
}

// TestSQLiteNewerSchema checks that an older spotml refuses a database a
// newer one has migrated, rather than running over a schema it does not know.
func TestSQLiteNewerSchema(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spotml.db")
	st, err := sqlite.Open(t.Context(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE schema_version SET version = 99`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if st, err := sqlite.Open(t.Context(), path, nil); err == nil || !strings.Contains(err.Error(), "upgrade spotml") {
		if st != nil {
			st.Close()
		}
		t.Errorf("open of a newer schema: %v, want an error that says to upgrade", err)
	}
}

// TestSQLiteMigrateFrom2 opens a database as spotml left it at schema
// version 2: its gateway reports stay, with no latencies, samples can be
// recorded (3), and tasks have no progress (4).
func TestSQLiteMigrateFrom2(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spotml.db")
	st, err := sqlite.Open(t.Context(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Apply(t.Context(), nil, nil, store.ServiceDoc{Name: "m", Spec: []byte(`{}`), RolloutKey: "k", Initial: 1}); err != nil {
		t.Fatal(err)
	}
	st.Close()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{
		`DROP TABLE service_samples`,
		`ALTER TABLE gateway_stats DROP COLUMN p50`,
		`ALTER TABLE gateway_stats DROP COLUMN p99`,
		`ALTER TABLE gateway_stats DROP COLUMN requests`,
		`ALTER TABLE gateway_stats DROP COLUMN errors`,
		`ALTER TABLE gateway_stats DROP COLUMN in_flight`, // migration 11 undone
		`ALTER TABLE gateway_stats DROP COLUMN in_flight_panic`,
		`ALTER TABLE gateway_stats DROP COLUMN in_flight_max`,
		`ALTER TABLE tasks DROP COLUMN progress`,
		`ALTER TABLE tasks DROP COLUMN progress_message`,
		`ALTER TABLE tasks DROP COLUMN progress_at`,
		`ALTER TABLE nodes ADD COLUMN pid INTEGER NOT NULL DEFAULT 0`, // migration 7 undone
		`ALTER TABLE nodes ADD COLUMN workdir TEXT NOT NULL DEFAULT ''`,
		`ALTER TABLE nodes DROP COLUMN provider_id`,
		`ALTER TABLE nodes DROP COLUMN host`,
		`ALTER TABLE nodes DROP COLUMN notice_at`, // migration 10 undone
		`ALTER TABLE nodes DROP COLUMN at_risk`,   // migration 12 undone
		`DROP INDEX batch_items_sent`,             // migration 13 undone
		`ALTER TABLE batch_items DROP COLUMN sent_at`,
		`ALTER TABLE attempts DROP COLUMN first_progress_at`, // migration 15 undone
		`ALTER TABLE batches DROP COLUMN listing`,            // migration 18 undone
		`UPDATE schema_version SET version = 2`,
		`INSERT INTO gateway_stats (gateway, service, qps, updated_at) VALUES ('g', 'm', 2.5, 9e18)`,
	} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	db.Close()

	st, err = sqlite.Open(t.Context(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	got, err := st.ServiceTraffic(t.Context(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]store.GatewayStat{"m": {QPS: 2.5, Gateways: 1}}; got["m"] != want["m"] || len(got) != 1 {
		t.Errorf("ServiceTraffic after migrating = %+v, want %+v", got, want)
	}
	if err := st.AddServiceSamples(t.Context(), map[string]store.ServiceSample{"m": {QPS: 2.5}}); err != nil {
		t.Fatal(err)
	}
	if s, err := st.ServiceSamples(t.Context(), "m", time.Time{}); err != nil || len(s) != 1 {
		t.Errorf("samples after migrating: %+v, %v", s, err)
	}
}

// TestSQLiteSecretsHashed: no secret the store hands out is in the
// database file, in plain text or hex-decoded; an older store's plain-text
// bootstrap secret is replaced by its hash on first use.
func TestSQLiteSecretsHashed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spotml.db")
	h := storetest.NewHarness(t, func(now func() time.Time) (*sqlstore.Store, error) { return sqlite.Open(t.Context(), path, now) })
	h.Apply(storetest.PoolCPU)
	h.Node("n1", true)
	cred, err := h.St.IssueNodeCredential(h.Ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	tok, _, err := h.St.CreateAPIToken(h.Ctx, "viewer1", store.RoleViewer)
	if err != nil {
		t.Fatal(err)
	}
	admin, _ := h.St.EnsureSecret(h.Ctx, "token", "")
	join, _ := h.St.EnsureSecret(h.Ctx, "join-token", "")
	h.St.Close()
	// An older spotml kept its join token in plain text.
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`UPDATE meta SET value = 'legacy-plain-join' WHERE key = 'join-token'`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	h.St = h.MustOpen()
	if got, _ := h.St.EnsureSecret(h.Ctx, "join-token", ""); got != "legacy-plain-join" {
		t.Errorf("legacy secret = %q, want it kept once", got)
	}
	if got, _ := h.St.EnsureSecret(h.Ctx, "join-token", "legacy-plain-join"); got != "legacy-plain-join" {
		t.Errorf("legacy secret after hashing = %q", got)
	}
	h.St.Close()
	h.St = h.MustOpen() // for the harness's cleanup
	raw := readAll(t, path)
	for name, secret := range map[string]string{"node credential": cred, "API token": tok, "admin token": admin,
		"join token": join, "legacy join token": "legacy-plain-join"} {
		for _, form := range []string{secret, strings.TrimPrefix(strings.TrimPrefix(secret, store.NodeCredentialPrefix), store.APITokenPrefix)} {
			if strings.Contains(raw, form) {
				t.Errorf("the %s %q is in the database file", name, form)
			}
		}
	}
	if !strings.Contains(raw, store.HashSecret(tok)) {
		t.Errorf("the API token's hash is not in the database file (is the check reading the right files?)")
	}
}

// readAll returns the database file and its WAL as one string.
func readAll(t *testing.T, path string) string {
	t.Helper()
	var b []byte
	for _, p := range []string{path, path + "-wal"} {
		d, err := os.ReadFile(p)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		b = append(b, d...)
	}
	return string(b)
}

// BenchmarkCredentialNode is what every agent call adds: one lookup of
// its credential's hash, joined with its node (1,000 nodes stored).
func BenchmarkCredentialNode(b *testing.B) {
	st, err := sqlite.Open(b.Context(), filepath.Join(b.TempDir(), "spotml.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	var creds []string
	for i := range 1000 {
		n := store.Node{Name: fmt.Sprintf("n%04d", i), Pool: "cpu", Priority: "spot", InstanceType: "local-small"}
		if err := st.CreateNode(b.Context(), n); err != nil {
			b.Fatal(err)
		}
		c, err := st.IssueNodeCredential(b.Context(), n.Name)
		if err != nil {
			b.Fatal(err)
		}
		creds = append(creds, c)
	}
	b.ResetTimer()
	for i := range b.N {
		if _, err := st.CredentialNode(b.Context(), creds[i%len(creds)]); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkGetNode is a reference for BenchmarkCredentialNode: the
// simplest read by primary key, on the same 1,000 nodes.
func BenchmarkGetNode(b *testing.B) {
	st, err := sqlite.Open(b.Context(), filepath.Join(b.TempDir(), "spotml.db"), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	for i := range 1000 {
		n := store.Node{Name: fmt.Sprintf("n%04d", i), Pool: "cpu", Priority: "spot", InstanceType: "local-small"}
		if err := st.CreateNode(b.Context(), n); err != nil {
			b.Fatal(err)
		}
	}
	b.ResetTimer()
	for i := range b.N {
		if _, err := st.GetNode(b.Context(), fmt.Sprintf("n%04d", i%1000)); err != nil {
			b.Fatal(err)
		}
	}
}

// TestMigrateMarketSettings: a local spot pool stored before migration 7,
// with its market settings directly under spec, keeps them in spec.local;
// other pools are left as they were.
func TestMigrateMarketSettings(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spotml.db")
	st, err := sqlite.Open(t.Context(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	storetest.DowngradeTo6(t, db, "INTEGER")
	db.Close()

	st, err = sqlite.Open(t.Context(), path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	storetest.CheckMigrated7(t, st)
}

// TestHeartbeatWhileWriterBusy: a heartbeat of a known node is answered
// while another connection holds the database's write lock (as a big
// assign transaction does). A heartbeat that is its own transaction waits
// for the lock and misses its deadline.
func TestHeartbeatWhileWriterBusy(t *testing.T) {
	path := filepath.Join(t.TempDir(), "spotml.db")
	h := storetest.NewHarness(t, func(now func() time.Time) (*sqlstore.Store, error) { return sqlite.Open(t.Context(), path, now) })
	h.Apply(storetest.PoolCPU)
	h.Node("n1", true)
	h.Node("n2", true)

	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(t.Context(), `BEGIN IMMEDIATE`); err != nil {
		t.Fatal(err)
	}
	defer conn.ExecContext(context.Background(), `ROLLBACK`)

	for i := range 20 {
		h.Clock.Advance(time.Second / 4)
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		_, err := h.St.Heartbeat(ctx, []string{"n1", "n2"}[i%2], true)
		cancel()
		if err != nil {
			t.Fatalf("heartbeat %d while the database is busy: %v", i, err)
		}
	}
}
