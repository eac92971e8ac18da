// Package batchinf is a BatchInference's worker: it leases items from the
// control plane's queue, scores them in batches with the builtin ONNX
// runtime, writes one result per input under a name derived from it
// (atomically: a re-scored item leaves one result), and acknowledges them.
// On an eviction notice it stops leasing, finishes the batch in hand and
// gives the rest back at once.
package batchinf

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	gblob "gocloud.dev/blob"
	"gocloud.dev/pubsub"
	"golang.org/x/sync/errgroup"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/client"
	"github.com/spotml/spotml/internal/inference"
	"github.com/spotml/spotml/internal/spec"
)

// Config wires a worker.
type Config struct {
	API     *client.Client
	Blobs   *blob.Store
	Batch   string
	Worker  string // NODE:JOB/TASK#ATTEMPT, the lease holder
	Library string // ONNX Runtime, for the builtin runtime
	// LibraryErr is why ONNX Runtime was not found, reported only if the
	// builtin runtime needs it.
	LibraryErr error
	Dir        string // where the model is downloaded
	Log        *slog.Logger
	// Stderr takes a command runtime's output; default os.Stderr.
	Stderr io.Writer
	// Poll is how long the worker waits before asking again when others
	// hold the items left; default 1s.
	Poll time.Duration
	// IO is how many blobs move at once; default 16.
	IO int
}

// Stats is what a worker did.
type Stats struct {
	Leased, Done, Failed, Released int
}

// Run works until the batch has nothing left for this worker, or stop
// ends (the node's notice): then the batch in hand is finished with
// work (which should outlive stop, to the notice's end) and what was
// leased beyond it is released.
func Run(stop, work context.Context, cfg Config) (Stats, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	if cfg.Poll == 0 {
		cfg.Poll = time.Second
	}
	if cfg.IO == 0 {
		cfg.IO = 16
	}
	w := &worker{cfg: cfg, base: api.Prefix + "/agent/batches/" + url.PathEscape(cfg.Batch)}
	var st api.BatchInference
	if err := w.call(work, http.MethodGet, "", nil, &st); err != nil {
		return w.stats, fmt.Errorf("batchinference %s: %w", cfg.Batch, err)
	}
	w.spec = st.Spec.Spec
	defer w.close()
	// The queue first: a broker subscription buffers what is sent while
	// the model loads.
	if err := w.openQueue(work); err != nil {
		return w.stats, err
	}
	if err := w.open(work); err != nil {
		return w.stats, err
	}
	return w.stats, w.loop(stop, work)
}

type worker struct {
	cfg   Config
	base  string
	spec  spec.BatchSpec
	model scorer
	in    inference.TensorInfo
	pre   *Preprocessor
	src   *gblob.Bucket
	dst   *gblob.Bucket
	queue queue
	stats Stats
	// want is how many items the next store lease asks for: set by the
	// scorer from its rate (leaseFor), read by the fetcher.
	want atomic.Int64
}

// scorer runs a batch of rows through the model: ONNX Runtime in this
// process, or the user's server (runtime command).
type scorer interface {
	// Input is the model's one input; a nil Shape means unknown (rows
	// are sent as they come).
	Input() inference.TensorInfo
	Predict(ctx context.Context, inputs []inference.Tensor) ([]inference.Tensor, error)
	Close()
}

// queue is where a worker's items come from: spotml's store, or a
// broker with the store as the ledger.
type queue interface {
	// next returns the next leased items, or nil when this worker is done:
	// the batch has nothing left for it, it was idle too long, or stop
	// ended.
	next(stop, work context.Context) (*lease, error)
	// settle records items done and failed, then acknowledges what
	// carried them.
	settle(ctx context.Context, l *lease, done []int64, fails []api.ItemFailed) error
	// release gives a lease back at once.
	release(ctx context.Context, l *lease)
	close(ctx context.Context)
}

