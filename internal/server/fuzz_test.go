package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/clock"
	"github.com/spotml/spotml/internal/control"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/store/sqlite"
)

// agentPaths are the agent API's endpoints a fuzzed body goes to; a
// report's task id comes from the input too.
var agentPaths = []string{"/agent/register", "/agent/heartbeat", "/agent/tasks/%d/report", "/agent/notice"}

// FuzzAgentAPI: no body sent to an agent endpoint makes the server panic or
// answer 5xx, and one it refuses (4xx) changes nothing stored. The store
// holds a pool, a job and a ready node running its task, so that bodies
// naming them reach past decoding. Corpus: testdata/fuzz/FuzzAgentAPI.
func FuzzAgentAPI(f *testing.F) {
	ctx := context.Background()
	clk := clock.NewFake(t0)
	st, err := sqlite.Open(ctx, filepath.Join(f.TempDir(), "spotml.db"), clk.Now)
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	blobs, err := blob.NewStore("file://" + f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	prov := &recorder{}
	plane := control.New(st, map[string]control.Provider{spec.ProviderLocal: prov}, nil, clk.Now, control.Options{})
	h := server.New(server.Config{Store: st, Blobs: blobs, Plane: plane, Token: adminToken, JoinToken: joinToken, Now: clk.Now})
	post := func(token, path string, body []byte) *httptest.ResponseRecorder {
		req := httptest.NewRequestWithContext(ctx, http.MethodPost, api.Prefix+path, bytes.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		return w
	}
	apply, _ := json.Marshal(applyFiles("a.yaml", poolYAML+"---\n"+jobYAML))
	if w := post(adminToken, "/apply", apply); w.Code != http.StatusOK {
		f.Fatalf("apply: %d %s", w.Code, w.Body)
	}
	if err := plane.Reconcile(ctx); err != nil || len(prov.launched) == 0 {
		f.Fatalf("reconcile: %v, launched %q", err, prov.launched)
	}
	node := prov.launched[0]
	cred, err := st.IssueNodeCredential(ctx, node) // as the provider does at launch
	if err != nil {
		f.Fatal(err)
	}
	hb, _ := json.Marshal(api.HeartbeatRequest{Node: node, Ready: true})
	if w := post(cred, "/agent/heartbeat", hb); w.Code != http.StatusOK {
		f.Fatalf("heartbeat: %d %s", w.Code, w.Body)
	}
	if err := plane.Reconcile(ctx); err != nil {
		f.Fatal(err)
	}
	j, err := st.GetJob(ctx, "train")
	if err != nil || j.Tasks[0].State != store.TaskRunning {
		f.Fatalf("task not running: %+v, %v", j.Tasks, err)
	}
	// Seeds naming the real node and task (testdata/fuzz/FuzzAgentAPI
	// holds more, naming none).
	task := uint16(j.Tasks[0].ID)
	for _, seed := range []struct {
		endpoint uint8
		body     any
	}{
		{0, api.RegisterRequest{Node: node, PID: 7}},
		{1, api.HeartbeatRequest{Node: node, Ready: true, Running: []api.RunningTask{{TaskID: int64(task), Attempt: 1, Progress: &api.Progress{Fraction: 0.5, Message: "epoch 1"}}}}},
		{1, api.HeartbeatRequest{Node: node, Replicas: []api.ReplicaStatus{{ID: 1, Ready: true, Addr: "127.0.0.1:1"}}}},
		{2, api.ReportRequest{Node: node, Attempt: 1, Outcome: store.OutcomeFailed, ExitCode: 3, Message: "x"}},
		{3, api.NoticeRequest{Node: node, Deadline: t0.Add(30e9), Format: "azure", Detail: "Preempt"}},
	} {
		b, _ := json.Marshal(seed.body)
		f.Add(seed.endpoint, task, b)
	}

	// snapshot is what an agent call may change.
	snapshot := func() string {
		nodes, err1 := st.ListNodes(ctx)
		job, err2 := st.GetJob(ctx, "train")
		events, err3 := st.ListEvents(ctx, store.EventFilter{Limit: 1})
		b, _ := json.Marshal([]any{nodes, job, events, err1, err2, err3})
		return string(b)
	}

	f.Fuzz(func(t *testing.T, endpoint uint8, id uint16, body []byte) {
		path := agentPaths[int(endpoint)%len(agentPaths)]
		if endpoint%uint8(len(agentPaths)) == 2 {
			path = fmt.Sprintf(path, id)
		}
		before := snapshot()
		w := post(cred, path, body)
		if w.Code/100 == 5 {
			t.Fatalf("POST %s %q: %d %s", path, body, w.Code, w.Body)
		}
		if w.Code/100 == 4 {
			if after := snapshot(); after != before {
				t.Fatalf("POST %s %q: refused (%d %s) but the store changed:\nbefore %s\nafter  %s", path, body, w.Code, w.Body, before, after)
			}
			var e api.Error
			if json.Unmarshal(w.Body.Bytes(), &e) != nil || e.Error == "" {
				t.Fatalf("POST %s %q: %d with no error message: %s", path, body, w.Code, w.Body)
			}
		}
	})
}
