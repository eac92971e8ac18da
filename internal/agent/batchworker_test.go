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
	"sync"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/agent"
	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/notice"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// TestBatchWorkerKilledReleases: a BatchInference worker that is still
// holding items when its node's notice runs out is SIGKILLed, and its
// agent then gives back everything it held at once (release all), rather
// than leaving the items to wait out their leases.
func TestBatchWorkerKilledReleases(t *testing.T) {
	dir := t.TempDir()
	started := filepath.Join(dir, "started")
	job := api.BatchWorkerJob("score", 1)
	var mu sync.Mutex
	var releases []api.ReleaseRequest
	var reports []api.ReportRequest
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.Prefix+"/agent/register", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(api.RegisterResponse{BlobURL: "file://" + filepath.Join(dir, "blobs"), HeartbeatInterval: 20 * time.Millisecond})
	})
	mux.HandleFunc("POST "+api.Prefix+"/agent/heartbeat", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reported := len(reports) > 0
		mu.Unlock()
		var resp api.HeartbeatResponse
		if !reported {
			resp.Tasks = []api.Assignment{{TaskID: 3, Attempt: 2, Job: job, JobUID: "u", Task: "task-0", Spec: spec.TaskSpec{Command: spec.Command{"unused"}}}}
		}
		json.NewEncoder(w).Encode(resp)
	})
	mux.HandleFunc("POST "+api.Prefix+"/agent/batches/score/release", func(w http.ResponseWriter, r *http.Request) {
		var req api.ReleaseRequest
		json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		releases = append(releases, req)
		mu.Unlock()
		json.NewEncoder(w).Encode(api.BatchCounts{Changed: 5})
	})
	mux.HandleFunc("POST "+api.Prefix+"/agent/tasks/{id}/report", func(w http.ResponseWriter, r *http.Request) {
		var req api.ReportRequest
		json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		reports = append(reports, req)
		mu.Unlock()
		io.WriteString(w, `{"accepted": true}`)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	srv := httptest.NewServer(mux)
	defer srv.Close()
	if err := os.MkdirAll(filepath.Join(dir, "blobs"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// A worker stuck on its items: it ignores the notice's SIGTERM.
	a := agent.New(agent.Config{Server: srv.URL, Credential: "t", Node: "n", WorkDir: filepath.Join(dir, "node"),
		BatchWorker: []string{"/bin/sh", "-c", "trap '' TERM; touch " + started + "; while :; do sleep 0.05; done"}},
		slog.New(slog.NewTextHandler(io.Discard, nil)), time.Now)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	for {
		if _, err := os.Stat(started); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("agent stopped before its worker started: %v", err)
		case <-ctx.Done():
			t.Fatal("the worker never started")
		case <-time.After(10 * time.Millisecond):
		}
	}
	a.Terminate(notice.Notice{Deadline: time.Now().Add(1500 * time.Millisecond), Format: "kubernetes", Detail: "SIGTERM"})
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("the agent did not return")
	}
	mu.Lock()
	defer mu.Unlock()
	if want := "n:" + job + "/task-0#2"; len(releases) != 1 || !releases[0].All || releases[0].Worker != want || len(releases[0].IDs) != 0 {
		t.Errorf("releases = %+v, want one of all that %s held", releases, want)
	}
	if len(reports) != 1 || reports[0].Outcome != store.OutcomePreempted {
		t.Errorf("reports = %+v, want attempt 2 preempted", reports)
	}
}