func (w *worker) openQueue(ctx context.Context) error {
	if w.spec.Queue.URI == spec.QueueStore || w.spec.Queue.URI == "" {
		w.queue = &storeQueue{w: w}
		return nil
	}
	q, err := openBrokerQueue(ctx, w)
	if err != nil {
		return fmt.Errorf("spec.queue.subscription: %w", err)
	}
	w.queue = q
	return nil
}

func (w *worker) open(ctx context.Context) error {
	sp := w.spec
	pre, err := NewPreprocessor(sp.Preprocess)
	if err != nil {
		return err
	}
	w.pre = pre
	if err := os.MkdirAll(w.cfg.Dir, 0o755); err != nil {
		return err
	}
	if sp.Runtime.Type == spec.RuntimeCommand {
		path := filepath.Join(w.cfg.Dir, path.Base(strings.TrimSuffix(sp.Model.URI, "/")))
		if err := w.cfg.Blobs.Download(ctx, sp.Model.URI, path); err != nil {
			return fmt.Errorf("spec.model.uri: download %s: %w", sp.Model.URI, err)
		}
		c, err := startCommand(ctx, w.cfg, sp.Runtime, path)
		if err != nil {
			return fmt.Errorf("spec.runtime.command: %w", err)
		}
		w.model = c
	} else {
		if w.cfg.LibraryErr != nil {
			return w.cfg.LibraryErr
		}
		path := filepath.Join(w.cfg.Dir, "model.onnx")
		if err := w.cfg.Blobs.Download(ctx, sp.Model.URI, path); err != nil {
			return fmt.Errorf("spec.model.uri: download %s: %w", sp.Model.URI, err)
		}
		m, err := inference.Open(path, inference.Options{Library: w.cfg.Library, Threads: sp.Runtime.Threads,
			MaxBatch: sp.Runtime.BatchSize, MaxQueue: 64, Log: w.cfg.Log})
		if err != nil {
			return fmt.Errorf("spec.model.uri: %s: %w", sp.Model.URI, err)
		}
		if ins := m.Inputs(); len(ins) != 1 {
			m.Close()
			return fmt.Errorf("spec.model.uri: %s has %d inputs; a BatchInference scores models of one input", sp.Model.URI, len(ins))
		}
		w.model = builtin{m}
	}
	w.in = w.model.Input()
	var err2 error
	if w.src, err2 = w.cfg.Blobs.Open(ctx, sp.Input.URI); err2 != nil {
		return fmt.Errorf("spec.input.uri: %w", err2)
	}
	if w.dst, err2 = w.cfg.Blobs.Open(ctx, sp.Output.URI); err2 != nil {
		return fmt.Errorf("spec.output.uri: %w", err2)
	}
	return nil
}

func (w *worker) close() {
	if w.queue != nil {
		w.queue.close(context.Background())
	}
	if w.model != nil {
		w.model.Close()
	}
	if w.src != nil {
		w.src.Close()
	}
	if w.dst != nil {
		w.dst.Close()
	}
}

// builtin is ONNX Runtime in this process.
type builtin struct{ *inference.Model }

func (b builtin) Input() inference.TensorInfo { return b.Inputs()[0] }

func (b builtin) Close() { b.Model.Close() }

// lease is one leased batch with its inputs read, and, from a broker, the
// messages that carried it.
type lease struct {
	items []api.LeasedItem
	data  [][]byte
	errs  []error
	msgs  []*pubsub.Message
	sent  []int64 // every item the messages carried, claimed or not
}

// loop runs a fetcher (lease, read the blobs) one batch ahead of the
// scorer, so that reading overlaps the model. The hand-over is unbuffered:
// a worker holds at most the lease it scores and the one read ahead.
func (w *worker) loop(stop, work context.Context) error {
	ready := make(chan *lease)
	var fetchErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(ready)
		fetchErr = w.fetch(stop, work, ready)
	})
	var err error
	for l := range ready {
		if err != nil {
			w.release(work, l)
			continue
		}
		t0 := time.Now()
		if err = w.score(work, l); err != nil {
			// Give back what this worker cannot finish.
			w.release(work, l)
			continue
		}
		w.want.Store(int64(leaseFor(w.spec, len(l.items), time.Since(t0))))
	}
	wg.Wait()
	if fetchErr != nil && stop.Err() == nil {
		return errors.Join(err, fetchErr)
	}
	return err
}

