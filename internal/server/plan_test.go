package server_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/store"
	"github.com/spotml/spotml/internal/trace"
)

// TestPlan: a viewer lists the traces and plans a service on two of
// them; a trace outside the directory, a spec without a service and a bad
// duration are refused with the field named, and nothing is stored.
func TestPlan(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "x"), 0o755)
	day := `{"metadata": {"gap_seconds": 600}, "data": [` + strings.TrimSuffix(strings.Repeat("2, ", 150), ", ") + `]}`
	os.WriteFile(filepath.Join(dir, "x", "stable.json"), []byte(day), 0o644)
	os.WriteFile(filepath.Join(dir, "gone.json"), []byte(strings.Replace(day, "2, 2, 2, 2, 2, 2", "0, 0, 0, 0, 0, 0", 1)), 0o644)
	os.WriteFile(filepath.Join(dir, "README.md"), []byte("not a trace"), 0o644)
	os.WriteFile(filepath.Join(t.TempDir(), "secret.json"), []byte(day), 0o644)
	a := newAPI(t, func(c *server.Config) { c.TracesDir = dir })
	viewer := a.token("reader", store.RoleViewer)

	r := a.do("GET", api.Prefix+"/plan/traces", viewer, nil)
	if r.code != http.StatusOK {
		t.Fatal(r)
	}
	if got := decode[api.PlanTraces](t, r); strings.Join(got.Traces, ",") != "gone.json,x/stable.json" {
		t.Errorf("traces %v, want gone.json and x/stable.json", got.Traces)
	}
	const svc = "apiVersion: spotml/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  model: {uri: m.onnx}\n  replicas: {min: 2}\n  placement: {tier: strict}\n"
	r = a.do("POST", api.Prefix+"/plan", viewer, api.PlanRequest{Spec: svc, Traces: []string{"gone.json", "x/stable.json"},
		InstanceType: "m5.large", Offsets: 3, Duration: "20h", Boot: "90s", QPS: 30})
	if r.code != http.StatusOK {
		t.Fatal(r)
	}
	type tier struct {
		Tier  string
		Spec  bool
		Sweep []any
		Run   struct {
			Availability float64
			Timeline     []any
		}
	}
	rep := decode[struct{ Tiers []tier }](t, r)
	if len(rep.Tiers) != 3 || !rep.Tiers[2].Spec || len(rep.Tiers[2].Sweep) != 3 || len(rep.Tiers[2].Run.Timeline) < 2 || rep.Tiers[2].Run.Availability < 0.99 {
		t.Errorf("plan: %s", r)
	}
	for _, bad := range []struct {
		req  api.PlanRequest
		says string
	}{
		{api.PlanRequest{Spec: svc, Traces: []string{"../" + filepath.Base(filepath.Dir(dir)) + "/secret.json"}, InstanceType: "m5.large"}, "not a trace under"},
		{api.PlanRequest{Spec: svc, Traces: []string{"/etc/passwd"}, InstanceType: "m5.large"}, "not a trace under"},
		{api.PlanRequest{Spec: "apiVersion: spotml/v1\nkind: Pool\nmetadata: {name: p}\nspec: {provider: local, priority: spot, instanceType: m5.large, max: 1}\n", Traces: []string{"gone.json"}}, "no Service"},
		{api.PlanRequest{Spec: svc, Traces: []string{"gone.json"}, InstanceType: "m5.large", Boot: "soon"}, "boot"},
		{api.PlanRequest{Spec: svc, Traces: []string{"gone.json"}}, "instanceType"},
	} {
		r := a.do("POST", api.Prefix+"/plan", viewer, bad.req)
		if r.code != http.StatusBadRequest || !strings.Contains(r.errorText(t), bad.says) {
			t.Errorf("%+v: %s, want 400 saying %q", bad.req, r, bad.says)
		}
	}
	a.assertEmpty()
}

