package agent_test

import (
	"context"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/agent"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// TestEnvironDropsSecrets: what spotml starts inherits no token or
// credential, and everything else.
func TestEnvironDropsSecrets(t *testing.T) {
	in := []string{"PATH=/bin", "SPOTML_TOKEN=a", "SPOTML_JOIN_TOKEN=b", "SPOTML_NODE_CREDENTIAL=c", "SPOTML_SERVER=http://x",
		"SPOTML_ONNXRUNTIME_LIB=/lib/ort.so", "HOME=/root", "MY_TOKEN=users-own"}
	want := []string{"PATH=/bin", "SPOTML_SERVER=http://x", "SPOTML_ONNXRUNTIME_LIB=/lib/ort.so", "HOME=/root", "MY_TOKEN=users-own"}
	if got := agent.Environ(in); !slices.Equal(got, want) {
		t.Errorf("Environ = %q, want %q", got, want)
	}
}

// TestJoinTokenExchange: a hand-started agent joins with the join token,
// works with the node credential it gets back, and stops when its node
// ends (its credential stops working).
func TestJoinTokenExchange(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(t.Context(), filepath.Join(dir, "spotml.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	blobs, err := blob.NewStore("file://" + filepath.Join(dir, "blobs"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv := httptest.NewServer(server.New(server.Config{Store: st, Blobs: blobs, Token: "admin-secret", JoinToken: "join-secret",
		HeartbeatInterval: 50 * time.Millisecond, Log: log, Now: time.Now}))
	defer srv.Close()
	n := store.Node{Name: "hand-1", Pool: "byhand", Priority: spec.PriorityOnDemand, InstanceType: "local-small",
		Capacity: spec.Resources{CPU: 1, Memory: 1 << 30}}
	if err := st.CreateNode(t.Context(), n); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- agent.New(agent.Config{Server: srv.URL, JoinToken: "join-secret", Node: "hand-1", WorkDir: filepath.Join(dir, "node")}, log, time.Now).Run(ctx)
	}()
	for {
		got, err := st.GetNode(ctx, "hand-1")
		if err != nil {
			t.Fatal(err)
		}
		if got.State == store.NodeReady {
			break // heartbeats with its own credential work
		}
		select {
		case err := <-done:
			t.Fatalf("agent stopped before its node was ready: %v", err)
		case <-ctx.Done():
			t.Fatal("node never became ready")
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := st.EndNode(t.Context(), "hand-1", store.NodeLost, "test"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("agent of an ended node: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("the agent of an ended node kept running")
	}
}
