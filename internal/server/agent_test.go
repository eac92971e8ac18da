package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/store"
)

// TestConcurrentReports has a fleet's agents report at once, each report
// sent twice: reports are committed in groups, and each attempt is still
// accepted exactly once.
func TestConcurrentReports(t *testing.T) {
	a := newAPI(t)
	const tasks = 24
	pool := strings.Replace(poolYAML, "  max: 2\n", "  max: 2\n  capacity: {cpu: 16, memory: 64Gi}\n  pricePerHour: 0.1\n", 1)
	job := fmt.Sprintf("apiVersion: spotml/v1\nkind: Job\nmetadata: {name: wide}\nspec: {pool: cpu, count: %d, template: {command: [run]}}\n", tasks)
	a.admin("POST", "/apply", applyFiles("wide.yaml", pool+"---\n"+job), http.StatusOK)
	if err := a.plane.Reconcile(a.ctx); err != nil {
		t.Fatal(err)
	}
	for _, n := range a.prov.launched {
		a.agent("/heartbeat", api.HeartbeatRequest{Node: n, Ready: true}, http.StatusOK)
	}
	if err := a.plane.Reconcile(a.ctx); err != nil {
		t.Fatal(err)
	}
	running, err := a.st.RunningTasks(a.ctx)
	if err != nil || len(running) != tasks {
		t.Fatalf("%d of %d tasks running (%v)", len(running), tasks, err)
	}

	creds := map[string]string{}
	for _, n := range a.prov.launched {
		creds[n] = a.cred(n)
	}
	type result struct {
		accepted bool
		err      error
	}
	results := make(chan result, 2*tasks)
	var wg sync.WaitGroup
	for _, tk := range running {
		for range 2 {
			wg.Go(func() {
				body, _ := json.Marshal(api.ReportRequest{Node: tk.Node, Attempt: tk.Attempt, Outcome: store.OutcomeSucceeded})
				code, b, err := post(a.ctx, fmt.Sprintf("%s%s/agent/tasks/%d/report", a.url, api.Prefix, tk.ID), creds[tk.Node], body)
				if err == nil && code != http.StatusOK {
					err = fmt.Errorf("report: %d %s", code, b)
				}
				var r map[string]bool
				if err == nil {
					err = json.Unmarshal(b, &r)
				}
				results <- result{r["accepted"], err}
			})
		}
	}
	wg.Wait()
	close(results)
	accepted := 0
	for r := range results {
		if r.err != nil {
			t.Error(r.err)
		}
		if r.accepted {
			accepted++
		}
	}
	if accepted != tasks {
		t.Errorf("%d reports accepted, want %d (one per attempt)", accepted, tasks)
	}
	j := decode[api.Job](t, a.admin("GET", "/jobs/wide", nil, http.StatusOK))
	if j.State != store.JobSucceeded || j.Counts[store.TaskSucceeded] != tasks {
		t.Errorf("job %s with %v", j.State, j.Counts)
	}
	if es := decode[[]api.Event](t, a.admin("GET", "/events?object=job/wide&kind=Succeeded", nil, http.StatusOK)); len(es) != 1 {
		t.Errorf("job Succeeded events: %+v", es)
	}
}

// post sends a JSON body with a token; safe in any goroutine.
func post(ctx context.Context, url, token string, body []byte) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// evictor is the local provider's market as the API sees it: an eviction
// is a notice recorded for the node.
type evictor struct {
	st      *store.Store
	now     func() time.Time
	mu      sync.Mutex
	notices []time.Duration
}

func (e *evictor) Evict(ctx context.Context, node string, notice time.Duration) error {
	e.mu.Lock()
	e.notices = append(e.notices, notice)
	e.mu.Unlock()
	if notice == 0 {
		notice = 30 * time.Second
	}
	_, err := e.st.SetNotice(ctx, node, e.now().Add(notice), "provider")
	return err
}

