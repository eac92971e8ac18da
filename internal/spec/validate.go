package spec

import (
	"fmt"
	"math"
	"net/url"
	"path"
	"strings"
	"time"
)

// Providers a pool may name.
const (
	// ProviderLocal runs nodes as processes on this machine, and simulates
	// spot evictions.
	ProviderLocal = "local"
	// ProviderKubernetes runs nodes as agent pods on a cluster's node
	// pools, and reads evictions from the cluster's own signals.
	ProviderKubernetes = "kubernetes"
	// ProviderAzure runs nodes as VMs of an Azure VM Scale Set.
	ProviderAzure = "azure"
	// ProviderAWS runs nodes as EC2 instances.
	ProviderAWS = "aws"
	// ProviderGCP runs nodes as Compute Engine VMs.
	ProviderGCP = "gcp"
)

// providers lists the providers a pool may name, for error messages.
const providers = `"local", "kubernetes", "azure", "aws" or "gcp"`

// Limits checked by Validate.
const (
	// MaxNameLen bounds metadata.name: node names are built as
	// <pool>-<suffix> and must stay valid DNS labels.
	MaxNameLen     = 40
	MaxTaskNameLen = 63
	MaxCount       = 100000
	MaxRetries     = 100
)

// Defaults filled in by Default.
const (
	DefaultIdleTimeout        = 60 * time.Second
	DefaultNotice             = 30 * time.Second
	DefaultCheckpointInterval = 30 * time.Second

	DefaultKubernetesNamespace      = "spotml"
	DefaultGPUResource              = "nvidia.com/gpu"
	DefaultUnschedulableTimeout     = 90 * time.Second
	MaxKubernetesNamespaceLen       = 63
	maxKubernetesNoticeGraceSeconds = 3600
)

// FlavorNotice is each flavor's eviction notice, the default of
// spec.kubernetes.notice: AWS gives spot instances two minutes (Karpenter
// and NTH act on it), Azure and Google Cloud 30 seconds; Alibaba's ECS
// documents about three minutes before a spot instance is released
// (ECI's SpotToBeReleased event); custom assumes the shortest.
var FlavorNotice = map[string]time.Duration{
	FlavorKarpenter: 2 * time.Minute,
	FlavorEKS:       2 * time.Minute,
	FlavorAKS:       30 * time.Second,
	FlavorGKE:       30 * time.Second,
	FlavorACK:       3 * time.Minute,
	FlavorCustom:    30 * time.Second,
}

// Default fills in what a pool leaves out. It is idempotent, and leaves the
// spot-only fields of an on-demand pool empty.
func (p *Pool) Default() {
	s := &p.Spec
	if s.EvictionPolicy == "" {
		s.EvictionPolicy = EvictionDelete
	}
	if s.IdleTimeout.Duration == 0 {
		s.IdleTimeout.Duration = DefaultIdleTimeout
	}
	if s.Provider == ProviderLocal && s.Priority == PrioritySpot {
		if s.Local == nil {
			s.Local = &LocalPool{}
		}
		if s.Local.Notice.Duration == 0 {
			s.Local.Notice.Duration = DefaultNotice
		}
		if s.Local.NoticeFormat == "" {
			s.Local.NoticeFormat = NoticeAzure
		}
		if m := s.Local.Market; m != nil && m.Speedup == 0 {
			m.Speedup = 1
		}
	}
	if a := s.Azure; a != nil && s.Provider == ProviderAzure {
		a.defaults(s.Priority)
	}
	if g := s.GCP; g != nil && s.Provider == ProviderGCP {
		g.defaults()
	}
	if k := s.Kubernetes; k != nil && s.Provider == ProviderKubernetes {
		if k.Namespace == "" {
			k.Namespace = DefaultKubernetesNamespace
		}
		if k.GPUResource == "" {
			k.GPUResource = DefaultGPUResource
		}
		if k.UnschedulableTimeout.Duration == 0 {
			k.UnschedulableTimeout.Duration = DefaultUnschedulableTimeout
		}
		if d, ok := FlavorNotice[k.Flavor]; ok && k.Notice.Duration == 0 {
			k.Notice.Duration = d
		}
	}
}

