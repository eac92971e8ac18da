package api

import (
	"encoding/json"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

// The objects the REST API returns. They are the public schema: the
// server fills them from its store's rows (internal/server, one function
// per type) and the CLI, the web console and scripts read them. A field
// the store keeps for the control plane alone (a provider's ID for a node,
// a queue order, the autoscaler's memory) has no place here.

// States and outcomes as the API reports them.
const (
	// Node states.
	NodeProvisioning = "provisioning" // launched, agent not yet ready
	NodeReady        = "ready"
	NodeDraining     = "draining"    // an eviction notice was received
	NodePreempted    = "preempted"   // taken back by the spot market
	NodeDeallocated  = "deallocated" // preempted with evictionPolicy deallocate: restarted later, same name and disk
	NodeLost         = "lost"        // stopped heartbeating
	NodeTerminated   = "terminated"  // removed by spotml (scale-down, pool deleted)

	// Job states.
	JobRunning   = "running"
	JobSucceeded = "succeeded"
	JobFailed    = "failed"

	// Task states.
	TaskPending   = "pending"
	TaskRunning   = "running"
	TaskSucceeded = "succeeded"
	TaskFailed    = "failed"

	// Replica states.
	ReplicaPending  = "pending"
	ReplicaStarting = "starting"
	ReplicaReady    = "ready"
	ReplicaStopping = "stopping"
	ReplicaStopped  = "stopped"
	ReplicaFailed   = "failed"

	// Outcomes of an attempt as an agent reports it (ReportRequest).
	OutcomeSucceeded = "succeeded"
	OutcomeFailed    = "failed"
	OutcomePreempted = "preempted" // stopped because of an eviction notice

	// Roles of API tokens.
	RoleAdmin  = "admin"  // everything
	RoleViewer = "viewer" // read-only API and console
)

// Pool is a pool as applied, with its version.
type Pool struct {
	Spec       spec.Pool `json:"pool"`
	Generation int64     `json:"generation"`
	CreatedAt  time.Time `json:"createdAt"`
	UpdatedAt  time.Time `json:"updatedAt"`
}

// Node is one machine running the spotml agent.
type Node struct {
	Name          string         `json:"name"`
	Pool          string         `json:"pool"`
	Priority      string         `json:"priority"`
	Zone          string         `json:"zone,omitempty"`
	InstanceType  string         `json:"instanceType"`
	State         string         `json:"state"`
	Capacity      spec.Resources `json:"capacity"`
	PricePerHour  float64        `json:"pricePerHour"`
	OnDemandPrice float64        `json:"onDemandPricePerHour"`
	// Host is the platform's machine the node runs on, where that is not
	// the node itself (the Kubernetes node under an agent pod).
	Host           string    `json:"host,omitempty"`
	CreatedAt      time.Time `json:"createdAt"`
	StateAt        time.Time `json:"stateAt"`
	HeartbeatAt    time.Time `json:"heartbeatAt,omitzero"`
	IdleSince      time.Time `json:"idleSince,omitzero"`
	NoticeDeadline time.Time `json:"noticeDeadline,omitzero"`
	// AtRisk is when the platform warned that the node may be taken soon
	// (AWS's rebalance recommendation): a replacement is launched, the
	// node keeps its work until a notice.
	AtRisk      time.Time `json:"atRisk,omitzero"`
	Reason      string    `json:"reason,omitempty"`
	Incarnation int       `json:"incarnation"` // goes up each time a deallocated node starts again
	Tasks       int       `json:"tasks"`       // running tasks
	Replicas    int       `json:"replicas"`    // live service replicas
}

// Job is a submitted job with its tasks' counts; GET /jobs/NAME also
// lists its tasks.
type Job struct {
	ID          int64          `json:"id"`
	UID         string         `json:"uid"` // tells apart jobs of the same name submitted one after another
	Spec        spec.Job       `json:"job"`
	State       string         `json:"state"` // running, succeeded, failed
	SubmittedAt time.Time      `json:"submittedAt"`
	FinishedAt  time.Time      `json:"finishedAt,omitzero"`
	Counts      map[string]int `json:"counts"`    // tasks by state
	Evictions   int            `json:"evictions"` // preemptions (and lost nodes): they spend no retries
	Failures    int            `json:"failures"`  // failed attempts, each a retry spent
	// Deadline is the job's standing against its deadline, for a job with
	// one; Cost what it has cost so far (GET /jobs/NAME, and GET /jobs for
	// jobs with a deadline).
	Deadline *JobDeadline `json:"deadline,omitempty"`
	Cost     *WorkCost    `json:"cost,omitempty"`
	Tasks    []Task       `json:"tasks,omitempty"`
}

// JobDeadline is how a job with a deadline stands against it.
type JobDeadline struct {
	Deadline time.Time `json:"deadline"`
	Policy   string    `json:"policy"` // deadline (spotml chooses spot or on-demand) or fixed
	// Work is each task's compute: spec.work, or estimated from the
	// progress the tasks report (WorkEstimated).
	Work          spec.Duration `json:"work"`
	WorkEstimated bool          `json:"workEstimated,omitempty"`
	Done          spec.Duration `json:"done"` // progress, in work: the slowest task's
	// Expected is the progress a job on schedule would have made by now
	// (the straight line from nothing at submission to Work at the
	// deadline).
	Expected spec.Duration `json:"expected"`
	Mode     string        `json:"mode"` // where it runs now: spot, ondemand, wait
	// Changeover is the start cost the policy plans with, measured from
	// the job's own starts and the pools' launches; SpotLife the expected
	// spot lifetime from the pools' recent evictions (absent: none seen).
	Changeover spec.Duration `json:"changeover"`
	SpotLife   spec.Duration `json:"spotLife,omitzero"`
	// Projected is the job's cost at the end if it runs where it runs now;
	// AllOnDemand what the whole job would cost on on-demand alone.
	Projected   float64 `json:"projected"`
	AllOnDemand float64 `json:"allOnDemand"`
}

// WorkCost explains what a job cost: spot and on-demand hours and what
// each cost, its changeovers and their cost, beside the same work on
// on-demand alone. USD and node-hours (a task's share of its node).
type WorkCost struct {
	SpotHours       float64 `json:"spotHours"`
	SpotCost        float64 `json:"spotCost"`
	OnDemandHours   float64 `json:"onDemandHours"`
	OnDemandCost    float64 `json:"onDemandCost"`
	Changeovers     int     `json:"changeovers"`
	ChangeoverHours float64 `json:"changeoverHours"`
	ChangeoverCost  float64 `json:"changeoverCost"`
	Spent           float64 `json:"spent"`
	AllOnDemand     float64 `json:"allOnDemand"`
}

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
	// SPOTML_PROGRESS_FILE, nil when it never did.
	Progress        *float64  `json:"progress,omitempty"`
	ProgressMessage string    `json:"progressMessage,omitempty"`
	ProgressAt      time.Time `json:"progressAt,omitzero"`
}