// fetch leases batches until the queue has nothing more for this worker
// or stop ends, handing each to ready once its inputs are read. A batch
// leased when stop ended is released, unread.
func (w *worker) fetch(stop, work context.Context, ready chan<- *lease) error {
	for stop.Err() == nil {
		l, err := w.queue.next(stop, work)
		if err != nil || l == nil {
			return err
		}
		w.stats.Leased += len(l.items)
		w.read(work, l)
		select {
		case ready <- l:
		case <-stop.Done():
			w.release(work, l)
			return nil
		}
	}
	return nil
}

func (w *worker) release(ctx context.Context, l *lease) { w.queue.release(ctx, l) }

// storeQueue leases items from spotml's store over the API.
type storeQueue struct{ w *worker }

func (q *storeQueue) next(stop, work context.Context) (*lease, error) {
	w := q.w
	idleSince := time.Now()
	for stop.Err() == nil {
		var resp api.LeaseResponse
		err := w.cfg.API.Do(work, http.MethodPost, w.base+"/lease", api.LeaseRequest{Worker: w.cfg.Worker, Max: max(int(w.want.Load()), leaseSize(w.spec))}, &resp)
		if err != nil {
			if c := client.Code(err); c >= 400 && c < 500 {
				return nil, err
			}
			w.cfg.Log.Warn("lease failed; retrying", "err", err)
			if !sleep(stop, w.cfg.Poll) {
				return nil, nil
			}
			continue
		}
		if stop.Err() != nil {
			q.release(work, &lease{items: resp.Items})
			return nil, nil
		}
		if len(resp.Items) == 0 {
			if w.idle(resp.Running, resp.Listing, resp.Left, idleSince) {
				return nil, nil
			}
			// Other workers hold what is left; it may come back.
			if !sleep(stop, w.cfg.Poll) {
				return nil, nil
			}
			continue
		}
		return &lease{items: resp.Items}, nil
	}
	return nil, nil
}

// idle reports whether a worker that got nothing should exit: the batch
// finished, or nothing is left and the input is listed (trigger once), or
// nothing was for the idle timeout (watch).
func (w *worker) idle(running, listing bool, left int, since time.Time) bool {
	switch {
	case !running:
		return true // finished or deleted
	case listing:
		return false // more items are being queued
	case left == 0 && w.spec.Trigger != spec.TriggerWatch:
		return true
	case left == 0 && time.Since(since) > w.spec.Queue.IdleTimeout.Duration:
		w.cfg.Log.Info("idle: exiting", "after", w.spec.Queue.IdleTimeout.Duration)
		return true
	}
	return false
}

func (q *storeQueue) settle(ctx context.Context, l *lease, done []int64, fails []api.ItemFailed) error {
	return q.w.ack(ctx, done, fails)
}

func (q *storeQueue) release(ctx context.Context, l *lease) {
	ids := make([]int64, len(l.items))
	for i, it := range l.items {
		ids[i] = it.ID
	}
	q.w.releaseIDs(ctx, ids)
}

func (q *storeQueue) close(context.Context) {}

// leaseSize is how many items a worker takes at once: whole groups of
// queue.groupSize, at least runtime.batchSize.
func leaseSize(sp spec.BatchSpec) int {
	g := max(sp.Queue.GroupSize, 1)
	return (max(sp.Runtime.BatchSize, 1) + g - 1) / g * g
}

// leaseWork is how long the scoring of one store lease should take, and
// maxLeaseBatches how many leaseSize units a lease may hold at most. Each
// lease costs the control plane a lease and an ack (a request and a
// commit each), so a worker that scores fast asks for more at once; the
// bound in time keeps what a notice finds in hand (finished within the
// notice) and the last leases' tail short, the bound in units what one
// worker can take from the others.
const (
	leaseWork       = 500 * time.Millisecond
	maxLeaseBatches = 8
)

