package api

import (
	"strconv"
	"strings"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

// BatchWorkerJobPrefix starts the name of every job whose tasks are a
// BatchInference's workers: "batchinference.NAME.N". User job names
// cannot hold a dot, so these never collide with them.
const BatchWorkerJobPrefix = "batchinference."

// BatchWorkerJob names the n-th worker job of a BatchInference.
func BatchWorkerJob(batch string, n int) string {
	return BatchWorkerJobPrefix + batch + "." + strconv.Itoa(n)
}

// BatchOfJob returns the BatchInference a worker job belongs to, and
// whether the job is one.
func BatchOfJob(job string) (string, bool) {
	rest, ok := strings.CutPrefix(job, BatchWorkerJobPrefix)
	if !ok {
		return "", false
	}
	i := strings.LastIndexByte(rest, '.')
	if i <= 0 {
		return "", false
	}
	return rest[:i], true
}

// Environment of a BatchInference worker: the agent runs its own binary as
// `spotml batch-worker` with these set (the credential only for this,
// spotml's own code, never for a user's command).
const (
	EnvBatch       = "SPOTML_BATCH"
	EnvServer      = "SPOTML_SERVER"
	EnvBlobURL     = "SPOTML_BLOB_URL"
	EnvWorkerCred  = "SPOTML_NODE_CREDENTIAL"
	EnvWorkerID    = "SPOTML_WORKER"
	BatchWorkerCmd = "batch-worker"
)

// BatchInference is a BatchInference's status, as `spotml get
// batchinference` shows it.
type BatchInference struct {
	Name  string              `json:"name"`
	Spec  spec.BatchInference `json:"spec"`
	State string              `json:"state"` // running, succeeded
	// Listing is true while the control plane is still listing the input
	// and queueing its items: Total grows, and the batch cannot finish.
	Listing    bool      `json:"listing,omitempty"`
	CreatedAt  time.Time `json:"createdAt"`
	StartedAt  time.Time `json:"startedAt,omitzero"`
	FinishedAt time.Time `json:"finishedAt,omitzero"`
	Total      int       `json:"total"`
	Pending    int       `json:"pending"`
	InFlight   int       `json:"inFlight"` // leased by a worker
	Done       int       `json:"done"`
	Failed     int       `json:"failed"`
	// Throughput is items per second over the last minute (or since the
	// start, when shorter); ETA how long what is left takes at that rate.
	Throughput float64       `json:"throughput"`
	ETA        time.Duration `json:"eta,omitempty"`
	// Workers running and waiting for a node.
	Workers        int `json:"workers"`
	WorkersPending int `json:"workersPending"`
	// Evictions of worker nodes (notices and vanished nodes); Released
	// items given back on a notice, Expired items whose lease ran out.
	Evictions int `json:"evictions"`
	Released  int `json:"released"`
	Expired   int `json:"expired"`
	// Redone counts items scored (and written) more than once.
	Redone int `json:"redone"`
	// Cost of the workers' node time so far, and the same time on demand.
	Cost         float64 `json:"cost"`
	OnDemandCost float64 `json:"onDemandCost"`
}

// BatchItem is one input of a BatchInference.
type BatchItem struct {
	ID       int64     `json:"id"`
	Input    string    `json:"input"`
	State    string    `json:"state"`
	Worker   string    `json:"worker,omitempty"`
	Attempts int       `json:"attempts"`
	Reason   string    `json:"reason,omitempty"`
	DoneAt   time.Time `json:"doneAt,omitzero"`
}

// LeaseRequest asks for up to Max items.
type LeaseRequest struct {
	Worker string `json:"worker"`
	Max    int    `json:"max"`
}

// LeaseResponse is what a worker got, and how the batch stands.
type LeaseResponse struct {
	Items        []LeasedItem  `json:"items"`
	LeaseTimeout time.Duration `json:"leaseTimeout"`
	// Running is false once the batch finished (or was deleted): the
	// worker exits. Left counts items not done or failed, leased ones
	// included: when it is not zero but nothing came, others hold them.
	Running bool `json:"running"`
	Left    int  `json:"left"`
	// Listing is true while the batch's input is still being queued:
	// nothing left now does not mean nothing more will come.
	Listing bool `json:"listing,omitempty"`
}

// LeasedItem is one item a worker holds.
type LeasedItem struct {
	ID    int64  `json:"id"`
	Input string `json:"input"` // key relative to spec.input.uri
}

// AckRequest settles items: done ones (result written) and failed ones.
type AckRequest struct {
	Worker string       `json:"worker"`
	Done   []int64      `json:"done,omitempty"`
	Failed []ItemFailed `json:"failed,omitempty"`
}

// ItemFailed is an item that cannot be scored, and why.
type ItemFailed struct {
	ID     int64  `json:"id"`
	Reason string `json:"reason"`
}

// ReleaseRequest gives leased items back to the queue. With a broker,
// IDs may also name items of messages the worker received but never
// claimed: they are sent again at once.
type ReleaseRequest struct {
	Worker string  `json:"worker"`
	IDs    []int64 `json:"ids"`
	// All gives back every item Worker still holds, instead of IDs: its
	// agent asks so when the worker was killed as its node's notice ran
	// out.
	All bool `json:"all,omitempty"`
}

// BatchMessage is one message of a BatchInference's broker queue: a group
// of up to queue.groupSize items. The ledger (the store) says what is
// left; a worker claims a message's items before it scores them.
type BatchMessage struct {
	Batch string       `json:"batch"`
	Items []LeasedItem `json:"items"`
}

// ClaimRequest takes in the ledger the items of messages a worker got
// from the broker. The answer (a LeaseResponse) lists the items it now
// holds: those not done, failed or held by another worker. A claim of no
// items changes nothing: its answer says whether the batch runs and how
// many items are left (a worker whose broker had nothing asks so).
type ClaimRequest struct {
	Worker string  `json:"worker"`
	IDs    []int64 `json:"ids"`
}

// BatchCounts is how many items an ack or release changed.
type BatchCounts struct {
	Changed int `json:"changed"`
}
