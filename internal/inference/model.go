package inference

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	ort "github.com/yalue/onnxruntime_go"
)

// Options configure a Model. Zero fields take the defaults, except
// MaxQueueDelay, whose zero means "do not wait": start from DefaultOptions.
type Options struct {
	// Library is the ONNX Runtime shared library to load (see FindLibrary).
	Library string
	// Threads is how many threads ONNX Runtime uses inside one run
	// (intra-op). Default (0): the CPUs this process may use
	// (runtime.GOMAXPROCS, which follows the CPU affinity and the cgroup's
	// CPU limit), so that a replica given 4 CPUs runs a model on 4. Small
	// models gain little from more: the example model on 2 shared cores
	// ran ~40,000 rows/s at batch 1 on one thread, ~20,000 on two, and
	// about the same at batch 32 (~67,000) either way.
	Threads int
	// MaxBatch is the most rows one run takes; queued requests are combined
	// up to it. A request bigger than MaxBatch runs alone. Default 32.
	MaxBatch int
	// MaxQueueDelay is how long the first request of a batch may wait for
	// others to join it. 0 runs what is queued at once (requests that arrive
	// while a run is in progress are still batched together).
	MaxQueueDelay time.Duration
	// MaxQueue is how many requests may wait for the model; beyond it
	// Predict fails with ErrQueueFull. Default 1024.
	MaxQueue int
	// Log receives the model's log lines. Default: discarded.
	Log *slog.Logger
}

// DefaultOptions are the settings `spotml serve` starts from.
func DefaultOptions() Options {
	return Options{MaxBatch: 32, MaxQueueDelay: 2 * time.Millisecond, MaxQueue: 1024}
}

