// Package spec defines the user-facing resource documents (Pool, Job,
// Service) and parses them strictly from YAML: an unknown or mistyped field
// is an error that names the field and its line, so nothing half-understood
// is stored.
package spec

import "time"

// APIVersion is the only apiVersion accepted in documents.
const APIVersion = "spotml/v1"

// Kinds of documents.
const (
	KindPool    = "Pool"
	KindJob     = "Job"
	KindService = "Service"
)

// Priorities of pools.
const (
	PrioritySpot     = "spot"
	PriorityOnDemand = "ondemand"
)

// Eviction policies of spot pools.
const (
	EvictionDelete     = "delete"
	EvictionDeallocate = "deallocate"
)

// Upload conditions for output files.
const (
	UploadOnSuccess = "onSuccess"
	UploadOnFailure = "onFailure"
	UploadAlways    = "always"
)

// Notice formats a local spot pool publishes its eviction notices in.
const (
	NoticeAzure = "azure"
	NoticeAWS   = "aws"
	NoticeGCP   = "gcp"
)

// Metadata names a document.
type Metadata struct {
	Name   string            `yaml:"name" json:"name"`
	Labels map[string]string `yaml:"labels,omitempty" json:"labels,omitempty"`
}

// Pool is a group of nodes of one shape from one provider.
type Pool struct {
	APIVersion string   `yaml:"apiVersion" json:"apiVersion"`
	Kind       string   `yaml:"kind" json:"kind"`
	Metadata   Metadata `yaml:"metadata" json:"metadata"`
	Spec       PoolSpec `yaml:"spec" json:"spec"`
}

// PoolSpec is what a user asks of a pool.
type PoolSpec struct {
	Provider       string   `yaml:"provider" json:"provider"`
	Priority       string   `yaml:"priority" json:"priority"`
	InstanceType   string   `yaml:"instanceType" json:"instanceType"`
	Zones          []string `yaml:"zones,omitempty" json:"zones,omitempty"`
	Min            int      `yaml:"min" json:"min"`
	Max            int      `yaml:"max" json:"max"`
	EvictionPolicy string   `yaml:"evictionPolicy,omitempty" json:"evictionPolicy,omitempty"`
	// PricePerHour overrides the price table's price for this pool's priority.
	PricePerHour *float64 `yaml:"pricePerHour,omitempty" json:"pricePerHour,omitempty"`
	// OnDemandPricePerHour overrides the on-demand price used for the
	// "same work on demand" comparison.
	OnDemandPricePerHour *float64 `yaml:"onDemandPricePerHour,omitempty" json:"onDemandPricePerHour,omitempty"`
	// Capacity overrides what the instance type table says a node offers.
	Capacity  *Resources `yaml:"capacity,omitempty" json:"capacity,omitempty"`
	StartTask *StartTask `yaml:"startTask,omitempty" json:"startTask,omitempty"`
	// IdleTimeout is how long a node may sit without tasks before the
	// autoscaler removes it (above min). Default 60s.
	IdleTimeout Duration `yaml:"idleTimeout,omitempty" json:"idleTimeout,omitzero"`

	// Each provider's own settings, in a block named after it; only the
	// pool's provider's block may be set.
	Local      *LocalPool      `yaml:"local,omitempty" json:"local,omitempty"`
	Kubernetes *KubernetesPool `yaml:"kubernetes,omitempty" json:"kubernetes,omitempty"`
	Azure      *AzurePool      `yaml:"azure,omitempty" json:"azure,omitempty"`
	AWS        *AWSPool        `yaml:"aws,omitempty" json:"aws,omitempty"`
	GCP        *GCPPool        `yaml:"gcp,omitempty" json:"gcp,omitempty"`
}

// LocalPool is the simulated spot market of a local pool.
type LocalPool struct {
	EvictionRate     float64  `yaml:"evictionRate,omitempty" json:"evictionRate,omitempty"`         // evictions per node-hour
	Notice           Duration `yaml:"notice,omitempty" json:"notice,omitzero"`                      // default 30s
	CapacityShortage float64  `yaml:"capacityShortage,omitempty" json:"capacityShortage,omitempty"` // probability a launch fails
	NoticeFormat     string   `yaml:"noticeFormat,omitempty" json:"noticeFormat,omitempty"`         // azure (default) | aws | gcp
	// Market replays a recorded spot market (on top of EvictionRate, if
	// that is set too).
	Market *Market `yaml:"market,omitempty" json:"market,omitempty"`
}

