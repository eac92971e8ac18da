package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/spf13/cobra"

	"github.com/spotml/spotml/internal/api"
	"github.com/spotml/spotml/internal/batchinf"
	"github.com/spotml/spotml/internal/blob"
	"github.com/spotml/spotml/internal/client"
	"github.com/spotml/spotml/internal/inference"
)

// newBatchWorkerCmd is what the agent runs for a BatchInference worker
// task; its settings come from the environment the agent gives it.
func newBatchWorkerCmd(getenv func(string) string, stderr io.Writer) *cobra.Command {
	var logLevel string
	c := &cobra.Command{
		Use:    api.BatchWorkerCmd,
		Short:  "Score a BatchInference's items (the agent runs this on a node; not for people)",
		Args:   cobra.NoArgs,
		Hidden: true,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := newLogger(stderr, logLevel)
			if err != nil {
				return err
			}
			if getenv("GOGC") == "" {
				// A worker's live heap is a few batches of images and
				// results (ONNX Runtime's memory is not Go's), allocated and
				// dropped at a high rate: collecting at 4× the live heap
				// rather than 2× runs the collector a third as often (7 % of a
				// worker's, from a profile) for a few MiB more.
				debug.SetGCPercent(300)
			}
			env := map[string]string{}
			for _, k := range []string{api.EnvBatch, api.EnvServer, api.EnvWorkerCred, api.EnvBlobURL, api.EnvWorkerID} {
				if env[k] = getenv(k); env[k] == "" {
					return fmt.Errorf("%s is not set: the agent runs batch-worker for a BatchInference's worker tasks", k)
				}
			}
			blobs, err := blob.NewStore(env[api.EnvBlobURL])
			if err != nil {
				return err
			}
			defer blobs.Close()
			dirs := []string{filepath.Join("build", "onnxruntime")}
			if exe, err := os.Executable(); err == nil {
				d := filepath.Dir(exe)
				dirs = append(dirs, d, filepath.Join(d, "lib"), filepath.Join(d, "..", "build", "onnxruntime"))
			}
			// Only the builtin runtime needs ONNX Runtime; a command's
			// worker runs without it.
			lib, libErr := inference.FindLibrary(getenv, dirs...)
			wd, _ := os.Getwd()
			// The command's context ends on SIGTERM (the node's notice): stop
			// leasing then, but finish the batch in hand; the agent's
			// SIGKILL before the notice runs out bounds that.
			stop := c.Context()
			st, err := batchinf.Run(stop, context.WithoutCancel(stop), batchinf.Config{
				API: client.New(env[api.EnvServer], env[api.EnvWorkerCred]), Blobs: blobs,
				Batch: env[api.EnvBatch], Worker: env[api.EnvWorkerID], Library: lib, LibraryErr: libErr, Stderr: stderr,
				Dir: filepath.Join(wd, "model"), Log: log.With("worker", env[api.EnvWorkerID]),
			})
			log.Info("worker done", "leased", st.Leased, "done", st.Done, "failed", st.Failed, "released", st.Released, "stopped", stop.Err() != nil)
			fmt.Fprintf(stderr, "leased %d, done %d, failed %d, released %d\n", st.Leased, st.Done, st.Failed, st.Released)
			return err
		},
	}
	c.Flags().StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	return c
}

// getBatches prints BatchInferences: items, rate, evictions, cost.
func getBatches(ctx context.Context, cl *client.Client, w io.Writer, name, output string) error {
	var bs []api.BatchInference
	if err := fetchList(ctx, cl, "batchinferences", name, &bs); err != nil {
		return err
	}
	return print(w, output, bs, func(b api.BatchInference) string { return b.Name },
		"NAME\tSTATE\tTOTAL\tDONE\tIN-FLIGHT\tFAILED\tITEMS/S\tETA\tWORKERS\tEVICTIONS\tCOST\tON-DEMAND\tAGE", func(b api.BatchInference) string {
			eta := "-"
			if b.ETA > 0 {
				eta = b.ETA.String()
			}
			state := b.State
			if b.Listing {
				state += "+listing" // the input is still being queued: TOTAL grows
			}
			return fmt.Sprintf("%s\t%s\t%d\t%d\t%d\t%d\t%.1f\t%s\t%d/%d\t%d\t$%.4f\t$%.4f\t%s", b.Name, state, b.Total, b.Done, b.InFlight, b.Failed,
				b.Throughput, eta, b.Workers, b.Workers+b.WorkersPending, b.Evictions, b.Cost, b.OnDemandCost, age(b.CreatedAt))
		})
}

// batchLogs lists a BatchInference's failed items with their reasons.
func batchLogs(ctx context.Context, cl *client.Client, w io.Writer, name string) error {
	var items []api.BatchItem
	if err := cl.Do(ctx, http.MethodGet, api.Prefix+"/batchinferences/"+url.PathEscape(name)+"/items?state=failed", nil, &items); err != nil {
		return err
	}
	if len(items) == 0 {
		fmt.Fprintf(w, "batchinference/%s: no failed items\n", name)
		return nil
	}
	for _, it := range items {
		fmt.Fprintf(w, "%s\t%s\n", it.Input, it.Reason)
	}
	return nil
}

// waitBatch waits for a BatchInference to finish, with a progress bar;
// exit 1 when some items failed, 2 on timeout.
func waitBatch(ctx context.Context, cl *client.Client, name string, timeout time.Duration, progress, stdout io.Writer) error {
	return waitLoop(ctx, progress, stdout, timeout, func(elapsed time.Duration) (waitStep, error) {
		var b api.BatchInference
		if err := cl.Do(ctx, http.MethodGet, api.Prefix+"/batchinferences/"+url.PathEscape(name), nil, &b); err != nil {
			return waitStep{}, err
		}
		st := waitStep{line: batchProgressLine(b, elapsed), done: b.State != "running"}
		switch {
		case !st.done:
		case b.Failed > 0:
			st.result = exitError{1, fmt.Errorf("batchinference/%s finished: %d done, %d failed; spotml logs batchinference/%s lists them", name, b.Done, b.Failed, name)}
		default:
			st.said = fmt.Sprintf("batchinference/%s succeeded: %d items scored, %d evictions survived", name, b.Done, b.Evictions)
		}
		return st, nil
	}, func() string { return "batchinference/" + name + " still running" })
}

func batchProgressLine(b api.BatchInference, elapsed time.Duration) string {
	frac := 0.0
	if b.Total > 0 {
		frac = float64(b.Done+b.Failed) / float64(b.Total)
	}
	eta := ""
	if b.ETA > 0 {
		eta = ", ETA " + b.ETA.String()
	}
	total := fmt.Sprint(b.Total)
	if b.Listing {
		total += "+ (listing)"
	}
	return fmt.Sprintf("[%s] %d/%s items done, %d in flight, %d failed, %d workers, %d evictions | %.1f items/s%s | cost $%.4f (on-demand $%.4f) | %s",
		bar(frac), b.Done, total, b.InFlight, b.Failed, b.Workers, b.Evictions, b.Throughput, eta, b.Cost, b.OnDemandCost, elapsed.Round(time.Second))
}