// leaseFor is how many items to lease next, having scored n in took:
// about leaseWork of scoring at that rate, in whole leaseSize units, at
// least one and at most maxLeaseBatches of them.
func leaseFor(sp spec.BatchSpec, n int, took time.Duration) int {
	unit := leaseSize(sp)
	if took <= 0 {
		return unit * maxLeaseBatches
	}
	k := int(float64(n) * float64(leaseWork) / float64(took) / float64(unit))
	return unit * min(max(k, 1), maxLeaseBatches)
}

func (w *worker) read(ctx context.Context, l *lease) {
	l.data, l.errs = make([][]byte, len(l.items)), make([]error, len(l.items))
	g := errgroup.Group{}
	g.SetLimit(w.cfg.IO)
	for i, it := range l.items {
		g.Go(func() error {
			l.data[i], l.errs[i] = w.src.ReadAll(ctx, it.Input)
			return nil
		})
	}
	g.Wait()
}

// score runs one leased batch through the model, writes a result per
// scored item and settles every item: done, or failed with its reason.
func (w *worker) score(ctx context.Context, l *lease) error {
	var fails []api.ItemFailed
	var rows [][]float32
	var scored []int
	for i, it := range l.items {
		if l.errs[i] != nil {
			if blob.IsNotExist(l.errs[i]) {
				fails = append(fails, api.ItemFailed{ID: it.ID, Reason: "input is gone: " + l.errs[i].Error()})
				continue
			}
			return fmt.Errorf("read %s: %w", it.Input, l.errs[i])
		}
		row, err := w.pre.Row(l.data[i])
		if err == nil {
			err = w.checkRow(len(row))
		}
		if err != nil {
			fails = append(fails, api.ItemFailed{ID: it.ID, Reason: err.Error()})
			continue
		}
		rows = append(rows, row)
		scored = append(scored, i)
	}
	var done []int64
	if len(rows) > 0 {
		outs, err := w.predict(ctx, rows)
		if errors.Is(err, inference.ErrInvalidInput) {
			for _, i := range scored {
				fails = append(fails, api.ItemFailed{ID: l.items[i].ID, Reason: "model refused the input: " + err.Error()})
			}
			scored = nil
		} else if err != nil {
			return fmt.Errorf("score: %w", err)
		}
		// The results are made durable together, before the ack: two
		// file-system syncs a batch instead of two syncs a result, each
		// result still written whole or not at all (blob.Syncs).
		wctx, syncs := blob.DeferSyncs(ctx)
		g := errgroup.Group{}
		g.SetLimit(w.cfg.IO)
		for r, i := range scored {
			g.Go(func() error {
				return w.write(wctx, l.items[i].Input, outs, r)
			})
		}
		if err := errors.Join(g.Wait(), syncs.Sync()); err != nil {
			return err
		}
		for _, i := range scored {
			done = append(done, l.items[i].ID)
		}
	}
	if err := w.queue.settle(ctx, l, done, fails); err != nil {
		// Results are written; the items come back after their lease and
		// are written again under the same names.
		return err
	}
	w.stats.Done += len(done)
	w.stats.Failed += len(fails)
	return nil
}

// ack records items done and failed in the store.
func (w *worker) ack(ctx context.Context, done []int64, fails []api.ItemFailed) error {
	if len(done)+len(fails) == 0 {
		return nil
	}
	var resp api.BatchCounts
	if err := w.call(ctx, http.MethodPost, "/ack", api.AckRequest{Worker: w.cfg.Worker, Done: done, Failed: fails}, &resp); err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	return nil
}

