package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
)

// What one console viewer costs the control plane each second, against
// what a user would do instead to keep a live view: poll the REST
// endpoints the same views come from (a dashboard, or `watch -n1 spotml
// get …`). The fleet is a day's worth of work on a mid-sized cluster.
//
//	go test -run '^$' -bench 'Watch|Poll' -benchmem ./internal/server/
func BenchmarkConsoleLiveView(b *testing.B) {
	s := benchServer(b, 200, 2000, 500)
	ctx := context.Background()

	// One tick of an open stream when nothing changed: the steady state.
	b.Run("watch-tick", func(b *testing.B) {
		st := newWatcher()
		if _, err := st.tick(ctx, s, io.Discard); err != nil { // the first burst
			b.Fatal(err)
		}
		sent := 0
		for b.Loop() {
			s.views = viewCache{} // a new second: the cache is stale
			n, err := st.tick(ctx, s, io.Discard)
			if err != nil {
				b.Fatal(err)
			}
			sent += n
		}
		b.ReportMetric(float64(sent)/float64(b.N), "bytes-sent/op")
	})

	// Ten consoles open: each ticks, the store is read once.
	b.Run("watch-tick-10-viewers", func(b *testing.B) {
		var sts []*watcher
		for range 10 {
			st := newWatcher()
			if _, err := st.tick(ctx, s, io.Discard); err != nil {
				b.Fatal(err)
			}
			sts = append(sts, st)
		}
		sent := 0
		for b.Loop() {
			s.views = viewCache{} // a new second: the cache is stale
			for _, st := range sts {
				n, err := st.tick(ctx, s, io.Discard)
				if err != nil {
					b.Fatal(err)
				}
				sent += n
			}
		}
		b.ReportMetric(float64(sent)/float64(b.N), "bytes-sent/op")
	})

	// The same views by polling, over real HTTP.
	srv := httptest.NewServer(s)
	defer srv.Close()
	paths := []string{"/pools", "/nodes", "/jobs", "/services", "/cost", "/events?limit=100"}
	b.Run("poll-rest", func(b *testing.B) {
		sent := 0
		for b.Loop() {
			for _, p := range paths {
				req, _ := http.NewRequest(http.MethodGet, srv.URL+api.Prefix+p, nil)
				req.Header.Set("Authorization", "Bearer t")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					b.Fatal(err)
				}
				n, _ := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					b.Fatalf("GET %s: %d", p, resp.StatusCode)
				}
				sent += int(n)
			}
		}
		b.ReportMetric(float64(sent)/float64(b.N), "bytes-sent/op")
	})
}

// benchServer is a server over a store with live nodes, ended nodes (all
// but the last 15 minutes' worth long gone) and jobs of four tasks.
func benchServer(b *testing.B, live, ended, jobs int) *Server {
	b.Helper()
	now := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	ctx := context.Background()
	st, err := sqlite.Open(ctx, filepath.Join(b.TempDir(), "spotml.db"), clock)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	var yaml strings.Builder
	for _, prio := range []string{spec.PrioritySpot, spec.PriorityOnDemand} {
		fmt.Fprintf(&yaml, "apiVersion: spotml/v1\nkind: Pool\nmetadata: {name: %s}\nspec: {provider: local, priority: %s, instanceType: local-small, max: %d}\n---\n", prio, prio, live+ended)
	}
	for j := range jobs {
		fmt.Fprintf(&yaml, "apiVersion: spotml/v1\nkind: Job\nmetadata: {name: job-%d}\nspec:\n  count: 4\n  template: {command: [train], resources: {cpu: 1, memory: 256Mi}}\n---\n", j)
	}
	docs, err := spec.Parse([]byte(yaml.String()))
	if err != nil {
		b.Fatal(err)
	}
	var pools []spec.Pool
	var js []spec.Job
	for _, d := range docs {
		if d.Pool != nil {
			pools = append(pools, *d.Pool)
		}
		if d.Job != nil {
			js = append(js, *d.Job)
		}
	}
	if _, err := st.Apply(ctx, pools, js); err != nil {
		b.Fatal(err)
	}
	for i := range live + ended {
		prio := spec.PrioritySpot
		if i%4 == 0 {
			prio = spec.PriorityOnDemand
		}
		n := store.Node{Name: fmt.Sprintf("node-%05d", i), Pool: prio, Priority: prio, InstanceType: "local-small",
			Capacity: spec.Resources{CPU: 2, Memory: 4 << 30}, PricePerHour: 0.01, OnDemandPrice: 0.04}
		if err := st.CreateNode(ctx, n); err != nil {
			b.Fatal(err)
		}
		if i >= live {
			if err := st.EndNode(ctx, n.Name, store.NodePreempted, "evicted"); err != nil {
				b.Fatal(err)
			}
		}
	}
	now = now.Add(time.Hour) // the ended nodes are older than the fleet view keeps
	return New(Config{Store: st, Token: "t", Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: clock})
}