// TestPoolHistory: a spot pool's recorded nodes and refused launches come
// back as a trace with the pool's evictions and shortage in it, which
// POST /plan replays as pool/NAME; an on-demand pool, an unknown one and
// a bad gap are refused.
func TestPoolHistory(t *testing.T) {
	a := newAPI(t)
	viewer := a.token("reader", store.RoleViewer)
	a.admin("POST", "/apply", applyFiles("pools.yaml", `apiVersion: spotml/v1
kind: Pool
metadata: {name: spot}
spec: {provider: local, priority: spot, instanceType: m5.large, max: 1}
---
apiVersion: spotml/v1
kind: Pool
metadata: {name: od}
spec: {provider: local, priority: ondemand, instanceType: m5.large, max: 2}
`), http.StatusOK)
	node := func(name string) {
		t.Helper()
		if err := a.st.CreateNode(a.ctx, store.Node{Name: name, Pool: "spot", Priority: "spot", InstanceType: "m5.large"}); err != nil {
			t.Fatal(err)
		}
	}
	// a lives 100s and is preempted; b is launched at once, noticed at
	// 200s and gone at 230s; launches are refused until c at 300s.
	node("a")
	a.clock.Advance(100 * time.Second)
	if err := a.st.EndNode(a.ctx, "a", store.NodePreempted, "taken"); err != nil {
		t.Fatal(err)
	}
	node("b")
	a.clock.Advance(100 * time.Second)
	if _, err := a.st.SetNotice(a.ctx, "b", a.clock.Now().Add(30*time.Second), "test"); err != nil {
		t.Fatal(err)
	}
	a.clock.Advance(30 * time.Second)
	if err := a.st.EndNode(a.ctx, "b", store.NodePreempted, "taken"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		a.clock.Advance(20 * time.Second)
		if err := a.st.AddEvent(a.ctx, "LaunchFailed", "pool/spot", "NoCapacity", "no spot"); err != nil {
			t.Fatal(err)
		}
	}
	a.clock.Advance(10 * time.Second)
	node("c")
	a.clock.Advance(300 * time.Second)

	r := a.do("GET", api.Prefix+"/plan/traces", viewer, nil)
	if got := decode[api.PlanTraces](t, r); strings.Join(got.Traces, ",") != "pool/spot" {
		t.Errorf("traces %v, want the spot pool's history alone", got.Traces)
	}
	r = a.do("GET", api.Prefix+"/pools/spot/history?gap=1s", viewer, nil)
	if r.code != http.StatusOK {
		t.Fatal(r)
	}
	tr, err := trace.Parse(r.body)
	if err != nil {
		t.Fatalf("%v: %s", err, r.body)
	}
	for _, c := range []struct {
		at   time.Duration
		want int
	}{{50 * time.Second, 1}, {100 * time.Second, 0}, {150 * time.Second, 1}, {210 * time.Second, 0}, {290 * time.Second, 0}, {400 * time.Second, 1}} {
		if got := tr.CapacityAt(c.at); got != c.want {
			t.Errorf("capacity at %s: %d, want %d", c.at, got, c.want)
		}
	}
	if tr.Duration != 600*time.Second {
		t.Errorf("history covers %s, want the pool's 10m", tr.Duration)
	}

	const svc = "apiVersion: spotml/v1\nkind: Service\nmetadata: {name: web}\nspec:\n  model: {uri: m.onnx}\n  replicas: {min: 1}\n  placement: {tier: dev}\n"
	r = a.do("POST", api.Prefix+"/plan", viewer, api.PlanRequest{Spec: svc, Traces: []string{"pool/spot"}, InstanceType: "m5.large", Boot: "1s", Load: "1s"})
	if r.code != http.StatusOK {
		t.Fatal(r)
	}
	rep := decode[struct {
		Tiers []struct {
			Tier string
			Run  struct {
				Availability float64
				Notices      int
			}
		}
	}](t, r)
	if len(rep.Tiers) == 0 || rep.Tiers[0].Tier != "dev" || rep.Tiers[0].Run.Notices != 2 || rep.Tiers[0].Run.Availability > 0.9 {
		t.Errorf("a dev service on the pool's history: %s; want 2 notices and the shortage unavailable", r)
	}

	for _, bad := range []struct {
		path string
		code int
		says string
	}{
		{"/pools/od/history", http.StatusBadRequest, "spot pool"},
		{"/pools/nope/history", http.StatusNotFound, ""},
		{"/pools/spot/history?gap=0s", http.StatusBadRequest, "gap"},
		{"/pools/spot/history?window=1h&gap=1ms", http.StatusBadRequest, "gap"},
	} {
		r := a.do("GET", api.Prefix+bad.path, viewer, nil)
		if r.code != bad.code || !strings.Contains(r.errorText(t), bad.says) {
			t.Errorf("%s: %s, want %d saying %q", bad.path, r, bad.code, bad.says)
		}
	}
}
