package main

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
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
