package store

import (
	"time"
)

// DefaultRetention is how long ended nodes, node runs, attempts, replicas
// and events are kept before Prune removes them.
const DefaultRetention = 7 * 24 * time.Hour

// PruneStats counts the rows one Prune removed.
type PruneStats struct {
	Nodes, Runs, Attempts, Replicas, Events int
}

// Total is the number of rows removed.
func (p PruneStats) Total() int { return p.Nodes + p.Runs + p.Attempts + p.Replicas + p.Events }

// Add returns the sum of two counts.
func (p PruneStats) Add(q PruneStats) PruneStats {
	return PruneStats{Nodes: p.Nodes + q.Nodes, Runs: p.Runs + q.Runs, Attempts: p.Attempts + q.Attempts,
		Replicas: p.Replicas + q.Replicas, Events: p.Events + q.Events}
}