func (o *Options) setDefaults() {
	d := DefaultOptions()
	if o.Threads <= 0 {
		o.Threads = runtime.GOMAXPROCS(0)
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = d.MaxBatch
	}
	if o.MaxQueue <= 0 {
		o.MaxQueue = d.MaxQueue
	}
	if o.MaxQueueDelay < 0 {
		o.MaxQueueDelay = 0
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// ErrInvalidInput is matched (errors.Is) by every error that is the
// caller's fault: a request the model cannot take. The error's own message
// says what is wrong.
var ErrInvalidInput = errors.New("invalid input")

// ErrQueueFull is returned when too many requests wait for the model; the
// caller should retry later.
var ErrQueueFull = errors.New("too many requests are waiting for the model; retry later")

// ErrClosed is returned for requests to a model that has been closed.
var ErrClosed = errors.New("the model is closed")

type inputError struct{ msg string }

func (e *inputError) Error() string        { return e.msg }
func (e *inputError) Is(target error) bool { return target == ErrInvalidInput }

func invalidf(format string, args ...any) error {
	return &inputError{fmt.Sprintf(format, args...)}
}

// Model is an ONNX model open for inference. Predict may be called from any
// number of goroutines: concurrent requests are batched into single runs.
type Model struct {
	path     string
	inputs   []TensorInfo
	outputs  []TensorInfo
	inKinds  []*kind
	outKinds []*kind
	// batches is true when every input and output has a dynamic first
	// dimension, so that requests can be stacked along it.
	batches bool
	session *ort.DynamicAdvancedSession
	batcher *batcher
	// stacked holds, per input, the buffer batches of several requests
	// are stacked into; reused from run to run (only the batcher's
	// goroutine touches it, and ONNX Runtime is done with it when a run
	// returns).
	stacked []any
	log     *slog.Logger

	stop    context.CancelFunc
	running sync.WaitGroup
	closing sync.Once

	requests, runs, rows, maxRows atomic.Int64
	// Time spent, in nanoseconds, summed over requests (queue: from
	// Predict to the start of its batch's run; decode, encode: the
	// protocol's, as NoteCodec reports them) and over runs (run).
	queueNs, runNs, decodeNs, encodeNs atomic.Int64
}

// Stats count what a model has done since it was opened.
type Stats struct {
	Requests int64 // requests answered by a run
	Runs     int64 // model runs
	Rows     int64 // rows run, over all runs
	MaxRows  int64 // rows of the largest run

	// Where the time went. Queue, Decode and Encode are summed over
	// requests; Run over runs (a run serves a batch of requests).
	Queue, Run, Decode, Encode time.Duration
}

// Open loads ONNX Runtime (once per process, from opts.Library) and opens
// the model at path. Close releases it.
func Open(path string, opts Options) (*Model, error) {
	opts.setDefaults()
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("model: %w", err)
	}
	if err := loadRuntime(opts.Library); err != nil {
		return nil, err
	}
	so, err := sessionOptions(opts.Threads)
	if err != nil {
		return nil, err
	}
	defer so.Destroy()
	ins, outs, err := ort.GetInputOutputInfoWithOptions(path, so)
	if err != nil {
		return nil, fmt.Errorf("open model %s: %w", path, err)
	}
	m := &Model{path: path, log: opts.Log, batches: true}
	var inNames, outNames []string
	for _, in := range ins {
		info, k, err := describe("input", in)
		if err != nil {
			return nil, fmt.Errorf("model %s: %w", path, err)
		}
		m.inputs, m.inKinds, inNames = append(m.inputs, info), append(m.inKinds, k), append(inNames, info.Name)
		m.batches = m.batches && info.Shape[0] == -1
	}
	for _, out := range outs {
		info, k, err := describe("output", out)
		if err != nil {
			return nil, fmt.Errorf("model %s: %w", path, err)
		}
		m.outputs, m.outKinds, outNames = append(m.outputs, info), append(m.outKinds, k), append(outNames, info.Name)
		m.batches = m.batches && info.Shape[0] == -1
	}
	m.session, err = ort.NewDynamicAdvancedSession(path, inNames, outNames, so)
	if err != nil {
		return nil, fmt.Errorf("open model %s: %w", path, err)
	}

	maxBatch := opts.MaxBatch
	if !m.batches {
		maxBatch = 1 // every request is one row: each runs alone
		m.log.Info("model has no dynamic batch dimension; requests run one at a time", "model", path)
	}
	m.batcher = newBatcher(maxBatch, opts.MaxQueue, opts.MaxQueueDelay, m.runBatch)
	ctx, stop := context.WithCancel(context.Background())
	m.stop = stop
	m.running.Go(func() { m.batcher.run(ctx) })
	return m, nil
}

// sessionOptions sets up ONNX Runtime for a machine shared with the HTTP
// server that feeds it.
func sessionOptions(threads int) (*ort.SessionOptions, error) {
	so, err := ort.NewSessionOptions()
	if err != nil {
		return nil, fmt.Errorf("ONNX Runtime session options: %w", err)
	}
	for _, set := range []func() error{
		func() error { return so.SetIntraOpNumThreads(threads) },
		// Runs are serial (one batch at a time), so there is no use for
		// threads running independent graph branches.
		func() error { return so.SetInterOpNumThreads(1) },
		// ONNX Runtime's threads spin while they wait for work, which is
		// fast on an idle machine and slow on one whose cores also decode
		// the requests: measured on 2 cores at 64 concurrent clients,
		// ~7,300 requests/s spinning, ~9,000 not.
		func() error { return so.AddSessionConfigEntry("session.intra_op.allow_spinning", "0") },
	} {
		if err := set(); err != nil {
			so.Destroy()
			return nil, fmt.Errorf("ONNX Runtime session options: %w", err)
		}
	}
	return so, nil
}

// describe turns ONNX Runtime's description of an input or output into a
// TensorInfo, refusing what spotml cannot serve.
func describe(what string, io ort.InputOutputInfo) (TensorInfo, *kind, error) {
	info := TensorInfo{Name: io.Name, DataType: dataTypeOf(io.DataType), Shape: []int64(io.Dimensions)}
	if io.OrtValueType != ort.ONNXTypeTensor {
		return info, nil, fmt.Errorf("%s %q is a %s; only tensors can be served", what, io.Name, io.OrtValueType)
	}
	k, ok := kindOf(info.DataType)
	if !ok {
		return info, nil, fmt.Errorf("%s %q has elements of type %s, which spotml cannot serve", what, io.Name, info.DataType)
	}
	if len(info.Shape) == 0 {
		return info, nil, fmt.Errorf("%s %q is a scalar; only tensors with at least one dimension can be served", what, io.Name)
	}
	for i, d := range info.Shape {
		if d < 0 {
			info.Shape[i] = -1 // symbolic dimensions may come back as any negative number
		}
	}
	return info, k, nil
}

// Path is the file the model was opened from.
func (m *Model) Path() string { return m.path }

// Inputs describes the model's inputs, in the order the model declares them.
func (m *Model) Inputs() []TensorInfo { return m.inputs }

// Outputs describes the model's outputs, in the order the model declares
// them.
func (m *Model) Outputs() []TensorInfo { return m.outputs }

// Stats reports what the model has done so far.
func (m *Model) Stats() Stats {
	return Stats{Requests: m.requests.Load(), Runs: m.runs.Load(), Rows: m.rows.Load(), MaxRows: m.maxRows.Load(),
		Queue: time.Duration(m.queueNs.Load()), Run: time.Duration(m.runNs.Load()),
		Decode: time.Duration(m.decodeNs.Load()), Encode: time.Duration(m.encodeNs.Load())}
}

// NoteCodec adds one request's decoding and encoding time to the Stats:
// the protocol front ends (HTTP, gRPC) call it.
func (m *Model) NoteCodec(decode, encode time.Duration) {
	m.decodeNs.Add(int64(decode))
	m.encodeNs.Add(int64(encode))
}

// Ready reports whether the model takes requests (it has not been closed).
func (m *Model) Ready() bool {
	select {
	case <-m.batcher.stopped:
		return false
	default:
		return true
	}
}

// Predict runs the model on inputs (one Tensor per model input, matched by
// name, in any order) and returns every output, in the model's order. The
// first dimension of each input is the batch dimension: a request may carry
// several rows, and is run together with other requests waiting at the same
// time. Errors matching ErrInvalidInput are the caller's; ErrQueueFull asks
// it to come back later.
func (m *Model) Predict(ctx context.Context, inputs []Tensor) ([]Tensor, error) {
	ordered, rows, err := m.check(inputs)
	if err != nil {
		return nil, err
	}
	r := &request{ctx: ctx, inputs: ordered, rows: rows, enqueued: time.Now(), done: make(chan result, 1)}
	if err := m.batcher.submit(r); err != nil {
		return nil, err
	}
	return m.batcher.wait(r)
}

// check matches inputs to the model's and validates them, returning them in
// the model's order with the number of rows they carry.
func (m *Model) check(inputs []Tensor) ([]Tensor, int, error) {
	ordered := make([]Tensor, len(m.inputs))
	for _, in := range inputs {
		i := indexOf(m.inputs, in.Name)
		if i < 0 {
			return nil, 0, invalidf("the model has no input %q (its inputs: %s)", in.Name, names(m.inputs))
		}
		if ordered[i].Data != nil {
			return nil, 0, invalidf("input %q is given twice", in.Name)
		}
		if err := m.checkInput(i, in); err != nil {
			return nil, 0, err
		}
		ordered[i] = in
	}
	rows := 1
	for i, in := range ordered {
		if in.Data == nil {
			return nil, 0, invalidf("input %q is missing (the model's inputs: %s)", m.inputs[i].Name, names(m.inputs))
		}
		if !m.batches {
			continue
		}
		if i == 0 {
			rows = int(in.Shape[0])
		} else if int(in.Shape[0]) != rows {
			return nil, 0, invalidf("inputs disagree on the batch size: %q has %d rows, %q has %d",
				m.inputs[0].Name, rows, in.Name, in.Shape[0])
		}
	}
	return ordered, rows, nil
}

func (m *Model) checkInput(i int, in Tensor) error {
	want := m.inputs[i]
	if dt := in.DataType(); dt != want.DataType {
		if dt == "" {
			return invalidf("input %q: data of Go type %T is not a supported tensor type", in.Name, in.Data)
		}
		return invalidf("input %q: datatype %s does not match the model's %s", in.Name, dt, want.DataType)
	}
	if !shapeFits(in.Shape, want.Shape) {
		return invalidf("input %q: shape %s does not match the model's %s", in.Name, shapeString(in.Shape), shapeString(want.Shape))
	}
	switch n := elements(in.Shape); {
	case n == 0:
		return invalidf("input %q: shape %s is empty", in.Name, shapeString(in.Shape))
	case n < 0:
		return invalidf("input %q: shape %s is too large", in.Name, shapeString(in.Shape))
	}
	if got, n := m.inKinds[i].length(in.Data), elements(in.Shape); int64(got) != n {
		return invalidf("input %q: %d values for shape %s, which holds %d", in.Name, got, shapeString(in.Shape), n)
	}
	if elems, ok := in.Data.([][]byte); ok {
		for j, e := range elems {
			if bytes.IndexByte(e, 0) >= 0 {
				return invalidf("input %q: BYTES element %d holds a NUL byte, which ONNX Runtime's string tensors cannot carry", in.Name, j)
			}
		}
	}
	return nil
}

// shapeFits reports whether shape has the model's rank and agrees with its
// fixed dimensions.
func shapeFits(shape, model []int64) bool {
	if len(shape) != len(model) {
		return false
	}
	for i, d := range model {
		if shape[i] < 0 || (d >= 0 && shape[i] != d) {
			return false
		}
	}
	return true
}

// indexOf finds a tensor by name (-1: none). Models have a handful of
// inputs and outputs, so a scan beats a map.
func indexOf(infos []TensorInfo, name string) int {
	for i, t := range infos {
		if t.Name == name {
			return i
		}
	}
	return -1
}

// Close stops taking requests (those waiting fail with ErrClosed), waits for
// the run in progress and releases the model.
func (m *Model) Close() error {
	var err error
	m.closing.Do(func() {
		m.stop()
		m.running.Wait()
		err = m.session.Destroy()
	})
	return err
}

// runBatch runs one batch and answers each of its requests; the batcher
// calls it from its one goroutine.
func (m *Model) runBatch(batch []*request) {
	// A request cancelled while the batch was collected is not run: its
	// caller has gone.
	live := batch[:0]
	rows := 0
	for _, r := range batch {
		if r.ctx.Err() == nil {
			live = append(live, r)
			rows += r.rows
		}
	}
	if len(live) == 0 {
		return
	}
	start := time.Now()
	for _, r := range live {
		m.queueNs.Add(int64(start.Sub(r.enqueued)))
	}
	inputs := live[0].inputs
	if len(live) > 1 {
		inputs = m.stack(live, rows)
	}
	outputs, err := m.run(inputs, rows)
	m.runNs.Add(int64(time.Since(start)))
	if err != nil {
		m.log.Error("model run failed", "model", m.path, "rows", rows, "requests", len(live), "err", err)
		for _, r := range live {
			r.done <- result{err: err}
		}
		return
	}
	m.requests.Add(int64(len(live)))
	m.runs.Add(1)
	m.rows.Add(int64(rows))
	if int64(rows) > m.maxRows.Load() {
		m.maxRows.Store(int64(rows)) // only this goroutine writes it
	}
	if len(live) == 1 {
		live[0].done <- result{outputs: outputs}
		return
	}
	m.split(live, outputs)
}

// stack concatenates the requests' inputs along the batch dimension. A
// batch of one request is not stacked: its tensors go to ONNX Runtime as
// decoded.
func (m *Model) stack(live []*request, rows int) []Tensor {
	inputs := make([]Tensor, len(m.inputs))
	if m.stacked == nil {
		m.stacked = make([]any, len(m.inputs))
	}
	for i, k := range m.inKinds {
		shape := append([]int64{int64(rows)}, live[0].inputs[i].Shape[1:]...)
		n := int(elements(shape))
		if m.stacked[i] == nil || k.length(m.stacked[i]) < n {
			m.stacked[i] = k.make(n)
		}
		data := k.slice(m.stacked[i], 0, n)
		off := 0
		for _, r := range live {
			k.copyAt(data, off, r.inputs[i].Data)
			off += k.length(r.inputs[i].Data)
		}
		inputs[i] = Tensor{Name: m.inputs[i].Name, Shape: shape, Data: data}
	}
	return inputs
}

// split hands each request its rows of the outputs (sharing their memory).
func (m *Model) split(live []*request, outputs []Tensor) {
	row := 0
	for _, r := range live {
		mine := make([]Tensor, len(outputs))
		for i, out := range outputs {
			per := int(elements(out.Shape[1:]))
			shape := append([]int64{int64(r.rows)}, out.Shape[1:]...)
			mine[i] = Tensor{Name: out.Name, Shape: shape, Data: m.outKinds[i].slice(out.Data, row*per, (row+r.rows)*per)}
		}
		row += r.rows
		r.done <- result{outputs: mine}
	}
}

// run is one ONNX Runtime run of inputs (in the model's order), rows deep.
func (m *Model) run(inputs []Tensor, rows int) ([]Tensor, error) {
	in := make([]ort.Value, len(inputs))
	defer destroy(in)
	for i, t := range inputs {
		v, err := m.inKinds[i].tensor(ort.Shape(t.Shape), t.Data)
		if err != nil {
			return nil, fmt.Errorf("input %q: %w", t.Name, err)
		}
		in[i] = v
	}
	// Outputs whose shape is known once the batch size is are allocated
	// here, so that ONNX Runtime writes straight into Go memory; the others
	// ONNX Runtime allocates and onnxruntime_go copies out.
	out := make([]ort.Value, len(m.outputs))
	defer destroy(out)
	for i, o := range m.outputs {
		shape := ort.Shape(append([]int64(nil), o.Shape...))
		if m.batches {
			shape[0] = int64(rows)
		}
		if elements(shape) < 0 || m.outKinds[i].size == 0 {
			continue // ONNX Runtime makes string tensors itself
		}
		v, err := m.outKinds[i].tensor(shape, m.outKinds[i].make(int(elements(shape))))
		if err != nil {
			return nil, fmt.Errorf("output %q: %w", o.Name, err)
		}
		out[i] = v
	}
	if err := m.session.Run(in, out); err != nil {
		return nil, err
	}
	outputs := make([]Tensor, len(out))
	for i, v := range out {
		data, ok := m.outKinds[i].data(v)
		if !ok {
			return nil, fmt.Errorf("output %q: ONNX Runtime returned %T, not %s", m.outputs[i].Name, v, m.outputs[i].DataType)
		}
		shape := []int64(v.GetShape())
		if m.batches && (len(shape) == 0 || shape[0] != int64(rows)) {
			return nil, fmt.Errorf("output %q: shape %s for a batch of %d rows", m.outputs[i].Name, shapeString(shape), rows)
		}
		outputs[i] = Tensor{Name: m.outputs[i].Name, Shape: shape, Data: data}
	}
	return outputs, nil
}

func destroy(vs []ort.Value) {
	for _, v := range vs {
		if v != nil {
			v.Destroy()
		}
	}
}

// names lists tensors' names for error messages: "input", "mask".
func names(infos []TensorInfo) string {
	s := ""
	for i, t := range infos {
		if i > 0 {
			s += ", "
		}
		s += strconv.Quote(t.Name)
	}
	return s
}
