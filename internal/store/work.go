package store

// NodeWork is what a node's agent should run, as its heartbeat answers it.
type NodeWork struct {
	Tasks    []Task    // running on the node (NodeTasks)
	Replicas []Replica // placed there, not ended and not being stopped
	// LiveReplicas counts the node's replicas that have not ended,
	// stopping ones included: ReportReplicas has work only if it is > 0.
	LiveReplicas int
}