// Attempt is one run of a task on one node.
type Attempt struct {
	Attempt   int       `json:"attempt"`
	Node      string    `json:"node"`
	StartedAt time.Time `json:"startedAt"`
	EndedAt   time.Time `json:"endedAt,omitzero"`
	Outcome   string    `json:"outcome,omitempty"` // succeeded, failed, preempted, evicted, lost
	ExitCode  int       `json:"exitCode"`
	// FirstProgressAt is when the attempt first reported progress (its
	// work running again, after any restore of a checkpoint).
	FirstProgressAt time.Time `json:"firstProgressAt,omitzero"`
}

// ApplyResult says what an apply did with one document.
type ApplyResult struct {
	Kind   string `json:"kind"`
	Name   string `json:"name"`
	Action string `json:"action"` // created, configured, unchanged
}

// Service is an inference service with its live replicas and traffic.
type Service struct {
	Name       string          `json:"name"`
	Model      string          `json:"model"`   // model.uri of the current version
	Spec       json.RawMessage `json:"service"` // the service document as applied
	Generation int             `json:"generation"`
	Desired    int             `json:"desired"` // replicas the autoscaler wants now
	CreatedAt  time.Time       `json:"createdAt"`
	UpdatedAt  time.Time       `json:"updatedAt"`
	Replicas   []Replica       `json:"replicas"` // live ones
	QPS        float64         `json:"qps"`      // as the gateways measure it
	// InFlight is the requests outstanding at once, averaged over the
	// last minute, and P99 the latency in seconds over it, as the
	// gateways measure them for the autoscaler.
	InFlight float64        `json:"inFlight"`
	P99      float64        `json:"p99"`
	Ready    map[string]int `json:"readyByPriority"` // ready replicas by priority (spot, ondemand)
	// Cost is what its replicas cost so far (GET /services/NAME).
	Cost *WorkCost `json:"cost,omitempty"`
}

