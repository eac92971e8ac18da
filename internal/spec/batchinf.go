package spec

import (
	"fmt"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/bmatcuk/doublestar/v4"
)

// KindBatchInference scores a pile of blobs with a model, once or as they
// arrive.
const KindBatchInference = "BatchInference"

// Triggers of a BatchInference.
const (
	// TriggerOnce scores what is under the input prefix at apply time,
	// then finishes.
	TriggerOnce = "once"
	// TriggerWatch keeps scoring blobs that arrive under the prefix.
	TriggerWatch = "watch"
)

// Output formats of a BatchInference: one result object per input.
const (
	FormatJSONL = "jsonl" // one JSON line, ending in a newline
	FormatJSON  = "json"  // one JSON document, indented
)

// QueueStore is the default queue: rows in spotml's own store.
const QueueStore = "store"

// BrokerSchemes are the queue.uri schemes of the brokers a BatchInference
// reaches through gocloud.dev/pubsub. Those in brokerSubscriptionRequired
// receive from another URL than they send to (a queue bound to an
// exchange, a topic's subscription), which queue.subscription names.
var (
	BrokerSchemes              = []string{"nats", "rabbit", "azuresb", "awssqs", "gcppubsub"}
	brokerSubscriptionExamples = map[string]string{
		"rabbit":    "rabbit://QUEUE (spotml declares the queue and binds it to the exchange queue.uri names)",
		"azuresb":   "azuresb://TOPIC?subscription=NAME",
		"gcppubsub": "gcppubsub://projects/PROJECT/subscriptions/NAME",
	}
)

// Defaults of a BatchInference.
const (
	DefaultBatchPattern        = "**"
	DefaultItemsPerWorker      = 500
	DefaultBatchMaxWorkers     = 4
	DefaultBatchSize           = 64
	DefaultLeaseTimeout        = 60 * time.Second
	DefaultBatchMaxAttempts    = 5
	DefaultBatchIdleTimeout    = 60 * time.Second
	DefaultBatchPollInterval   = 2 * time.Second
	DefaultBatchStartTimeout   = 60 * time.Second
	MaxBatchGroupSize          = 4096
	MaxBatchPreprocessSize     = 4096
	batchWorkerNamePrefixLimit = 40
)

// BatchInference scores every blob under a prefix with a model, writing one
// result per input, on workers that lease items from a queue (so that an
// eviction costs at most the items in flight).
//
//	apiVersion: spotml/v1
//	kind: BatchInference
//	metadata: {name: score-uploads}
//	spec:
//	  input:  {uri: uploads/, pattern: "**/*.png"}
//	  output: {uri: scored/, format: jsonl}
//	  model:  {uri: outputs/fashion-mnist/out/model.onnx}
//	  preprocess: {image: {grayscale: true, size: [28, 28], scale: 1/255}}
//	  pool: spot-a
//	  workers: {min: 0, max: 8, itemsPerWorker: 500}
type BatchInference struct {
	APIVersion string    `yaml:"apiVersion" json:"apiVersion"`
	Kind       string    `yaml:"kind" json:"kind"`
	Metadata   Metadata  `yaml:"metadata" json:"metadata"`
	Spec       BatchSpec `yaml:"spec" json:"spec"`
}

// BatchSpec is what a user asks of a BatchInference.
type BatchSpec struct {
	Input      BatchInput   `yaml:"input" json:"input"`
	Output     BatchOutput  `yaml:"output" json:"output"`
	Model      Model        `yaml:"model" json:"model"`
	Runtime    BatchRuntime `yaml:"runtime,omitempty" json:"runtime"`
	Preprocess Preprocess   `yaml:"preprocess,omitempty" json:"preprocess,omitzero"`
	// Pool names the pool workers run in; Priority picks any pool of that
	// priority instead, as for a job.
	Pool     string `yaml:"pool,omitempty" json:"pool,omitempty"`
	Priority string `yaml:"priority,omitempty" json:"priority,omitempty"`
	// OnDemandAfterPreemptions moves a worker to on-demand capacity once
	// it has been preempted this many times (0: never), as for a job's
	// tasks: the fallback when spot capacity keeps being taken back.
	OnDemandAfterPreemptions int `yaml:"onDemandAfterPreemptions,omitempty" json:"onDemandAfterPreemptions,omitempty"`
	// Resources one worker needs; default 1 CPU.
	Resources Resources    `yaml:"resources,omitempty" json:"resources"`
	Workers   BatchWorkers `yaml:"workers,omitempty" json:"workers"`
	Trigger   string       `yaml:"trigger,omitempty" json:"trigger,omitempty"` // once (default) | watch
	Queue     BatchQueue   `yaml:"queue,omitempty" json:"queue"`
}

