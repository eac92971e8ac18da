package main

import (
	"strings"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/cost"
	"github.com/spotml/spotml/internal/store"
)

// The progress bar counts finished tasks and what running ones report.
func TestProgressLine(t *testing.T) {
	half := 0.5
	j := store.Job{
		Counts: map[string]int{store.TaskSucceeded: 1, store.TaskRunning: 2, store.TaskPending: 1},
		Tasks: []store.Task{
			{State: store.TaskSucceeded}, {State: store.TaskRunning, Progress: &half}, {State: store.TaskRunning}, {State: store.TaskPending},
		},
	}
	got := progressLine(j, cost.Summary{}, time.Second)
	// (1 + 0.5) of 4 tasks: 37.5 % of 24 columns = 9.
	if !strings.HasPrefix(got, "["+strings.Repeat("#", 9)+strings.Repeat(".", 15)+"] 1/4 tasks done (38%), 2 running, 1 pending") {
		t.Errorf("progress line %q", got)
	}
	j.Tasks[1].Progress = nil
	if got := progressLine(j, cost.Summary{}, time.Second); !strings.HasPrefix(got, "["+strings.Repeat("#", 6)+strings.Repeat(".", 18)+"] 1/4 tasks done, ") {
		t.Errorf("without reports: %q", got)
	}
}
