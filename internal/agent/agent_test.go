package agent_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/agent"
	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
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

// TestAttemptRunsOnce: a heartbeat answered before an attempt's report
// was applied still lists the attempt (the control plane applies reports
// in batches). The agent must not start that attempt again: its command
// would run twice, in a working directory wiped under the first run's
// outputs. Here the control plane lists the attempt on every heartbeat.
func TestAttemptRunsOnce(t *testing.T) {
	dir := t.TempDir()
	runs := filepath.Join(dir, "runs")
	var reports atomic.Int32
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.Prefix+"/agent/register", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(api.RegisterResponse{BlobURL: "file://" + filepath.Join(dir, "blobs"), HeartbeatInterval: 20 * time.Millisecond})
	})
	mux.HandleFunc("POST "+api.Prefix+"/agent/heartbeat", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(api.HeartbeatResponse{Tasks: []api.Assignment{{TaskID: 7, Attempt: 1, Job: "j", JobUID: "u", Task: "task-0",
			Spec: spec.TaskSpec{Command: spec.Command{"/bin/sh", "-c", "echo run >> " + runs}}}}})
	})
	mux.HandleFunc("POST "+api.Prefix+"/agent/tasks/{id}/report", func(w http.ResponseWriter, r *http.Request) {
		reports.Add(1)
		io.WriteString(w, `{"accepted": true}`)
	})
	srv := httptest.NewServer(mux)
	defer srv.Close()
	if err := os.MkdirAll(filepath.Join(dir, "blobs"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	a := agent.New(agent.Config{Server: srv.URL, Credential: "t", Node: "n", WorkDir: filepath.Join(dir, "node")},
		slog.New(slog.NewTextHandler(io.Discard, nil)), time.Now)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for reports.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(500 * time.Millisecond) // 25 more heartbeats listing the attempt
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(runs)
	if n := strings.Count(string(b), "run"); n != 1 || reports.Load() != 1 {
		t.Fatalf("attempt 1 ran %d times and was reported %d times, want once", n, reports.Load())
	}
}
