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
)

// fakePlane is a control plane for one agent and one task: it assigns as
// until the agent reports it, and records the notices, reports and
// releases it gets.
type fakePlane struct {
	dir string
	srv *httptest.Server

	mu       sync.Mutex
	notices  []api.NoticeRequest
	reports  []api.ReportRequest
	releases []api.ReleaseRequest
}

func newFakePlane(t *testing.T, as api.Assignment) *fakePlane {
	p := &fakePlane{dir: t.TempDir()}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+api.Prefix+"/agent/register", func(w http.ResponseWriter, r *http.Request) {
		json.NewEncoder(w).Encode(api.RegisterResponse{BlobURL: "file://" + filepath.Join(p.dir, "blobs"), HeartbeatInterval: 20 * time.Millisecond})
	})
	mux.HandleFunc("POST "+api.Prefix+"/agent/heartbeat", func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		reported := len(p.reports) > 0
		p.mu.Unlock()
		var resp api.HeartbeatResponse
		if !reported {
			resp.Tasks = []api.Assignment{as}
		}
		json.NewEncoder(w).Encode(resp)
	})
	mux.HandleFunc("POST "+api.Prefix+"/agent/notice", func(w http.ResponseWriter, r *http.Request) {
		decodeInto(r, &p.mu, &p.notices)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST "+api.Prefix+"/agent/tasks/{id}/report", func(w http.ResponseWriter, r *http.Request) {
		decodeInto(r, &p.mu, &p.reports)
		io.WriteString(w, `{"accepted": true}`)
	})
	mux.HandleFunc("POST "+api.Prefix+"/agent/batches/{name}/release", func(w http.ResponseWriter, r *http.Request) {
		decodeInto(r, &p.mu, &p.releases)
		json.NewEncoder(w).Encode(api.BatchCounts{Changed: 5})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusOK) })
	p.srv = httptest.NewServer(mux)
	t.Cleanup(p.srv.Close)
	if err := os.MkdirAll(filepath.Join(p.dir, "blobs"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// decodeInto appends a request's JSON body to list, under mu.
func decodeInto[T any](r *http.Request, mu *sync.Mutex, list *[]T) {
	var v T
	json.NewDecoder(r.Body).Decode(&v)
	mu.Lock()
	*list = append(*list, v)
	mu.Unlock()
}

// start runs an agent of node n against the plane (cfg gives the rest)
// until ctx ends, and returns once its task has created the file started;
// done has what Run returned.
func (p *fakePlane) start(t *testing.T, ctx context.Context, cfg agent.Config, started string) (*agent.Agent, <-chan error) {
	t.Helper()
	cfg.Server, cfg.Credential, cfg.Node, cfg.WorkDir = p.srv.URL, "t", "n", filepath.Join(p.dir, "node")
	a := agent.New(cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), time.Now)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	for {
		if _, err := os.Stat(started); err == nil {
			return a, done
		}
		select {
		case err := <-done:
			t.Fatalf("agent stopped before its task started: %v", err)
		case <-ctx.Done():
			t.Fatal("the task never started")
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// wait waits for the agent to return by itself.
func wait(t *testing.T, ctx context.Context, done <-chan error) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-ctx.Done():
		t.Fatal("the agent did not return")
	}
}
