package control_test

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/postgres/pgtest"
	"github.com/spotml/spotml/internal/store/sqlite"
	"github.com/spotml/spotml/internal/store/sqlstore"
	"github.com/spotml/spotml/internal/store/storetest"
)

// BenchmarkControlPlaneThroughput measures how fast the control plane
// drains a queue: a real SQLite store in a temp dir, real reconcile passes
// (liveness, snapshot → pure scheduler → assign in one transaction, pool
// scaling) over ready nodes of 16 cpu and one job of 1-cpu tasks, and
// in-process fake agents that, after each pass, report every task they were
// given as succeeded, so that the nodes free up for the next wave.
//
// tasks/s is what the control plane alone achieves: tasks assigned per
// second of reconcile time. completed/s adds the agents' reports (run one
// after the other here; in spotml they arrive over HTTP and the server
// commits those that arrive together in one transaction).
//
// report=wave: each fake agent reports its wave in one store transaction
// (store.ReportBatch), as the server's group commit does when a fleet
// finishes together. report=each: one store.Report (one transaction, one
// disk sync) per task — the cost of reports that arrive one at a time.
//
// Each case runs over SQLite (a file in a temp dir) and over PostgreSQL (a
// throwaway local cluster, pgtest; skipped where PostgreSQL is not
// installed), so that the two read side by side.
func BenchmarkControlPlaneThroughput(b *testing.B) {
	pg := pgtest.New(b)
	for _, c := range []struct {
		nodes, tasks int
		each         bool
		fence        bool
	}{
		{100, 10_000, false, false},
		{1_000, 100_000, false, false},
		{1_000, 100_000, false, true},
		{100, 10_000, true, false},
	} {
		mode := "wave"
		if c.each {
			mode = "each"
		}
		if c.fence {
			// As the leader runs them: every reconciler write checks the
			// lease term in its own transaction.
			mode += "/fence=on"
		}
		for _, backend := range []string{"sqlite", "postgres"} {
			b.Run(fmt.Sprintf("store=%s/nodes=%d/tasks=%d/report=%s", backend, c.nodes, c.tasks, mode), func(b *testing.B) {
				var reconcile, report time.Duration
				passes := 0
				for range b.N {
					b.StopTimer()
					f := newBenchFleetOn(b, storetest.OpenBackend(b, backend, pg), c.nodes, c.tasks)
					ctx := context.Background()
					rctx := ctx // the reconcile passes'; reports are agents' writes, never fenced
					if c.fence {
						l, err := f.st.AcquireLease(ctx, "bench", time.Hour)
						if err != nil || !l.Held {
							b.Fatalf("leader lease: %+v, %v", l, err)
						}
						rctx = sqlstore.WithFence(ctx, sqlstore.Fence{Holder: "bench", Term: l.Term})
					}
					b.StartTimer()
					for done := 0; done < c.tasks; {
						t0 := time.Now()
						if err := f.plane.Reconcile(rctx); err != nil {
							b.Fatal(err)
						}
						t1 := time.Now()
						n, err := f.finishWave(ctx, c.each)
						if err != nil {
							b.Fatal(err)
						}
						if n == 0 {
							b.Fatalf("pass %d assigned nothing with %d of %d tasks done", passes+1, done, c.tasks)
						}
						passes++
						done += n
						reconcile += t1.Sub(t0)
						report += time.Since(t1)
					}
					b.StopTimer()
					f.st.Close()
				}
				tasks := float64(c.tasks * b.N)
				b.ReportMetric(tasks/reconcile.Seconds(), "tasks/s")
				b.ReportMetric(tasks/(reconcile+report).Seconds(), "completed/s")
				b.ReportMetric(float64(passes)/float64(b.N), "passes/op")
				b.ReportMetric(float64(reconcile.Milliseconds())/float64(passes), "ms/pass")
				b.ReportMetric(float64(report.Milliseconds())/float64(passes), "report-ms/wave")
			})
		}
	}
}

// benchProvider stands in for machines: the benchmark's nodes are rows, and
// their agents are the benchmark loop.
type benchProvider struct{}

var _ control.Provider = benchProvider{}

func (benchProvider) Launch(context.Context, control.LaunchRequest) (control.Launched, error) {
	return control.Launched{}, nil
}

func (benchProvider) Stop(context.Context, store.Node) error { return nil }

type benchFleet struct {
	st    *sqlstore.Store
	plane *control.Plane
	path  string // the store's file
}

// newBenchFleet makes a store with one pool of ready nodes (16 cpu each;
// min = max = nodes, so the scaler neither launches nor removes any) and
// one job of tasks (1 cpu each) queued.
func newBenchFleet(b *testing.B, nodes, tasks int) *benchFleet {
	b.Helper()
	path := filepath.Join(b.TempDir(), "spotml.db")
	st, err := sqlite.Open(b.Context(), path, time.Now)
	if err != nil {
		b.Fatal(err)
	}
	f := newBenchFleetOn(b, st, nodes, tasks)
	f.path = path
	return f
}

