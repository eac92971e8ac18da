package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestPlan runs spotml plan on short synthetic traces with known answers.
func TestPlan(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	job := write("job.yaml", `apiVersion: spotml/v1
kind: Pool
metadata: {name: spot}
spec: {provider: local, priority: spot, instanceType: local-small, max: 1, pricePerHour: 1}
---
apiVersion: spotml/v1
kind: Pool
metadata: {name: od}
spec: {provider: local, priority: ondemand, instanceType: local-small, max: 1, pricePerHour: 4}
---
apiVersion: spotml/v1
kind: Job
metadata: {name: train}
spec: {deadline: 10h, work: 6h, count: 1, template: {command: [train]}}
`)
	ones := `{"metadata": {"gap_seconds": 600}, "data": [` + strings.TrimSuffix(strings.Repeat("1, ", 120), ", ") + `]}`
	zeros := strings.ReplaceAll(ones, "1", "0")
	for _, tt := range []struct {
		name, trace string
		fraction    float64 // of all on-demand, from the start
	}{
		// Spot throughout: all spot, a quarter of the price.
		{"stable", write("ones.json", ones), 0.25},
		// No spot at all: all on-demand, and still on time.
		{"none", write("zeros.json", zeros), 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, err := spotml(t, "", "plan", "-f", job, "--trace", tt.trace, "--changeover", "6m", "--offsets", "5", "-o", "json")
			if err != nil {
				t.Fatal(err)
			}
			var p Plan
			if err := json.Unmarshal([]byte(out), &p); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if !p.Run.Met || p.MetFraction != 1 || math.Abs(p.Run.Fraction-tt.fraction) > 0.02 || math.Abs(p.WorstFraction-tt.fraction) > 0.02 {
				t.Errorf("plan %+v: want fraction %.2f and the deadline met from every start", p, tt.fraction)
			}
			if p.SpotPrice != 1 || p.OnDemandPrice != 4 {
				t.Errorf("prices %g/%g, want the pools' 1/4", p.SpotPrice, p.OnDemandPrice)
			}
			table, err := spotml(t, "", "plan", "-f", job, "--trace", tt.trace, "--offsets", "5")
			if err != nil || !strings.Contains(table, "deadline met") || !strings.Contains(table, "OVER 5 STARTS") {
				t.Errorf("table: %v\n%s", err, table)
			}
		})
	}
	noWork := write("nowork.yaml", "apiVersion: spotml/v1\nkind: Job\nmetadata: {name: j}\nspec: {deadline: 10h, count: 1, template: {command: [x]}}\n")
	if _, err := spotml(t, "", "plan", "-f", noWork, "--trace", filepath.Join(dir, "ones.json"), "--instance-type", "p3.2xlarge"); err == nil || !strings.Contains(err.Error(), "spec.work") {
		t.Errorf("plan without spec.work: %v, want an error naming spec.work", err)
	}
}

