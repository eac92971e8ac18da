package e2e

import (
	"slices"
	"testing"
)

// TestApplyRefusesBadPool: `spotml apply` of a GCP pool with bad
// settings is refused by the control plane before anything is stored or
// asked of Compute Engine, with an error naming each wrong field.
func TestApplyRefusesBadPool(t *testing.T) {
	c := startGCP(t)
	c.p.ApplyRefused(`apiVersion: spotml/v1
kind: Pool
metadata: {name: gpu}
spec:
  provider: gcp
  priority: spot
  instanceType: n1-standard-4
  zones: [us-central1-a, europe-west4-b]
  max: 2
  gcp:
    project: My Project
    image: debian-12
    subnetwork: regions/us-central1/subnetworks/ml
`, `spec.gcp.project: "My Project" is not a project ID`, `spec.gcp.image: "debian-12" is not an image`,
		`spec.zones[1]: "europe-west4-b" is not in region us-central1 of spec.gcp.subnetwork`)
	if calls := c.Calls(); slices.Contains(calls, "POST instances") || len(c.Instances()) != 0 {
		t.Errorf("a refused apply made a VM: %q", calls)
	}
}