// Validate checks a pool, before or after Default. Its error is an *Error
// whose fields have no lines; Parse adds them.
func (p *Pool) Validate() error {
	var errs fieldErrors
	errs.header(p.APIVersion, p.Kind, KindPool, p.Metadata)
	s := &p.Spec
	switch s.Provider {
	case ProviderLocal, ProviderKubernetes, ProviderAzure, ProviderAWS, ProviderGCP:
	case "":
		errs.add("spec.provider", "required; use %s", providers)
	default:
		errs.add("spec.provider", "%q is not supported yet; use %s", s.Provider, providers)
	}
	if s.Priority == "" {
		errs.add("spec.priority", "required; use %q or %q", PrioritySpot, PriorityOnDemand)
	} else {
		errs.priority("spec.priority", s.Priority)
	}
	// On Kubernetes the cluster picks the machine; an instance type only
	// narrows the choice (and prices the node until it is placed).
	if s.InstanceType == "" && s.Provider != ProviderKubernetes {
		errs.add("spec.instanceType", "required")
	}
	for i, z := range s.Zones {
		if z == "" {
			errs.add(fmt.Sprintf("spec.zones[%d]", i), "must not be empty")
		}
	}
	if s.Min < 0 {
		errs.add("spec.min", "must not be negative, got %d", s.Min)
	}
	switch {
	case s.Max < 1:
		errs.add("spec.max", "must be at least 1, got %d", s.Max)
	case s.Max < s.Min:
		errs.add("spec.max", "must be at least min (%d), got %d", s.Min, s.Max)
	}
	switch s.EvictionPolicy {
	case "", EvictionDelete, EvictionDeallocate:
	default:
		errs.add("spec.evictionPolicy", "%q is not a policy; use %q or %q", s.EvictionPolicy, EvictionDelete, EvictionDeallocate)
	}
	errs.nonNegative("spec.pricePerHour", s.PricePerHour)
	errs.nonNegative("spec.onDemandPricePerHour", s.OnDemandPricePerHour)
	if s.Capacity != nil {
		errs.resources("spec.capacity", *s.Capacity)
	}
	if s.StartTask != nil {
		if len(s.StartTask.Command) == 0 {
			errs.add("spec.startTask.command", "required")
		}
		errs.env("spec.startTask.env", s.StartTask.Env)
	}
	if s.IdleTimeout.Duration < 0 {
		errs.add("spec.idleTimeout", "must not be negative, got %s", s.IdleTimeout)
	}

	if s.Local != nil {
		if s.Provider != ProviderLocal {
			errs.add("spec.local", "only allowed when provider is %q; settings for provider %q go in spec.%s", ProviderLocal, s.Provider, s.Provider)
		} else {
			s.Local.validate(&errs, s.Priority)
		}
	}
	if s.Kubernetes != nil && s.Provider != ProviderKubernetes {
		errs.add("spec.kubernetes", "only allowed when provider is %q; settings for provider %q go in spec.%s", ProviderKubernetes, s.Provider, s.Provider)
	}
	if s.Provider == ProviderKubernetes {
		if s.Kubernetes == nil {
			errs.add("spec.kubernetes", "required when provider is %q: at least flavor and image", ProviderKubernetes)
		} else {
			s.Kubernetes.validate(&errs)
		}
		if s.Capacity == nil {
			errs.add("spec.capacity", "required when provider is %q: what each node's agent pod requests (cpu, memory, gpu); keep it within the cluster node's allocatable, which is less than the instance's capacity", ProviderKubernetes)
		}
		if s.EvictionPolicy == EvictionDeallocate {
			errs.add("spec.evictionPolicy", "%q cannot be kept on Kubernetes (an evicted pod is gone); use %q", EvictionDeallocate, EvictionDelete)
		}
	}
	if s.Azure != nil && s.Provider != ProviderAzure {
		errs.add("spec.azure", "only allowed when provider is %q; settings for provider %q go in spec.%s", ProviderAzure, s.Provider, s.Provider)
	}
	if s.Provider == ProviderAzure {
		s.validateAzure(&errs)
	}
	if s.AWS != nil && s.Provider != ProviderAWS {
		errs.add("spec.aws", "only allowed when provider is %q; settings for provider %q go in spec.%s", ProviderAWS, s.Provider, s.Provider)
	}
	if s.Provider == ProviderAWS {
		s.validateAWS(&errs)
	}
	if s.GCP != nil && s.Provider != ProviderGCP {
		errs.add("spec.gcp", "only allowed when provider is %q; settings for provider %q go in spec.%s", ProviderGCP, s.Provider, s.Provider)
	}
	if s.Provider == ProviderGCP {
		s.validateGCP(&errs)
	}
	return errs.err()
}

