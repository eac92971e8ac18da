package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/postgres/pgtest"
	"github.com/spotml/spotml/internal/store/sqlstore"
	"github.com/spotml/spotml/internal/store/storetest"
)

// nopProvider stands in for machines: the benchmark's nodes are rows, and
// their agents are goroutines of the benchmark.
type nopProvider struct{}

func (nopProvider) Launch(context.Context, control.LaunchRequest) (control.Launched, error) {
	return control.Launched{}, nil
}
func (nopProvider) Stop(context.Context, store.Node) error { return nil }

// BenchmarkControlPlaneThroughput measures how fast the control plane
// drains a queue: a real SQLite store, real reconcile passes (snapshot,
// schedule, assign in one transaction) and in-process fake agents, one
// goroutine per node, that report each task they were given as succeeded
// over the real HTTP API, all at once, as a fleet finishing a wave would.
//
// store=sqlite is a SQLite file in a temp dir; store=postgres a database of
// a throwaway local PostgreSQL cluster (pgtest; skipped where PostgreSQL is
// not installed), so that the two read side by side in one run.
//
// heartbeat=1s: meanwhile every node's agent also heartbeats every second
// over the same API (staggered, as agents that joined at different times
// do), and hb-p99-ms is the 99th percentile of the heartbeats' response
// times.
func BenchmarkControlPlaneThroughput(b *testing.B) {
	pg := pgtest.New(b)
	for _, size := range []struct {
		nodes, tasks int
		heartbeat    time.Duration
	}{{100, 10_000, 0}, {1_000, 100_000, 0}, {1_000, 100_000, time.Second}} {
		for _, backend := range []string{"sqlite", "postgres"} {
			name := fmt.Sprintf("store=%s/nodes=%d/tasks=%d/heartbeat=off", backend, size.nodes, size.tasks)
			if size.heartbeat > 0 {
				name = fmt.Sprintf("store=%s/nodes=%d/tasks=%d/heartbeat=%s", backend, size.nodes, size.tasks, size.heartbeat)
			}
			b.Run(name, func(b *testing.B) {
				var assign, report time.Duration
				passes := 0
				var beats []time.Duration
				for range b.N {
					b.StopTimer()
					f := newFleetOn(b, storetest.OpenBackend(b, backend, pg), size.nodes, size.tasks)
					stop := func() []time.Duration { return nil }
					if size.heartbeat > 0 {
						stop = f.heartbeatAll(size.nodes, size.heartbeat)
					}
					b.StartTimer()
					ctx := context.Background()
					for done := 0; done < size.tasks; {
						t0 := time.Now()
						if err := f.plane.Reconcile(ctx); err != nil {
							b.Fatal(err)
						}
						passes++
						t1 := time.Now()
						n, err := f.reportWave(ctx)
						if err != nil {
							b.Fatal(err)
						}
						if n == 0 {
							b.Fatalf("no progress with %d of %d done", done, size.tasks)
						}
						done += n
						assign += t1.Sub(t0)
						report += time.Since(t1)
					}
					b.StopTimer()
					beats = append(beats, stop()...)
					f.close()
				}
				n := float64(size.tasks * b.N)
				b.ReportMetric(n/assign.Seconds(), "assigned/s")
				b.ReportMetric(n/(assign+report).Seconds(), "completed/s")
				b.ReportMetric(float64(passes)/float64(b.N), "passes/op")
				if size.heartbeat > 0 {
					if len(beats) == 0 {
						b.Fatal("no heartbeat was answered")
					}
					slices.Sort(beats)
					b.ReportMetric(float64(beats[len(beats)*99/100].Microseconds())/1000, "hb-p99-ms")
					b.ReportMetric(float64(beats[len(beats)-1].Microseconds())/1000, "hb-max-ms")
					b.ReportMetric(float64(len(beats))/(assign+report).Seconds()/float64(b.N), "heartbeats/s")
				}
			})
		}
	}
}

type fleet struct {
	st    *sqlstore.Store
	plane *control.Plane
	srv   *httptest.Server
	http  *http.Client
	creds map[string]string // node credentials by node
}

