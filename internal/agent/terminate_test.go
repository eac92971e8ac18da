package agent_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/agent"
	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/notice"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// TestTerminateDrains: a Terminate (SIGTERM to a pod's agent) is an
// eviction notice. The agent reports the notice, stops its task with
// SIGTERM, saves its checkpoint, reports the attempt preempted, and
// returns by itself, well before the deadline.
func TestTerminateDrains(t *testing.T) {
	// A task that saves its state when told to stop, as the checkpointing
	// tasks of spotml's guide do.
	started := filepath.Join(t.TempDir(), "started")
	p := newFakePlane(t, api.Assignment{TaskID: 7, Attempt: 1, Job: "j", JobUID: "u", Task: "task-0",
		Spec: spec.TaskSpec{
			Command:    spec.Command{"/bin/sh", "-c", "trap 'echo step-41 > ckpt/state; exit 143' TERM; touch " + started + "; while :; do sleep 0.05; done"},
			Checkpoint: &spec.Checkpoint{Path: "ckpt", Interval: spec.Duration{Duration: time.Hour}},
		}})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	a, done := p.start(t, ctx, agent.Config{}, started)
	deadline := time.Now().Add(20 * time.Second)
	a.Terminate(notice.Notice{Deadline: deadline, Format: "kubernetes", Detail: "SIGTERM"})
	wait(t, ctx, done)
	if time.Now().After(deadline) {
		t.Error("the agent waited out the deadline instead of returning once drained")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.notices) != 1 || !p.notices[0].Deadline.Equal(deadline) || p.notices[0].Node != "n" {
		t.Errorf("notices = %+v, want one for node n with the SIGTERM's deadline", p.notices)
	}
	if len(p.reports) != 1 || p.reports[0].Outcome != store.OutcomePreempted {
		t.Fatalf("reports = %+v, want attempt 1 preempted", p.reports)
	}
	// The checkpoint the task wrote on SIGTERM is in blob storage.
	found := false
	filepath.WalkDir(filepath.Join(p.dir, "blobs"), func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if b, _ := os.ReadFile(p); string(b) == "step-41\n" {
				found = true
			}
		}
		return nil
	})
	if !found {
		t.Error("the checkpoint written on SIGTERM is not in blob storage")
	}
}
