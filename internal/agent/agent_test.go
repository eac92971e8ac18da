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
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/agent"
	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/spec"
)

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
	a := agent.New(agent.Config{Server: srv.URL, JoinToken: "t", Node: "n", WorkDir: filepath.Join(dir, "node")},
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