// newBenchFleetOn is newBenchFleet over an open, empty store.
func newBenchFleetOn(b *testing.B, st *sqlstore.Store, nodes, tasks int) *benchFleet {
	b.Helper()
	ctx := context.Background()
	capacity := spec.Resources{CPU: 16, Memory: 64 << 30}
	price := 0.1
	pool := spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: "fleet"},
		Spec: spec.PoolSpec{Provider: spec.ProviderLocal, Priority: spec.PrioritySpot, InstanceType: "bench-16",
			Min: nodes, Max: nodes, Capacity: &capacity, PricePerHour: &price}}
	job := spec.Job{APIVersion: spec.APIVersion, Kind: spec.KindJob, Metadata: spec.Metadata{Name: "bag"},
		Spec: spec.JobSpec{Pool: "fleet", Count: tasks,
			Template: &spec.TaskSpec{Command: spec.Command{"true"}, Resources: spec.Resources{CPU: 1}}}}
	pool.Default()
	job.Default()
	if err := pool.Validate(); err != nil {
		b.Fatal(err)
	}
	if err := job.Validate(); err != nil && tasks > 0 {
		b.Fatal(err)
	}
	if _, err := st.Apply(ctx, []spec.Pool{pool}, nil); err != nil {
		b.Fatal(err)
	}
	for i := range nodes {
		n := store.Node{Name: fmt.Sprintf("fleet-%05d", i), Pool: "fleet", Priority: spec.PrioritySpot,
			InstanceType: "bench-16", Capacity: capacity, PricePerHour: price, OnDemandPrice: 4 * price}
		if err := st.CreateNode(ctx, n); err != nil {
			b.Fatal(err)
		}
		if _, err := st.Heartbeat(ctx, n.Name, true); err != nil {
			b.Fatal(err)
		}
	}
	if tasks > 0 {
		if _, err := st.Apply(ctx, nil, []spec.Job{job}); err != nil {
			b.Fatal(err)
		}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	// No heartbeats come during the benchmark: a long node timeout keeps
	// the nodes alive.
	plane := control.New(st, map[string]control.Provider{spec.ProviderLocal: benchProvider{}}, log, time.Now,
		control.Options{NodeTimeout: 24 * time.Hour})
	return &benchFleet{st: st, plane: plane}
}

// finishWave has every node's agent report its running tasks succeeded,
// and returns how many tasks that was.
func (f *benchFleet) finishWave(ctx context.Context, each bool) (int, error) {
	running, err := f.st.RunningTasks(ctx)
	if err != nil {
		return 0, err
	}
	byNode := map[string][]store.Report{}
	for _, t := range running {
		byNode[t.Node] = append(byNode[t.Node], store.Report{TaskID: t.ID, Node: t.Node, Attempt: t.Attempt, Outcome: store.OutcomeSucceeded})
	}
	for _, rs := range byNode {
		if !each {
			if _, err := f.st.ReportBatch(ctx, rs); err != nil {
				return 0, err
			}
			continue
		}
		for _, r := range rs {
			if _, err := f.st.Report(ctx, r.TaskID, r.Node, r.Attempt, r.Outcome, 0, ""); err != nil {
				return 0, err
			}
		}
	}
	return len(running), nil
}

// BenchmarkReconcileHistory measures one reconcile pass over 100 ready
// nodes (no queue: liveness, services, scheduling and pool scaling read
// their state and find nothing to do) in a store that holds no history,
// and in one that holds 1,000,000 ended rows: 250,000 each of ended nodes,
// their closed billing runs, ended replicas and events. A pass that reads
// only live rows costs the same in both.
func BenchmarkReconcileHistory(b *testing.B) {
	for _, ended := range []int{0, 1_000_000} {
		b.Run(fmt.Sprintf("ended=%d", ended), func(b *testing.B) {
			ctx := context.Background()
			f := newBenchFleet(b, 100, 0)
			defer f.st.Close()
			if ended > 0 {
				addHistory(b, f.path, ended/4)
			}
			if err := f.plane.Reconcile(ctx); err != nil { // warm the page cache
				b.Fatal(err)
			}
			b.ResetTimer()
			for range b.N {
				if err := f.plane.Reconcile(ctx); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// addHistory writes n ended nodes, n closed node runs, n ended replicas
// and n events into the store's file in one transaction.
func addHistory(b *testing.B, path string, n int) {
	b.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)")
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		b.Fatal(err)
	}
	series := `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?) `
	for _, q := range []string{
		`INSERT INTO nodes (name, pool, priority, zone, instance_type, state, cpu, memory, gpu, price, ondemand_price, created_at, state_at, reason)
			` + series + `SELECT printf('ended-%07d', x), 'fleet', 'spot', '', 'bench-16', 'terminated', 16, 0, 0, 0.1, 0.4, x * 1000, x * 1000 + 500, 'idle' FROM c`,
		`INSERT INTO node_runs (node, pool, priority, started_at, ended_at, price, ondemand_price)
			` + series + `SELECT printf('ended-%07d', x), 'fleet', 'spot', x * 1000, x * 1000 + 500, 0.1, 0.4 FROM c`,
		`INSERT INTO replicas (service, version, spec, pool, priority, cpu, memory, gpu, state, node, created_at, state_at, ended_at, reason)
			` + series + `SELECT 'gone', 1, '{}', 'fleet', 'spot', 1, 0, 0, 'stopped', printf('ended-%07d', x), x * 1000, x * 1000 + 500, x * 1000 + 500, 'scale down' FROM c`,
		`INSERT INTO events (time, kind, object, reason, message)
			` + series + `SELECT x * 1000, 'Terminated', printf('node/ended-%07d', x), 'ScaleDown', '' FROM c`,
	} {
		if _, err := tx.Exec(q, n); err != nil {
			b.Fatal(err)
		}
	}
	if err := tx.Commit(); err != nil {
		b.Fatal(err)
	}
}