// checkRow checks a row's length against the model's input row.
func (w *worker) checkRow(n int) error {
	if w.in.Shape == nil {
		return nil // a command's server that does not describe its input
	}
	known, dynamic := 1, 0
	for _, d := range w.in.Shape[1:] {
		if d < 0 {
			dynamic++
		} else {
			known *= int(d)
		}
	}
	if (dynamic == 0 && n != known) || (dynamic > 0 && (known == 0 || n%known != 0)) || dynamic > 1 {
		return fmt.Errorf("wrong shape: the input gives %d values, the model's input %q takes %v per row; check spec.preprocess", n, w.in.Name, w.in.Shape[1:])
	}
	return nil
}

// predict scores rows in runs of at most runtime.batchSize, and returns
// the outputs of all of them as one batch.
func (w *worker) predict(ctx context.Context, rows [][]float32) ([]inference.Tensor, error) {
	size := max(w.spec.Runtime.BatchSize, 1)
	if len(rows) <= size {
		return w.run(ctx, rows)
	}
	var all []inference.Tensor
	for start := 0; start < len(rows); start += size {
		outs, err := w.run(ctx, rows[start:min(start+size, len(rows))])
		if err != nil {
			return nil, err
		}
		if all, err = concatRows(all, outs); err != nil {
			return nil, err
		}
	}
	return all, nil
}

// run scores one batch of rows.
func (w *worker) run(ctx context.Context, rows [][]float32) ([]inference.Tensor, error) {
	n := len(rows[0])
	if w.in.Shape == nil {
		return w.model.Predict(ctx, []inference.Tensor{{Name: w.in.Name, Shape: []int64{int64(len(rows)), int64(n)}, Data: flatten(rows)}})
	}
	data := flatten(rows)
	shape := []int64{int64(len(rows))}
	known := 1
	for _, d := range w.in.Shape[1:] {
		if d > 0 {
			known *= int(d)
		}
	}
	for _, d := range w.in.Shape[1:] {
		if d < 0 {
			d = int64(n / known)
		}
		shape = append(shape, d)
	}
	return w.model.Predict(ctx, []inference.Tensor{{Name: w.in.Name, Shape: shape, Data: data}})
}

// Result is what a worker writes for one input.
type Result struct {
	Input   string               `json:"input"`
	Class   *int                 `json:"class,omitempty"` // argmax of the first output, when it is a row of scores
	Outputs map[string][]float64 `json:"outputs"`
}

// ResultKey is where the result of input goes, relative to output.uri.
func ResultKey(input, format string) string {
	if format == spec.FormatJSON {
		return input + ".json"
	}
	return input + ".jsonl"
}

// Encode renders a result as format: the same bytes for the same result,
// so that an item scored twice leaves an identical object.
func (r Result) Encode(format string) ([]byte, error) {
	if format == spec.FormatJSON {
		b, err := json.MarshalIndent(r, "", "  ")
		return append(b, '\n'), err
	}
	b, err := json.Marshal(r)
	return append(b, '\n'), err
}

// RowResult is row r of a batch's outputs as a Result.
func RowResult(input string, outs []inference.Tensor, r int) (Result, error) {
	res := Result{Input: input, Outputs: map[string][]float64{}}
	for k, o := range outs {
		vals, err := rowOf(o, r)
		if err != nil {
			return res, err
		}
		res.Outputs[o.Name] = vals
		if k == 0 && len(vals) > 1 {
			best := 0
			for i, v := range vals {
				if v > vals[best] {
					best = i
				}
			}
			res.Class = &best
		}
	}
	return res, nil
}

// write stores one input's result: one object, under a name derived from
// the input, written whole or not at all (the blob store's writes are
// atomic), so a re-scored item replaces it with the same bytes.
func (w *worker) write(ctx context.Context, input string, outs []inference.Tensor, r int) error {
	res, err := RowResult(input, outs, r)
	if err != nil {
		return err
	}
	b, err := res.Encode(w.spec.Output.Format)
	if err != nil {
		return err
	}
	if err := w.dst.WriteAll(ctx, ResultKey(input, w.spec.Output.Format), b, nil); err != nil {
		return fmt.Errorf("write result of %s: %w", input, err)
	}
	return nil
}