// validate checks a Kubernetes pool's settings.
func (k *KubernetesPool) validate(errs *fieldErrors) {
	const at = "spec.kubernetes"
	flavors := []string{FlavorKarpenter, FlavorEKS, FlavorAKS, FlavorGKE, FlavorACK, FlavorCustom}
	switch {
	case k.Flavor == "":
		errs.add(at+".flavor", "required; use one of %s", strings.Join(flavors, ", "))
	case FlavorNotice[k.Flavor] == 0:
		errs.add(at+".flavor", "%q is not a flavor; use one of %s", k.Flavor, strings.Join(flavors, ", "))
	case k.Flavor == FlavorCustom && len(k.NodeSelector) == 0:
		errs.add(at+".nodeSelector", "required with flavor %q: the labels that mark this pool's nodes (custom knows no spot labels)", FlavorCustom)
	}
	if k.Namespace != "" {
		errs.name(at+".namespace", k.Namespace, MaxKubernetesNamespaceLen)
	}
	if k.Image == "" {
		errs.add(at+".image", "required: the container image the pool's work runs in")
	} else if strings.ContainsAny(k.Image, " \t\n") {
		errs.add(at+".image", "%q is not an image reference", k.Image)
	}
	for key := range k.NodeSelector {
		if key == "" {
			errs.add(at+".nodeSelector", "a label key must not be empty")
		}
	}
	for i, t := range k.Tolerations {
		tat := fmt.Sprintf("%s.tolerations[%d]", at, i)
		switch t.Operator {
		case "", "Equal":
			if t.Key == "" {
				errs.add(tat+".key", "required with operator Equal; an empty key matches every taint only with operator Exists")
			}
		case "Exists":
			if t.Value != "" {
				errs.add(tat+".value", "must be empty with operator Exists")
			}
		default:
			errs.add(tat+".operator", "%q is not an operator; use Equal or Exists", t.Operator)
		}
		switch t.Effect {
		case "", "NoSchedule", "PreferNoSchedule", "NoExecute":
		default:
			errs.add(tat+".effect", "%q is not a taint effect; use NoSchedule, PreferNoSchedule or NoExecute (empty: all)", t.Effect)
		}
	}
	if k.GPUResource != "" {
		if domain, name, ok := strings.Cut(k.GPUResource, "/"); !ok || domain == "" || name == "" || strings.Contains(name, "/") {
			errs.add(at+".gpuResource", "%q is not an extended resource name; use domain/name such as nvidia.com/gpu or amd.com/gpu", k.GPUResource)
		}
	}
	if k.UnschedulableTimeout.Duration < 0 {
		errs.add(at+".unschedulableTimeout", "must not be negative, got %s", k.UnschedulableTimeout)
	}
	switch {
	case k.Notice.Duration < 0:
		errs.add(at+".notice", "must not be negative, got %s", k.Notice)
	case k.Notice.Duration > maxKubernetesNoticeGraceSeconds*time.Second:
		errs.add(at+".notice", "%s is longer than any platform's notice; at most %s", k.Notice, Duration{maxKubernetesNoticeGraceSeconds * time.Second})
	}
	if k.InstanceMetadata && (k.Flavor == FlavorACK || k.Flavor == FlavorCustom) {
		errs.add(at+".instanceMetadata", "not available with flavor %q: spotml watches AWS, Azure and GCP metadata only; leave it out (the Kubernetes signals still apply)", k.Flavor)
	}
}

