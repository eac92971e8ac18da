package spec

import (
	"fmt"
	"math"
	"net/url"
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

// BatchRuntime is how workers score. Only the builtin runtime (ONNX
// Runtime in the worker process) is implemented.
type BatchRuntime struct {
	Type string `yaml:"type,omitempty" json:"type,omitempty"` // builtin (default)
	// BatchSize is how many items one model run scores (and one lease
	// takes). Default 64.
	BatchSize int `yaml:"batchSize,omitempty" json:"batchSize,omitempty"`
	// Threads ONNX Runtime computes with. Default: resources.cpu rounded up.
	Threads int `yaml:"threads,omitempty" json:"threads,omitempty"`
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
// spotml's store.
type BatchQueue struct {
	URI string `yaml:"uri,omitempty" json:"uri,omitempty"`
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
	if sp.Runtime.Threads == 0 {
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
	case strings.HasSuffix(sp.Model.URI, "/"):
		errs.add("spec.model.uri", "%q is a directory; name the .onnx file", sp.Model.URI)
	default:
		errs.blobLocation("spec.model.uri", sp.Model.URI)
	}
	switch sp.Runtime.Type {
	case "", RuntimeBuiltin:
	case RuntimeCommand:
		errs.add("spec.runtime.type", "%q is not available for a BatchInference yet; use %q (ONNX models)", RuntimeCommand, RuntimeBuiltin)
	default:
		errs.add("spec.runtime.type", "%q is not a runtime; use %q", sp.Runtime.Type, RuntimeBuiltin)
	}
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
	if q.URI != "" && q.URI != QueueStore {
		u, err := url.Parse(q.URI)
		switch {
		case err != nil || u.Scheme == "":
			errs.add("spec.queue.uri", "%q is not a queue; use %q (spotml's store) or a broker URL such as nats://subject", q.URI, QueueStore)
		default:
			errs.add("spec.queue.uri", "broker queues (%s://) are not available in this build; use %q", u.Scheme, QueueStore)
		}
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
