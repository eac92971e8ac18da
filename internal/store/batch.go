package store

import (
	"time"

	"github.com/spotml/spotml/internal/spec"
)

// Batch states.
const (
	BatchRunning   = "running"
	BatchSucceeded = "succeeded" // every item done or failed (trigger once)
)

// Batch item states: pending → leased → done | failed; a released or
// expired lease goes back to pending.
const (
	ItemPending = "pending"
	ItemLeased  = "leased"
	ItemDone    = "done"
	ItemFailed  = "failed"
)

// Batch is a stored BatchInference with its items' counts.
type Batch struct {
	Name       string              `json:"name"`
	UID        string              `json:"uid"`
	Spec       spec.BatchInference `json:"batchInference"`
	State      string              `json:"state"`
	CreatedAt  time.Time           `json:"createdAt"`
	StartedAt  time.Time           `json:"startedAt,omitzero"` // first lease
	FinishedAt time.Time           `json:"finishedAt,omitzero"`
	// ListedAt is when a watch last listed the input.
	ListedAt time.Time `json:"listedAt,omitzero"`
	// Listing is true until the control plane has listed the whole input
	// once: the items are still being queued, and the batch cannot finish.
	Listing bool        `json:"listing,omitempty"`
	Counts  BatchCounts `json:"counts"`
}

// BatchCounts counts a batch's items.
type BatchCounts struct {
	Total   int `json:"total"`
	Pending int `json:"pending"`
	Leased  int `json:"leased"`
	Done    int `json:"done"`
	Failed  int `json:"failed"`
	// DoneRecently is how many items were done in the minute before the
	// read; LastDoneAt the latest done.
	DoneRecently int       `json:"doneRecently"`
	LastDoneAt   time.Time `json:"lastDoneAt,omitzero"`
	// Released counts items given back by workers on a notice, Expired
	// those whose lease ran out: work that was interrupted.
	Released int `json:"released"`
	Expired  int `json:"expired"`
	// Redone counts acks of items already done: results written again.
	Redone int `json:"redone"`
}

// Left is how many items are not yet done or failed.
func (c BatchCounts) Left() int { return c.Pending + c.Leased }

// BatchItem is one input of a batch.
type BatchItem struct {
	ID         int64     `json:"id"`
	Input      string    `json:"input"`
	State      string    `json:"state"`
	Worker     string    `json:"worker,omitempty"`
	LeaseUntil time.Time `json:"leaseUntil,omitzero"`
	Attempts   int       `json:"attempts"`
	Reason     string    `json:"reason,omitempty"`
	DoneAt     time.Time `json:"doneAt,omitzero"`
}

// ItemFailure is why a worker could not score one item.
type ItemFailure struct {
	ID     int64  `json:"id"`
	Reason string `json:"reason"`
}
