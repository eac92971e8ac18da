package batchinf

import (
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/inference"
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

// An input whose row does not fit the model's input is failed with a
// reason that says so and points at spec.preprocess.
func TestCheckRowWrongShape(t *testing.T) {
	w := &worker{in: inference.TensorInfo{Name: "pixels", Shape: []int64{-1, 1, 28, 28}}}
	if err := w.checkRow(784); err != nil {
		t.Fatalf("a 28×28 row: %v", err)
	}
	for _, n := range []int{783, 3 * 784, 0} {
		err := w.checkRow(n)
		if err == nil || !strings.Contains(err.Error(), "wrong shape") || !strings.Contains(err.Error(), "spec.preprocess") || !strings.Contains(err.Error(), `"pixels"`) {
			t.Errorf("a row of %d values: %v; want a wrong shape naming the input and spec.preprocess", n, err)
		}
	}
	// A dynamic dimension takes any multiple of the rest.
	w.in.Shape = []int64{-1, -1, 28}
	if err := w.checkRow(3 * 28); err != nil {
		t.Errorf("3 rows of 28 on a dynamic dimension: %v", err)
	}
	if err := w.checkRow(29); err == nil {
		t.Error("29 values on rows of 28 were taken")
	}
}