// TestPlanService runs spotml plan on a service over two spot pools of
// the -f files, one stable and one that loses its capacity for an hour,
// and checks the per-tier report in JSON and as a table.
func TestPlanService(t *testing.T) {
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	ticks := func(vals ...string) string {
		return `{"metadata": {"gap_seconds": 600}, "data": [` + strings.Join(vals, ", ") + `]}`
	}
	many := func(v string, n int) string { return strings.TrimSuffix(strings.Repeat(v+", ", n), ", ") }
	stable := write("stable.json", ticks(many("2", 144)))
	gone := write("gone.json", ticks(many("2", 30), many("0", 6), many("2", 108)))
	svc := write("svc.yaml", `apiVersion: spotml/v1
kind: Pool
metadata: {name: a}
spec: {provider: local, priority: spot, instanceType: local-small, zones: ["1"], max: 4, local: {notice: 30s}}
---
apiVersion: spotml/v1
kind: Pool
metadata: {name: b}
spec: {provider: local, priority: spot, instanceType: local-small, zones: ["2"], max: 4}
---
apiVersion: spotml/v1
kind: Pool
metadata: {name: od}
spec: {provider: local, priority: ondemand, instanceType: local-small, max: 4}
---
apiVersion: spotml/v1
kind: Service
metadata: {name: web}
spec:
  model: {uri: models/m.onnx}
  replicas: {min: 2, targetQPSPerReplica: 10}
  placement: {tier: prod}
`)
	out, err := spotml(t, "", "plan", "-f", svc, "--trace", gone, "--trace", stable, "--duration", "20h", "--offsets", "4", "--qps", "15", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Tiers []struct {
			Tier     string
			Spec     bool
			Replicas int
			Run      struct {
				Availability, Answered, HeadroomP99, Fraction, Cost float64
				Notices                                             int
				Timeline                                            []struct{ Ready int }
			}
			Sweep []struct{ Offset int64 }
		}
		Pools []struct{ Name, Trace string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if len(rep.Tiers) != 3 || len(rep.Pools) != 3 || rep.Pools[0].Trace != gone || rep.Pools[1].Trace != stable {
		t.Fatalf("report %s: want 3 tiers and the pools a, b with their traces in order", out)
	}
	for _, tp := range rep.Tiers {
		r := tp.Run
		t.Logf("%s: %+v", tp.Tier, r)
		if tp.Replicas != 2 || len(tp.Sweep) != 4 || len(r.Timeline) < 2 || r.Availability <= 0.9 || r.Answered <= 0.9 || r.Fraction <= 0 || r.Fraction > 1 {
			t.Errorf("%s: %+v", tp.Tier, tp)
		}
		if tp.Spec != (tp.Tier == "prod") {
			t.Errorf("%s marked spec %v", tp.Tier, tp.Spec)
		}
	}
	// dev does not spread: both replicas go to pool a, which loses them,
	// and the curve shows the stretch without a replica; strict's
	// on-demand replica serves throughout.
	zero := func(tl []struct{ Ready int }) bool {
		return slices.ContainsFunc(tl, func(p struct{ Ready int }) bool { return p.Ready == 0 })
	}
	if dev := rep.Tiers[0].Run; dev.Notices != 2 || !zero(dev.Timeline) {
		t.Errorf("dev: %d notices, timeline %v; want both replicas noticed in pool a and a stretch with none ready", dev.Notices, dev.Timeline)
	}
	if strict := rep.Tiers[2].Run; zero(strict.Timeline) {
		t.Errorf("strict: timeline %v has a stretch with no replica ready", strict.Timeline)
	}
	table, err := spotml(t, "", "plan", "-f", svc, "--trace", gone, "--trace", stable, "--duration", "20h", "--offsets", "4")
	if err != nil || !strings.Contains(table, "prod (spec)") || !strings.Contains(table, "P99 HEADROOM") || !strings.Contains(table, "POOL a") {
		t.Errorf("table: %v\n%s", err, table)
	}
	if _, err := spotml(t, "", "plan", "-f", svc, "--trace", gone, "--trace", stable, "--trace", stable); err == nil || !strings.Contains(err.Error(), "one trace per spot pool") {
		t.Errorf("three traces for two spot pools: %v, want an error saying one per pool", err)
	}
}

// TestPlanPoolFlags: --pool and --trace do not mix, -o trace needs one
// pool, and a job takes one market; each error names the flag.
func TestPlanPoolFlags(t *testing.T) {
	dir := t.TempDir()
	job := filepath.Join(dir, "job.yaml")
	os.WriteFile(job, []byte("apiVersion: spotml/v1\nkind: Job\nmetadata: {name: j}\nspec: {deadline: 1h, work: 10m, count: 1, template: {command: [x]}}\n"), 0o644)
	for _, tt := range []struct {
		args []string
		says string
	}{
		{[]string{"-f", job, "--pool", "a", "--trace", "t.json"}, "--pool"},
		{[]string{"-o", "trace"}, "--pool NAME"},
		{[]string{"--pool", "a", "--pool", "b", "-o", "trace"}, "one pool"},
	} {
		if _, err := spotml(t, "http://127.0.0.1:1", append([]string{"plan"}, tt.args...)...); err == nil || !strings.Contains(err.Error(), tt.says) {
			t.Errorf("plan %v: %v, want an error saying %q", tt.args, err, tt.says)
		}
	}
}