// Replica is one running copy of one version of a service.
type Replica struct {
	ID       int64           `json:"id"`
	Name     string          `json:"name"` // service-ID
	Service  string          `json:"service"`
	Version  int             `json:"version"`
	Spec     json.RawMessage `json:"spec"` // what the agent runs (a ReplicaSpec)
	Pool     string          `json:"pool"`
	Priority string          `json:"priority"`
	StandIn  bool            `json:"standIn,omitempty"` // on-demand while spot is short
	Req      spec.Resources  `json:"resources"`
	State    string          `json:"state"`
	Node     string          `json:"node,omitempty"`
	Addr     string          `json:"addr,omitempty"`
	// Noticed: the replica's node has an eviction notice, so it gets no
	// new requests.
	Noticed   bool      `json:"noticed,omitempty"`
	CreatedAt time.Time `json:"createdAt"`
	StateAt   time.Time `json:"stateAt"`
	ReadyAt   time.Time `json:"readyAt,omitzero"`
	EndedAt   time.Time `json:"endedAt,omitzero"`
	Reason    string    `json:"reason,omitempty"`
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

// ServiceHistory is the answer of GET /services/NAME/history.
type ServiceHistory struct {
	Service string          `json:"service"`
	Samples []ServiceSample `json:"samples"`
}

// ServiceSample is one point of a service's history: its traffic as the
// gateways measured it and its replicas.
type ServiceSample struct {
	Time     time.Time `json:"time"`
	QPS      float64   `json:"qps"`
	P50      float64   `json:"p50"` // latency, seconds
	P99      float64   `json:"p99"`
	Requests int64     `json:"requests"` // over the minute before Time
	Errors   int64     `json:"errors"`
	Ready    int       `json:"ready"`    // ready replicas not on a noticed node
	Desired  int       `json:"desired"`  // replicas the autoscaler wanted
	Spot     int       `json:"spot"`     // of Ready, on spot nodes
	OnDemand int       `json:"onDemand"` // of Ready, on on-demand nodes
	// InFlight is the requests outstanding at once, the time average
	// over the minute before Time; InFlightMax the most at once.
	InFlight    float64 `json:"inFlight"`
	InFlightMax int64   `json:"inFlightMax"`
}

// Cost is what the nodes cost so far against the same node time on
// demand (GET /cost).
type Cost struct {
	Lines         []CostLine `json:"lines"` // one per pool, sorted by pool, then priority
	NodeSeconds   float64    `json:"nodeSeconds"`
	Spent         float64    `json:"spent"` // USD
	OnDemand      float64    `json:"onDemand"`
	Saving        float64    `json:"saving"`        // OnDemand − Spent
	SavingPercent float64    `json:"savingPercent"` // of OnDemand; 0 when OnDemand is 0
}

// CostLine is the cost of one pool.
type CostLine struct {
	Pool        string  `json:"pool"`
	Priority    string  `json:"priority"`
	NodeSeconds float64 `json:"nodeSeconds"`
	Spent       float64 `json:"spent"`    // USD
	OnDemand    float64 `json:"onDemand"` // USD the same node-seconds would cost on demand
}

// CostHistory is cumulative spend against on-demand over time, in total
// and per pool (GET /cost/history).
type CostHistory struct {
	Times []time.Time      `json:"times"`
	Total CostSeries       `json:"total"`
	Pools []PoolCostSeries `json:"pools"` // sorted by pool, then priority
}

// CostSeries is cumulative USD at each of CostHistory.Times.
type CostSeries struct {
	Spent    []float64 `json:"spent"`
	OnDemand []float64 `json:"onDemand"`
}

// PoolCostSeries is one pool's CostSeries.
type PoolCostSeries struct {
	Pool     string `json:"pool"`
	Priority string `json:"priority"`
	CostSeries
}

// Fleet is the watch stream's "fleet" message.
type Fleet struct {
	Time  time.Time `json:"time,omitzero"` // the server's clock when sent
	Pools []Pool    `json:"pools"`
	Nodes []Node    `json:"nodes"` // live, and recently ended
}

// ReportResponse answers a ReportRequest: false when the report came too
// late (the attempt was already ended or requeued) and changed nothing.
type ReportResponse struct {
	Accepted bool `json:"accepted"`
}

// BlobObject is one file of the blob store (GET /blobs).
type BlobObject struct {
	Key     string    `json:"key"`
	Size    int64     `json:"size"`
	ModTime time.Time `json:"modTime"`
}

// BlobWritten answers PUT /blobs/PATH.
type BlobWritten struct {
	Path string `json:"path"`
}