// validate checks the simulated market's settings of a pool of priority.
func (l *LocalPool) validate(errs *fieldErrors, priority string) {
	if priority == PriorityOnDemand {
		// The simulated market is a spot pool's; on demand it would be
		// silently ignored, so it is refused.
		spotOnly := func(field string, set bool) {
			if set {
				errs.add(field, "only allowed when priority is %q", PrioritySpot)
			}
		}
		spotOnly("spec.local.evictionRate", l.EvictionRate != 0)
		spotOnly("spec.local.capacityShortage", l.CapacityShortage != 0)
		spotOnly("spec.local.notice", l.Notice.Duration != 0)
		spotOnly("spec.local.noticeFormat", l.NoticeFormat != "")
		spotOnly("spec.local.market", l.Market != nil)
		return
	}
	if m := l.Market; m != nil {
		if m.Trace == "" {
			errs.add("spec.local.market.trace", "required: a trace file on the control plane's machine, e.g. traces/bamboo/p3-trace.csv")
		}
		if !(m.Speedup >= 0) || math.IsInf(m.Speedup, 0) {
			errs.add("spec.local.market.speedup", "must be a positive number (60 replays an hour of the trace a minute), got %g", m.Speedup)
		}
		if m.Start.Duration < 0 {
			errs.add("spec.local.market.start", "must not be negative, got %s", m.Start)
		}
	}
	if !(l.EvictionRate >= 0) {
		errs.add("spec.local.evictionRate", "must not be negative, got %g", l.EvictionRate)
	}
	if !(l.CapacityShortage >= 0 && l.CapacityShortage <= 1) {
		errs.add("spec.local.capacityShortage", "is a probability between 0 and 1, got %g", l.CapacityShortage)
	}
	if l.Notice.Duration < 0 {
		errs.add("spec.local.notice", "must be positive, got %s", l.Notice)
	}
	switch l.NoticeFormat {
	case "", NoticeAzure, NoticeAWS, NoticeGCP:
	default:
		errs.add("spec.local.noticeFormat", "%q is not a notice format; use %q, %q or %q", l.NoticeFormat, NoticeAzure, NoticeAWS, NoticeGCP)
	}
}

// Default fills in what the tasks or the template leave out. Job-level pool
// and priority are not copied into tasks; ExpandTasks does that.
func (j *Job) Default() {
	for i := range j.Spec.Tasks {
		j.Spec.Tasks[i].defaults()
	}
	if j.Spec.Template != nil {
		j.Spec.Template.defaults()
	}
}