func TestEvict(t *testing.T) {
	a := newAPI(t)
	if msg := a.admin("POST", "/nodes/n1/evict", nil, http.StatusNotImplemented).errorText(t); !strings.Contains(msg, "local provider") {
		t.Errorf("evict without a market: %s", msg)
	}

	var ev *evictor
	a = newAPI(t, func(c *server.Config) {
		ev = &evictor{st: c.Store, now: c.Now}
		c.Evictor = ev
	})
	a.admin("POST", "/apply", applyFiles("pool.yaml", strings.Replace(poolYAML, "  max: 2\n", "  min: 1\n  max: 2\n", 1)), http.StatusOK)
	if err := a.plane.Reconcile(a.ctx); err != nil {
		t.Fatal(err)
	}
	node := a.prov.launched[0]
	for _, bad := range []string{"soon", "-5s", "0s"} {
		a.admin("POST", "/nodes/"+node+"/evict", api.EvictRequest{Notice: bad}, http.StatusBadRequest)
	}
	a.admin("POST", "/nodes/"+node+"/evict", map[string]string{"when": "now"}, http.StatusBadRequest)
	a.admin("POST", "/nodes/nope/evict", api.EvictRequest{Notice: "10s"}, http.StatusNotFound)
	n := decode[api.Node](t, a.admin("POST", "/nodes/"+node+"/evict", api.EvictRequest{Notice: "2m"}, http.StatusAccepted))
	if n.Name != node || !n.NoticeDeadline.Equal(t0.Add(2*time.Minute)) {
		t.Errorf("evicted node: %+v", n)
	}
	a.admin("POST", "/nodes/"+node+"/evict", nil, http.StatusAccepted)
	if fmt.Sprint(ev.notices) != "[10s 2m0s 0s]" {
		t.Errorf("notices asked of the market: %v", ev.notices)
	}
}

func TestBlobs(t *testing.T) {
	a := newAPI(t)
	r := a.admin("PUT", "/blobs/outputs/run1/model.bin", []byte("weights"), http.StatusCreated)
	if got := decode[map[string]string](t, r); got["path"] != "outputs/run1/model.bin" {
		t.Errorf("put: %s", r.body)
	}
	if r := a.admin("GET", "/blobs/outputs/run1/model.bin", nil, http.StatusOK); string(r.body) != "weights" {
		t.Errorf("get: %q", r.body)
	}
	for _, prefix := range []string{"outputs", "outputs/", "outputs/run1"} {
		list := a.admin("GET", "/blobs?prefix="+prefix, nil, http.StatusOK)
		if !strings.Contains(string(list.body), `"outputs/run1/model.bin"`) {
			t.Errorf("list %s: %s", prefix, list.body)
		}
	}
	if r := a.admin("GET", "/blobs?prefix=nothing/", nil, http.StatusOK); strings.TrimSpace(string(r.body)) != "[]" {
		t.Errorf("empty list: %s", r.body)
	}
	for _, prefix := range []string{"../", "a/../../b", "/etc", "file:///etc"} {
		a.admin("GET", "/blobs?prefix="+prefix, nil, http.StatusBadRequest)
	}
}

func TestMetrics(t *testing.T) {
	a := newAPI(t)
	a.admin("POST", "/apply", applyFiles("train.yaml", poolYAML+"---\n"+jobYAML), http.StatusOK)
	if err := a.plane.Reconcile(a.ctx); err != nil {
		t.Fatal(err)
	}
	r := a.do("GET", "/metrics", "", nil)
	if r.code != http.StatusOK {
		t.Fatalf("/metrics: %s", r)
	}
	for _, want := range []string{`spotml_jobs{state="running"} 1`, `spotml_tasks{state="pending"} 1`,
		`spotml_nodes{pool="cpu",priority="spot",state="provisioning"} 1`, `spotml_cost_dollars{pool="cpu",priority="spot"} 0`} {
		if !strings.Contains(string(r.body), want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
}
