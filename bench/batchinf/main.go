// Command batchinf scores Fashion-MNIST images written out as individual
// PNG files (all 70,000 by default: the 60,000 training and 10,000 test
// images of Debian's dataset-fashion-mnist) with the shipped model
// (examples/fashion-mnist/model.onnx), four ways in one run, one after the
// other on the same machine:
//
//	(a) a spotml BatchInference on a spot pool whose nodes the simulated
//	    market evicts at a harsh rate;
//	(b) the same BatchInference on an on-demand pool (no evictions);
//	(c) what a user writes without spotml: one Python process looping over
//	    the files with PyTorch (score.py: train.py's Net with the weights
//	    of model.onnx);
//	(d) the ceiling: ONNX Runtime in this process on one thread over the
//	    same batches, (d1) doing a worker's whole job per item (read,
//	    decode, score, write the result durably) and (d2) the model alone
//	    on rows decoded beforehand. (d1) is read again after (a) and (b),
//	    and the ratios are taken against both readings; each time it also
//	    runs on every core at once, the second reference.
//
// Before the ways it waits (-settle) until creating a file is cheap
// again, and before each way it reads what creating one costs beside its
// output (fsprobe.go: on ext4 without a journal that varies tenfold).
//
// (a) and (b) run on one `spotml up` (control plane, simulated market,
// agent processes) that stores the PNGs in its blob store. For each way it
// reports items/s, items per CPU-second (the CPU of every process the way
// used, from /proc) against the ceiling's, the makespan, evictions, items
// scored more than once, the cost against on demand, and it checks that
// there is exactly one result per input whose class agrees with (d1)'s.
//
//	go run ./bench/batchinf                  # all 70,000
//	go run ./bench/batchinf -n 5000          # a quick try
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spotml/spotml/bench/cluster"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "batchinf:", err)
		os.Exit(1)
	}
}

// config is the benchmark's parameters, from its flags.
type config struct {
	n        int
	rate     float64
	notice   time.Duration
	maxNodes int
	workers  int
	batch    int
	threads  int
	python   string
	skip     string
	timeout  time.Duration
	keep     bool
	settle   time.Duration
	evictAt  []float64
}

func (c config) skipped(way string) bool {
	for _, s := range strings.Split(c.skip, ",") {
		if strings.TrimSpace(s) == way {
			return true
		}
	}
	return false
}

