package server_test

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/server"
	"github.com/spotml/spotml/internal/store"
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
