package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	gblob "gocloud.dev/blob"
	"golang.org/x/sync/errgroup"

	"github.com/spotml/spotml/internal/batchinf"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/inference"
	"github.com/spotml/spotml/internal/spec"
)

// preprocess is the BatchInference's preprocess, the same in every way.
var preprocess = spec.Preprocess{Image: &spec.ImagePreprocess{Grayscale: true, Size: []int{28, 28}, Scale: "1/255"}}

// span is a stretch of work: items, wall time and CPU time.
type span struct {
	items int
	wall  time.Duration
	cpu   float64 // seconds
}

func (s span) rate() float64      { return float64(s.items) / s.wall.Seconds() }
func (s span) perCPUSec() float64 { return float64(s.items) / s.cpu }

// plus is s and o together: their items, wall and CPU time summed.
func (s span) plus(o span) span {
	return span{items: s.items + o.items, wall: s.wall + o.wall, cpu: s.cpu + o.cpu}
}

// ceilingResult is (d): the whole job per item, the model alone, and the
// class of each input (what the other ways' results are checked against).
type ceilingResult struct {
	whole, model span
	allCores     *span // (d1) on every core at once (ceiling's cores > 1)
	classes      map[string]int
}

// ceiling scores the files in this process on one ONNX Runtime thread, in
// batches of batch, twice: (d1) as a worker does, reading, decoding and
// scoring each batch and writing each result through spotml's blob store
// (durable before the next batch, made so together as the worker's are),
// and (d2) the model alone over the same
// batches decoded beforehand (unless wholeOnly: the run that brackets the
// spotml ways measures (d1) again, see report.d1).
//
// With cores > 1 (d1) runs once more, on that many goroutines at once,
// each taking every cores-th batch, through the same session: what the
// same work costs a core while every core works, as spotml's workers
// make them (two busy vCPUs of this VM each do less per CPU-second than
// one does alone).
func ceiling(ctx context.Context, lib, model, in, out string, keys []string, batch int, wholeOnly bool, cores int) (ceilingResult, error) {
	r := ceilingResult{classes: make(map[string]int, len(keys))}
	m, err := inference.Open(model, inference.Options{Library: lib, Threads: 1, MaxBatch: batch})
	if err != nil {
		return r, err
	}
	defer m.Close()
	pre, err := batchinf.NewPreprocessor(preprocess)
	if err != nil {
		return r, err
	}
	blobs, err := blob.NewStore("file://" + out)
	if err != nil {
		return r, err
	}
	defer blobs.Close()
	dst, err := blobs.Open(ctx, "scored")
	if err != nil {
		return r, err
	}
	defer dst.Close()
	info := m.Inputs()[0]
	predict := func(rows [][]float32) ([]inference.Tensor, error) {
		data := make([]float32, 0, len(rows)*len(rows[0]))
		for _, row := range rows {
			data = append(data, row...)
		}
		shape := append([]int64{int64(len(rows))}, info.Shape[1:]...)
		return m.Predict(ctx, []inference.Tensor{{Name: info.Name, Shape: shape, Data: data}})
	}

	// (d1) the whole job: the batches from the first-th, every step-th,
	// into dst.
	whole := func(dst *gblob.Bucket, first, step int, classes map[string]int) error {
		for s := first * batch; s < len(keys); s += step * batch {
			ks := keys[s:min(s+batch, len(keys))]
			rows := make([][]float32, len(ks))
			for i, k := range ks {
				b, err := os.ReadFile(filepath.Join(in, filepath.FromSlash(k)))
				if err != nil {
					return err
				}
				if rows[i], err = pre.Row(b); err != nil {
					return fmt.Errorf("%s: %w", k, err)
				}
			}
			outs, err := predict(rows)
			if err != nil {
				return err
			}
			// As a worker writes them: made durable together per batch.
			wctx, syncs := blob.DeferSyncs(ctx)
			for i, k := range ks {
				res, err := batchinf.RowResult(k, outs, i)
				if err != nil {
					return err
				}
				b, err := res.Encode(spec.FormatJSONL)
				if err != nil {
					return err
				}
				if err := dst.WriteAll(wctx, batchinf.ResultKey(k, spec.FormatJSONL), b, nil); err != nil {
					return err
				}
				if classes != nil {
					classes[k] = *res.Class
				}
			}
			if err := syncs.Sync(); err != nil {
				return err
			}
		}
		return nil
	}
	cpu0, t0 := cpuSelf(), time.Now()
	if err := whole(dst, 0, 1, r.classes); err != nil {
		return r, err
	}
	r.whole = span{items: len(keys), wall: time.Since(t0), cpu: cpuSelf() - cpu0}
	if cores > 1 {
		par, err := blobs.Open(ctx, "scored-all-cores")
		if err != nil {
			return r, err
		}
		defer par.Close()
		cpu0, t0 := cpuSelf(), time.Now()
		var g errgroup.Group
		for c := range cores {
			g.Go(func() error { return whole(par, c, cores, nil) })
		}
		if err := g.Wait(); err != nil {
			return r, err
		}
		r.allCores = &span{items: len(keys), wall: time.Since(t0), cpu: cpuSelf() - cpu0}
	}
	if wholeOnly {
		return r, nil
	}

	// (d2) the model alone, on the same batches decoded beforehand.
	var batches [][][]float32
	for s := 0; s < len(keys); s += batch {
		ks := keys[s:min(s+batch, len(keys))]
		rows := make([][]float32, len(ks))
		for i, k := range ks {
			b, err := os.ReadFile(filepath.Join(in, filepath.FromSlash(k)))
			if err != nil {
				return r, err
			}
			if rows[i], err = pre.Row(b); err != nil {
				return r, err
			}
		}
		batches = append(batches, rows)
	}
	cpu0, t0 = cpuSelf(), time.Now()
	for _, rows := range batches {
		if _, err := predict(rows); err != nil {
			return r, err
		}
	}
	r.model = span{items: len(keys), wall: time.Since(t0), cpu: cpuSelf() - cpu0}
	return r, nil
}

// cpuSelf is this process's CPU time so far, in seconds. While (d) runs
// the process does nothing else but sample /proc every 200ms, which is
// counted against (d).
func cpuSelf() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}
