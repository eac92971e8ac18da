package server_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/store"
)

// TestNodeCredentialBoundToNode: a node's credential cannot heartbeat,
// report, post a notice or register for another node (403), and such a
// call changes nothing in the store.
func TestNodeCredentialBoundToNode(t *testing.T) {
	a := newAPI(t)
	job := strings.Replace(jobYAML, "name: train", "name: two", 1)
	job = strings.Replace(job, "    - name: fit\n", "    - name: fit\n      resources: {cpu: 2}\n", 1) + "    - name: eval\n      command: [eval]\n      resources: {cpu: 2}\n"
	pool := strings.Replace(poolYAML, "  max: 2\n", "  max: 2\n  capacity: {cpu: 2, memory: 4Gi}\n", 1)
	a.admin("POST", "/apply", applyFiles("two.yaml", pool+"---\n"+job), http.StatusOK)
	if err := a.plane.Reconcile(a.ctx); err != nil {
		t.Fatal(err)
	}
	if len(a.prov.launched) != 2 {
		t.Fatalf("launched %q, want two nodes", a.prov.launched)
	}
	mine, victim := a.prov.launched[0], a.prov.launched[1]
	for _, n := range a.prov.launched {
		a.agent("/heartbeat", api.HeartbeatRequest{Node: n, Ready: true}, http.StatusOK)
	}
	if err := a.plane.Reconcile(a.ctx); err != nil {
		t.Fatal(err)
	}
	theirs, err := a.st.NodeTasks(a.ctx, victim)
	if err != nil || len(theirs) != 1 {
		t.Fatalf("tasks of %s: %v %v", victim, theirs, err)
	}
	a.clock.Advance(time.Minute)
	before, _ := a.st.GetNode(a.ctx, victim)
	events, _ := a.st.ListEvents(a.ctx, store.EventFilter{})

	cred := a.cred(mine)
	task := theirs[0]
	for _, c := range []struct {
		path string
		body any
	}{
		{"/heartbeat", api.HeartbeatRequest{Node: victim, Ready: true, Replicas: []api.ReplicaStatus{{ID: 1, Exited: true}}}},
		{fmt.Sprintf("/tasks/%d/report", task.ID), api.ReportRequest{Node: victim, Attempt: task.Attempt, Outcome: store.OutcomeSucceeded}},
		{fmt.Sprintf("/tasks/%d/report", task.ID), api.ReportRequest{Node: victim, Attempt: task.Attempt, Outcome: store.OutcomeFailed, ExitCode: 1}},
		{"/notice", api.NoticeRequest{Node: victim, Deadline: a.clock.Now().Add(time.Second), Format: "azure"}},
		{"/register", api.RegisterRequest{Node: victim, PID: 1}},
	} {
		r := a.agentAs(cred, c.path, c.body, http.StatusForbidden)
		if msg := r.errorText(t); !strings.Contains(msg, fmt.Sprintf("belongs to node %q", mine)) {
			t.Errorf("POST %s as another node: %q, want it to name the credential's node", c.path, msg)
		}
	}
	// Reporting the other node's task under its own name is fenced by the
	// store as before: not accepted.
	r := a.agentAs(cred, fmt.Sprintf("/tasks/%d/report", task.ID), api.ReportRequest{Node: mine, Attempt: task.Attempt, Outcome: store.OutcomeSucceeded}, http.StatusOK)
	if got := decode[map[string]bool](t, r); got["accepted"] {
		t.Errorf("a node's report of another node's task was accepted")
	}

	after, _ := a.st.GetNode(a.ctx, victim)
	if after.State != before.State || !after.HeartbeatAt.Equal(before.HeartbeatAt) || !after.NoticeDeadline.IsZero() {
		t.Errorf("node %s changed by another node's calls: before %+v, after %+v", victim, before, after)
	}
	if now, _ := a.st.GetTask(a.ctx, "two", task.Name); now.State != store.TaskRunning || now.Node != victim || now.Attempt != task.Attempt {
		t.Errorf("task %s changed by another node's calls: %s on %s, attempt %d", task.Name, now.State, now.Node, now.Attempt)
	}
	if es, _ := a.st.ListEvents(a.ctx, store.EventFilter{}); len(es) != len(events) {
		t.Errorf("events recorded by refused calls: %+v", es[len(events):])
	}
	// The victim's own credential still works.
	a.agent("/heartbeat", api.HeartbeatRequest{Node: victim, Ready: true}, http.StatusOK)
}