// BatchInput is where the items are: every blob under URI whose path
// relative to it matches Pattern (a doublestar glob: ** crosses
// directories).
type BatchInput struct {
	URI     string `yaml:"uri" json:"uri"`
	Pattern string `yaml:"pattern,omitempty" json:"pattern,omitempty"`
}

// BatchOutput is where results go: the result of input a/b.png is
// URI/a/b.png.jsonl (or .json).
type BatchOutput struct {
	URI    string `yaml:"uri" json:"uri"`
	Format string `yaml:"format,omitempty" json:"format,omitempty"` // jsonl (default) | json
}

// BatchRuntime is how workers score: builtin (ONNX Runtime in the worker
// process) or command (a model server the user brings, which the worker
// starts and sends batches to as KServe v2 inference requests, the same
// contract as a Service's command replica).
type BatchRuntime struct {
	Type string `yaml:"type,omitempty" json:"type,omitempty"` // builtin (default) | command
	// BatchSize is how many items one model run scores (and one lease
	// takes). Default 64.
	BatchSize int `yaml:"batchSize,omitempty" json:"batchSize,omitempty"`
	// Threads ONNX Runtime computes with. Default: resources.cpu rounded up.
	// Builtin only.
	Threads int `yaml:"threads,omitempty" json:"threads,omitempty"`
	// Command starts the user's KServe v2 HTTP server (argv, or a string
	// run by /bin/sh -c) on 127.0.0.1:$PORT, with the model's local path
	// in SPOTML_MODEL_PATH and Env. Command only.
	Command Command `yaml:"command,omitempty" json:"command,omitempty"`
	// Port the server listens on; default 0: the worker picks a free one
	// and passes it in PORT.
	Port int               `yaml:"port,omitempty" json:"port,omitempty"`
	Env  map[string]string `yaml:"env,omitempty" json:"env,omitempty"`
	// StartTimeout bounds how long the server may take to answer
	// /v2/health/ready. Default 60s.
	StartTimeout Duration `yaml:"startTimeout,omitempty" json:"startTimeout,omitzero"`
}

// Preprocess turns an input blob into the model's input row.
type Preprocess struct {
	Image *ImagePreprocess `yaml:"image,omitempty" json:"image,omitempty"`
}

// ImagePreprocess decodes an image (PNG, JPEG, GIF) and turns it into a
// float32 row: converted to grayscale (else RGB, channel-major), resized
// to Size ([width, height], nearest neighbour) and multiplied by Scale.
type ImagePreprocess struct {
	Grayscale bool  `yaml:"grayscale,omitempty" json:"grayscale,omitempty"`
	Size      []int `yaml:"size,omitempty" json:"size,omitempty"`
	// Scale multiplies each 0..255 pixel value: a number or a fraction
	// such as 1/255. Default 1.
	Scale string `yaml:"scale,omitempty" json:"scale,omitempty"`
}

// BatchWorkers is the worker count policy: ceil(items left /
// itemsPerWorker), between Min and Max; zero when nothing is left.
type BatchWorkers struct {
	Min            int `yaml:"min,omitempty" json:"min,omitempty"`
	Max            int `yaml:"max,omitempty" json:"max,omitempty"`
	ItemsPerWorker int `yaml:"itemsPerWorker,omitempty" json:"itemsPerWorker,omitempty"`
}

// BatchQueue is where items wait. URI "store" (the default) keeps them in
// spotml's store; a broker URL (nats://SUBJECT, rabbit://EXCHANGE,
// azuresb://TOPIC, awssqs://QUEUE-URL, gcppubsub://projects/P/topics/T)
// carries them as messages through gocloud.dev/pubsub, while the store
// keeps the ledger of what is done.
type BatchQueue struct {
	URI string `yaml:"uri,omitempty" json:"uri,omitempty"`
	// Subscription is where workers receive a broker's messages, when that
	// is not URI itself (RabbitMQ, Service Bus, Pub/Sub). NATS defaults to
	// URI with a queue group per batch, SQS to the same queue.
	Subscription string `yaml:"subscription,omitempty" json:"subscription,omitempty"`
	// GroupSize is how many items one message carries (a lease of the
	// store queue takes whole groups). Default 1.
	GroupSize int `yaml:"groupSize,omitempty" json:"groupSize,omitempty"`
	// LeaseTimeout is how long a worker holds items before they go back to
	// the queue, should its node vanish without a word. Default 60s.
	LeaseTimeout Duration `yaml:"leaseTimeout,omitempty" json:"leaseTimeout,omitzero"`
	// MaxAttempts bounds how often one item is leased (its worker vanished
	// each time) before it is failed. Default 5.
	MaxAttempts int `yaml:"maxAttempts,omitempty" json:"maxAttempts,omitempty"`
	// PollInterval is how often a watch lists the input (default 2s);
	// IdleTimeout how long a worker waits for new items before it exits
	// (default 60s).
	PollInterval Duration `yaml:"pollInterval,omitempty" json:"pollInterval,omitzero"`
	IdleTimeout  Duration `yaml:"idleTimeout,omitempty" json:"idleTimeout,omitzero"`
}