// instanceType is the pools' machine (2 cpu: two 1-cpu workers a node),
// priced by spotml's table.
const instanceType = "Standard_D2s_v3"

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	var cfg config
	fs := flag.NewFlagSet("batchinf", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&cfg.n, "n", 70000, "images to score (the training images first, then the test images; at most 70,000)")
	fs.Float64Var(&cfg.rate, "rate", 60, "spot evictions per node-hour in (a): 60, a node lives a minute on average, is harsher than any real market")
	fs.DurationVar(&cfg.notice, "notice", 5*time.Second, "eviction notice in (a)")
	fs.IntVar(&cfg.maxNodes, "max-nodes", 2, "max nodes per pool ("+instanceType+": two 1-cpu workers a node)")
	fs.IntVar(&cfg.workers, "workers", 4, "max workers of each BatchInference (1 cpu, 1 ONNX Runtime thread each)")
	fs.IntVar(&cfg.batch, "batch", 32, "items per model run, in every way")
	fs.IntVar(&cfg.threads, "threads", 1, "PyTorch threads in (c)")
	fs.StringVar(&cfg.python, "python", "/usr/bin/python3", "the Python with Debian's python3-torch, python3-onnx and python3-pil, for (c)")
	fs.StringVar(&cfg.skip, "skip", "", "ways to leave out, comma-separated: a, b, c")
	fs.DurationVar(&cfg.timeout, "timeout", 60*time.Minute, "give up after this long")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the data directory (logs, database, results) and say where")
	fs.DurationVar(&cfg.settle, "settle", 7*time.Minute, "before the ways, wait up to this long for creating a file to cost under 40 µs of CPU (see fsprobe.go: after a mass delete, such as the previous run's workspace, it can cost 10 times that for minutes); 0: do not wait")
	evictAt := fs.String("evict-at", "0.25,0.5", "in (a), also give one ready spot node a notice (spotml evict) when this fraction of the items is done, comma-separated; \"\" for the market's draws alone")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	for _, f := range strings.Split(*evictAt, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		v, err := strconv.ParseFloat(f, 64)
		if err != nil || v <= 0 || v >= 1 {
			return fmt.Errorf("-evict-at %q: give fractions between 0 and 1, such as 0.25,0.5", *evictAt)
		}
		if len(cfg.evictAt) > 0 && v <= cfg.evictAt[len(cfg.evictAt)-1] {
			return fmt.Errorf("-evict-at %q: give the fractions in increasing order", *evictAt)
		}
		cfg.evictAt = append(cfg.evictAt, v)
	}
	switch {
	case cfg.n < 1 || cfg.n > 70000:
		return fmt.Errorf("-n %d: give 1 to 70000 images", cfg.n)
	case cfg.rate < 0:
		return errors.New("-rate must not be negative")
	case cfg.maxNodes < 1 || cfg.workers < 1 || cfg.batch < 1 || cfg.threads < 1:
		return errors.New("-max-nodes, -workers, -batch and -threads must be at least 1")
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()

	lib, err := cluster.ONNXRuntime()
	if err != nil {
		return err
	}
	model, err := filepath.Abs(filepath.Join("examples", "fashion-mnist", "model.onnx"))
	if err != nil {
		return err
	}
	if _, err := os.Stat(model); err != nil {
		return fmt.Errorf("the shipped model: %w (run from the repository root)", err)
	}
	imgs, err := readImages(fmnistDir, cfg.n)
	if err != nil {
		return err
	}
	if len(imgs) < cfg.n {
		return fmt.Errorf("-n %d: the set has only %d images", cfg.n, len(imgs))
	}

	ws, err := cluster.NewWorkspace(ctx, "spotml-batchinf", stderr)
	if err != nil {
		return err
	}
	defer func() { ws.Close(cfg.keep, err) }()
	c, err := cluster.Start(ctx, ws.Bin, filepath.Join(ws.Dir, "data"), lib)
	if err != nil {
		return err
	}
	defer c.Stop()
	cpu := newTreeCPU(c.PID())
	cpuCtx, stopCPU := context.WithCancel(ctx)
	defer stopCPU()
	go cpu.run(cpuCtx, 200*time.Millisecond)

	in := filepath.Join(c.Data, "blobs", inputPrefix)
	t0 := time.Now()
	keys, err := writePNGs(in, imgs)
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %d PNG files under %s in %s\n", len(keys), in, time.Since(t0).Round(time.Millisecond))
	if _, err := c.CLI(ctx, "blob", "put", model, modelKey); err != nil {
		return err
	}
	rep := report{cfg: cfg, args: args, start: time.Now(), load0: loadAvg(), cores: runtime.NumCPU()}
	// What a new file costs beside each way's output, read just before it.
	probe := func(label, dir string) {
		us, err := newFileCost(dir)
		if err != nil {
			fmt.Fprintf(stderr, "probing %s: %v\n", dir, err)
			return
		}
		rep.newFile = append(rep.newFile, fileCost{label, us})
	}
	settle(ctx, cfg.settle, ws.Dir, stderr)
	probe("(d1)", filepath.Join(ws.Dir, "ceiling-probe"))

	fmt.Fprintln(stderr, "(d) in-process ONNX Runtime ...")
	rep.ceiling, err = ceiling(ctx, lib, model, in, filepath.Join(ws.Dir, "ceiling"), keys, cfg.batch, false, rep.cores)
	if err != nil {
		return fmt.Errorf("(d): %w", err)
	}
	fmt.Fprintf(stderr, "(d) %.0f items/s whole job, %.0f items/s model alone\n", rep.ceiling.whole.rate(), rep.ceiling.model.rate())

	if !cfg.skipped("c") {
		fmt.Fprintln(stderr, "(c) Python + PyTorch ...")
		rep.python = scorePython(ctx, cfg, model, in, filepath.Join(ws.Dir, "python"), keys, rep.ceiling.classes)
		fmt.Fprintf(stderr, "(c) %s\n", rep.python.summary())
	}
	if err := c.Apply(ctx, "pools.yaml", poolsYAML(cfg)); err != nil {
		return err
	}
	for _, w := range []way{{name: "b", pool: "ondemand"}, {name: "a", pool: "spot"}} {
		if cfg.skipped(w.name) {
			continue
		}
		probe("("+w.name+")", filepath.Join(c.Data, "blobs", "scored-"+w.pool+"-probe"))
		fmt.Fprintf(stderr, "(%s) spotml BatchInference on the %s pool ...\n", w.name, w.pool)
		r := w.run(ctx, c, cpu, cfg, keys, rep.ceiling.classes, stderr)
		fmt.Fprintf(stderr, "(%s) %s\n", w.name, r.summary())
		if w.name == "a" {
			rep.spot = r
		} else {
			rep.onDemand = r
		}
	}
	if rep.spot != nil || rep.onDemand != nil {
		// (d1) again, after the spotml ways: this machine's speed drifts
		// between minutes (other VMs on its host), and one thread measured
		// once, before, moved 2,250-4,860 items per CPU-second between runs
		// of the same build; the ratios are taken against the two
		// readings' mean, which brackets the ways in time.
		fmt.Fprintln(stderr, "(d1) again ...")
		probe("(d1) again", filepath.Join(ws.Dir, "ceiling-again-probe"))
		again, err := ceiling(ctx, lib, model, in, filepath.Join(ws.Dir, "ceiling-again"), keys, cfg.batch, true, rep.cores)
		if err != nil {
			return fmt.Errorf("(d1) again: %w", err)
		}
		rep.d1Again, rep.d1AllAgain = &again.whole, again.allCores
	}
	rep.load1 = loadAvg()
	rep.elapsed = time.Since(rep.start)
	rep.print(stdout)
	for _, r := range []*measured{rep.spot, rep.onDemand, rep.python} {
		if r != nil && r.err != nil {
			return r.err
		}
	}
	return nil
}

// inputPrefix and modelKey are where the benchmark puts the images and the
// model in spotml's blob store.
const (
	inputPrefix = "fmnist"
	modelKey    = "models/fmnist.onnx"
)

func poolsYAML(cfg config) string {
	pool := func(name, priority, extra string) string {
		return fmt.Sprintf(`apiVersion: spotml/v1
kind: Pool
metadata: {name: %s}
spec:
  provider: local
  priority: %s
  instanceType: %s
  zones: ["1", "2", "3"]
  min: 0
  max: %d
  idleTimeout: 5s
%s---
`, name, priority, instanceType, cfg.maxNodes, extra)
	}
	return pool("spot", "spot", fmt.Sprintf("  local:\n    evictionRate: %g\n    notice: %s\n", cfg.rate, cfg.notice)) +
		pool("ondemand", "ondemand", "")
}

// loadAvg is /proc/loadavg's first three figures.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