// TestAPITokens: named tokens made, listed and revoked through the API by
// an admin; a viewer reads everything, watch stream included, and every
// change it tries is refused with its role named.
func TestAPITokens(t *testing.T) {
	a := newAPI(t)
	r := a.admin("POST", "/tokens", api.TokenRequest{Name: "ci", Role: store.RoleViewer}, http.StatusCreated)
	created := decode[api.TokenCreated](t, r)
	viewer := created.Secret
	if created.Name != "ci" || created.Role != store.RoleViewer || !strings.HasPrefix(viewer, store.APITokenPrefix) {
		t.Fatalf("created: %s", r)
	}
	// Bad requests name the field and store nothing.
	for _, bad := range []struct {
		req  api.TokenRequest
		code int
		says string
	}{
		{api.TokenRequest{Name: "ci", Role: store.RoleAdmin}, http.StatusConflict, "exists"},
		{api.TokenRequest{Name: "CI tool", Role: store.RoleViewer}, http.StatusBadRequest, "name:"},
		{api.TokenRequest{Name: "x", Role: "superuser"}, http.StatusBadRequest, "role:"},
	} {
		if msg := a.admin("POST", "/tokens", bad.req, bad.code).errorText(t); !strings.Contains(msg, bad.says) {
			t.Errorf("create %+v: %q, want %q", bad.req, msg, bad.says)
		}
	}
	list := a.admin("GET", "/tokens", nil, http.StatusOK)
	if ts := decode[[]api.Token](t, list); len(ts) != 1 || ts[0].Name != "ci" || ts[0].Role != store.RoleViewer {
		t.Errorf("tokens: %s", list.body)
	}
	if strings.Contains(string(list.body), viewer) || strings.Contains(string(list.body), store.HashSecret(viewer)) {
		t.Errorf("the token list shows a secret: %s", list.body)
	}

	// The viewer reads.
	a.admin("POST", "/apply", applyFiles("p.yaml", poolYAML+"---\n"+jobYAML), http.StatusOK)
	if err := a.blobs.Write(a.ctx, "outputs/model.bin", strings.NewReader("weights")); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/pools", "/pools/cpu", "/jobs", "/jobs/train", "/nodes", "/events", "/cost", "/services", "/replicas", "/blobs", "/blobs/outputs/model.bin", "/info"} {
		if r := a.do("GET", api.Prefix+path, viewer, nil); r.code != http.StatusOK {
			t.Errorf("viewer GET %s: %s", path, r)
		}
	}
	ctx, cancel := context.WithTimeout(a.ctx, 5*time.Second)
	req, _ := http.NewRequestWithContext(ctx, "GET", a.url+api.Prefix+"/watch", nil)
	req.Header.Set("Authorization", "Bearer "+viewer)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Errorf("viewer watch: %d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	resp.Body.Close()
	cancel()
	// ... and changes nothing.
	for _, c := range []struct {
		method, path string
		body         any
	}{
		{"POST", "/apply", applyFiles("q.yaml", strings.Replace(poolYAML, "name: cpu", "name: q", 1))},
		{"DELETE", "/pools/cpu", nil},
		{"DELETE", "/jobs/train", nil},
		{"DELETE", "/services/m", nil},
		{"POST", "/nodes/n1/evict", nil},
		{"PUT", "/blobs/outputs/model.bin", []byte("poison")},
		{"POST", "/tokens", api.TokenRequest{Name: "mine", Role: store.RoleAdmin}},
		{"DELETE", "/tokens/ci", nil},
		{"GET", "/tokens", nil},
	} {
		r := a.do(c.method, api.Prefix+c.path, viewer, c.body)
		if r.code != http.StatusForbidden || !strings.Contains(r.errorText(t), "role viewer, which is read-only") {
			t.Errorf("viewer %s %s: %s, want 403 naming the role", c.method, c.path, r)
		}
	}
	if b, _ := a.blobs.ReadAll(a.ctx, "outputs/model.bin"); string(b) != "weights" {
		t.Errorf("blob after a viewer's PUT: %q", b)
	}
	a.admin("GET", "/pools/cpu", nil, http.StatusOK)
	a.admin("GET", "/pools/q", nil, http.StatusNotFound)
	a.admin("GET", "/jobs/train", nil, http.StatusOK)
	if ts := decode[[]api.Token](t, a.admin("GET", "/tokens", nil, http.StatusOK)); len(ts) != 1 {
		t.Errorf("tokens after a viewer's tries: %+v", ts)
	}

	// A named admin token does everything an admin does, tokens included.
	ops := a.token("ops", store.RoleAdmin)
	if r := a.do("POST", api.Prefix+"/tokens", ops, api.TokenRequest{Name: "ops2", Role: store.RoleViewer}); r.code != http.StatusCreated {
		t.Errorf("named admin creates a token: %s", r)
	}
	// Revoked, a token stops working at once.
	if r := a.do("DELETE", api.Prefix+"/tokens/ci", ops, nil); r.code != http.StatusNoContent {
		t.Fatalf("revoke: %s", r)
	}
	if r := a.do("GET", api.Prefix+"/jobs", viewer, nil); r.code != http.StatusUnauthorized || !strings.Contains(r.errorText(t), "revoked") {
		t.Errorf("revoked token: %s, want 401", r)
	}
	a.admin("DELETE", "/tokens/ci", nil, http.StatusNotFound)
}

// TestInfoRole: the console learns its caller's role from /info.
func TestInfoRole(t *testing.T) {
	a := newAPI(t, func(c *server.Config) { c.GatewayURL = "http://127.0.0.1:8000" })
	viewer := a.token("screen", store.RoleViewer)
	ops := a.token("ops", store.RoleAdmin)
	for _, c := range []struct{ token, role, name string }{
		{adminToken, store.RoleAdmin, "bootstrap"},
		{ops, store.RoleAdmin, "ops"},
		{viewer, store.RoleViewer, "screen"},
	} {
		r := a.do("GET", api.Prefix+"/info", c.token, nil)
		if info := decode[api.Info](t, r); r.code != http.StatusOK || info.Role != c.role || info.TokenName != c.name {
			t.Errorf("info for %s: %s, want role %s", c.name, r, c.role)
		}
	}
}