// newFleetOn makes one pool of ready nodes (16 cpu each) and one job of
// tasks (1 cpu each) waiting, behind a real API server.
func newFleetOn(b *testing.B, st *sqlstore.Store, nodes, tasks int) *fleet {
	ctx := context.Background()
	dir := b.TempDir()
	var err error
	pool := spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: "fleet"},
		Spec: spec.PoolSpec{Provider: "local", Priority: spec.PrioritySpot, InstanceType: "custom", Min: nodes, Max: nodes,
			Capacity: &spec.Resources{CPU: 16, Memory: 64 << 30}, PricePerHour: new(0.1)}}
	job := spec.Job{APIVersion: spec.APIVersion, Kind: spec.KindJob, Metadata: spec.Metadata{Name: "bag"},
		Spec: spec.JobSpec{Pool: "fleet", Count: tasks, Template: &spec.TaskSpec{Command: spec.Command{"true"}, Resources: spec.Resources{CPU: 1}}}}
	pool.Default()
	job.Default()
	if err := pool.Validate(); err != nil {
		b.Fatal(err)
	}
	if err := job.Validate(); err != nil {
		b.Fatal(err)
	}
	if _, err := st.Apply(ctx, []spec.Pool{pool}, nil); err != nil {
		b.Fatal(err)
	}
	creds := map[string]string{}
	for i := range nodes {
		n := store.Node{Name: fmt.Sprintf("fleet-%05d", i), Pool: "fleet", Priority: spec.PrioritySpot, InstanceType: "custom",
			Capacity: *pool.Spec.Capacity, PricePerHour: 0.1, OnDemandPrice: 0.4}
		if err := st.CreateNode(ctx, n); err != nil {
			b.Fatal(err)
		}
		if _, err := st.Heartbeat(ctx, n.Name, true); err != nil {
			b.Fatal(err)
		}
		if creds[n.Name], err = st.IssueNodeCredential(ctx, n.Name); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := st.Apply(ctx, nil, []spec.Job{job}); err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	plane := control.New(st, map[string]control.Provider{"local": nopProvider{}}, log, time.Now,
		control.Options{NodeTimeout: 24 * time.Hour})
	blobs, err := blob.NewStore("file://" + filepath.Join(dir, "blobs"))
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(server.New(server.Config{Store: st, Blobs: blobs, Plane: plane, Token: "admin", JoinToken: "join",
		HeartbeatInterval: time.Second, Log: log, Now: time.Now}))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * nodes, MaxConnsPerHost: 2 * nodes}}
	return &fleet{st: st, plane: plane, srv: srv, http: client, creds: creds}
}

func (f *fleet) close() {
	f.srv.Close()
	f.st.Close()
}

// heartbeatAll starts one agent per node that heartbeats every interval,
// the first at a random point of the first interval, and returns a
// function that stops them and returns every heartbeat's response time. A
// heartbeat that fails stops the benchmark.
func (f *fleet) heartbeatAll(nodes int, every time.Duration) func() []time.Duration {
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	var times []time.Duration
	var wg sync.WaitGroup
	for i := range nodes {
		node := fmt.Sprintf("fleet-%05d", i)
		wg.Go(func() {
			body, _ := json.Marshal(api.HeartbeatRequest{Node: node, Ready: true})
			wait := time.Duration(rand.Int64N(int64(every)))
			for {
				select {
				case <-ctx.Done():
					return
				case <-time.After(wait):
				}
				t0 := time.Now()
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, f.srv.URL+api.Prefix+"/agent/heartbeat", bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+f.creds[node])
				resp, err := f.http.Do(req)
				if err != nil {
					if ctx.Err() == nil {
						panic(fmt.Sprintf("heartbeat %s: %v", node, err))
					}
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					panic(fmt.Sprintf("heartbeat %s: %s", node, resp.Status))
				}
				d := time.Since(t0)
				mu.Lock()
				times = append(times, d)
				mu.Unlock()
				wait = max(every-d, 0)
			}
		})
	}
	return func() []time.Duration {
		cancel()
		wg.Wait()
		return times
	}
}

// reportWave has every node's agent report its tasks succeeded.
func (f *fleet) reportWave(ctx context.Context) (int, error) {
	running, err := f.st.RunningTasks(ctx)
	if err != nil {
		return 0, err
	}
	byNode := map[string][]store.Task{}
	for _, t := range running {
		byNode[t.Node] = append(byNode[t.Node], t)
	}
	var wg sync.WaitGroup
	errs := make(chan error, len(byNode))
	for node, tasks := range byNode {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, t := range tasks {
				body, _ := json.Marshal(api.ReportRequest{Node: node, Attempt: t.Attempt, Outcome: store.OutcomeSucceeded})
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s%s/agent/tasks/%d/report", f.srv.URL, api.Prefix, t.ID), bytes.NewReader(body))
				req.Header.Set("Authorization", "Bearer "+f.creds[node])
				resp, err := f.http.Do(req)
				if err != nil {
					errs <- err
					return
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					errs <- fmt.Errorf("report: %s", resp.Status)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return len(running), <-errs
}
