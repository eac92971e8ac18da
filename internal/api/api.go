// Package api holds the JSON messages of the REST API that are not stored
// objects: the agent protocol and request bodies. The server, the agent
// and the CLI client share them.
package api

import (
	"strconv"
	"time"

	"github.com/spotml/spotml/internal/spec"
)

// Prefix is where the versioned REST API lives.
const Prefix = "/api/v1"

// RegisterRequest is an agent joining.
type RegisterRequest struct {
	Node string `json:"node"`
	PID  int    `json:"pid"`
}

// RegisterResponse tells a joining agent how to work.
type RegisterResponse struct {
	BlobURL           string          `json:"blobURL"` // the default blob store
	HeartbeatInterval time.Duration   `json:"heartbeatInterval"`
	StartTask         *spec.StartTask `json:"startTask,omitempty"`
	// Credential is the node's own credential, given to an agent that
	// joined with the join token: it authenticates every later call of
	// this node, for this node only, and stops working when the node ends.
	Credential string `json:"credential,omitempty"`
}

// HeartbeatRequest says an agent is alive and what it runs.
type HeartbeatRequest struct {
	Node     string          `json:"node"`
	Ready    bool            `json:"ready"` // start task done, takes work
	Running  []RunningTask   `json:"running,omitempty"`
	Replicas []ReplicaStatus `json:"replicas,omitempty"`
}

// ReplicaStatus is what an agent says of one service replica it runs.
type ReplicaStatus struct {
	ID      int64  `json:"id"`
	Ready   bool   `json:"ready"`          // answers its readiness probe
	Addr    string `json:"addr,omitempty"` // host:port it serves on
	Exited  bool   `json:"exited,omitempty"`
	Message string `json:"message,omitempty"`
}

// RunningTask is one attempt an agent runs.
type RunningTask struct {
	TaskID  int64 `json:"taskId"`
	Attempt int   `json:"attempt"`
	// Progress is sent when the attempt reported a new one (through the
	// file named by SPOTML_PROGRESS_FILE) since the last heartbeat.
	Progress *Progress `json:"progress,omitempty"`
}

// Progress is a task's own account of how far it is.
type Progress struct {
	Fraction float64 `json:"fraction"` // 0..1
	Message  string  `json:"message,omitempty"`
}

// MaxProgressMessage bounds a progress message (bytes).
const MaxProgressMessage = 200

// HeartbeatResponse is the full set of attempts the node should run now
// (level-triggered: the agent starts what is missing and stops the rest).
type HeartbeatResponse struct {
	Tasks    []Assignment        `json:"tasks"`
	Replicas []ReplicaAssignment `json:"replicas,omitempty"`
	// Servers are the API URLs of the control-plane instances up now
	// (their --advertise-url): the agent adds them to the servers it
	// tries, so that it keeps a way in when the instances it was started
	// with are gone.
	Servers []string `json:"servers,omitempty"`
}

// ReplicaAssignment is one service replica a node should run.
type ReplicaAssignment struct {
	ID      int64       `json:"id"`
	Name    string      `json:"name"`
	Service string      `json:"service"`
	Version int         `json:"version"`
	Spec    ReplicaSpec `json:"spec"`
}

// ReplicaSpec is what an agent needs to run a replica: where the model
// is, which server to run over it and how to tell that it is ready.
type ReplicaSpec struct {
	ModelURI string `json:"modelUri"`
	// Runtime is "builtin" (spotml serve, ONNX) or "command".
	Runtime       string            `json:"runtime"`
	Command       []string          `json:"command,omitempty"`
	Port          int               `json:"port,omitempty"` // fixed port of a command runtime; 0: the agent picks one
	Env           map[string]string `json:"env,omitempty"`
	MaxBatch      int               `json:"maxBatch,omitempty"`
	MaxQueueDelay time.Duration     `json:"maxQueueDelay,omitempty"`
	Threads       int               `json:"threads,omitempty"`
	// MaxRequestBytes is spec.limits.maxRequestBytes, for the builtin
	// runtime's own body limit; 0: its default.
	MaxRequestBytes int64 `json:"maxRequestBytes,omitempty"`
	// Readiness probe: GET path until it answers 2xx.
	ReadinessPath    string        `json:"readinessPath"`
	ReadinessPeriod  time.Duration `json:"readinessPeriod"`
	ReadinessTimeout time.Duration `json:"readinessTimeout"`
	InitialDelay     time.Duration `json:"initialDelay,omitempty"`
}

// Assignment is one task attempt placed on a node.
type Assignment struct {
	TaskID  int64         `json:"taskId"`
	Attempt int           `json:"attempt"`
	Job     string        `json:"job"`
	JobUID  string        `json:"jobUid"`
	Task    string        `json:"task"`
	Index   int           `json:"index"`
	Spec    spec.TaskSpec `json:"spec"`
}