// Validate checks a job, before or after Default. Its error is an *Error
// whose fields have no lines; Parse adds them.
func (j *Job) Validate() error {
	var errs fieldErrors
	errs.header(j.APIVersion, j.Kind, KindJob, j.Metadata)
	s := &j.Spec
	errs.priority("spec.priority", s.Priority)
	if s.Pool != "" {
		errs.name("spec.pool", s.Pool, MaxNameLen)
	}

	hasTasks := s.Tasks != nil
	switch {
	case hasTasks && (s.Count != 0 || s.Template != nil):
		const msg = "not allowed with tasks; use either tasks, or count and template"
		if s.Count != 0 {
			errs.add("spec.count", msg)
		}
		if s.Template != nil {
			errs.add("spec.template", msg)
		}
	case hasTasks && len(s.Tasks) == 0:
		errs.add("spec.tasks", "must not be empty")
	case hasTasks:
	case s.Count == 0 && s.Template == nil:
		errs.add("spec", "needs tasks, or count and template")
	case s.Template == nil:
		errs.add("spec.template", "required with count")
	case s.Count == 0:
		errs.add("spec.count", "required with template; how many tasks to make from it")
	case s.Count < 1 || s.Count > MaxCount:
		errs.add("spec.count", "must be between 1 and %d, got %d", MaxCount, s.Count)
	}

	first := map[string]int{} // task name -> index
	for i := range s.Tasks {
		t := &s.Tasks[i]
		at := fmt.Sprintf("spec.tasks[%d]", i)
		if t.Name == "" {
			errs.add(at+".name", "required")
		} else if errs.name(at+".name", t.Name, MaxTaskNameLen) {
			if k, dup := first[t.Name]; dup {
				errs.add(at+".name", "%q is already the name of spec.tasks[%d]", t.Name, k)
			} else {
				first[t.Name] = i
			}
		}
		errs.task(at, t)
	}
	if t := s.Template; t != nil {
		if t.Name != "" {
			errs.add("spec.template.name", "not allowed in a template; its tasks are named task-0, task-1, …")
		}
		errs.task("spec.template", t)
	}
	j.validateDeadline(&errs)
	return errs.err()
}

// validateDeadline checks the deadline fields: a policy that chooses spot
// or on-demand itself must be free to, so no pool or priority is pinned.
func (j *Job) validateDeadline(errs *fieldErrors) {
	s := &j.Spec
	if s.Deadline != "" {
		if _, _, err := ParseDeadline(s.Deadline); err != nil {
			errs.add("spec.deadline", "%v", err)
		} else if d, abs, _ := ParseDeadline(s.Deadline); !abs && s.Work.Duration >= d {
			errs.add("spec.work", "%s leaves no room before the deadline (%s); raise spec.deadline or lower spec.work", s.Work, s.Deadline)
		}
	}
	if s.Work.Duration < 0 {
		errs.add("spec.work", "must be positive, got %s", s.Work)
	}
	if s.Work.Duration != 0 && s.Deadline == "" {
		errs.add("spec.work", "only used with spec.deadline; add a deadline like deadline: 36h, or remove work")
	}
	switch s.Policy {
	case "", PolicyDeadline, PolicyFixed:
	default:
		errs.add("spec.policy", "%q is not a policy; use %q (spotml chooses spot or on-demand to meet spec.deadline) or %q (pool and priority as written)", s.Policy, PolicyDeadline, PolicyFixed)
	}
	if s.Policy != "" && s.Deadline == "" {
		errs.add("spec.policy", "needs spec.deadline; add one like deadline: 36h (or an RFC 3339 time), or remove policy")
	}
	if s.OnDemandAfterPreemptions < 0 {
		errs.add("spec.onDemandAfterPreemptions", "must be 0 (never) or more, got %d", s.OnDemandAfterPreemptions)
	}
	steered := j.DeadlinePolicy()
	if !steered && s.OnDemandAfterPreemptions == 0 {
		return
	}
	why := "with spec.onDemandAfterPreemptions, which moves tasks to on-demand itself"
	if steered {
		why = "with policy deadline, which chooses spot or on-demand itself"
	}
	if s.Pool != "" {
		errs.add("spec.pool", "not allowed %s; remove it (any pool of the chosen priority runs the tasks)", why)
	}
	if steered && s.Priority != "" {
		errs.add("spec.priority", "not allowed %s; remove it, or set policy: fixed", why)
	}
	check := func(at string, t *TaskSpec) {
		if t == nil {
			return
		}
		if t.Pool != "" {
			errs.add(at+".pool", "not allowed %s; remove it", why)
		}
		if steered && t.Priority != "" {
			errs.add(at+".priority", "not allowed %s; remove it, or set policy: fixed", why)
		}
	}
	for i := range s.Tasks {
		check(fmt.Sprintf("spec.tasks[%d]", i), &s.Tasks[i])
	}
	check("spec.template", s.Template)
}

