package main

import (
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/api"
)

// The progress bar counts finished tasks and what running ones report.
func TestProgressLine(t *testing.T) {
	half := 0.5
	j := api.Job{
		Counts: map[string]int{api.TaskSucceeded: 1, api.TaskRunning: 2, api.TaskPending: 1},
		Tasks: []api.Task{
			{State: api.TaskSucceeded}, {State: api.TaskRunning, Progress: &half}, {State: api.TaskRunning}, {State: api.TaskPending},
		},
	}
	got := progressLine(j, api.Cost{}, time.Second)
	// (1 + 0.5) of 4 tasks: 37.5 % of 24 columns = 9.
	if !strings.HasPrefix(got, "["+strings.Repeat("#", 9)+strings.Repeat(".", 15)+"] 1/4 tasks done (38%), 2 running, 1 pending") {
		t.Errorf("progress line %q", got)
	}
	j.Tasks[1].Progress = nil
	if got := progressLine(j, api.Cost{}, time.Second); !strings.HasPrefix(got, "["+strings.Repeat("#", 6)+strings.Repeat(".", 18)+"] 1/4 tasks done, ") {
		t.Errorf("without reports: %q", got)
	}
}

// The transfer bar of blob put/get: filled by the share moved, or only
// counts when the size is unknown.
func TestTransferLine(t *testing.T) {
	if got, want := transferLine("m.onnx", 3<<20, 12<<20, 2*time.Second), "[######..................] m.onnx 3.0 MiB / 12.0 MiB 1.5 MiB/s | 2s"; got != want {
		t.Errorf("transferLine = %q, want %q", got, want)
	}
	if got, want := transferLine("m.onnx", 512, -1, time.Second), "m.onnx 512 B 512 B/s | 1s"; got != want {
		t.Errorf("transferLine = %q, want %q", got, want)
	}
}
