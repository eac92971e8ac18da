package main

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store/sqlite"
	"github.com/spotml/spotml/internal/store/sqlstore"
)

// testPlane is a control plane's API on loopback, over a SQLite store and a
// file blob store in a temporary directory, without reconcilers.
type testPlane struct {
	url   string
	store *sqlstore.Store
	blobs *blob.Store
}

func newTestPlane(t *testing.T) *testPlane {
	t.Helper()
	st, err := sqlite.Open(t.Context(), filepath.Join(t.TempDir(), "spotml.db"), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	blobs, err := blob.NewStore("file://" + t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(server.New(server.Config{Store: st, Blobs: blobs, Token: "admin",
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: time.Now}))
	t.Cleanup(srv.Close)
	return &testPlane{url: srv.URL, store: st, blobs: blobs}
}

// spotml runs the CLI against the server at url, in directory dir.
func spotml(t *testing.T, url string, args ...string) (string, error) {
	t.Helper()
	env := map[string]string{"SPOTML_SERVER": url, "SPOTML_TOKEN": "admin", "SPOTML_DATA": t.TempDir()}
	var stdout, stderr bytes.Buffer
	err := run(t.Context(), args, func(k string) string { return env[k] }, &stdout, &stderr)
	return stdout.String(), err
}

func (p *testPlane) apply(t *testing.T, yaml string) {
	t.Helper()
	docs, err := spec.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	var pools []spec.Pool
	var jobs []spec.Job
	for _, d := range docs {
		if d.Pool != nil {
			pools = append(pools, *d.Pool)
		}
		if d.Job != nil {
			jobs = append(jobs, *d.Job)
		}
	}
	if _, err := p.store.Apply(t.Context(), pools, jobs); err != nil {
		t.Fatal(err)
	}
}

// TestDescribeOwnEvents: describe shows a job's own events and its tasks',
// and not a namesake's, when 200 newer events of other objects exist.
func TestDescribeOwnEvents(t *testing.T) {
	p := newTestPlane(t)
	p.apply(t, `
apiVersion: spotml/v1
kind: Pool
metadata: {name: cpu}
spec: {provider: local, priority: spot, instanceType: local-small, max: 3}
---
apiVersion: spotml/v1
kind: Job
metadata: {name: train}
spec: {pool: cpu, count: 2, template: {command: [x]}}
---
apiVersion: spotml/v1
kind: Job
metadata: {name: train2}
spec: {pool: cpu, count: 1, template: {command: [x]}}
`)
	ctx := t.Context()
	p.store.AddEvent(ctx, "Requeued", "task/train/task-1", "Evicted", "mine")
	for i := range 200 {
		p.store.AddEvent(ctx, "Launched", fmt.Sprintf("node/n%d", i), "Test", "busy")
	}
	out, err := spotml(t, p.url, "describe", "job", "train")
	if err != nil {
		t.Fatal(err)
	}
	_, events, _ := strings.Cut(out, "events:\n")
	if !strings.Contains(events, "job/train ") || !strings.Contains(events, "task/train/task-1") {
		t.Errorf("describe job train shows events\n%s\nwant job/train's and task/train/task-1's", events)
	}
	if strings.Contains(events, "train2") || strings.Contains(events, "node/") {
		t.Errorf("describe job train shows events\n%s\nwith other objects'", events)
	}
}