// DeadlinePolicy says whether spotml chooses spot or on-demand for the
// job's tasks to meet its deadline.
func (j *Job) DeadlinePolicy() bool {
	return j.Spec.Deadline != "" && (j.Spec.Policy == "" || j.Spec.Policy == PolicyDeadline)
}

// ParseDeadline reads a deadline: a duration from submission ("36h"), or
// an absolute RFC 3339 time (abs true, the time as nanoseconds since the
// epoch in d).
func ParseDeadline(s string) (d time.Duration, abs bool, err error) {
	if t, err := time.Parse(time.RFC3339, strings.TrimSpace(s)); err == nil {
		return time.Duration(t.UnixNano()), true, nil
	}
	d, err = parseDuration(s)
	if err != nil || d <= 0 {
		return 0, false, fmt.Errorf("%q is neither a positive duration like \"36h\" nor an RFC 3339 time like \"2026-12-01T18:00:00Z\"", s)
	}
	return d, false, nil
}

// DeadlineAt is the job's deadline for a job submitted at submitted;
// false without one.
func (j *Job) DeadlineAt(submitted time.Time) (time.Time, bool) {
	d, abs, err := ParseDeadline(j.Spec.Deadline)
	if j.Spec.Deadline == "" || err != nil {
		return time.Time{}, false
	}
	if abs {
		return time.Unix(0, int64(d)), true
	}
	return submitted.Add(d), true
}

// ExpandTasks returns the tasks a job runs, defaulted, each with the job's
// pool and priority unless it sets its own: the tasks as listed, or count
// copies of the template named task-0, task-1, …. The tasks share nothing
// with j.
func (j *Job) ExpandTasks() []TaskSpec {
	s := &j.Spec
	var out []TaskSpec
	add := func(t TaskSpec) {
		t.defaults()
		if t.Pool == "" {
			t.Pool = s.Pool
		}
		if t.Priority == "" {
			t.Priority = s.Priority
		}
		out = append(out, t)
	}
	switch {
	case len(s.Tasks) > 0:
		out = make([]TaskSpec, 0, len(s.Tasks))
		for _, t := range s.Tasks {
			add(t.clone())
		}
	case s.Template != nil && s.Count > 0:
		out = make([]TaskSpec, 0, s.Count)
		for i := range s.Count {
			t := s.Template.clone()
			t.Name = fmt.Sprintf("task-%d", i)
			add(t)
		}
	}
	return out
}

func (t *TaskSpec) defaults() {
	if t.Resources == (Resources{}) {
		t.Resources.CPU = 1
	}
	for i := range t.OutputFiles {
		if t.OutputFiles[i].Upload == "" {
			t.OutputFiles[i].Upload = UploadOnSuccess
		}
	}
	if t.Checkpoint != nil && t.Checkpoint.Interval.Duration == 0 {
		t.Checkpoint.Interval.Duration = DefaultCheckpointInterval
	}
}

// clone returns a deep copy of t.
func (t TaskSpec) clone() TaskSpec {
	c := t
	c.Command = cloneSlice(t.Command)
	c.ResourceFiles = cloneSlice(t.ResourceFiles)
	c.OutputFiles = cloneSlice(t.OutputFiles)
	if t.Env != nil {
		c.Env = make(map[string]string, len(t.Env))
		for k, v := range t.Env {
			c.Env[k] = v
		}
	}
	if t.Checkpoint != nil {
		cp := *t.Checkpoint
		c.Checkpoint = &cp
	}
	return c
}