func (b *BatchInference) name() string { return b.Metadata.Name }

// Default fills in what a BatchInference leaves out. It is idempotent.
func (b *BatchInference) Default() {
	sp := &b.Spec
	if sp.Input.Pattern == "" {
		sp.Input.Pattern = DefaultBatchPattern
	}
	if sp.Output.Format == "" {
		sp.Output.Format = FormatJSONL
	}
	if sp.Runtime.Type == "" {
		sp.Runtime.Type = RuntimeBuiltin
	}
	if sp.Resources == (Resources{}) {
		sp.Resources.CPU = 1
	}
	if sp.Runtime.BatchSize == 0 {
		sp.Runtime.BatchSize = DefaultBatchSize
	}
	if sp.Runtime.Threads == 0 && sp.Runtime.Type == RuntimeBuiltin {
		sp.Runtime.Threads = max(1, int(math.Ceil(sp.Resources.CPU)))
	}
	w := &sp.Workers
	if w.Max == 0 {
		w.Max = max(w.Min, DefaultBatchMaxWorkers)
	}
	if w.ItemsPerWorker == 0 {
		w.ItemsPerWorker = DefaultItemsPerWorker
	}
	if sp.Trigger == "" {
		sp.Trigger = TriggerOnce
	}
	q := &sp.Queue
	if q.URI == "" {
		q.URI = QueueStore
	}
	if q.GroupSize == 0 {
		q.GroupSize = 1
	}
	if sp.Runtime.Type == RuntimeCommand && sp.Runtime.StartTimeout.Duration == 0 {
		sp.Runtime.StartTimeout.Duration = DefaultBatchStartTimeout
	}
	if q.LeaseTimeout.Duration == 0 {
		q.LeaseTimeout.Duration = DefaultLeaseTimeout
	}
	if q.MaxAttempts == 0 {
		q.MaxAttempts = DefaultBatchMaxAttempts
	}
	if q.PollInterval.Duration == 0 {
		q.PollInterval.Duration = DefaultBatchPollInterval
	}
	if q.IdleTimeout.Duration == 0 {
		q.IdleTimeout.Duration = DefaultBatchIdleTimeout
	}
}

