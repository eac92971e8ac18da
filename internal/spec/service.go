package spec

import (
	"cmp"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Service is an always-on inference endpoint: a model, the runtime that
// serves it, how many replicas run and where.
//
//	apiVersion: spotml/v1
//	kind: Service
//	metadata:
//	  name: fashion-mnist
//	spec:
//	  model:
//	    uri: outputs/fashion-mnist/out/model.onnx
//	  replicas: {min: 2, max: 6, targetQPSPerReplica: 200}
//	  placement: {tier: prod}
type Service struct {
	APIVersion string      `yaml:"apiVersion" json:"apiVersion"`
	Kind       string      `yaml:"kind" json:"kind"`
	Metadata   Metadata    `yaml:"metadata" json:"metadata"`
	Spec       ServiceSpec `yaml:"spec" json:"spec"`
}

// ServiceSpec is what a user asks of a service. After Default every
// pointer field but the placement overrides is set.
type ServiceSpec struct {
	Model     Model         `yaml:"model" json:"model"`
	Runtime   Runtime       `yaml:"runtime,omitempty" json:"runtime"`
	Replicas  Replicas      `yaml:"replicas,omitempty" json:"replicas"`
	Placement PlacementSpec `yaml:"placement,omitempty" json:"placement"`
	Readiness Readiness     `yaml:"readiness,omitempty" json:"readiness"`
	Update    Update        `yaml:"update,omitempty" json:"update"`
	// Resources each replica needs; default 1 CPU, as for a task.
	Resources Resources `yaml:"resources,omitempty" json:"resources"`
	// Auth, when it lists keys, makes the gateway refuse requests without
	// one of them. Without it anyone who reaches the gateway may call.
	Auth Auth `yaml:"auth,omitempty" json:"auth,omitzero"`
	// Limits bound what the gateway holds for the service.
	Limits Limits `yaml:"limits,omitempty" json:"limits,omitzero"`
}

// Model is what a service serves. The agent downloads it before the
// server starts and gives its local path in SPOTML_MODEL_PATH.
type Model struct {
	// URI is a blob location: a URL (file:///models/m.onnx, s3://b/m.onnx)
	// or a path in the default store (outputs/job/out/model.onnx), as a
	// task's resource file source. One ending in "/" is a directory,
	// downloaded whole, for a command runtime that loads one (a TF
	// SavedModel, a Hugging Face snapshot).
	URI string `yaml:"uri" json:"uri"`
}

// Runtime types of a service.
const (
	// RuntimeBuiltin serves an ONNX model in-process, with dynamic
	// batching, speaking the KServe v2 and TF Serving REST protocols.
	RuntimeBuiltin = "builtin"
	// RuntimeCommand runs a model server the user brings.
	RuntimeCommand = "command"
)

// Environment variables every replica's server gets.
const (
	// EnvPort is the port the server must listen on (command runtime).
	EnvPort = "PORT"
	// EnvModelPath is the local path of the downloaded model.
	EnvModelPath = "SPOTML_MODEL_PATH"
)

// Runtime is how a replica serves the model. Type says which fields apply:
//
//	runtime: {type: builtin, maxBatch: 32, maxQueueDelay: 2ms, threads: 2}
//	runtime: {type: command, command: [python3, serve.py], port: 8080, env: {WORKERS: "2"}}
//
// A field of the other type is an error rather than silently ignored.
type Runtime struct {
	Type string `yaml:"type,omitempty" json:"type,omitempty"` // builtin (default) | command

	// MaxBatch is the most requests the builtin runtime runs as one
	// batch; 1 turns batching off. Default 32.
	MaxBatch int `yaml:"maxBatch,omitempty" json:"maxBatch,omitempty"`
	// MaxQueueDelay is how long the builtin runtime holds a request to
	// fill a batch. Default 0: a batch is whatever queued while the
	// previous one ran, so batching costs no latency when load is light.
	MaxQueueDelay Duration `yaml:"maxQueueDelay,omitempty" json:"maxQueueDelay,omitzero"`
	// Threads the builtin runtime computes with. Default: resources.cpu
	// rounded up.
	Threads int `yaml:"threads,omitempty" json:"threads,omitempty"`

	// Command starts the user's server (argv, or a string run by
	// /bin/sh -c). It gets PORT, SPOTML_MODEL_PATH and Env.
	Command Command `yaml:"command,omitempty" json:"command,omitempty"`
	// Port is the port the server listens on. Default 0: spotml picks a
	// free one and passes it in PORT, which the server must then use.
	Port int               `yaml:"port,omitempty" json:"port,omitempty"`
	Env  map[string]string `yaml:"env,omitempty" json:"env,omitempty"`
}

// Replicas is the replica count policy: the autoscaler keeps the count
// between Min and Max, aiming at each target set (QPS, in-flight requests,
// p99 latency); when several are set the largest recommendation wins.
type Replicas struct {
	// Min is at least 1 (0 means the default, 1: spotml does not scale a
	// service to zero); the placement tier may raise it, see
	// ServiceSpec.ReplicaRange.
	Min int `yaml:"min,omitempty" json:"min,omitempty"`
	// Max defaults to the effective minimum: no autoscaling unless asked.
	Max int `yaml:"max,omitempty" json:"max,omitempty"`
	// TargetQPSPerReplica is the load one replica is sized for. Default
	// 50, unless TargetInFlightPerReplica or TargetLatencyP99 is set:
	// then QPS counts only when set too.
	TargetQPSPerReplica float64 `yaml:"targetQPSPerReplica,omitempty" json:"targetQPSPerReplica,omitempty"`
	// TargetInFlightPerReplica is the concurrency one replica is sized
	// for: requests outstanding at once, averaged over time, as Knative's
	// KPA scales (a 60s stable window, a 6s panic window that adds
	// replicas at once when a burst passes twice the target). It follows
	// the work, not the request count, where requests differ in cost.
	TargetInFlightPerReplica float64 `yaml:"targetInFlightPerReplica,omitempty" json:"targetInFlightPerReplica,omitempty"`
	// TargetLatencyP99 adds replicas while the p99 latency the gateways
	// measure (over the last minute) stays above it for UpscaleDelay; it
	// lets them go only when p99 is below half of it and the other
	// targets agree.
	TargetLatencyP99 *Duration `yaml:"targetLatencyP99,omitempty" json:"targetLatencyP99,omitempty"`
	// UpscaleDelay is how long load must call for more replicas before
	// they are added (default 10s); DownscaleDelay the same for removing
	// them (default 60s). 0s is allowed, hence the pointers; written
	// without omitempty because yaml would omit a pointer to 0s.
	UpscaleDelay   *Duration `yaml:"upscaleDelay" json:"upscaleDelay,omitempty"`
	DownscaleDelay *Duration `yaml:"downscaleDelay" json:"downscaleDelay,omitempty"`
}

// Availability tiers of a service; see PlacementSpec.Resolve.
const (
	TierDev    = "dev"
	TierProd   = "prod"
	TierStrict = "strict"
)

// PlacementSpec says how a service's replicas are spread over spot and
// on-demand pools. A tier gives the defaults; an override set explicitly
// (a non-nil pointer) always wins over it.
type PlacementSpec struct {
	Tier string `yaml:"tier,omitempty" json:"tier,omitempty"` // dev | prod (default) | strict
	// BaseOnDemand replicas always run on on-demand pools.
	BaseOnDemand *int `yaml:"baseOnDemand,omitempty" json:"baseOnDemand,omitempty"`
	// OnDemandPercentAboveBase of the replicas above the base run on
	// on-demand pools (rounded up), the rest on spot.
	OnDemandPercentAboveBase *int `yaml:"onDemandPercentAboveBase,omitempty" json:"onDemandPercentAboveBase,omitempty"`
	// SpreadZones puts each spot replica in the pool with the fewest
	// replicas of the service, so that one eviction wave takes few.
	SpreadZones *bool `yaml:"spreadZones,omitempty" json:"spreadZones,omitempty"`
	// FallbackToOnDemand launches on-demand stand-ins while no spot pool
	// has capacity, and replaces them once spot is back.
	FallbackToOnDemand *bool `yaml:"fallbackToOnDemand,omitempty" json:"fallbackToOnDemand,omitempty"`
	// StandInAfter is how long a spot replica may stay not ready (its node
	// booting, its model loading) before an on-demand stand-in starts for
	// it, when fallbackToOnDemand is on; the stand-in stops once spot
	// replicas are ready again. Default 30s; 0s starts one beside every
	// spot replica that is not ready yet.
	StandInAfter *Duration `yaml:"standInAfter,omitempty" json:"standInAfter,omitempty"`
	// Pools restricts replicas to the named pools; default any pool of
	// the right priority.
	Pools []string `yaml:"pools,omitempty" json:"pools,omitempty"`
	// SpareSpot is how many spot replicas to run beyond the spot share,
	// so that an eviction wave leaves the service its count while the
	// replacements boot: "auto" (the prod default) sizes them from the
	// spot pools' recent preemptions (none while they had none), a
	// number fixes them, "0" turns them off (dev's and strict's default).
	SpareSpot string `yaml:"spareSpot,omitempty" json:"spareSpot,omitempty"`
}

// SpareAuto is PlacementSpec.SpareSpot's value that sizes spares from
// history.
const SpareAuto = "auto"

// MaxSpareSpot bounds a fixed spareSpot.
const MaxSpareSpot = 100

// Placement is a PlacementSpec with its tier applied: the values the
// placement decision works with.
type Placement struct {
	Tier string `json:"tier"`
	// MinReplicas is replicas.min raised to the tier's floor.
	MinReplicas              int      `json:"minReplicas"`
	BaseOnDemand             int      `json:"baseOnDemand"`
	OnDemandPercentAboveBase int      `json:"onDemandPercentAboveBase"`
	SpreadZones              bool     `json:"spreadZones"`
	FallbackToOnDemand       bool     `json:"fallbackToOnDemand"`
	StandInAfter             Duration `json:"standInAfter"`
	Pools                    []string `json:"pools,omitempty"`
	// SpareSpot is the fixed count of spare spot replicas, unless
	// AutoSpare sizes them from the pools' recent preemptions.
	SpareSpot int  `json:"spareSpot"`
	AutoSpare bool `json:"autoSpare"`
}

// Readiness is the probe that decides when a replica gets traffic: an
// HTTP GET of Path that answers 2xx within Timeout, every Period, from
// InitialDelay after the server starts.
type Readiness struct {
	// Path defaults to /v2/health/ready (KServe v2) for the builtin
	// runtime and / for a command.
	Path         string   `yaml:"path,omitempty" json:"path,omitempty"`
	Period       Duration `yaml:"period,omitempty" json:"period,omitzero"`             // default 1s
	Timeout      Duration `yaml:"timeout,omitempty" json:"timeout,omitzero"`           // default 1s
	InitialDelay Duration `yaml:"initialDelay,omitempty" json:"initialDelay,omitzero"` // default 0
}

// Update is the rolling update strategy for a new version of a service.
type Update struct {
	// MaxSurge is how many replicas above the desired count may run
	// during an update. Default 1; 0 is allowed, hence the pointer.
	MaxSurge *int `yaml:"maxSurge,omitempty" json:"maxSurge,omitempty"`
	// MaxUnavailable is how many ready replicas below the desired count
	// an update may go. Default 0.
	MaxUnavailable int `yaml:"maxUnavailable,omitempty" json:"maxUnavailable,omitempty"`
}

// Auth lists the API keys a caller must present (Authorization: Bearer
// KEY). Both fields may be set; the keys are their union. KeysFile is
// the better choice: inline Keys are stored with the spec.
type Auth struct {
	// KeysFile is a file with one API key per line (blank lines and lines
	// starting with # ignored) on the control plane's machine. Gateways
	// read it and re-read it when it changes, so keys rotate without an
	// apply; one they cannot read lets no request through.
	KeysFile string   `yaml:"keysFile,omitempty" json:"keysFile,omitempty"`
	Keys     []string `yaml:"keys,omitempty" json:"keys,omitempty"`
}

// Limits bound what the gateway holds for one service, so that a flood of
// clients, or one slow client, costs connections rather than memory:
//
//	limits: {maxRequestBytes: 64Mi, maxInFlight: 200}
type Limits struct {
	// MaxRequestBytes is the largest request body the service takes;
	// larger ones get 413 from the gateway (and from the builtin
	// runtime). A size such as 16Mi (the default) or 100M.
	MaxRequestBytes Bytes `yaml:"maxRequestBytes,omitempty" json:"maxRequestBytes,omitempty"`
	// MaxInFlight is how many requests of the service the gateway holds
	// at once, counting those whose body is still arriving; past it
	// requests get 429 with Retry-After. Default 1000.
	MaxInFlight int `yaml:"maxInFlight,omitempty" json:"maxInFlight,omitempty"`
}

// Defaults and limits of services.
const (
	DefaultMinReplicas          = 1
	DefaultTargetQPSPerReplica  = 50
	DefaultUpscaleDelay         = 10 * time.Second
	DefaultDownscaleDelay       = 60 * time.Second
	DefaultMaxBatch             = 32
	DefaultReadinessPathBuiltin = "/v2/health/ready"
	DefaultReadinessPathCommand = "/"
	DefaultReadinessPeriod      = time.Second
	DefaultReadinessTimeout     = time.Second
	DefaultMaxSurge             = 1
	DefaultStandInAfter         = 30 * time.Second
	DefaultMaxRequestBytes      = 16 << 20
	DefaultMaxInFlight          = 1000

	MaxReplicas = 1000
	MaxBatch    = 4096
)

// tierFloor is the fewest replicas a tier runs: one replica cannot survive
// an eviction without an interruption.
func tierFloor(tier string) int {
	if tier == TierDev {
		return 1
	}
	return 2
}

// Resolve applies the tier to the explicit fields, for a service whose
// replicas.min is minReplicas:
//
//	tier    base  percent  spread  fallback  spares  replicas
//	dev     0     0        no      no        0       ≥ 1
//	prod    0     0        yes     yes       auto    ≥ 2
//	strict  1     0        yes     yes       0       ≥ 2
//
// An unset tier is prod. Explicit fields win; Validate refuses a strict
// tier with baseOnDemand 0, so Resolve keeps a strict base of at least 1.
func (p PlacementSpec) Resolve(minReplicas int) Placement {
	r := Placement{Tier: p.Tier, Pools: cloneSlice(p.Pools), StandInAfter: Duration{DefaultStandInAfter}}
	switch p.Tier {
	case TierDev:
	case TierStrict:
		r.BaseOnDemand, r.SpreadZones, r.FallbackToOnDemand = 1, true, true
	default:
		r.Tier = TierProd
		r.SpreadZones, r.FallbackToOnDemand, r.AutoSpare = true, true, true
	}
	switch p.SpareSpot {
	case "":
	case SpareAuto:
		r.AutoSpare = true
	default:
		// Validate refused anything else.
		n, _ := strconv.Atoi(p.SpareSpot)
		r.SpareSpot, r.AutoSpare = min(MaxSpareSpot, max(0, n)), false
	}
	if p.BaseOnDemand != nil {
		r.BaseOnDemand = max(0, *p.BaseOnDemand)
		if r.Tier == TierStrict {
			r.BaseOnDemand = max(1, r.BaseOnDemand)
		}
	}
	if p.OnDemandPercentAboveBase != nil {
		r.OnDemandPercentAboveBase = min(100, max(0, *p.OnDemandPercentAboveBase))
	}
	if p.SpreadZones != nil {
		r.SpreadZones = *p.SpreadZones
	}
	if p.FallbackToOnDemand != nil {
		r.FallbackToOnDemand = *p.FallbackToOnDemand
	}
	if p.StandInAfter != nil {
		r.StandInAfter = Duration{max(0, p.StandInAfter.Duration)}
	}
	r.MinReplicas = max(minReplicas, tierFloor(r.Tier))
	return r
}

// Mix splits n replicas into on-demand and spot as an AWS auto scaling
// group's OnDemandBaseCapacity and OnDemandPercentageAboveBaseCapacity do:
// the base first, then the percentage of the rest, rounded up.
func (p Placement) Mix(n int) (onDemand, spot int) {
	if n <= 0 {
		return 0, 0
	}
	above := max(0, n-p.BaseOnDemand)
	onDemand = min(n, p.BaseOnDemand+(above*p.OnDemandPercentAboveBase+99)/100)
	return onDemand, n - onDemand
}

// ResolvedPlacement returns the effective placement of the service: its
// PlacementSpec resolved for its replicas.min.
func (s *ServiceSpec) ResolvedPlacement() Placement {
	return s.Placement.Resolve(cmp.Or(s.Replicas.Min, DefaultMinReplicas))
}

// ReplicaRange returns the effective bounds of the replica count:
// replicas.min raised to the tier's floor, and replicas.max (or that
// minimum when max is unset) but never below the minimum.
func (s *ServiceSpec) ReplicaRange() (lo, hi int) {
	lo = s.ResolvedPlacement().MinReplicas
	return lo, max(lo, s.Replicas.Max)
}

func (s *Service) name() string { return s.Metadata.Name }

// Default fills in what a service leaves out. It is idempotent.
func (s *Service) Default() {
	sp := &s.Spec
	rt := &sp.Runtime
	if rt.Type == "" {
		rt.Type = RuntimeBuiltin
	}
	if sp.Resources == (Resources{}) {
		sp.Resources.CPU = 1
	}
	if rt.Type == RuntimeBuiltin {
		if rt.MaxBatch == 0 {
			rt.MaxBatch = DefaultMaxBatch
		}
		if rt.Threads == 0 {
			rt.Threads = max(1, int(math.Ceil(sp.Resources.CPU)))
		}
	}

	if sp.Placement.Tier == "" {
		sp.Placement.Tier = TierProd
	}
	r := &sp.Replicas
	if r.Min == 0 {
		r.Min = DefaultMinReplicas
	}
	if r.Max == 0 {
		r.Max = max(r.Min, tierFloor(sp.Placement.Tier))
	}
	if r.TargetQPSPerReplica == 0 && r.TargetInFlightPerReplica == 0 && r.TargetLatencyP99 == nil {
		r.TargetQPSPerReplica = DefaultTargetQPSPerReplica
	}
	if r.UpscaleDelay == nil {
		r.UpscaleDelay = &Duration{DefaultUpscaleDelay}
	}
	if r.DownscaleDelay == nil {
		r.DownscaleDelay = &Duration{DefaultDownscaleDelay}
	}

	rd := &sp.Readiness
	if rd.Path == "" {
		rd.Path = DefaultReadinessPathBuiltin
		if rt.Type == RuntimeCommand {
			rd.Path = DefaultReadinessPathCommand
		}
	}
	if rd.Period.Duration == 0 {
		rd.Period.Duration = DefaultReadinessPeriod
	}
	if rd.Timeout.Duration == 0 {
		rd.Timeout.Duration = DefaultReadinessTimeout
	}
	if sp.Update.MaxSurge == nil {
		sp.Update.MaxSurge = ptr(DefaultMaxSurge)
	}
}

// Validate checks a service, before or after Default. Its error is an
// *Error whose fields have no lines; Parse adds them.
func (s *Service) Validate() error {
	var errs fieldErrors
	errs.header(s.APIVersion, s.Kind, KindService, s.Metadata)
	sp := &s.Spec
	rt := &sp.Runtime

	if sp.Model.URI == "" {
		errs.add("spec.model.uri", "required; a blob URL such as s3://bucket/model.onnx, or a path in the default store such as outputs/job/out/model.onnx")
	} else if strings.TrimSpace(sp.Model.URI) != sp.Model.URI {
		errs.add("spec.model.uri", "%q has leading or trailing spaces; remove them", sp.Model.URI)
	} else {
		errs.blobLocation("spec.model.uri", sp.Model.URI)
		if (rt.Type == "" || rt.Type == RuntimeBuiltin) && strings.HasSuffix(sp.Model.URI, "/") {
			errs.add("spec.model.uri", "%q is a directory; the builtin runtime serves one .onnx file, so name the file (or use runtime type %q for a server that loads a directory)", sp.Model.URI, RuntimeCommand)
		}
	}

	errs.runtime(rt)
	errs.resources("spec.resources", sp.Resources)
	errs.replicas(sp)
	errs.placement(sp)
	errs.readiness(&sp.Readiness)
	errs.update(&sp.Update)
	errs.auth(&sp.Auth)
	errs.limits(&sp.Limits)
	return errs.err()
}

func (e *fieldErrors) runtime(rt *Runtime) {
	const at = "spec.runtime"
	only := func(field, typ string, set bool) {
		if set {
			e.add(at+"."+field, "only allowed when type is %q", typ)
		}
	}
	switch rt.Type {
	case "", RuntimeBuiltin:
		only("command", RuntimeCommand, rt.Command != nil)
		only("port", RuntimeCommand, rt.Port != 0)
		only("env", RuntimeCommand, rt.Env != nil)
		if rt.MaxBatch < 0 || rt.MaxBatch > MaxBatch {
			e.add(at+".maxBatch", "must be between 1 and %d, got %d", MaxBatch, rt.MaxBatch)
		}
		if rt.MaxQueueDelay.Duration < 0 {
			e.add(at+".maxQueueDelay", "must not be negative, got %s", rt.MaxQueueDelay)
		}
		if rt.Threads < 0 {
			e.add(at+".threads", "must not be negative, got %d", rt.Threads)
		}
	case RuntimeCommand:
		only("maxBatch", RuntimeBuiltin, rt.MaxBatch != 0)
		only("maxQueueDelay", RuntimeBuiltin, rt.MaxQueueDelay.Duration != 0)
		only("threads", RuntimeBuiltin, rt.Threads != 0)
		if len(rt.Command) == 0 {
			e.add(at+".command", "required with type %q; the command that starts your model server", RuntimeCommand)
		} else if rt.Command[0] == "" {
			e.add(at+".command[0]", "the program to run must not be empty")
		}
		if rt.Port < 0 || rt.Port > 65535 {
			e.add(at+".port", "must be between 1 and 65535, got %d; leave it out to have spotml pick one and pass it in $%s", rt.Port, EnvPort)
		}
		e.env(at+".env", rt.Env)
		for k := range rt.Env {
			switch k {
			case EnvPort:
				e.add(keyPath(at+".env", k), "is set by spotml; to choose the port, set runtime.port instead")
			case EnvModelPath:
				e.add(keyPath(at+".env", k), "is set by spotml to where it downloaded model.uri; remove it")
			}
		}
	default:
		e.add(at+".type", "%q is not a runtime; use %q (ONNX, served in-process) or %q (your own server)", rt.Type, RuntimeBuiltin, RuntimeCommand)
	}
}

func (e *fieldErrors) replicas(sp *ServiceSpec) {
	const at = "spec.replicas"
	r := &sp.Replicas
	lo := cmp.Or(r.Min, DefaultMinReplicas)
	switch {
	case lo < 1:
		e.add(at+".min", "must be at least 1, got %d; spotml does not scale a service to zero", lo)
	case lo > MaxReplicas:
		e.add(at+".min", "must be at most %d, got %d", MaxReplicas, lo)
	}
	if r.Max != 0 {
		hi, tier := r.Max, sp.Placement.Tier
		if tier == "" {
			tier = TierProd
		}
		switch floor := tierFloor(tier); {
		case hi > MaxReplicas:
			e.add(at+".max", "must be at most %d, got %d", MaxReplicas, hi)
		case hi < lo:
			e.add(at+".max", "must be at least min (%d), got %d", lo, hi)
		case hi < floor && isTier(tier):
			e.add(at+".max", "is %d, but placement tier %q runs at least %d replicas so that one eviction does not take the service down; raise max to %d, or use tier %q", hi, tier, floor, floor, TierDev)
		}
	}
	if !(r.TargetQPSPerReplica >= 0) {
		e.add(at+".targetQPSPerReplica", "must be more than 0, got %g", r.TargetQPSPerReplica)
	}
	if !(r.TargetInFlightPerReplica >= 0) {
		e.add(at+".targetInFlightPerReplica", "must be more than 0 (requests outstanding at once per replica, e.g. 1 or 2.5), got %g", r.TargetInFlightPerReplica)
	}
	if d := r.TargetLatencyP99; d != nil && d.Duration <= 0 {
		e.add(at+".targetLatencyP99", "must be more than 0, like 200ms, got %s", d)
	}
	if r.UpscaleDelay != nil && r.UpscaleDelay.Duration < 0 {
		e.add(at+".upscaleDelay", "must not be negative, got %s", r.UpscaleDelay)
	}
	if r.DownscaleDelay != nil && r.DownscaleDelay.Duration < 0 {
		e.add(at+".downscaleDelay", "must not be negative, got %s", r.DownscaleDelay)
	}
}

func isTier(t string) bool { return t == TierDev || t == TierProd || t == TierStrict }

func (e *fieldErrors) placement(sp *ServiceSpec) {
	const at = "spec.placement"
	p := &sp.Placement
	if p.Tier != "" && !isTier(p.Tier) {
		e.add(at+".tier", "%q is not a tier; use %q (all spot, interruptions acceptable), %q (spot spread over pools, on-demand stand-ins) or %q (an on-demand base plus spot)", p.Tier, TierDev, TierProd, TierStrict)
	}
	if b := p.BaseOnDemand; b != nil {
		switch {
		case *b < 0:
			e.add(at+".baseOnDemand", "must not be negative, got %d", *b)
		case *b == 0 && p.Tier == TierStrict:
			e.add(at+".baseOnDemand", "must be at least 1 with tier %q: the on-demand base is what keeps serving when every spot replica is evicted at once; set it to 1 or more, or use tier %q", TierStrict, TierProd)
		case sp.Replicas.Max != 0 && *b > sp.Replicas.Max:
			e.add(at+".baseOnDemand", "is %d, more than replicas.max (%d), so it can never be reached; lower it or raise replicas.max", *b, sp.Replicas.Max)
		}
	}
	if pct := p.OnDemandPercentAboveBase; pct != nil && (*pct < 0 || *pct > 100) {
		e.add(at+".onDemandPercentAboveBase", "is a percentage between 0 and 100, got %d", *pct)
	}
	if d := p.StandInAfter; d != nil && d.Duration < 0 {
		e.add(at+".standInAfter", "must not be negative, got %s", d)
	}
	seen := map[string]int{}
	for i, name := range p.Pools {
		f := fmt.Sprintf("%s.pools[%d]", at, i)
		if name == "" {
			e.add(f, "must not be empty")
			continue
		}
		if !e.name(f, name, MaxNameLen) {
			continue
		}
		if j, dup := seen[name]; dup {
			e.add(f, "%q is already listed as %s.pools[%d]", name, at, j)
			continue
		}
		seen[name] = i
	}
	if p.Pools != nil && len(p.Pools) == 0 {
		e.add(at+".pools", "must not be empty; leave it out to use any pool")
	}
	if v := p.SpareSpot; v != "" && v != SpareAuto {
		if n, err := strconv.Atoi(v); err != nil || n < 0 || n > MaxSpareSpot {
			e.add(at+".spareSpot", "%q is neither %q nor a count from 0 to %d; write %q to size spares from the pools' recent preemptions, or a number such as 1", v, SpareAuto, MaxSpareSpot, SpareAuto)
		}
	}
}

func (e *fieldErrors) readiness(r *Readiness) {
	const at = "spec.readiness"
	switch {
	case r.Path == "":
	case !strings.HasPrefix(r.Path, "/"):
		e.add(at+".path", "%q must start with /, like /healthz", r.Path)
	case strings.ContainsAny(r.Path, " \t\r\n"):
		e.add(at+".path", "%q contains white space; escape it as %%20", r.Path)
	}
	for _, d := range []struct {
		field string
		v     Duration
	}{{"period", r.Period}, {"timeout", r.Timeout}, {"initialDelay", r.InitialDelay}} {
		if d.v.Duration < 0 {
			e.add(at+"."+d.field, "must not be negative, got %s", d.v)
		}
	}
}

func (e *fieldErrors) update(u *Update) {
	const at = "spec.update"
	surge := deref(u.MaxSurge, DefaultMaxSurge)
	if surge < 0 {
		e.add(at+".maxSurge", "must not be negative, got %d", surge)
	}
	if u.MaxUnavailable < 0 {
		e.add(at+".maxUnavailable", "must not be negative, got %d", u.MaxUnavailable)
	}
	if surge == 0 && u.MaxUnavailable == 0 {
		e.add(at+".maxSurge", "is 0 and so is maxUnavailable, so an update could never replace a replica; set maxSurge to 1 (start a new replica before stopping an old one) or maxUnavailable to 1 (stop one first)")
	}
}

func (e *fieldErrors) auth(a *Auth) {
	const at = "spec.auth"
	if a.Keys != nil && len(a.Keys) == 0 && a.KeysFile == "" {
		e.add(at+".keys", "must not be empty; list API keys, set keysFile, or leave auth out for a service anyone may call")
	}
	seen := map[string]int{}
	for i, k := range a.Keys {
		f := fmt.Sprintf("%s.keys[%d]", at, i)
		switch {
		case k == "":
			e.add(f, "must not be empty")
		case strings.IndexFunc(k, func(r rune) bool { return r <= ' ' || r == 0x7f }) >= 0:
			e.add(f, "contains white space or a control character; an API key is one token")
		default:
			if j, dup := seen[k]; dup {
				e.add(f, "is the same key as %s.keys[%d]", at, j)
			} else {
				seen[k] = i
			}
		}
	}
}

func (e *fieldErrors) limits(l *Limits) {
	const at = "spec.limits"
	if l.MaxRequestBytes < 0 {
		e.add(at+".maxRequestBytes", "must be a positive size such as %s, got %s; leave it out for the default %s", Bytes(64<<20), l.MaxRequestBytes, Bytes(DefaultMaxRequestBytes))
	}
	if l.MaxInFlight < 0 {
		e.add(at+".maxInFlight", "must be at least 1, got %d; leave it out for the default %d", l.MaxInFlight, DefaultMaxInFlight)
	}
}

func ptr[T any](v T) *T { return &v }

func deref[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}
