package agent_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/spotml/spotml/internal/agent"
	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/notice"
	"github.com/spotml/spotml/internal/spec"
	"github.com/spotml/spotml/internal/store"
)

// TestBatchWorkerKilledReleases: a BatchInference worker that is still
// holding items when its node's notice runs out is SIGKILLed, and its
// agent then gives back everything it held at once (release all), rather
// than leaving the items to wait out their leases.
func TestBatchWorkerKilledReleases(t *testing.T) {
	started := filepath.Join(t.TempDir(), "started")
	job := api.BatchWorkerJob("score", 1)
	p := newFakePlane(t, api.Assignment{TaskID: 3, Attempt: 2, Job: job, JobUID: "u", Task: "task-0", Spec: spec.TaskSpec{Command: spec.Command{"unused"}}})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// A worker stuck on its items: it ignores the notice's SIGTERM.
	a, done := p.start(t, ctx, agent.Config{
		BatchWorker: []string{"/bin/sh", "-c", "trap '' TERM; touch " + started + "; while :; do sleep 0.05; done"}}, started)
	a.Terminate(notice.Notice{Deadline: time.Now().Add(1500 * time.Millisecond), Format: "kubernetes", Detail: "SIGTERM"})
	wait(t, ctx, done)
	p.mu.Lock()
	defer p.mu.Unlock()
	if want := "n:" + job + "/task-0#2"; len(p.releases) != 1 || !p.releases[0].All || p.releases[0].Worker != want || len(p.releases[0].IDs) != 0 {
		t.Errorf("releases = %+v, want one of all that %s held", p.releases, want)
	}
	if len(p.reports) != 1 || p.reports[0].Outcome != store.OutcomePreempted {
		t.Errorf("reports = %+v, want attempt 2 preempted", p.reports)
	}
}

// A worker that crashes is not released: its leases run out and count as
// attempts, so an input that crashes every worker is failed after
// maxAttempts rather than handed out for ever.
func TestBatchWorkerCrashLeavesLeases(t *testing.T) {
	started := filepath.Join(t.TempDir(), "started")
	p := newFakePlane(t, api.Assignment{TaskID: 3, Attempt: 1, Job: api.BatchWorkerJob("score", 1), JobUID: "u", Task: "task-0", Spec: spec.TaskSpec{Command: spec.Command{"unused"}}})
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	_, done := p.start(t, ctx, agent.Config{BatchWorker: []string{"/bin/sh", "-c", "touch " + started + "; exit 3"}}, started)
	for {
		p.mu.Lock()
		reported := len(p.reports)
		p.mu.Unlock()
		if reported > 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the crash was never reported")
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	<-done
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.releases) != 0 || p.reports[0].Outcome != store.OutcomeFailed {
		t.Errorf("releases %+v, reports %+v; want no release and the attempt failed", p.releases, p.reports)
	}
}