// cloneSlice copies s, keeping nil nil and empty empty.
func cloneSlice[S ~[]E, E any](s S) S {
	if s == nil {
		return nil
	}
	return append(S{}, s...)
}

// fieldErrors collects what Validate finds.
type fieldErrors []FieldError

func (e *fieldErrors) add(field, format string, args ...any) {
	*e = append(*e, FieldError{Field: field, Msg: fmt.Sprintf(format, args...)})
}

// err returns nil or an *Error; never a typed nil.
func (e fieldErrors) err() error {
	if len(e) == 0 {
		return nil
	}
	return &Error{Errors: e}
}

func (e *fieldErrors) header(apiVersion, kind, wantKind string, m Metadata) {
	switch apiVersion {
	case APIVersion:
	case "":
		e.add("apiVersion", "required; use %q", APIVersion)
	default:
		e.add("apiVersion", "%q is not supported; use %q", apiVersion, APIVersion)
	}
	if kind != wantKind {
		e.add("kind", "want %q, got %q", wantKind, kind)
	}
	if m.Name == "" {
		e.add("metadata.name", "required")
	} else {
		e.name("metadata.name", m.Name, MaxNameLen)
	}
	for k := range m.Labels {
		if k == "" {
			e.add("metadata.labels", "a label key must not be empty")
		}
	}
}

// name checks a DNS-label-like name and reports whether it is one.
func (e *fieldErrors) name(field, name string, maxLen int) bool {
	const rule = "names are lowercase letters, digits and '-', starting with a letter"
	var bad string
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			bad = fmt.Sprintf("%q contains %q; %s", name, r, rule)
			break
		}
	}
	switch {
	case bad != "":
		e.add(field, "%s", bad)
	case name[0] < 'a' || name[0] > 'z':
		e.add(field, "%q must start with a lowercase letter; %s", name, rule)
	case name[len(name)-1] == '-':
		e.add(field, "%q must end with a letter or digit", name)
	case len(name) > maxLen:
		e.add(field, "%q is %d characters long; the limit is %d", name, len(name), maxLen)
	default:
		return true
	}
	return false
}

func (e *fieldErrors) priority(field, p string) {
	switch p {
	case "", PrioritySpot, PriorityOnDemand:
	default:
		e.add(field, "%q is not a priority; use %q or %q", p, PrioritySpot, PriorityOnDemand)
	}
}

func (e *fieldErrors) nonNegative(field string, v *float64) {
	if v != nil && !(*v >= 0) {
		e.add(field, "must not be negative, got %g", *v)
	}
}

func (e *fieldErrors) resources(at string, r Resources) {
	if !(r.CPU >= 0) {
		e.add(at+".cpu", "must not be negative, got %g", r.CPU)
	}
	if r.Memory < 0 {
		e.add(at+".memory", "must not be negative, got %s", r.Memory)
	}
	if r.GPU < 0 {
		e.add(at+".gpu", "must not be negative, got %d", r.GPU)
	}
}

func (e *fieldErrors) env(at string, env map[string]string) {
	for k := range env {
		if k == "" || strings.ContainsAny(k, "=\x00") {
			e.add(keyPath(at, k), "%q is not a variable name", k)
		}
	}
}

