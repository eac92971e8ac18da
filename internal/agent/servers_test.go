package agent_test

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/agent"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
)

// TestAgentMovesToAnotherInstance: two control-plane instances share one
// store, each with its own address. An agent started with the first's
// address only learns the second from its heartbeat answers, and when the
// first goes away it keeps heartbeating through the second: its node
// stays ready, with no shared address in front of the instances.
func TestAgentMovesToAnotherInstance(t *testing.T) {
	dir := t.TempDir()
	st, err := sqlite.Open(t.Context(), filepath.Join(dir, "spotml.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	blobs, err := blob.NewStore("file://" + filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var planes sync.WaitGroup
	defer planes.Wait()
	defer cancel()
	instance := func(id string) *httptest.Server {
		srv := httptest.NewUnstartedServer(nil)
		plane := control.New(st, nil, log, time.Now, control.Options{LeaseTTL: 300 * time.Millisecond,
			Instance: store.Instance{ID: id, Address: "http://" + srv.Listener.Addr().String()}})
		srv.Config.Handler = server.New(server.Config{Store: st, Blobs: blobs, Token: "admin", JoinToken: "join",
			HeartbeatInterval: 50 * time.Millisecond, Log: log, Now: time.Now, Plane: plane})
		srv.Start()
		planes.Go(func() { plane.Run(ctx) })
		return srv
	}
	a, b := instance("a"), instance("b")
	defer b.Close()
	pool := spec.Pool{APIVersion: spec.APIVersion, Kind: spec.KindPool, Metadata: spec.Metadata{Name: "byhand"},
		Spec: spec.PoolSpec{Provider: "byhand", Priority: spec.PriorityOnDemand, InstanceType: "custom", Max: 1,
			Capacity: &spec.Resources{CPU: 1, Memory: 1 << 30}}}
	pool.Default()
	if _, err := st.Apply(ctx, []spec.Pool{pool}, nil); err != nil {
		t.Fatal(err)
	}
	n := store.Node{Name: "n1", Pool: "byhand", Priority: spec.PriorityOnDemand, InstanceType: "local-small",
		Capacity: spec.Resources{CPU: 1, Memory: 1 << 30}}
	if err := st.CreateNode(ctx, n); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- agent.New(agent.Config{Server: a.URL, JoinToken: "join", Node: "n1", WorkDir: filepath.Join(dir, "node")}, log, time.Now).Run(ctx)
	}()
	beat := func() time.Time {
		got, err := st.GetNode(ctx, "n1")
		if err != nil {
			t.Fatal(err)
		}
		return got.HeartbeatAt
	}
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for !cond() {
			select {
			case err := <-done:
				t.Fatalf("agent stopped while waiting for %s: %v", what, err)
			case <-ctx.Done():
				t.Fatalf("waited for %s", what)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	waitFor("the node to be ready", func() bool { got, _ := st.GetNode(ctx, "n1"); return got.State == store.NodeReady })
	// Both instances' presence beats have listed both, and the agent has
	// had answers since.
	time.Sleep(500 * time.Millisecond)
	a.CloseClientConnections()
	a.Close()
	gone := time.Now()
	st.ExpireCaches()
	waitFor("a heartbeat through b", func() bool { st.ExpireCaches(); return beat().After(gone.Add(100 * time.Millisecond)) })
	t.Logf("first heartbeat through b %s after a closed", time.Since(gone).Round(time.Millisecond))
	if got, _ := st.GetNode(ctx, "n1"); got.State != store.NodeReady {
		t.Errorf("node %s after a closed, want ready", got.State)
	}
}