// Validate checks a BatchInference, before or after Default. What only the
// blob store can tell (the prefix matches nothing, the model is not there)
// the server checks at apply time.
func (b *BatchInference) Validate() error {
	var errs fieldErrors
	errs.header(b.APIVersion, b.Kind, KindBatchInference, b.Metadata)
	if len(b.Metadata.Name) > batchWorkerNamePrefixLimit {
		errs.add("metadata.name", "%q is %d characters long; a BatchInference's name is at most %d (its workers' job names add to it)", b.Metadata.Name, len(b.Metadata.Name), batchWorkerNamePrefixLimit)
	}
	sp := &b.Spec
	location := func(field, loc, example string) {
		switch {
		case loc == "":
			errs.add(field, "required; a blob prefix such as %s, or a URL such as s3://bucket/%s", example, example)
		case strings.TrimSpace(loc) != loc:
			errs.add(field, "%q has leading or trailing spaces; remove them", loc)
		default:
			errs.blobLocation(field, loc)
		}
	}
	location("spec.input.uri", sp.Input.URI, "uploads/")
	location("spec.output.uri", sp.Output.URI, "scored/")
	if sp.Input.Pattern != "" && !doublestar.ValidatePattern(sp.Input.Pattern) {
		errs.add("spec.input.pattern", "%q is not a valid glob (check its brackets and braces); write e.g. \"**/*.png\"", sp.Input.Pattern)
	}
	if sp.Input.URI != "" && sp.Output.URI != "" && sameOrInside(sp.Output.URI, sp.Input.URI) {
		errs.add("spec.output.uri", "%q is inside the input %q: results would be scored as inputs; write them elsewhere", sp.Output.URI, sp.Input.URI)
	}
	switch sp.Output.Format {
	case "", FormatJSONL, FormatJSON:
	default:
		errs.add("spec.output.format", "%q is not a format; use %q or %q", sp.Output.Format, FormatJSONL, FormatJSON)
	}
	switch {
	case sp.Model.URI == "":
		errs.add("spec.model.uri", "required; a blob URL such as s3://bucket/model.onnx, or a path in the default store such as outputs/job/out/model.onnx")
	case strings.HasSuffix(sp.Model.URI, "/") && sp.Runtime.Type != RuntimeCommand:
		errs.add("spec.model.uri", "%q is a directory; name the .onnx file (or use runtime type %q for a server that loads a directory)", sp.Model.URI, RuntimeCommand)
	default:
		errs.blobLocation("spec.model.uri", sp.Model.URI)
	}
	errs.batchRuntime(&sp.Runtime)
	if sp.Runtime.BatchSize < 0 || sp.Runtime.BatchSize > 4096 {
		errs.add("spec.runtime.batchSize", "%d is out of range; use 1 to 4096", sp.Runtime.BatchSize)
	}
	if sp.Runtime.Threads < 0 {
		errs.add("spec.runtime.threads", "%d is negative", sp.Runtime.Threads)
	}
	if im := sp.Preprocess.Image; im != nil {
		if im.Size != nil {
			if len(im.Size) != 2 {
				errs.add("spec.preprocess.image.size", "want [width, height], got %d numbers", len(im.Size))
			} else {
				for i, v := range im.Size {
					if v < 1 || v > MaxBatchPreprocessSize {
						errs.add(fmt.Sprintf("spec.preprocess.image.size[%d]", i), "%d is out of range; use 1 to %d", v, MaxBatchPreprocessSize)
					}
				}
			}
		}
		if _, err := ParseScale(im.Scale); err != nil {
			errs.add("spec.preprocess.image.scale", "%v", err)
		}
	}
	errs.priority("spec.priority", sp.Priority)
	if sp.Pool != "" {
		errs.name("spec.pool", sp.Pool, MaxNameLen)
	}
	switch {
	case sp.OnDemandAfterPreemptions < 0:
		errs.add("spec.onDemandAfterPreemptions", "must be 0 (never) or more, got %d", sp.OnDemandAfterPreemptions)
	case sp.OnDemandAfterPreemptions > 0 && sp.Pool != "":
		errs.add("spec.pool", "not allowed with spec.onDemandAfterPreemptions, which moves workers to on-demand itself; remove it, and set priority: spot to start on any spot pool")
	}
	errs.resources("spec.resources", sp.Resources)
	w := sp.Workers
	switch {
	case w.Min < 0:
		errs.add("spec.workers.min", "%d is negative", w.Min)
	case w.Max < 0:
		errs.add("spec.workers.max", "%d is negative", w.Max)
	case w.Max > 0 && w.Min > w.Max:
		errs.add("spec.workers.max", "%d is below min %d", w.Max, w.Min)
	case w.Max > 1000:
		errs.add("spec.workers.max", "%d is more than 1000 workers", w.Max)
	}
	if w.ItemsPerWorker < 0 {
		errs.add("spec.workers.itemsPerWorker", "%d is negative", w.ItemsPerWorker)
	}
	switch sp.Trigger {
	case "", TriggerOnce, TriggerWatch:
	default:
		errs.add("spec.trigger", "%q is not a trigger; use %q (score what is there, then finish) or %q (keep scoring what arrives)", sp.Trigger, TriggerOnce, TriggerWatch)
	}
	q := sp.Queue
	errs.batchQueue(q)
	if q.GroupSize < 0 || q.GroupSize > MaxBatchGroupSize {
		errs.add("spec.queue.groupSize", "%d is out of range; use 1 to %d items per message", q.GroupSize, MaxBatchGroupSize)
	}
	if q.LeaseTimeout.Duration < 0 || (q.LeaseTimeout.Duration > 0 && q.LeaseTimeout.Duration < time.Second) {
		errs.add("spec.queue.leaseTimeout", "%s is too short; use 1s or more", q.LeaseTimeout)
	}
	if q.MaxAttempts < 0 {
		errs.add("spec.queue.maxAttempts", "%d is negative", q.MaxAttempts)
	}
	if q.PollInterval.Duration < 0 {
		errs.add("spec.queue.pollInterval", "%s is negative", q.PollInterval)
	}
	if q.IdleTimeout.Duration < 0 {
		errs.add("spec.queue.idleTimeout", "%s is negative", q.IdleTimeout)
	}
	return errs.err()
}

