package store

import (
	"time"

	"github.com/spotml/spotml/internal/spec"
)

// Pool is a stored pool.
type Pool struct {
	Spec       spec.Pool `json:"pool"`
	Generation int64     `json:"generation"`
	CreatedAt  time.Time `json:"createdAt"`
	UpdatedAt  time.Time `json:"updatedAt"`
}

// Job is a stored job with its tasks' counts.
type Job struct {
	ID          int64          `json:"id"`
	UID         string         `json:"uid"`
	Spec        spec.Job       `json:"job"`
	State       string         `json:"state"` // running, succeeded, failed
	SubmittedAt time.Time      `json:"submittedAt"`
	FinishedAt  time.Time      `json:"finishedAt,omitzero"`
	Counts      map[string]int `json:"counts"`    // tasks by state
	Evictions   int            `json:"evictions"` // preemptions (and lost nodes): they spend no retries
	Failures    int            `json:"failures"`  // failed attempts, each a retry spent
	Tasks       []Task         `json:"tasks,omitempty"`
}

// Task states.
const (
	TaskPending   = "pending"
	TaskRunning   = "running"
	TaskSucceeded = "succeeded"
	TaskFailed    = "failed"
)

// Job states.
const (
	JobRunning   = "running"
	JobSucceeded = "succeeded"
	JobFailed    = "failed"
)

// Task is one task of a job.
type Task struct {
	ID         int64          `json:"id"`
	JobID      int64          `json:"jobId"`
	Job        string         `json:"job"`
	JobUID     string         `json:"jobUid"`
	Name       string         `json:"name"`
	Index      int            `json:"index"`
	Spec       spec.TaskSpec  `json:"spec"`
	Pool       string         `json:"pool,omitempty"`
	Priority   string         `json:"priority,omitempty"`
	Req        spec.Resources `json:"resources"`
	MaxRetries int            `json:"maxRetries"`
	State      string         `json:"state"`
	Node       string         `json:"node,omitempty"`
	Attempt    int            `json:"attempt"`
	Failures   int            `json:"failures"`
	Evictions  int            `json:"evictions"`
	ExitCode   int            `json:"exitCode"`
	Message    string         `json:"message,omitempty"`
	StartedAt  time.Time      `json:"startedAt,omitzero"`
	FinishedAt time.Time      `json:"finishedAt,omitzero"`
	Attempts   []Attempt      `json:"attempts,omitempty"`
	// Progress is the fraction (0..1) the task last reported through
	// SPOTML_PROGRESS_FILE, nil when it never did; it is kept across a
	// requeue (the next attempt resumes from the checkpoint).
	Progress        *float64  `json:"progress,omitempty"`
	ProgressMessage string    `json:"progressMessage,omitempty"`
	ProgressAt      time.Time `json:"progressAt,omitzero"`
	Order           int64     `json:"-"`
	// Spread is set only on the stand-ins for service replicas that the
	// control plane hands the scheduler: same Spread, different nodes.
	Spread string `json:"-"`
}

// ApplyResult says what Apply did with one document.
type ApplyResult struct {
	Kind   string `json:"kind"`
	Name   string `json:"name"`
	Action string `json:"action"` // created, configured, unchanged
}
