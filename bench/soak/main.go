// Command soak is spotml's chaos soak: a real `spotml up` under evictions
// every few seconds, SIGKILLs of nodes, tasks, replicas and the control
// plane itself, a stream of checkpointing jobs, two services under
// open-loop load and hostile input, all at once and seeded; at the end it
// prints what it checked (package bench/chaos says what) and exits 1 if
// any check failed.
//
//	go run ./bench/soak -duration 10m -seed 1
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/spotml/spotml/bench/chaos"
	"github.com/spotml/spotml/bench/cluster"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	failed, err := run(ctx, os.Args, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) (failed bool, err error) {
	cfg := chaos.Config{Progress: stderr}
	var keep bool
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Minute, "how long the chaos and the load run")
	fs.Uint64Var(&cfg.Seed, "seed", 1, "seed of every choice of the schedule (which fault when, on what)")
	fs.Float64Var(&cfg.Rate, "rate", 20, "requests per second to each service (open loop)")
	fs.DurationVar(&cfg.Drain, "drain", 3*time.Minute, "how long the jobs may take to finish after the chaos")
	fs.StringVar(&cfg.ModelFile, "model", "examples/fashion-mnist/model.onnx", "the ONNX model both services serve")
	fs.StringVar(&cfg.RequestFile, "request", "examples/fashion-mnist/sample-request.json", "the KServe v2 request the load sends")
	fs.StringVar(&cfg.Bin, "bin", "", "soak this spotml binary instead of building one from this checkout (e.g. another branch's, to compare)")
	fs.BoolVar(&keep, "keep", false, "keep the work directory (data directory, logs, ledger) even when every check passed")
	if err := fs.Parse(args[1:]); err != nil {
		return false, err
	}
	if cfg.Duration < 10*time.Second {
		return false, fmt.Errorf("-duration %s: at least 10s", cfg.Duration)
	}
	if cfg.Rate <= 0 {
		return false, fmt.Errorf("-rate %g: must be positive", cfg.Rate)
	}
	if cfg.ORTLib, err = cluster.ONNXRuntime(); err != nil {
		return false, err
	}
	rep, err := chaos.Run(ctx, cfg)
	if rep != nil {
		rep.Print(stdout)
		if !keep && err == nil && !rep.Failed() {
			os.RemoveAll(rep.Dir)
		} else {
			fmt.Fprintln(stderr, "work directory kept:", rep.Dir)
		}
	}
	if err != nil {
		return true, err
	}
	return rep.Failed(), nil
}
