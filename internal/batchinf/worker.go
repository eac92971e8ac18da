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
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	gblob "gocloud.dev/blob"
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
	Library string // ONNX Runtime
	Dir     string // where the model is downloaded
	Log     *slog.Logger
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
	if err := w.open(work); err != nil {
		return w.stats, err
	}
	defer w.close()
	return w.stats, w.loop(stop, work)
}

type worker struct {
	cfg   Config
	base  string
	spec  spec.BatchSpec
	model *inference.Model
	in    inference.TensorInfo
	pre   *Preprocessor
	src   *gblob.Bucket
	dst   *gblob.Bucket
	stats Stats
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
	path := filepath.Join(w.cfg.Dir, "model.onnx")
	if err := w.cfg.Blobs.Download(ctx, sp.Model.URI, path); err != nil {
		return fmt.Errorf("spec.model.uri: download %s: %w", sp.Model.URI, err)
	}
	m, err := inference.Open(path, inference.Options{Library: w.cfg.Library, Threads: sp.Runtime.Threads,
		MaxBatch: sp.Runtime.BatchSize, MaxQueue: 64, Log: w.cfg.Log})
	if err != nil {
		return fmt.Errorf("spec.model.uri: %s: %w", sp.Model.URI, err)
	}
	w.model = m
	if ins := m.Inputs(); len(ins) != 1 {
		return fmt.Errorf("spec.model.uri: %s has %d inputs; a BatchInference scores models of one input", sp.Model.URI, len(ins))
	}
	w.in = m.Inputs()[0]
	if w.src, err = w.cfg.Blobs.Open(ctx, sp.Input.URI); err != nil {
		return fmt.Errorf("spec.input.uri: %w", err)
	}
	if w.dst, err = w.cfg.Blobs.Open(ctx, sp.Output.URI); err != nil {
		return fmt.Errorf("spec.output.uri: %w", err)
	}
	return nil
}

func (w *worker) close() {
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

// lease is one leased batch with its inputs read.
type lease struct {
	items []api.LeasedItem
	data  [][]byte
	errs  []error
}

// loop runs a fetcher (lease, read the blobs) one batch ahead of the
// scorer, so that reading overlaps the model.
func (w *worker) loop(stop, work context.Context) error {
	ready := make(chan *lease, 1)
	var fetchErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		defer close(ready)
		fetchErr = w.fetch(stop, work, ready)
	})
	var err error
	for l := range ready {
		if err != nil {
			w.release(work, l.items)
			continue
		}
		if err = w.score(work, l); err != nil {
			// Give back what this worker cannot finish.
			w.release(work, l.items)
		}
	}
	wg.Wait()
	if fetchErr != nil && stop.Err() == nil {
		return errors.Join(err, fetchErr)
	}
	return err
}

// fetch leases batches until the batch has nothing left or stop ends,
// handing each to ready once its inputs are read. A batch leased when stop
// ended is released, unread.
func (w *worker) fetch(stop, work context.Context, ready chan<- *lease) error {
	idleSince := time.Now()
	for stop.Err() == nil {
		var resp api.LeaseResponse
		err := w.cfg.API.Do(work, http.MethodPost, w.base+"/lease", api.LeaseRequest{Worker: w.cfg.Worker, Max: w.spec.Runtime.BatchSize}, &resp)
		if err != nil {
			if c := client.Code(err); c >= 400 && c < 500 {
				return err
			}
			w.cfg.Log.Warn("lease failed; retrying", "err", err)
			if !sleep(stop, w.cfg.Poll) {
				return nil
			}
			continue
		}
		if stop.Err() != nil {
			w.release(work, resp.Items)
			return nil
		}
		if len(resp.Items) == 0 {
			switch {
			case !resp.Running:
				return nil // finished or deleted
			case resp.Left == 0 && w.spec.Trigger != spec.TriggerWatch:
				return nil
			case resp.Left == 0 && time.Since(idleSince) > w.spec.Queue.IdleTimeout.Duration:
				w.cfg.Log.Info("idle: exiting", "after", w.spec.Queue.IdleTimeout.Duration)
				return nil
			}
			// Other workers hold what is left; it may come back.
			if !sleep(stop, w.cfg.Poll) {
				return nil
			}
			continue
		}
		idleSince = time.Now()
		w.stats.Leased += len(resp.Items)
		l := w.read(work, resp.Items)
		select {
		case ready <- l:
		case <-stop.Done():
			w.release(work, l.items)
			return nil
		}
	}
	return nil
}

func (w *worker) read(ctx context.Context, items []api.LeasedItem) *lease {
	l := &lease{items: items, data: make([][]byte, len(items)), errs: make([]error, len(items))}
	g := errgroup.Group{}
	g.SetLimit(w.cfg.IO)
	for i, it := range items {
		g.Go(func() error {
			l.data[i], l.errs[i] = w.src.ReadAll(ctx, it.Input)
			return nil
		})
	}
	g.Wait()
	return l
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
		g := errgroup.Group{}
		g.SetLimit(w.cfg.IO)
		for r, i := range scored {
			g.Go(func() error {
				return w.write(ctx, l.items[i].Input, outs, r)
			})
		}
		if err := g.Wait(); err != nil {
			return err
		}
		for _, i := range scored {
			done = append(done, l.items[i].ID)
		}
	}
	var resp api.BatchCounts
	if err := w.call(ctx, http.MethodPost, "/ack", api.AckRequest{Worker: w.cfg.Worker, Done: done, Failed: fails}, &resp); err != nil {
		// Results are written; the items come back after their lease and
		// are written again under the same names.
		return fmt.Errorf("ack: %w", err)
	}
	w.stats.Done += len(done)
	w.stats.Failed += len(fails)
	return nil
}

// checkRow checks a row's length against the model's input row.
func (w *worker) checkRow(n int) error {
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

func (w *worker) predict(ctx context.Context, rows [][]float32) ([]inference.Tensor, error) {
	n := len(rows[0])
	data := make([]float32, 0, n*len(rows))
	for _, r := range rows {
		data = append(data, r...)
	}
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

func (w *worker) release(ctx context.Context, items []api.LeasedItem) {
	if len(items) == 0 {
		return
	}
	ids := make([]int64, len(items))
	for i, it := range items {
		ids[i] = it.ID
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