func (e *fieldErrors) task(at string, t *TaskSpec) {
	if len(t.Command) == 0 {
		e.add(at+".command", "required")
	} else if t.Command[0] == "" {
		e.add(at+".command[0]", "the program to run must not be empty")
	}
	e.env(at+".env", t.Env)
	for i, f := range t.ResourceFiles {
		fat := fmt.Sprintf("%s.resourceFiles[%d]", at, i)
		if f.Source == "" {
			e.add(fat+".source", "required")
		} else {
			e.blobLocation(fat+".source", f.Source)
		}
		e.relativePath(fat+".path", f.Path)
		if f.Path != "" && path.Clean(f.Path) == "." {
			e.add(fat+".path", "%q is the working directory itself; name a file in it", f.Path)
		}
	}
	for i, f := range t.OutputFiles {
		fat := fmt.Sprintf("%s.outputFiles[%d]", at, i)
		e.relativePath(fat+".pattern", f.Pattern)
		if f.Destination == "" {
			e.add(fat+".destination", "required")
		} else {
			e.blobLocation(fat+".destination", f.Destination)
		}
		switch f.Upload {
		case "", UploadOnSuccess, UploadOnFailure, UploadAlways:
		default:
			e.add(fat+".upload", "%q is not an upload condition; use %q, %q or %q", f.Upload, UploadOnSuccess, UploadOnFailure, UploadAlways)
		}
	}
	if c := t.Checkpoint; c != nil {
		e.relativePath(at+".checkpoint.path", c.Path)
		if c.Interval.Duration < 0 {
			e.add(at+".checkpoint.interval", "must be positive, got %s", c.Interval)
		}
	}
	if t.MaxRetries < 0 || t.MaxRetries > MaxRetries {
		e.add(at+".maxRetries", "must be between 0 and %d, got %d", MaxRetries, t.MaxRetries)
	}
	e.resources(at+".resources", t.Resources)
	if t.Pool != "" {
		e.name(at+".pool", t.Pool, MaxNameLen)
	}
	e.priority(at+".priority", t.Priority)
}

// relativePath checks that p is a path inside the task's working directory.
func (e *fieldErrors) relativePath(field, p string) {
	slashed := strings.ReplaceAll(p, `\`, "/")
	clean := path.Clean(slashed)
	switch {
	case p == "":
		e.add(field, "required")
	case strings.HasPrefix(slashed, "/"):
		e.add(field, "%q is absolute; use a path relative to the task's working directory", p)
	case clean == ".." || strings.HasPrefix(clean, "../"):
		e.add(field, "%q leaves the task's working directory; use a path inside it, without \"..\"", p)
	}
}

// blobSchemes are the blob URL schemes the agents can read and write.
var blobSchemes = map[string]bool{"file": true, "mem": true, "s3": true, "gs": true, "azblob": true}

// blobLocation checks the form of a blob location: a URL of a supported
// scheme, or a path inside the default store. Whether the bucket exists
// and the node's credentials reach it is for the agent to find out.
func (e *fieldErrors) blobLocation(field, loc string) {
	const want = "use s3://BUCKET/PATH, gs://BUCKET/PATH, azblob://CONTAINER/PATH, file:///ABS/PATH, or a path in the default store such as outputs/job/"
	if !strings.Contains(loc, "://") {
		clean := path.Clean(loc)
		switch {
		case strings.HasPrefix(loc, "/"):
			e.add(field, "%q has no scheme: write file://%s for a directory on every node, or drop the leading / for a path in the default store", loc, loc)
		case clean == ".." || strings.HasPrefix(clean, "../"):
			e.add(field, "%q leaves the default store; remove the \"..\" or %s", loc, want)
		}
		return
	}
	u, err := url.Parse(loc)
	switch {
	case err != nil:
		e.add(field, "%q is not a URL (%v); %s", loc, err, want)
	case !blobSchemes[u.Scheme]:
		e.add(field, "scheme %q is not supported; %s", u.Scheme, want)
	case u.Fragment != "":
		e.add(field, "%q has a fragment (#...); remove it", loc)
	case u.Scheme == "file" && u.Host != "" && u.Host != "localhost":
		e.add(field, "%q: a file URL needs an absolute path, as in file:///%s%s", loc, u.Host, u.Path)
	case (u.Scheme == "file" || u.Scheme == "mem") && u.RawQuery != "":
		e.add(field, "%q: query options are only for s3, gs and azblob URLs; remove them", loc)
	case u.Scheme != "file" && u.Host == "":
		e.add(field, "%q names no bucket: write %s://BUCKET/PATH", loc, u.Scheme)
	}
}
