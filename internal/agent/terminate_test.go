package agent_test

import (
	"context"
	"encoding/json"
	"io"
	"io/fs"
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

// TestTerminateDrains: a Terminate (SIGTERM to a pod's agent) is an
// eviction notice. The agent reports the notice, stops its task with
// SIGTERM, saves its checkpoint, reports the attempt preempted, and
// returns by itself, well before the deadline.
func TestTerminateDrains(t *testing.T) {
	dir := t.TempDir()
	started := filepath.Join(dir, "started")
	var mu sync.Mutex
	var notices []api.NoticeRequest
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
			// A task that saves its state when told to stop, as the
			// checkpointing tasks of spotml's guide do.
			resp.Tasks = []api.Assignment{{TaskID: 7, Attempt: 1, Job: "j", JobUID: "u", Task: "task-0",
				Spec: spec.TaskSpec{
					Command:    spec.Command{"/bin/sh", "-c", "trap 'echo step-41 > ckpt/state; exit 143' TERM; touch " + started + "; while :; do sleep 0.05; done"},
					Checkpoint: &spec.Checkpoint{Path: "ckpt", Interval: spec.Duration{Duration: time.Hour}},
				}}}
		}
		json.NewEncoder(w).Encode(resp)
	})
	mux.HandleFunc("POST "+api.Prefix+"/agent/notice", func(w http.ResponseWriter, r *http.Request) {
		var req api.NoticeRequest
		json.NewDecoder(r.Body).Decode(&req)
		mu.Lock()
		notices = append(notices, req)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
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
	a := agent.New(agent.Config{Server: srv.URL, Credential: "t", Node: "n", WorkDir: filepath.Join(dir, "node")},
		slog.New(slog.NewTextHandler(io.Discard, nil)), time.Now)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	for {
		if _, err := os.Stat(started); err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("agent stopped before its task started: %v", err)
		case <-ctx.Done():
			t.Fatal("the task never started")
		case <-time.After(10 * time.Millisecond):
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	a.Terminate(notice.Notice{Deadline: deadline, Format: "kubernetes", Detail: "SIGTERM"})
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("the agent did not return after draining")
	}
	if time.Now().After(deadline) {
		t.Error("the agent waited out the deadline instead of returning once drained")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(notices) != 1 || !notices[0].Deadline.Equal(deadline) || notices[0].Node != "n" {
		t.Errorf("notices = %+v, want one for node n with the SIGTERM's deadline", notices)
	}
	if len(reports) != 1 || reports[0].Outcome != store.OutcomePreempted {
		t.Fatalf("reports = %+v, want attempt 1 preempted", reports)
	}
	// The checkpoint the task wrote on SIGTERM is in blob storage.
	found := false
	filepath.WalkDir(filepath.Join(dir, "blobs"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if b, _ := os.ReadFile(p); string(b) == "step-41\n" {
				found = true
			}
		}
		return nil
	})
	if !found {
		t.Error("the checkpoint written on SIGTERM is not in blob storage")
	}
}