// ReportRequest is how an attempt ended.
type ReportRequest struct {
	Node     string `json:"node"`
	Attempt  int    `json:"attempt"`
	Outcome  string `json:"outcome"` // succeeded, failed, preempted
	ExitCode int    `json:"exitCode"`
	Message  string `json:"message,omitempty"`
}

// NoticeRequest is an agent passing on the eviction notice it read.
type NoticeRequest struct {
	Node     string    `json:"node"`
	Deadline time.Time `json:"deadline"`
	Format   string    `json:"format"`
	Detail   string    `json:"detail,omitempty"`
}

// AtRiskRequest is an agent passing on an early warning it read: the
// node is at elevated risk of being taken, with no notice yet (AWS's
// rebalance recommendation, made at Since).
type AtRiskRequest struct {
	Node   string    `json:"node"`
	Since  time.Time `json:"since"`
	Format string    `json:"format"`
	Detail string    `json:"detail,omitempty"`
}

// ApplyRequest carries one or more spec files to store together (all or
// nothing); errors name the file, line and field.
type ApplyRequest struct {
	Files []File `json:"files"`
}

// File is one named YAML file.
type File struct {
	Name string `json:"name"`
	Data string `json:"data"`
}

// EvictRequest asks the local provider to evict a node.
type EvictRequest struct {
	Notice string `json:"notice,omitempty"` // a duration, e.g. "30s"; empty: the pool's notice
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
}

// Paths of blobs the agent writes and the server reads.

// LogLocation is where an attempt's stdout or stderr is kept.
func LogLocation(job, jobUID, task string, attempt int, stream string) string {
	return "logs/" + job + "/" + jobUID + "/" + task + "/attempt-" + strconv.Itoa(attempt) + "/" + stream + ".log"
}

// CheckpointLocation is where a task's checkpoint directory is kept.
func CheckpointLocation(job, jobUID, task string) string {
	return "checkpoints/" + job + "/" + jobUID + "/" + task
}

// Info describes the control plane to the web console.
type Info struct {
	Version    string    `json:"version"`
	Time       time.Time `json:"time"`       // the server's clock, to count notices down against
	GatewayURL string    `json:"gatewayURL"` // the inference gateway's address; empty when none runs here
	Evict      bool      `json:"evict"`      // nodes can be evicted on request (local provider)
	Predict    bool      `json:"predict"`    // Prefix/gateway/... reaches this process's gateway
	Role       string    `json:"role"`       // the caller's role: admin or viewer
	TokenName  string    `json:"tokenName"`  // the caller's token: a name, or "bootstrap" for DATA_DIR/token
	Instance   string    `json:"instance"`   // the control-plane instance that answered
	Leader     string    `json:"leader"`     // the instance holding the leader lease; empty: none
	Term       int64     `json:"term"`       // the leader lease's term
}

// TokenRequest asks for a new named API token.
type TokenRequest struct {
	Name string `json:"name"`
	Role string `json:"role"` // admin or viewer
}

// Token is a named API token as listed; its secret is never shown again.
type Token struct {
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	CreatedAt time.Time `json:"createdAt"`
}

// TokenCreated answers a TokenRequest with the secret, once.
type TokenCreated struct {
	Token
	Secret string `json:"token"`
}

// What GET Prefix/backup answers with: a SQLite database file, the store
// as it was at one commit, its SHA-256 (hex) in a header so that the
// client can tell that what it wrote is what the server sent.
const (
	BackupContentType  = "application/vnd.sqlite3"
	BackupSHA256Header = "X-Spotml-Backup-Sha256"
)

// ControlPlane is the control-plane instances sharing the store and the
// leader lease (GET Prefix/controlplane).
type ControlPlane struct {
	Leader       string       `json:"leader"`       // the instance ID holding the lease; empty: none yet
	Term         int64        `json:"term"`         // the lease's term, incremented on every takeover
	LeaderSince  time.Time    `json:"leaderSince"`  // when the term began
	LeaseExpires time.Time    `json:"leaseExpires"` // when the lease lapses unless renewed (the database's clock)
	LeaseValid   bool         `json:"leaseValid"`   // the lease has not lapsed
	Answered     string       `json:"answeredBy"`   // the instance that answered this request
	Instances    []CPInstance `json:"instances"`
}

// CPInstance is one control-plane instance seen lately.
type CPInstance struct {
	ID       string    `json:"id"`
	Address  string    `json:"address"`
	Version  string    `json:"version"`
	Started  time.Time `json:"started"`
	LastSeen time.Time `json:"lastSeen"`
	Leader   bool      `json:"leader"`
}
