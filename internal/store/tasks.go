package store

import (
	"time"

	"github.com/spotml/spotml/internal/spec"
)

// Assignment places one pending task on a node.
type Assignment struct {
	TaskID int64
	Node   string
}

// Outcome of one attempt as the agent reports it.
const (
	OutcomeSucceeded = "succeeded"
	OutcomeFailed    = "failed"
	OutcomePreempted = "preempted" // stopped because of an eviction notice
)

// Report is how one attempt of a task ended, as its agent says.
type Report struct {
	TaskID   int64
	Node     string
	Attempt  int
	Outcome  string
	ExitCode int
	Message  string
}

// Attempt is one run of a task on a node.
type Attempt struct {
	Attempt   int       `json:"attempt"`
	Node      string    `json:"node"`
	StartedAt time.Time `json:"startedAt"`
	EndedAt   time.Time `json:"endedAt,omitzero"`
	Outcome   string    `json:"outcome,omitempty"` // succeeded, failed, preempted, evicted, lost
	ExitCode  int       `json:"exitCode"`
	// FirstProgressAt is when the attempt first reported progress: its
	// work running, after the start and any restore of a checkpoint; zero
	// before that, or for a task that reports none.
	FirstProgressAt time.Time `json:"firstProgressAt,omitzero"`
}

// Progress is what a running attempt last reported of itself.
type Progress struct {
	TaskID   int64
	Attempt  int
	Fraction float64 // 0..1
	Message  string
}

// OutcomeMoved ends an attempt the control plane stopped to run the task
// on other capacity (spot to on-demand or back, for its deadline): neither
// a failure nor a preemption.
const OutcomeMoved = "moved"

// Steer sets where a task may run next: a pending task gets the priority
// (and no pool) at once; a running one (when Move is set) is stopped, its
// attempt ended as moved, and queued again with the priority, without
// spending a retry or counting a preemption.
type Steer struct {
	TaskID   int64
	Priority string
	Move     bool
	Why      string
}

// QueuedTask is a pending task as the scheduler reads it (Store.EachPending):
// no spec, no history.
type QueuedTask struct {
	ID       int64
	JobID    int64
	Index    int
	Order    int64 // the job's submit time: the FIFO key, as in Task
	Pool     string
	Priority string
	Req      spec.Resources
}

// Demand is the queue summed for the pool scaler (Store.PendingDemand).
type Demand struct {
	// Pinned sums the requests of the pending tasks that name a pool, by
	// pool.
	Pinned map[string]spec.Resources
	// Loose are the pending tasks that name no pool, in FIFO order: which
	// pool each counts toward depends on those before it.
	Loose []QueuedTask
}
