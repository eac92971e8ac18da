// Package store is spotml's one source of truth, as its domain: pools,
// nodes, jobs, tasks, services, events and node runs (for cost), their
// states and the store's errors. The store itself is sqlstore.Store, over
// SQLite (store/sqlite) or PostgreSQL (store/postgres); storetest is the
// conformance suite every backend passes. This package links no database.
package store

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

// Sentinel errors; the HTTP layer maps them to status codes.
var (
	ErrNotFound = errors.New("not found")
	ErrConflict = errors.New("conflict")
)

// Conflict returns an error that reads as the message alone and matches
// ErrConflict (409 in the API).
func Conflict(format string, args ...any) error {
	return &kindError{msg: fmt.Sprintf(format, args...), kind: ErrConflict}
}

type kindError struct {
	msg  string
	kind error
}

func (e *kindError) Error() string        { return e.msg }
func (e *kindError) Is(target error) bool { return target == e.kind }

// Stats are counters of what the store has done since it was opened.
type Stats struct {
	// NodeRowsRead counts the node rows that ListNodes, LiveNodes and
	// RecentNodes returned: what a reconcile pass costs grows with it.
	NodeRowsRead int64
	// Retries counts write transactions run again after a serialization
	// failure or deadlock (PostgreSQL): contention, as the database saw it.
	Retries int64
	// LeaderWrites counts fenced write transactions (a leader's
	// reconcilers') committed; FencedWrites those refused with ErrFenced.
	LeaderWrites, FencedWrites int64
}

// RandomHex returns n random bytes as hex.
func RandomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)
}

// Event is one entry of the timeline.
type Event struct {
	ID      int64     `json:"id"`
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"`   // Notice, Evicted, Requeued, Launched, ...
	Object  string    `json:"object"` // node/NAME, task/JOB/TASK, pool/NAME, job/NAME
	Reason  string    `json:"reason"`
	Message string    `json:"message,omitempty"`
}

// EventFilter narrows ListEvents. Zero values match everything.
type EventFilter struct {
	Kind   string
	Object string // prefix match: "node/" or "task/job1/"
	// Of is one object, "KIND/NAME", and for a job its tasks, for a
	// service its replicas: what `spotml describe` shows. Unlike a prefix
	// it does not take in job/NAME2 or another job's tasks, and it is
	// answered from the events_object index.
	Of      string
	AfterID int64
	Limit   int
}
