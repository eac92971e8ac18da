package batchinf

import (
	"testing"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

func TestLeaseFor(t *testing.T) {
	sp := spec.BatchSpec{Runtime: spec.BatchRuntime{BatchSize: 32}}
	for _, c := range []struct {
		n    int
		took time.Duration
		want int
	}{
		{32, time.Second, 32},             // 32 items/s: less than a unit in leaseWork, still one
		{32, 200 * time.Millisecond, 64},  // 160/s: 80 in 0.5 s, rounds down to 2 units
		{32, 160 * time.Millisecond, 96},  // 200/s: 100 in 0.5 s, 3 units
		{128, 10 * time.Millisecond, 256}, // very fast: at most maxLeaseBatches units
		{32, 0, 256},                      // too fast to time
	} {
		if got := leaseFor(sp, c.n, c.took); got != c.want {
			t.Errorf("leaseFor(%d in %s) = %d, want %d", c.n, c.took, got, c.want)
		}
	}
	// Whole groups: a unit of 3 groups of 4 for a batch of 10.
	sp = spec.BatchSpec{Runtime: spec.BatchRuntime{BatchSize: 10}, Queue: spec.BatchQueue{GroupSize: 4}}
	if got := leaseFor(sp, 12, 200*time.Millisecond); got != 24 {
		t.Errorf("grouped leaseFor = %d, want 24 (2 units of 12)", got)
	}
}