// Market is a spot market replayed from a trace file.
type Market struct {
	// Trace is a trace file on the control plane's machine (see traces/).
	Trace string `yaml:"trace" json:"trace"`
	// Speedup compresses time: 60 replays an hour of the trace a minute.
	// Default 1.
	Speedup float64 `yaml:"speedup,omitempty" json:"speedup,omitempty"`
	// Start is where in the trace the replay begins.
	Start Duration `yaml:"start,omitempty" json:"start,omitzero"`
}

// Kubernetes flavors: how the cluster marks its spot and on-demand nodes
// (internal/provider/kubernetes has the table).
const (
	FlavorKarpenter = "karpenter"
	FlavorEKS       = "eks"
	FlavorAKS       = "aks"
	FlavorGKE       = "gke"
	FlavorACK       = "ack"
	FlavorCustom    = "custom"
)

// KubernetesPool places a pool's nodes as agent pods on a cluster's node
// pools: one pod per cluster node, requesting spec.capacity.
type KubernetesPool struct {
	// Flavor names the platform, which says how spot and on-demand nodes
	// are marked (labels, taints); custom leaves that to nodeSelector and
	// tolerations.
	Flavor    string `yaml:"flavor" json:"flavor"`
	Namespace string `yaml:"namespace,omitempty" json:"namespace,omitempty"` // default spotml
	// Image is what the pool's work runs in; the spotml binary is copied
	// into it at start.
	Image string `yaml:"image" json:"image"`
	// NodeSelector and Tolerations are added to the flavor's.
	NodeSelector map[string]string `yaml:"nodeSelector,omitempty" json:"nodeSelector,omitempty"`
	Tolerations  []Toleration      `yaml:"tolerations,omitempty" json:"tolerations,omitempty"`
	// GPUResource is the extended resource a node's GPUs are requested as
	// (default nvidia.com/gpu; amd.com/gpu, aliyun.com/gpu-mem …).
	GPUResource    string `yaml:"gpuResource,omitempty" json:"gpuResource,omitempty"`
	ServiceAccount string `yaml:"serviceAccount,omitempty" json:"serviceAccount,omitempty"`
	// UnschedulableTimeout is how long a pod may stay unschedulable (the
	// autoscaler adding a node) before it counts as a capacity shortage.
	// Default 90s, under the control plane's provisioning timeout (2m),
	// which would otherwise end the node as lost first.
	UnschedulableTimeout Duration `yaml:"unschedulableTimeout,omitempty" json:"unschedulableTimeout,omitzero"`
	// Notice is the platform's eviction notice, and the pods' grace
	// period; default the flavor's (2m on AWS, 30s on AKS and GKE, 3m on
	// ACK, 30s custom).
	Notice Duration `yaml:"notice,omitempty" json:"notice,omitzero"`
	// InstanceMetadata also watches the cloud's instance metadata service
	// from inside the pod (where the pod can reach it) in the flavor's
	// format; the Kubernetes signals stay the primary path.
	InstanceMetadata bool `yaml:"instanceMetadata,omitempty" json:"instanceMetadata,omitempty"`
}

// Toleration is a Kubernetes pod toleration.
type Toleration struct {
	Key      string `yaml:"key,omitempty" json:"key,omitempty"`
	Operator string `yaml:"operator,omitempty" json:"operator,omitempty"` // Equal (default) or Exists
	Value    string `yaml:"value,omitempty" json:"value,omitempty"`
	Effect   string `yaml:"effect,omitempty" json:"effect,omitempty"` // NoSchedule, PreferNoSchedule, NoExecute; empty: all
}

// StartTask runs on each node as it joins, before it takes work.
type StartTask struct {
	Command Command           `yaml:"command" json:"command"`
	Env     map[string]string `yaml:"env,omitempty" json:"env,omitempty"`
}

// Job is batch work: a list of tasks or count copies of a template.
type Job struct {
	APIVersion string   `yaml:"apiVersion" json:"apiVersion"`
	Kind       string   `yaml:"kind" json:"kind"`
	Metadata   Metadata `yaml:"metadata" json:"metadata"`
	Spec       JobSpec  `yaml:"spec" json:"spec"`
}