func rowOf(t inference.Tensor, r int) ([]float64, error) {
	rows := 1
	if len(t.Shape) > 0 {
		rows = int(t.Shape[0])
	}
	switch d := t.Data.(type) {
	case []float32:
		n := len(d) / rows
		out := make([]float64, n)
		for i, v := range d[r*n : (r+1)*n] {
			out[i] = roundFloat32(v)
		}
		return out, nil
	case []float64:
		n := len(d) / rows
		return append([]float64(nil), d[r*n:(r+1)*n]...), nil
	case []int64:
		n := len(d) / rows
		out := make([]float64, n)
		for i, v := range d[r*n : (r+1)*n] {
			out[i] = float64(v)
		}
		return out, nil
	case []int32:
		n := len(d) / rows
		out := make([]float64, n)
		for i, v := range d[r*n : (r+1)*n] {
			out[i] = float64(v)
		}
		return out, nil
	}
	return nil, fmt.Errorf("output %q is %s; a BatchInference writes numeric outputs", t.Name, t.DataType())
}

// roundFloat32 widens a float32 to the shortest float64 that prints as
// it, so that results read as the model computed them (0.1, not
// 0.10000000149011612).
func roundFloat32(v float32) float64 {
	if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
		return 0
	}
	f, _ := strconv.ParseFloat(strconv.FormatFloat(float64(v), 'g', -1, 32), 64)
	return f
}

func flatten(rows [][]float32) []float32 {
	data := make([]float32, 0, len(rows[0])*len(rows))
	for _, r := range rows {
		data = append(data, r...)
	}
	return data
}

// concatRows appends a run's outputs to those of the runs before it,
// along the batch dimension.
func concatRows(all, outs []inference.Tensor) ([]inference.Tensor, error) {
	if all == nil {
		return outs, nil
	}
	if len(all) != len(outs) {
		return nil, fmt.Errorf("the model gave %d outputs, then %d", len(all), len(outs))
	}
	for i := range all {
		a, o := &all[i], outs[i]
		if len(a.Shape) == 0 || len(o.Shape) == 0 {
			return nil, fmt.Errorf("output %q has no batch dimension", o.Name)
		}
		switch d := a.Data.(type) {
		case []float32:
			a.Data = append(d, o.Data.([]float32)...)
		case []float64:
			a.Data = append(d, o.Data.([]float64)...)
		case []int64:
			a.Data = append(d, o.Data.([]int64)...)
		case []int32:
			a.Data = append(d, o.Data.([]int32)...)
		default:
			return nil, fmt.Errorf("output %q is %s; a BatchInference writes numeric outputs", a.Name, a.DataType())
		}
		a.Shape = append([]int64{a.Shape[0] + o.Shape[0]}, a.Shape[1:]...)
	}
	return all, nil
}

// releaseIDs gives items back to the queue (and, with a broker, has them
// sent again at once).
func (w *worker) releaseIDs(ctx context.Context, ids []int64) {
	if len(ids) == 0 {
		return
	}
	var resp api.BatchCounts
	if err := w.call(ctx, http.MethodPost, "/release", api.ReleaseRequest{Worker: w.cfg.Worker, IDs: ids}, &resp); err != nil {
		// They come back when their lease runs out.
		w.cfg.Log.Warn("release failed", "items", len(ids), "err", err)
		return
	}
	w.stats.Released += resp.Changed
	w.cfg.Log.Info("released", "items", resp.Changed)
}

// call calls the queue, retrying while the control plane cannot answer (it
// may be restarting) for up to retryFor; a refusal (4xx) is final.
func (w *worker) call(ctx context.Context, method, path string, in, out any) error {
	const retryFor = 30 * time.Second
	start := time.Now()
	for {
		err := w.cfg.API.Do(ctx, method, w.base+path, in, out)
		if c := client.Code(err); err == nil || (c >= 400 && c < 500) || time.Since(start) > retryFor {
			return err
		}
		w.cfg.Log.Warn("queue call failed; retrying", "path", path, "err", err)
		if !sleep(ctx, w.cfg.Poll) {
			return err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