// ParseScale reads a preprocess scale: empty (1), a number, or a fraction
// such as 1/255.
func ParseScale(s string) (float64, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 1, nil
	}
	num, den, frac := strings.Cut(s, "/")
	n, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
	if err != nil || math.IsInf(n, 0) || math.IsNaN(n) {
		return 0, fmt.Errorf("%q is not a number or a fraction such as 1/255", s)
	}
	if !frac {
		return n, nil
	}
	d, err := strconv.ParseFloat(strings.TrimSpace(den), 64)
	if err != nil || d == 0 || math.IsInf(d, 0) || math.IsNaN(d) {
		return 0, fmt.Errorf("%q is not a number or a fraction such as 1/255 (with a non-zero denominator)", s)
	}
	return n / d, nil
}

// sameOrInside reports whether location a is b or under it, as prefixes.
func sameOrInside(a, b string) bool {
	a, b = strings.TrimSuffix(a, "/")+"/", strings.TrimSuffix(b, "/")+"/"
	return strings.HasPrefix(a, b)
}

// batchRuntime checks a BatchInference's runtime: builtin, or a command
// as for a Service.
func (e *fieldErrors) batchRuntime(rt *BatchRuntime) {
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
		only("startTimeout", RuntimeCommand, rt.StartTimeout.Duration != 0)
	case RuntimeCommand:
		only("threads", RuntimeBuiltin, rt.Threads != 0)
		if len(rt.Command) == 0 {
			e.add(at+".command", "required with type %q; the command that starts your KServe v2 model server on $%s", RuntimeCommand, EnvPort)
		} else if rt.Command[0] == "" {
			e.add(at+".command[0]", "the program to run must not be empty")
		}
		if rt.Port < 0 || rt.Port > 65535 {
			e.add(at+".port", "must be between 1 and 65535, got %d; leave it out to have the worker pick one and pass it in $%s", rt.Port, EnvPort)
		}
		e.env(at+".env", rt.Env)
		for k := range rt.Env {
			if k == EnvPort || k == EnvModelPath {
				e.add(at+".env."+k, "is set by spotml; remove it")
			}
		}
		if rt.StartTimeout.Duration < 0 {
			e.add(at+".startTimeout", "%s is negative", rt.StartTimeout)
		}
	default:
		e.add(at+".type", "%q is not a runtime; use %q (ONNX models in the worker) or %q (your KServe v2 server)", rt.Type, RuntimeBuiltin, RuntimeCommand)
	}
}

// batchQueue checks queue.uri and queue.subscription: the store, or a
// broker gocloud.dev/pubsub reaches.
func (e *fieldErrors) batchQueue(q BatchQueue) {
	if q.URI == "" || q.URI == QueueStore {
		if q.Subscription != "" {
			e.add("spec.queue.subscription", "only allowed with a broker queue.uri; the store queue has none")
		}
		return
	}
	u, err := url.Parse(q.URI)
	if err != nil || u.Scheme == "" {
		e.add("spec.queue.uri", "%q is not a queue; use %q (spotml's store) or a broker URL such as nats://SUBJECT", q.URI, QueueStore)
		return
	}
	if !slices.Contains(BrokerSchemes, u.Scheme) {
		e.add("spec.queue.uri", "%s:// is not a broker spotml reaches; use %q or one of %s://", u.Scheme, QueueStore, strings.Join(BrokerSchemes, "://, "))
		return
	}
	if u.Host == "" && u.Opaque == "" && strings.Trim(u.Path, "/") == "" {
		e.add("spec.queue.uri", "%q names no subject, exchange, topic or queue; write e.g. %s://score-uploads", q.URI, u.Scheme)
	}
	example, needs := brokerSubscriptionExamples[u.Scheme]
	if q.Subscription == "" {
		if needs {
			e.add("spec.queue.subscription", "required with %s://: where workers receive what queue.uri is sent to, e.g. %s", u.Scheme, example)
		}
		return
	}
	s, err := url.Parse(q.Subscription)
	if err != nil || s.Scheme != u.Scheme {
		e.add("spec.queue.subscription", "%q is not a %s:// URL like queue.uri", q.Subscription, u.Scheme)
	}
}