// JobSpec is what a user asks of a job.
type JobSpec struct {
	// Pool names the pool the tasks run in; Priority selects any pool of
	// that priority instead. Tasks may override both.
	Pool     string     `yaml:"pool,omitempty" json:"pool,omitempty"`
	Priority string     `yaml:"priority,omitempty" json:"priority,omitempty"`
	Tasks    []TaskSpec `yaml:"tasks,omitempty" json:"tasks,omitempty"`
	Count    int        `yaml:"count,omitempty" json:"count,omitempty"`
	Template *TaskSpec  `yaml:"template,omitempty" json:"template,omitempty"`

	// Deadline is when the job must be done: a duration from its
	// submission ("36h") or an RFC 3339 time.
	Deadline string `yaml:"deadline,omitempty" json:"deadline,omitempty"`
	// Policy says who chooses spot or on-demand for a job with a
	// deadline: "deadline" (the default) lets spotml choose, so that the
	// job finishes in time at the lowest cost; "fixed" keeps the pool and
	// priority as written and only reports progress against the deadline.
	Policy string `yaml:"policy,omitempty" json:"policy,omitempty"`
	// Work is the compute each task needs on one node, for the deadline
	// policy; without it spotml estimates it from the progress the tasks
	// report (SPOTML_PROGRESS_FILE).
	Work Duration `yaml:"work,omitempty" json:"work,omitzero"`
	// OnDemandAfterPreemptions moves a task to on-demand capacity once it
	// has been preempted this many times (0: never).
	OnDemandAfterPreemptions int `yaml:"onDemandAfterPreemptions,omitempty" json:"onDemandAfterPreemptions,omitempty"`
}

// Job policies.
const (
	PolicyDeadline = "deadline"
	PolicyFixed    = "fixed"
)

// TaskSpec is one command with its files, checkpoint and limits.
type TaskSpec struct {
	Name          string            `yaml:"name,omitempty" json:"name,omitempty"`
	Command       Command           `yaml:"command" json:"command"`
	Env           map[string]string `yaml:"env,omitempty" json:"env,omitempty"`
	ResourceFiles []ResourceFile    `yaml:"resourceFiles,omitempty" json:"resourceFiles,omitempty"`
	OutputFiles   []OutputFile      `yaml:"outputFiles,omitempty" json:"outputFiles,omitempty"`
	Checkpoint    *Checkpoint       `yaml:"checkpoint,omitempty" json:"checkpoint,omitempty"`
	MaxRetries    int               `yaml:"maxRetries,omitempty" json:"maxRetries,omitempty"`
	Resources     Resources         `yaml:"resources,omitempty" json:"resources,omitempty"`
	Pool          string            `yaml:"pool,omitempty" json:"pool,omitempty"`
	Priority      string            `yaml:"priority,omitempty" json:"priority,omitempty"`
}

// ResourceFile is downloaded from blob storage into the task's working
// directory before the command starts.
type ResourceFile struct {
	Source string `yaml:"source" json:"source"` // blob URL, or a path in the default store
	Path   string `yaml:"path" json:"path"`     // relative to the working directory
}

// OutputFile uploads each file matching Pattern (relative to the working
// directory) to Destination + its relative path.
type OutputFile struct {
	Pattern     string `yaml:"pattern" json:"pattern"`
	Destination string `yaml:"destination" json:"destination"`
	Upload      string `yaml:"upload,omitempty" json:"upload,omitempty"` // default onSuccess
}

// Checkpoint is a directory the agent keeps in blob storage while the task
// runs, and restores before a retry.
type Checkpoint struct {
	Path     string   `yaml:"path" json:"path"`                            // relative to the working directory
	Interval Duration `yaml:"interval,omitempty" json:"interval,omitzero"` // default 30s
}

// Resources a task needs or a node offers.
type Resources struct {
	CPU    float64 `yaml:"cpu,omitempty" json:"cpu,omitempty"`
	Memory Bytes   `yaml:"memory,omitempty" json:"memory,omitempty"`
	GPU    int     `yaml:"gpu,omitempty" json:"gpu,omitempty"`
}

// Duration is a time.Duration written as "30s", "2m".
type Duration struct{ time.Duration }

// Bytes is a size written as 512Mi, 2Gi, 1G or a plain number of bytes.
type Bytes int64

// Command is argv. In YAML it is a list of strings, or a single string that
// runs through /bin/sh -c.
type Command []string

// Market is a local pool's simulated market settings (zero when unset).
func (s PoolSpec) Market() LocalPool {
	if s.Local == nil {
		return LocalPool{}
	}
	return *s.Local
}
